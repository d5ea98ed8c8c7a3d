"""THE pruned forward pass of an open_clip ViT image tower. Every method goes through here.

Stages (names follow open_clip's ``VisionTransformer``):
  prefix  = ``_embeds`` (conv1 + CLS + positional embedding + ln_pre) then the blocks before the
            prune layer ``k`` (the paper's k; ``prune_layer`` in code)
  reduce  = ``reduce_tokens``: CLS + the kept patches, or a merge of the tokens
  suffix  = optional extra tokens appended, blocks ``k..L-1``, ``_pool``, ``@ proj``

Pruning convention (docs/design.md): tokens are chosen at the *input* of block ``k``; CLS is always
kept at index 0; kept patches keep the positional embedding added before block 0, so their order
does not matter to the maths (we still sort ids so masks map back onto the grid).

Pure functions of (module, inputs): no hooks, no state on the model, safe to share between
requests. Nothing else in PatchRank loops over ``resblocks``.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from . import prepacked
from .errors import PatchRankError


def blocks(visual) -> torch.nn.ModuleList:
    return visual.transformer.resblocks


def plain_block(blk) -> bool:
    """open_clip's standard self-attention block (pre-LN, fused QKV, batch first, no mask), the
    one every CLIP ViT uses: the case the rewritten paths below are exact for (tested)."""
    a = getattr(blk, "attn", None)
    return (type(blk).__name__ == "ResidualAttentionBlock" and not hasattr(blk, "ln_1_kv")
            and isinstance(a, torch.nn.MultiheadAttention) and a.batch_first
            and a._qkv_same_embed_dim and a.in_proj_bias is not None)


def run_block(blk, h: torch.Tensor, cls_only: bool = False) -> torch.Tensor:
    """One block: ``ResidualAttentionBlock.forward`` with the attention written as a QKV
    projection and ``F.scaled_dot_product_attention`` instead of ``nn.MultiheadAttention``'s fast
    path (bmm + softmax + copies): the same maths to ~1e-6 (tested), and fewer copies, which
    matters most at small widths; its linears run on prepacked weights (``prepacked``: the
    matmuls at full rate when pruning leaves few tokens; ``benchmarks/pruned_speed.py`` measures
    the whole forward).
    Other block types run as is.

    ``cls_only``: the CLS output alone, [B,T,D] -> [B,1,D]. Every token still supplies keys and
    values, but the query, output projection and MLP run for one token instead of T: in the last
    block this removes ~5/6 of its linear FLOPs (keys+values are 2 of the 12 D^2 per token) and
    1/2 of its attention FLOPs (``flops.cls_block_flops``), the largest single saving for shallow
    suffixes (golden search on the bundled model runs 3 blocks per candidate)."""
    if not plain_block(blk):
        if cls_only:
            raise PatchRankError(f"{type(blk).__name__} has no CLS-only path")
        return blk(h)
    a = blk.attn
    b, t, d = h.shape
    heads = a.num_heads
    w, bias = a.in_proj_weight, a.in_proj_bias
    y = blk.ln_1(h)
    if cls_only:
        q = prepacked.linear(y[:, :1], w, bias, rows=slice(0, d)).view(b, 1, 1, heads, d // heads)
        kv = prepacked.linear(y, w, bias, rows=slice(d, None)).view(b, t, 2, heads, d // heads)
        q, (k, v), h = q.permute(2, 0, 3, 1, 4)[0], kv.permute(2, 0, 3, 1, 4), h[:, :1]
    else:
        qkv = prepacked.linear(y, w, bias).view(b, t, 3, heads, d // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
    o = F.scaled_dot_product_attention(q, k, v, dropout_p=a.dropout if blk.training else 0.0)
    o = prepacked.linear(o.transpose(1, 2).reshape(b, q.shape[2], d), a.out_proj.weight, a.out_proj.bias)
    x = h + blk.ls_1(o)
    return x + blk.ls_2(run_mlp(blk.mlp, blk.ln_2(x)))


def run_mlp(mlp: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """open_clip's MLP (``c_fc``, activation, ``c_proj``) with its linears prepacked; any other
    MLP module runs as is."""
    if not isinstance(mlp, torch.nn.Sequential):
        return mlp(x)
    for layer in mlp:
        x = prepacked.linear(x, layer.weight, layer.bias) if type(layer) is torch.nn.Linear else layer(x)
    return x


def run_prefix(visual, x: torch.Tensor, prune_layer: int) -> torch.Tensor:
    """Tokens entering block ``prune_layer``: [B, 1+P, D] (CLS first)."""
    return run_blocks(visual, visual._embeds(x), 0, prune_layer)


def run_blocks(visual, h: torch.Tensor, start: int, stop: int | None = None) -> torch.Tensor:
    """Blocks ``start..stop-1`` on any token sequence (used by the suffix and by golden search)."""
    for blk in blocks(visual)[start:stop]:
        h = run_block(blk, h)
    return h


def pools_cls_only(visual) -> bool:
    """True when the embedding reads only the CLS token of the last block (CLIP's ``tok``
    pooling, no attention pooling) and the blocks are open_clip's plain self-attention ones."""
    return (getattr(visual, "attn_pool", None) is None and getattr(visual, "pool_type", "tok") == "tok"
            and plain_block(blocks(visual)[-1]))


def run_to_embedding(visual, h: torch.Tensor, start: int) -> torch.Tensor:
    """Blocks ``start..L-1`` then pool + project; the last block runs for CLS only when the
    embedding reads nothing else (``pools_cls_only``)."""
    n = len(blocks(visual))
    if start < n and pools_cls_only(visual):
        h = run_block(blocks(visual)[-1], run_blocks(visual, h, start, n - 1), cls_only=True)
    else:
        h = run_blocks(visual, h, start)
    return head(visual, h)


def head(visual, h: torch.Tensor) -> torch.Tensor:
    """Pool the final tokens and project: open_clip's ``_pool`` then ``@ proj`` (unnormalised)."""
    pooled, _ = visual._pool(h)
    return pooled @ visual.proj if visual.proj is not None else pooled


def check_keep(keep: torch.Tensor, batch: int, num_patches: int) -> torch.Tensor:
    """Validate patch ids ``keep`` [B,K] (row-major, 0-based, CLS excluded)."""
    if not isinstance(keep, torch.Tensor):
        raise PatchRankError(f"keep must be a LongTensor [B,K] of patch ids, got {type(keep).__name__}")
    if keep.dtype not in (torch.int64, torch.int32):
        raise PatchRankError(f"keep must hold integer patch ids, got dtype {keep.dtype}")
    if keep.dim() == 1:
        keep = keep.unsqueeze(0).expand(batch, -1)
    if keep.dim() != 2 or keep.shape[0] != batch:
        raise PatchRankError(f"keep must have shape [B={batch}, K], got {tuple(keep.shape)}")
    if keep.shape[1] == 0:
        raise PatchRankError("keep must keep at least one patch (K=0)")
    if keep.shape[1] > num_patches:
        raise PatchRankError(f"keep has K={keep.shape[1]} ids but the model has {num_patches} patches")
    if int(keep.min()) < 0 or int(keep.max()) >= num_patches:
        raise PatchRankError(f"keep ids must lie in [0, {num_patches - 1}], got "
                             f"[{int(keep.min())}, {int(keep.max())}]")
    s = keep.sort(dim=1).values
    if (s[:, 1:] == s[:, :-1]).any():
        raise PatchRankError("keep must not repeat a patch id within an image")
    return keep.long()


def gather_patches(h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """CLS + the kept patch tokens, in the order given: [B, 1+K, D]."""
    idx = torch.cat([keep.new_zeros(keep.shape[0], 1), keep + 1], dim=1)
    return h.gather(1, idx.unsqueeze(-1).expand(-1, -1, h.shape[-1]))


def reduce_tokens(h: torch.Tensor, keep: torch.Tensor | None = None,
                  merge: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """The one token reduction at the input of the prune layer: CLS + the patches ``keep``
    [B,K], or ``merge``'s output [B,1+K,D] for methods that combine tokens; neither: all tokens.
    Every way of pruning (``rankers.reduce``, ``encode``) ends here. ``keep`` is taken as valid
    (a ranker's own choice; ids from a user go through ``check_keep`` first): a data-dependent
    check here would also stop ``torch.export`` from tracing the pruned encoder."""
    if keep is not None:
        return gather_patches(h, keep)
    if merge is not None:
        return merge(h)
    return h


def run_suffix(visual, h: torch.Tensor, prune_layer: int, extra: torch.Tensor | None = None) -> torch.Tensor:
    """Blocks ``prune_layer..L-1`` on a reduced sequence, then pool + project.

    ``extra``: learnable tokens appended after the reduction, either [T, D] (shallow: appended
    once at the prune layer) or [L-prune_layer, T, D] (deep, VPT-style: block ``prune_layer+i`` sees ``extra[i]`` in place of
    the previous block's outputs at those positions). They are removed before pooling, so
    mean-pooled towers average only image tokens."""
    if extra is None:
        return run_to_embedding(visual, h, prune_layer)
    n = h.shape[1]
    deep = extra.dim() == 3
    x = extra[0] if deep else extra
    h = torch.cat([h, x.to(h.dtype).unsqueeze(0).expand(h.shape[0], -1, -1)], dim=1)
    last, cls_only = len(blocks(visual)) - 1, pools_cls_only(visual)
    for i, blk in enumerate(blocks(visual)[prune_layer:]):
        if deep and i > 0:
            h = torch.cat([h[:, :n], extra[i].to(h.dtype).unsqueeze(0).expand(h.shape[0], -1, -1)], 1)
        h = run_block(blk, h, cls_only=cls_only and prune_layer + i == last)
    return head(visual, h[:, :n])


def encode(visual, x: torch.Tensor, prune_layer: int, keep: torch.Tensor | None = None,
           reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
           extra: torch.Tensor | None = None) -> torch.Tensor:
    """Image embeddings (unnormalised) with tokens reduced at the input of block ``prune_layer``.

    ``keep``: patch ids [B,K]; ``reduce``: any function [B,1+P,D] -> [B,1+K,D] (e.g. token
    merging); neither: all tokens (equals open_clip's ``encode_image``)."""
    h = run_prefix(visual, x, prune_layer)
    if keep is not None:
        keep = check_keep(keep, h.shape[0], h.shape[1] - 1)
    return run_suffix(visual, reduce_tokens(h, keep=keep, merge=reduce), prune_layer, extra)
