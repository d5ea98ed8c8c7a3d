"""One image's variants through the suffix, and the harm of each (``golden`` has the maths).

The prefix (blocks before the prune layer) is computed once per image; a variant is a gather of
it run through ``forward.run_suffix`` in chunks sized by a memory budget. Nothing here steps
through the transformer blocks itself: the model maths is ``patchrank.forward``'s.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F

from .errors import PatchRankError
from .forward import blocks, gather_patches, run_suffix


def suffix_gflops(m, n_keep: int) -> float:
    """GFLOPs of one variant keeping ``n_keep`` patches: the blocks from the prune layer on, as
    our forward executes them."""
    f = m.flops(keep=n_keep)
    return f.executed - sum(f.blocks[:m.prune_layer]) - f.patch_embed


def variant_bytes(visual, n_tokens: int, elt: int) -> int:
    """Rough peak activation bytes of one variant in a suffix block: residual, LN, QKV, attention
    output and MLP hidden (before/after GELU) per token, plus two N x N maps per head."""
    d = visual.transformer.width
    hidden = blocks(visual)[0].mlp.c_fc.out_features
    heads = blocks(visual)[0].attn.num_heads
    return elt * (n_tokens * (8 * d + 2 * hidden) + 2 * heads * n_tokens * n_tokens)


class Scorer:
    """Runs variants (keep-id sets) of one image through the suffix and scores them."""

    def __init__(self, m, h: torch.Tensor, score: str, clf, y: int | None, budget_mb: float,
                 dtype: torch.dtype | None):
        self.m, self.h, self.score, self.clf, self.y = m, h, score, clf, y
        self.prune_layer = m.prune_layer
        self.budget = max(1.0, float(budget_mb)) * 2 ** 20
        run_dtype = dtype or h.dtype
        self.elt = torch.finfo(run_dtype).bits // 8
        self.autocast = (dtype is not None and dtype != h.dtype)
        self.dtype = dtype
        self.ref = None
        self.flop_cache: dict[int, float] = {}
        self.variants, self.gflops = 0, 0.0
        self.on_chunk: Callable[[int], None] | None = None   # progress: variants just run

    def _ctx(self):
        if self.autocast:
            return torch.autocast(self.h.device.type, dtype=self.dtype)
        return contextlib.nullcontext()

    def suffix_gflops(self, n_keep: int) -> float:
        g = self.flop_cache.get(n_keep)
        if g is None:
            g = self.flop_cache[n_keep] = suffix_gflops(self.m, n_keep)
        return g

    def embed(self, keep: torch.Tensor) -> torch.Tensor:
        """Embeddings [G,E] of the variants keeping ``keep`` [G,K] (one K for all rows), in
        float32 (float64 for a float64 model), run in chunks that fit the memory budget."""
        g, n_keep = keep.shape
        per = variant_bytes(self.m.visual, 1 + n_keep, self.elt)
        chunk = max(1, int(self.budget // per))
        if self.on_chunk is not None:      # reporting progress: at least ~8 chunks per round
            chunk = min(chunk, max(8, -(-g // 8)))
        out = []
        with self._ctx():
            for i in range(0, g, chunk):
                ids = keep[i:i + chunk]
                hv = gather_patches(self.h.expand(len(ids), -1, -1), ids)
                e = run_suffix(self.m.visual, hv, self.prune_layer)
                out.append(e if e.dtype == torch.float64 else e.float())
                if self.on_chunk is not None:
                    self.on_chunk(len(ids))
        self.variants += g
        self.gflops += g * self.suffix_gflops(n_keep)
        return torch.cat(out)

    def values(self, emb: torch.Tensor) -> torch.Tensor:
        """Harms [G] in float64 of embeddings [G,E] (module docstring): the unit vectors are
        formed in float64, so a difference of two nearly equal embeddings keeps its precision."""
        unit = F.normalize(emb.double(), dim=-1)
        if self.score == "similarity":
            diff = unit - self.ref
            return 0.5 * (diff * diff).sum(dim=-1)
        logp = self.clf.log_probs(unit.cpu())   # the cached text side lives on the CPU
        return -(logp[:, self.y] if self.score == "label" else logp.max(dim=-1).values)

    def start(self) -> float:
        """Embed the full image; returns its own harm (0 for ``similarity``; the base for c2f)."""
        full = self.embed(torch.arange(self.m.num_patches, device=self.h.device).unsqueeze(0))
        self.ref = F.normalize(full[0].double(), dim=-1)
        return float(self.values(full)[0])

    def score_sets(self, removals: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        """Score of removing each patch-id set in ``removals`` from the ``present`` mask.
        Variants are grouped by length (no ragged batches)."""
        out = torch.empty(len(removals), dtype=torch.float64)
        ids = present.nonzero().squeeze(1)
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(removals):
            groups.setdefault(int(r.numel()), []).append(i)
        for size, idx in groups.items():
            if ids.numel() - size < 1:
                raise PatchRankError("internal: a variant would keep no patch")
            masks = present.unsqueeze(0).repeat(len(idx), 1)
            for row, i in enumerate(idx):
                masks[row, removals[i]] = False
            # each row keeps n - size patches, ascending ids (nonzero is row-major)
            keep = masks.nonzero()[:, 1].view(len(idx), ids.numel() - size)
            out[torch.tensor(idx)] = self.values(self.embed(keep.to(self.h.device))).cpu().double()
        return out

