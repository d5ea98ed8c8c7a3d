"""Baseline rankers and mergers, compared with the predictor at the same kept count and layer.

Each one plugs into the one pruned forward (``patchrank.forward`` via ``m.encode_image``):
rankers give ``scores(m, x, h) -> [B,P]`` (higher = kept first) and mergers give
``reduce(m, h, n_keep) -> [B,1+n_keep,D]``, so every method ends with CLS + ``n_keep`` tokens
entering block ``k = m.prune_layer`` and costs the same FLOPs from there on.

- ``random``: uniform random scores (seeded; deterministic by default).
- ``attention``: CLS-to-patch attention of block k-1, the last block before pruning, recomputed
  from its weights and averaged over heads (the paper's commented CLS-attention baseline, docs/paper.md,
  moved to our "prune at the input of block k" convention).
- ``attention+fuse``: EViT (Liang et al., ICLR 2022): keep the n_keep-1 most attended patches and
  fuse the rest into one token weighted by their attention, so 1+n_keep tokens go on.
- ``norm``: L2 norm of each patch token entering block k.
- ``tome``: ToMe-style bipartite soft matching (Bolya et al., ICLR 2023), merging the patches
  entering block k down to n_keep tokens; ``tome_groups`` says which patches went into which token.

Named in ``patchrank.rankers``' registry, so ``ranker="attention"`` etc. work.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import forward
from .errors import PatchRankError
from . import ordering


# -- attention ------------------------------------------------------------------------------------
def _qk_weights(block) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    attn = block.attn
    if getattr(attn, "scaled_cosine", False) or getattr(attn, "head_scale", None) is not None:
        raise PatchRankError("CLS attention is recomputed for plain dot-product attention only; "
                             "this block uses scaled-cosine attention or head scaling")
    if not hasattr(attn, "in_proj_weight") or attn.in_proj_weight is None:
        raise PatchRankError(f"{type(attn).__name__} has no packed in_proj_weight to recompute "
                             "attention from")
    return attn.in_proj_weight, attn.in_proj_bias, attn.num_heads


def cls_attention(block, h: torch.Tensor) -> torch.Tensor:
    """Head-averaged attention of the CLS query to every patch in ``block`` on input ``h``: [B,P].

    softmax(q_cls k^T / sqrt(d_h)) per head over all 1+P keys (Vaswani et al. 2017, eq. 1), with
    q, k from ``ln_1(h)`` and the block's packed in-projection; the CLS column is then dropped, so
    rows sum to 1 - attention-to-CLS. Recomputed from weights because open_clip calls
    ``nn.MultiheadAttention`` with ``need_weights=False`` (open_clip's ``ResidualAttentionBlock``). Costs about
    2ND^2 + 2ND FLOPs (key projection + one query row), negligible next to a block."""
    w, b, heads = _qk_weights(block)
    bsz, n, d = h.shape
    dh = d // heads
    y = block.ln_1(h)
    q = F.linear(y[:, :1], w[:d], None if b is None else b[:d])               # [B,1,D]
    k = F.linear(y, w[d:2 * d], None if b is None else b[d:2 * d])            # [B,N,D]
    q = q.view(bsz, 1, heads, dh).transpose(1, 2).float()                     # [B,H,1,dh]
    k = k.view(bsz, n, heads, dh).transpose(1, 2).float()                     # [B,H,N,dh]
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)       # [B,H,1,N]
    return a.mean(dim=1)[:, 0, 1:]


def cls_attention_gflops(m) -> float:
    """GFLOPs of ``cls_attention`` on N = 1+P tokens of width D: keys 2ND^2, the CLS query 2D^2,
    its logits 2ND (1 MAC = 2 FLOPs; LayerNorm and softmax left out, as in ``flops.py``)."""
    n, d = m.num_patches + 1, m.width
    return (2 * n * d * d + 2 * d * d + 2 * n * d) / 1e9


class AttentionRanker:
    """CLS attention of block k-1 (the block whose output is pruned). It needs the tokens entering
    block k-1, which the pruned forward does not keep, so they are recomputed with
    ``forward.run_prefix(visual, x, k-1)`` (k-1 extra blocks; our own choice of faithfulness over
    cost). With k = 0 there is no earlier block: block 0's own attention on ``h`` is used."""

    name, kind = "attention", "scores"

    def gflops(self, m) -> float:
        """Per image: the recomputed prefix to block k-1 (patch embedding + blocks 0..k-2) plus
        ``cls_attention_gflops`` of block k-1; a cost of this implementation, counted in full."""
        f, k = m.flops(), m.prune_layer
        recompute = f.patch_embed + sum(f.blocks[:k - 1]) if k > 0 else 0.0
        return recompute + cls_attention_gflops(m)

    def scores(self, m, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        k = m.prune_layer
        with torch.no_grad():
            if k == 0:
                return cls_attention(forward.blocks(m.visual)[0], h)
            h_prev = forward.run_prefix(m.visual, x.to(device=h.device, dtype=h.dtype), k - 1)
            return cls_attention(forward.blocks(m.visual)[k - 1], h_prev)


def fuse_tokens(h: torch.Tensor, scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """EViT fusion: CLS + the n_keep-1 highest-scoring patches (sorted by id) + one token that is the
    score-weighted mean of all the other patches (Liang et al. 2022, eq. 4): [B,1+n_keep,D].

    The fused token takes one of the n_keep slots so the token count, and hence the FLOPs, equal plain
    pruning to n_keep. With n_keep = P nothing is pruned and ``h`` is returned unchanged."""
    p = h.shape[1] - 1
    if not 1 <= n_keep <= p:
        raise PatchRankError(f"n_keep must be in [1, {p}], got {n_keep}")
    if n_keep == p:
        return h
    order = ordering.order_from_scores(scores)
    kept, dropped = order[:, :n_keep - 1].sort(dim=1).values, order[:, n_keep - 1:]
    w = scores.float().gather(1, dropped).clamp_min(0)
    w = w / w.sum(dim=1, keepdim=True).clamp_min(1e-12)
    tok = h[:, 1:].gather(1, dropped.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
    fused = (w.unsqueeze(-1) * tok.float()).sum(dim=1, keepdim=True).to(h.dtype)
    return torch.cat([forward.gather_patches(h, kept), fused], dim=1)


class AttentionFuseMerger:
    """EViT-style pruning with fusion, as a merger. ``reduce`` sees only ``h`` (the tokens entering
    block k), not the input of block k-1, so it scores with block k's own CLS attention on ``h``
    — which is also what EViT does (it ranks by the attention of the block where it prunes)."""

    name, kind = "attention+fuse", "merge"

    def gflops(self, m) -> float:
        """Block k's CLS attention (no recomputation) plus the fused token's weighted sum 2PD."""
        return cls_attention_gflops(m) + 2 * m.num_patches * m.width / 1e9

    def reduce(self, m, h: torch.Tensor, n_keep: int) -> torch.Tensor:
        with torch.no_grad():
            a = cls_attention(forward.blocks(m.visual)[m.prune_layer], h)
        return fuse_tokens(h, a, n_keep)


# -- norm and random ------------------------------------------------------------------------------
class NormRanker:
    """L2 norm of each patch token entering block k, largest kept first: the common heuristic that
    high-norm tokens carry more signal. It need not hold: on the bundled model object patches
    have the *lower* norm (11.8 against 15.0 for background, on average over the evaluation
    split), so this ranker keeps background; ``norm-low`` (``largest=False``) ranks the other
    way, and the sweep shows both."""

    kind = "scores"

    def __init__(self, largest: bool = True):
        self.largest = largest
        self.name = "norm" if largest else "norm-low"

    def gflops(self, m) -> float:
        """P squared norms of width D: 2PD."""
        return 2 * m.num_patches * m.width / 1e9

    def scores(self, m, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        n = h[:, 1:].detach().float().norm(dim=-1)
        return n if self.largest else -n


class RandomRanker:
    """Uniform random scores. Each call draws from ``generator`` if given, else from a fresh
    generator seeded with ``seed``, so the default is the same choice every call."""

    name, kind = "random", "scores"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def gflops(self, m) -> float:
        return 0.0

    def scores(self, m, x: torch.Tensor, h: torch.Tensor,
               generator: torch.Generator | None = None) -> torch.Tensor:
        g = generator if generator is not None else torch.Generator().manual_seed(self.seed)
        return torch.rand(h.shape[0], h.shape[1] - 1, generator=g).to(h.device)


# -- ToMe-style merging ---------------------------------------------------------------------------
@dataclass
class Merged:
    """Result of merging patches: ``tokens`` [B,1+k,D] (CLS first), ``groups`` [B,P] (output slot
    0..k-1 of each input patch; slot j is ``tokens[:, 1+j]``), ``sizes`` [B,k] (patches per slot)."""
    tokens: torch.Tensor
    groups: torch.Tensor
    sizes: torch.Tensor


def _bipartite_round(x: torch.Tensor, metric: torch.Tensor, size: torch.Tensor, r: int):
    """One ToMe round: split tokens alternately into A (even positions) and B (odd), match each A
    token to its most similar B token (cosine of ``metric``), merge the r best-matched A tokens
    into their B partners (size-weighted mean). Returns the new tensors and ``assign`` [B,n]: the
    new index of every old token. New layout: unmerged A tokens (in old order), then B tokens."""
    bsz, n, _ = x.shape
    mn = F.normalize(metric.float(), dim=-1)
    sim = mn[:, 0::2] @ mn[:, 1::2].transpose(1, 2)                           # [B,nA,nB]
    best, dst = sim.max(dim=-1)                                                # [B,nA]
    na, nb = sim.shape[1], sim.shape[2]
    by_sim = torch.sort(best, dim=1, descending=True, stable=True).indices
    merged, kept = by_sim[:, :r], by_sim[:, r:].sort(dim=1).values
    ar = torch.arange(n, device=x.device)
    new_a = torch.empty(bsz, na, dtype=torch.long, device=x.device)
    new_a.scatter_(1, kept, ar[:na - r].expand(bsz, -1))
    new_a.scatter_(1, merged, (na - r) + dst.gather(1, merged))
    assign = torch.empty(bsz, n, dtype=torch.long, device=x.device)
    assign[:, 0::2] = new_a
    assign[:, 1::2] = (na - r) + ar[:nb]
    n_new = na - r + nb

    def pool(t: torch.Tensor) -> torch.Tensor:   # size-weighted sum into the new slots
        out = t.new_zeros(bsz, n_new, t.shape[-1])
        return out.scatter_add_(1, assign.unsqueeze(-1).expand(-1, -1, t.shape[-1]), t * size.unsqueeze(-1))

    new_size = size.new_zeros(bsz, n_new).scatter_add_(1, assign, size)
    return (pool(x.float()) / new_size.unsqueeze(-1), pool(metric.float()) / new_size.unsqueeze(-1),
            new_size, assign)


def bipartite_merge(h: torch.Tensor, n_keep: int, metric: torch.Tensor | None = None) -> Merged:
    """Merge the patches of ``h`` [B,1+P,D] down to ``n_keep`` tokens; CLS is never matched.

    ToMe merges at most half the tokens per round, so rounds repeat (r = min(n-n_keep, n//2)) until
    n_keep remain; within a round, merged tokens are size-weighted means of their members (ToMe eq. 2
    "size"), and ``metric`` (default: the tokens) is merged the same way so later rounds match on
    averaged keys. No proportional attention afterwards: the suffix runs open_clip's blocks as is,
    so a merged token counts as one token (and the FLOPs equal pruning to n_keep)."""
    bsz, n1, d = h.shape
    p = n1 - 1
    if not 1 <= n_keep <= p:
        raise PatchRankError(f"n_keep must be in [1, {p}], got {n_keep}")
    x = h[:, 1:]
    met = x if metric is None else metric
    if met.shape[:2] != x.shape[:2]:
        raise PatchRankError(f"metric must be [B,P,C] with P={p}, got {tuple(met.shape)}")
    size = torch.ones(bsz, p, device=h.device)
    groups = torch.arange(p, device=h.device).expand(bsz, -1)
    while x.shape[1] > n_keep:
        n = x.shape[1]
        x, met, size, assign = _bipartite_round(x, met, size, min(n - n_keep, n // 2))
        groups = assign.gather(1, groups)
    return Merged(torch.cat([h[:, :1], x.to(h.dtype)], dim=1), groups, size)


def block_keys(block, h: torch.Tensor) -> torch.Tensor:
    """Keys of ``block`` for the patches of its input ``h``: [B,P,D] (all heads concatenated)."""
    w, b, _ = _qk_weights(block)
    d = h.shape[-1]
    return F.linear(block.ln_1(h[:, 1:]), w[d:2 * d], None if b is None else b[d:2 * d])


class ToMeMerger:
    """ToMe-style merging at the input of block k. ``metric="keys"`` matches on block k's key
    projection (ToMe matches on the attention keys; we concatenate heads instead of averaging
    them), ``"tokens"`` on the tokens themselves. The matching itself (keys ~2PD^2, similarities
    ~2(P/2)^2 D per round) is extra work before block k, like any ranker's scoring."""

    name, kind = "tome", "merge"

    def __init__(self, metric: str = "keys"):
        if metric not in ("keys", "tokens"):
            raise PatchRankError(f"ToMe metric must be 'keys' or 'tokens', got {metric!r}")
        self.metric = metric

    def gflops(self, m) -> float:
        """Matching per image: block k's key projection of the P patches 2PD^2 (``keys`` metric
        only) and the similarities of the two halves 2(P/2)^2 D; the size-weighted pooling
        (O(PD)) is left out like LayerNorm."""
        p, d = m.num_patches, m.width
        keys = 2 * p * d * d if self.metric == "keys" else 0.0
        return (keys + 2 * (p / 2) ** 2 * d) / 1e9

    def merge(self, m, h: torch.Tensor, n_keep: int) -> Merged:
        with torch.no_grad():
            met = block_keys(forward.blocks(m.visual)[m.prune_layer], h) if self.metric == "keys" else None
            return bipartite_merge(h, n_keep, met)

    def reduce(self, m, h: torch.Tensor, n_keep: int) -> torch.Tensor:
        return self.merge(m, h, n_keep).tokens


def tome_groups(m, x: torch.Tensor, keep_ratio: float = 0.6, metric: str = "keys") -> torch.Tensor:
    """Which merged token each patch ends up in, [B,P] with values 0..n_keep-1 (the app's ToMe view)."""
    with torch.inference_mode():
        return ToMeMerger(metric).merge(m, m.prefix(x), m.keep_count(keep_ratio)).groups
