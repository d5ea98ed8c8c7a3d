"""Analytic FLOPs of the image tower for any token schedule. 1 MAC = 2 FLOPs.

Per pre-LN block with N tokens, width D and MLP hidden width H (= 4D for CLIP):
  QKV 2*N*D*3D + scores QK^T 2*N^2*D + attention*V 2*N^2*D + out-proj 2*N*D*D + MLP 2*2*N*D*H
  = 8*N*D^2 + 4*N*D*H + 4*N^2*D   (= 24*N*D^2 + 4*N^2*D for H = 4D; docs/paper.md)
plus the patch embedding 2*P*(3*p^2)*D and the output projection 2*D*E. Biases, LayerNorm,
softmax and GELU (all O(N*D)) are left out.

Two totals: the float value is the standard count of the architecture (every block on every
token: the convention of the paper's tables and of every ViT FLOP figure), and ``.executed`` is
what PatchRank's forward actually runs. They differ only in the last block when the embedding
reads the CLS token alone (``forward.run_block(..., cls_only=True)``): there keys and values are computed for all N
tokens but the rest for one, 4*N*D^2 + 4*D^2 + 4*N*D + 4*D*H. Speed ratios ("FLOP-ideal") use
``.executed``; a test checks it against ``torch.utils.flop_counter.FlopCounterMode``.
"""
from __future__ import annotations

from .forward import blocks, pools_cls_only


class FlopCount(float):
    """Total GFLOPs (a float) that also carries the breakdown: ``.blocks`` (per-block GFLOPs),
    ``.patch_embed``, ``.projection``, ``.tokens`` (tokens per block, CLS + extra included) and
    ``.executed`` (GFLOPs PatchRank's forward runs; see the module docstring)."""

    blocks: list[float]
    patch_embed: float
    projection: float
    tokens: list[int]
    executed: float

    def __new__(cls, blocks, patch_embed, projection, tokens, last_block_executed=None):
        obj = super().__new__(cls, sum(blocks) + patch_embed + projection)
        obj.blocks, obj.patch_embed, obj.projection, obj.tokens = blocks, patch_embed, projection, tokens
        last = blocks[-1] if last_block_executed is None else last_block_executed
        obj.executed = float(obj) - blocks[-1] + last
        return obj

    def as_dict(self) -> dict:
        return {"gflops": float(self), "executed_gflops": self.executed, "blocks": self.blocks,
                "patch_embed": self.patch_embed, "projection": self.projection, "tokens": self.tokens}


def block_flops(n: int, d: int, hidden: int) -> float:
    """FLOPs of one block on ``n`` tokens (formula in the module docstring)."""
    return 8 * n * d * d + 4 * n * d * hidden + 4 * n * n * d


def cls_block_flops(n: int, d: int, hidden: int) -> float:
    """FLOPs of one block computing only the CLS output from ``n`` tokens (``forward.run_block(..., cls_only=True)``):
    K,V for all tokens 4*n*D^2, Q and out-proj for CLS 4*D^2, its scores and mix 4*n*D, MLP 4*D*H."""
    return 4 * n * d * d + 4 * d * d + 4 * n * d + 4 * d * hidden


def tower_flops(visual, keep: int | None, prune_layer: int, extra_tokens: int = 0) -> FlopCount:
    layers = blocks(visual)
    d = visual.transformer.width
    hidden = layers[0].mlp.c_fc.out_features
    gh, gw = visual.grid_size
    p = gh * gw
    ph, pw = visual.patch_size if isinstance(visual.patch_size, tuple) else (visual.patch_size,) * 2
    kept = p if keep is None else int(keep)
    tokens = [1 + p if i < prune_layer else 1 + kept + extra_tokens for i in range(len(layers))]
    per_block = [block_flops(n, d, hidden) / 1e9 for n in tokens]
    patch_embed = 2 * p * 3 * ph * pw * d / 1e9
    proj = 0.0 if visual.proj is None else 2 * d * visual.proj.shape[1] / 1e9
    last = cls_block_flops(tokens[-1], d, hidden) / 1e9 if pools_cls_only(visual) else None
    return FlopCount(per_block, patch_embed, proj, tokens, last)
