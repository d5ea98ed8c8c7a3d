"""Golden ranking: the order in which patches can be removed at the prune layer hurting least.

Greedy backward elimination with leave-one-out (LOO) scoring (the paper's search, with the
released code's bugs fixed: docs/paper.md): each round scores every remaining candidate -- one
patch, or with ``block=2`` one 2x2 cell of the grid (all of its still-present patches) -- by
removing it alone and running blocks ``k..L-1``; the ``step`` candidates whose removal hurts
least are dropped; repeat on the reduced set.

Every score is the *harm* of a removal R (higher = removing R hurts more = R more important),
computed in float64 from the variant's float32 embedding:

- ``similarity``: 1/2 ||u - v||^2 with u, v the unit embeddings of the full image and of X minus R
  (label free). It equals 1 - cos(u, v), but is computed from the difference u - v: a patch moves
  the embedding by ~1e-6 in cosine, below float32's resolution near 1 (6e-8 relative steps
  leave only a few dozen distinct values among 196 patches), while the difference keeps its full
  relative precision.
- ``label``: -log p(y | X minus R), p = softmax_c(s * cos(f, t_c)) (needs labels; zeroshot.py);
- ``max``: -max_c log p(c | X minus R), the top class of *each* variant.

The prefix (blocks < k) runs once per image (``forward.run_prefix``); every variant is a gather
of it run through ``forward.run_suffix`` in chunks sized by a memory budget. Nothing here steps
through the transformer blocks itself: the model maths is ``patchrank.forward``'s.

Modes: ``greedy`` (the above; ``step=10`` is the paper's setting), ``oneshot`` (a single LOO round,
ordered by its scores: the project's default "golden ranking", see the README's variant study),
``c2f`` (coarse-to-fine, ours). Greedy with a large step drops redundant object patches together,
each harmless alone, and the embedding collapses: the step assumes single-removal harms add up.
c2f checks that assumption each round: with h_i the LOO harms in cut order, ``base`` the current
set's harm and d_i = h_i - base, it also scores removing the first j together for j in
{2, 4, 8, ..., step} and drops the largest j with
H(first j) - base <= C2F_RATIO * max(sum_i<=j d_i, 0) + C2F_TOL * mean_i |d_i| (else just one):
the tolerance is relative to the round's typical single-removal harm, so it means the same on
every model and score. It moves ``step`` at a time through background and one at a time where
patches interact, for about log2(step) extra variants per round. ``lazy=True`` (greedy only)
re-scores only candidates whose previous harm could still put them in this round's cut, as lazy
greedy does for submodular objectives; it equals plain greedy when harms never fall as patches
go, which is not guaranteed (``benchmarks/golden_variants.py`` measures how often it differs).

Ties are broken deterministically: among equal harms the candidate with the larger patch id
(cells: smallest present patch id) is removed first, so lower ids rank as more important, the
same convention as ``ordering.order_from_scores``. With float64 harms, exact ties are rare (the
tests check under 2 % of patches on the bundled model).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from . import distributed, forward
from .errors import PatchRankError
from .progress import bar as progress_bar
from . import ordering

SCORES = ("similarity", "label", "max")
MODES = ("greedy", "oneshot", "c2f")
#: c2f accepts a joint removal of j candidates while its extra harm <= RATIO * (sum of the j
#: single extra harms) + TOL * (the round's mean |single extra harm|): relative, unit free.
C2F_RATIO = 2.0
C2F_TOL = 1.0
DEFAULT_BUDGET_MB = 512


@dataclass
class Ranking:
    """Result of ``golden_ranking`` for a batch of B images with P patches.

    ``order``: [B,P] patch ids, most important first (a full order). ``removed_at``: [B,P] the
    1-based round in which each patch was removed; patches never removed (the survivor when run
    to one patch, the kept set with ``stop_at``) get ``rounds + 1``. ``scores``: one [B,P] float64
    tensor per round with the harm of removing each present patch (higher = more important; a
    cell's harm for all its patches; NaN
    for patches already gone or images already finished; lazy mode holds the bound used for
    candidates not re-scored). ``variants``/``gflops``: [B] number of suffix forwards run and
    analytic GFLOPs spent (prefix + full + all variants; 1 MAC = 2 FLOPs)."""
    order: torch.Tensor
    removed_at: torch.Tensor
    scores: list[torch.Tensor]
    settings: dict
    rounds: torch.Tensor
    variants: torch.Tensor
    gflops: torch.Tensor

    def keep(self, ratio: float) -> torch.Tensor:
        """Kept patch ids [B,K] (sorted by id) at a keep ratio, K = round(ratio * P), >= 1."""
        k = max(1, round(float(ratio) * self.order.shape[1]))
        return self.order[:, :k].sort(dim=1).values


@dataclass
class _ImageState:
    """Search state of one image: present patches and the removal log."""
    present: torch.Tensor                     # [P] bool
    removed: list = field(default_factory=list)   # patch ids, in removal order
    removed_at: torch.Tensor | None = None
    last_scores: torch.Tensor | None = None   # [P] scores of the latest round
    rounds: int = 0
    variants: int = 0
    gflops: float = 0.0


def cells(grid: tuple[int, int], block: int) -> torch.Tensor:
    """Cell id of every patch [P] for ``block`` x ``block`` cells (edge cells of odd grids are
    smaller). Cell ids are row-major on the coarse grid."""
    rows, cols = grid
    if block < 1 or block > max(rows, cols):
        raise PatchRankError(f"block must be in [1, {max(rows, cols)}], got {block}")
    r = torch.arange(rows).repeat_interleave(cols) // block
    c = torch.arange(cols).repeat(rows) // block
    return r * math.ceil(cols / block) + c


def golden_settings(m, score: str = "similarity", step: int = 10, block: int = 1,
                    stop_at: float | None = None, *, mode: str = "greedy", lazy: bool = False,
                    dtype: torch.dtype | None = None, classnames: Sequence[str] | None = None,
                    templates=None) -> dict:
    """Validated settings of a search, as stored with rankings (everything the result depends
    on besides model and image; the memory budget only changes chunking)."""
    if score not in SCORES:
        raise PatchRankError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    if mode not in MODES:
        raise PatchRankError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise PatchRankError(f"step must be an int >= 1 (candidates dropped per round), got {step!r}")
    if isinstance(block, bool) or not isinstance(block, int):
        raise PatchRankError(f"block must be an int (1 = single patches, 2 = 2x2 cells), got {block!r}")
    cells(m.grid, block)
    if lazy and mode != "greedy":
        raise PatchRankError("lazy=True applies to mode='greedy' only")
    if stop_at is not None:
        m.keep_count(stop_at)
        stop_at = float(stop_at)
    # "harm": version of the score definition, so rankings stored under another one are refused:
    # 2 = float64 harms, higher = more important (1 was float32 cosine/probability, higher = removable)
    out = {"score": score, "harm": 2, "step": step, "block": block, "stop_at": stop_at, "mode": mode,
           "lazy": bool(lazy), "dtype": str(dtype or m.dtype).replace("torch.", ""),
           "prune_layer": m.prune_layer}
    if score != "similarity":
        clf = m.zero_shot(classnames, templates)
        out.update(classnames=list(clf.classnames), templates=list(clf.templates))
    if mode == "c2f":
        out.update(c2f_ratio=C2F_RATIO, c2f_tol=C2F_TOL)
    return out


def _variant_bytes(visual, n_tokens: int, elt: int) -> int:
    """Rough peak activation bytes of one variant in a suffix block: residual, LN, QKV, attention
    output and MLP hidden (before/after GELU) per token, plus two N x N maps per head."""
    d = visual.transformer.width
    hidden = forward.blocks(visual)[0].mlp.c_fc.out_features
    heads = forward.blocks(visual)[0].attn.num_heads
    return elt * (n_tokens * (8 * d + 2 * hidden) + 2 * heads * n_tokens * n_tokens)


class _Scorer:
    """Runs variants (keep-id sets) of one image through the suffix and scores them."""

    def __init__(self, m, h: torch.Tensor, score: str, clf, y: int | None, budget_mb: float,
                 dtype: torch.dtype | None):
        self.m, self.h, self.score, self.clf, self.y = m, h, score, clf, y
        self.k = m.prune_layer
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
        per = _variant_bytes(self.m.visual, 1 + n_keep, self.elt)
        chunk = max(1, int(self.budget // per))
        if self.on_chunk is not None:      # reporting progress: at least ~8 chunks per round
            chunk = min(chunk, max(8, -(-g // 8)))
        out = []
        with self._ctx():
            for i in range(0, g, chunk):
                ids = keep[i:i + chunk]
                hv = forward.gather_patches(self.h.expand(len(ids), -1, -1), ids)
                e = forward.run_suffix(self.m.visual, hv, self.k)
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


def _candidates(state: _ImageState, cell_of: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Candidates of a round: the present patches of each cell, and their tie-break keys
    (smallest present patch id; unique because cells are disjoint). When a single cell is left,
    its patches are scored one by one (removing the whole cell would leave nothing to run)."""
    present_ids = state.present.nonzero().squeeze(1)
    cid = cell_of[present_ids]
    groups: dict[int, list[int]] = {}
    for p, c in zip(present_ids.tolist(), cid.tolist()):
        groups.setdefault(c, []).append(p)
    if len(groups) == 1:       # one cell holds every remaining patch: split it into patches
        groups = {p: [p] for p in present_ids.tolist()}
    cands = [torch.tensor(v) for v in groups.values()]
    keys = torch.tensor([int(v[0]) for v in groups.values()])
    return cands, keys


def _rank_candidates(harms: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Candidate indices, least harmful first: harm ascending, then key descending."""
    by_key = torch.sort(keys, descending=True, stable=True).indices
    by_harm = torch.sort(harms[by_key], stable=True).indices
    return by_key[by_harm]


def _take(cands: list[torch.Tensor], ranked: list[int], n_cands: int, budget: int) -> list[torch.Tensor]:
    """Patch sets removed by dropping the first ``n_cands`` ranked candidates, never more than
    ``budget`` patches in all; a cell that would overshoot is removed in part, higher ids first."""
    out, left = [], budget
    for ci in ranked[:n_cands]:
        if left <= 0:
            break
        pats = cands[ci].sort(descending=True).values[:left]
        out.append(pats)
        left -= pats.numel()
    return out


def _record_round(state: _ImageState, cands, scores: torch.Tensor, num_patches: int) -> torch.Tensor:
    full = torch.full((num_patches,), float("nan"), dtype=torch.float64)
    for c, s in zip(cands, scores.tolist()):
        full[c] = s
    state.last_scores = full
    return full


def _remove(state: _ImageState, sets: list[torch.Tensor]) -> None:
    state.rounds += 1
    for pats in sets:
        for p in pats.tolist():
            state.present[p] = False
            state.removed.append(p)
            state.removed_at[p] = state.rounds


def _greedy_image(sc: _Scorer, state: _ImageState, cell_of, step: int, target: int,
                  lazy: bool, log: list) -> None:
    bound: torch.Tensor | None = None     # lazy: last known score of each cell (by cell id)
    while int(state.present.sum()) > target:
        cands, keys = _candidates(state, cell_of)
        need = int(state.present.sum()) - target
        if lazy and bound is not None:
            scores, fresh = _lazy_scores(sc, state, cands, keys, bound, cell_of, step)
            taken = _take(cands, _rank_candidates(scores, keys).tolist(), step, need)
            if sum(int(t.numel()) for t in taken) >= need and not fresh.all():
                # last round: the survivors are ordered by these scores, so make them all fresh
                stale = (~fresh).nonzero().squeeze(1)
                scores[stale] = sc.score_sets([cands[i] for i in stale.tolist()], state.present)
        else:
            scores = sc.score_sets(cands, state.present)
        if lazy:
            bound = torch.full((int(cell_of.max()) + 1,), float("-inf"), dtype=torch.float64)
            for c, s in zip(cands, scores.tolist()):
                bound[cell_of[c[0]]] = s
        log.append(_record_round(state, cands, scores, sc.m.num_patches))
        ranked = _rank_candidates(scores, keys).tolist()
        _remove(state, _take(cands, ranked, step, need))


def _lazy_scores(sc: _Scorer, state, cands, keys, bound, cell_of,
                 step) -> tuple[torch.Tensor, torch.Tensor]:
    """Harms for this round (and which are fresh), re-evaluating candidates in order of their
    last harm until the ``step`` least harmful fresh ones all beat every stale bound (ties by
    key, as _rank_candidates). Exact whenever no harm fell since it was last computed."""
    n = len(cands)
    known = torch.tensor([float(bound[cell_of[c[0]]]) for c in cands], dtype=torch.float64)
    fresh = torch.zeros(n, dtype=torch.bool)
    chunk = max(step, min(8, n // 8))     # re-score a few at a time: batching vs waste
    while True:
        ranked = _rank_candidates(known, keys)
        top = ranked[:step]
        if bool(fresh[top].all()):
            return known, fresh
        stale = ranked[~fresh[ranked]][:chunk]
        known[stale] = sc.score_sets([cands[i] for i in stale.tolist()], state.present)
        fresh[stale] = True


def _c2f_image(sc: _Scorer, state: _ImageState, cell_of, step: int, target: int,
               base: float, log: list) -> None:
    while int(state.present.sum()) > target:
        cands, keys = _candidates(state, cell_of)
        need = int(state.present.sum()) - target
        scores = sc.score_sets(cands, state.present)
        log.append(_record_round(state, cands, scores, sc.m.num_patches))
        ranked = _rank_candidates(scores, keys).tolist()
        take = min(step, len(ranked))
        sizes = sorted({take} | {2 ** i for i in range(1, take.bit_length()) if 2 ** i < take})
        sizes = [j for j in sizes if j > 1]
        best, best_score = 1, float(scores[ranked[0]])
        if sizes:
            sets = [torch.cat(_take(cands, ranked, j, need)) for j in sizes]
            joint = sc.score_sets(sets, state.present)
            extra = scores[torch.tensor(ranked[:take])] - base     # single-removal extra harms
            tol = C2F_TOL * float((scores - base).abs().mean())
            for j, s in zip(sizes, joint.tolist()):
                predicted = max(float(extra[:j].sum()), 0.0)
                if s - base > C2F_RATIO * predicted + tol:
                    break
                best, best_score = j, s
        _remove(state, _take(cands, ranked, best, need))
        base = best_score


def _order(state: _ImageState) -> torch.Tensor:
    """Survivors by last harms descending (ties: lower id first), then removals reversed."""
    alive = state.present.nonzero().squeeze(1)
    s = state.last_scores[alive]
    alive = alive[torch.sort(s, descending=True, stable=True).indices]
    removed = torch.tensor(state.removed[::-1], dtype=torch.long)
    return torch.cat([alive, removed])


def golden_ranking(m, x: torch.Tensor, score: str = "similarity", labels=None, step: int = 10,
                   block: int = 1, stop_at: float | None = None,
                   batch_budget_mb: float = DEFAULT_BUDGET_MB, dtype: torch.dtype | None = None,
                   classnames: Sequence[str] | None = None, *, mode: str = "greedy",
                   lazy: bool = False, templates=None, prefix: torch.Tensor | None = None,
                   progress: Callable[[float, str], None] | None = None) -> Ranking:
    """Golden ranking of a batch ``x`` [B,3,H,W] (module docstring for the algorithm).

    ``step``: candidates dropped per round (cells when ``block=2``; a round never goes below the
    target, splitting a cell if needed). ``stop_at``: None runs to one patch; a keep ratio stops
    at ``m.keep_count(stop_at)`` patches and orders those by the last round's scores.
    ``dtype``: None computes in the model's dtype; e.g. ``torch.bfloat16`` runs the suffix under
    autocast (faster on AMX CPUs and GPUs, but not faithful: its order agrees with float32's at
    Kendall tau 0.48 on the bundled model, ``benchmarks/golden_bf16.py``; the CLI refuses it). ``classnames``/``templates``: the zero-shot head
    for ``label``/``max`` (default ``m.classnames``). ``prefix``: tokens entering the prune layer
    if already computed. Per-round chunks hold as many variants as ``batch_budget_mb`` allows.
    ``progress(fraction, message)`` is called after every chunk of variants (the app's bar)."""
    if score == "label" and labels is None:
        raise PatchRankError("score='label' needs labels (the true class of each image); "
                             "pass labels=..., or use score='similarity' or 'max' (label free)")
    settings = golden_settings(m, score, step, block, stop_at, mode=mode, lazy=lazy, dtype=dtype,
                               classnames=classnames, templates=templates)
    x = m._input(x)
    b = x.shape[0]
    target = 1 if stop_at is None else m.keep_count(stop_at)
    cell_of = cells(m.grid, block)
    clf, y = None, None
    if score != "similarity":
        clf = m.zero_shot(classnames, templates)
    if score == "label":
        y = torch.as_tensor(labels).long().reshape(-1)
        if y.numel() != b:
            raise PatchRankError(f"labels must have one entry per image ({b}), got {y.numel()}")
        if int(y.min()) < 0 or int(y.max()) >= len(clf.classnames):
            raise PatchRankError(f"labels must be class indices in [0, {len(clf.classnames) - 1}]")
    p = m.num_patches
    logs: list[list[torch.Tensor]] = []
    states: list[_ImageState] = []
    dense = m.flops()
    prefix_gflops = float(sum(dense.blocks[:m.prune_layer]) + dense.patch_embed)
    with torch.no_grad():
        h_all = prefix if prefix is not None else forward.run_prefix(m.visual, x, m.prune_layer)
        for i in range(b):
            sc = _Scorer(m, h_all[i:i + 1], score, clf, None if y is None else int(y[i]),
                         batch_budget_mb, dtype)
            if progress is not None:
                sc.on_chunk = _progress_reporter(progress, i, b, _expected_variants(
                    p, int(cell_of.max()) + 1, target, step, mode))
            base = sc.start()
            st = _ImageState(torch.ones(p, dtype=torch.bool),
                             removed_at=torch.zeros(p, dtype=torch.long))
            log: list[torch.Tensor] = []
            if mode == "oneshot":
                _oneshot_image(sc, st, cell_of, target, log)
            elif mode == "c2f":
                _c2f_image(sc, st, cell_of, step, target, base, log)
            else:
                _greedy_image(sc, st, cell_of, step, target, lazy, log)
            if not log:   # stop_at kept everything: one scoring round orders the patches
                cands, _ = _candidates(st, cell_of)
                log.append(_record_round(st, cands, sc.score_sets(cands, st.present), p))
            st.removed_at[st.present] = st.rounds + 1
            st.variants, st.gflops = sc.variants, sc.gflops + (prefix_gflops if prefix is None else 0.0)
            states.append(st)
            logs.append(log)
    n_rounds = max(len(lg) for lg in logs)
    scores = []
    for r in range(n_rounds):
        rows = [lg[r] if r < len(lg) else torch.full((p,), float("nan"), dtype=torch.float64)
                for lg in logs]
        scores.append(torch.stack(rows))
    return Ranking(order=torch.stack([_order(s) for s in states]),
                   removed_at=torch.stack([s.removed_at for s in states]),
                   scores=scores, settings=settings,
                   rounds=torch.tensor([s.rounds for s in states]),
                   variants=torch.tensor([s.variants for s in states]),
                   gflops=torch.tensor([s.gflops for s in states], dtype=torch.float64))


def _rounds(p: int, n_cells: int, target: int, step: int, mode: str) -> Iterator[tuple[int, int]]:
    """(variants, patches each keeps) per round of a search for one image: exact for one-shot and
    plain greedy on patches; an estimate with cells (a cell loses patches as its neighbours go)."""
    per_cell = p / n_cells
    if mode == "oneshot":
        yield n_cells, round(p - per_cell)
        return
    n = p
    while n > target:
        yield max(1, round(n / per_cell)), round(n - per_cell)
        n -= min(step * per_cell, n - target)


def _expected_variants(p: int, n_cells: int, target: int, step: int, mode: str) -> int:
    """Variants a search will run for one image (estimate with lazy or c2f): the progress bar's total."""
    return max(1, int(sum(v for v, _ in _rounds(p, n_cells, target, step, mode))))


def suffix_gflops(m, n_keep: int) -> float:
    """GFLOPs of one variant keeping ``n_keep`` patches: blocks k.. as our forward executes them."""
    f = m.flops(keep=n_keep)
    return f.executed - sum(f.blocks[:m.prune_layer]) - f.patch_embed


def search_gflops(m, settings: dict) -> float | None:
    """Analytic GFLOPs per image of the search ``settings`` (``golden_settings``) describes: the
    prefix once, the full image, then every variant's suffix (1 MAC = 2 FLOPs). This is what a
    golden ranking costs next to a ranker's few MFLOPs (the sweep counts it, README). Exact for
    one-shot and greedy on single patches, an estimate with 2x2 cells; None for coarse-to-fine
    and lazy greedy, whose number of variants depends on the image (``Ranking.gflops`` has it)."""
    if settings.get("mode") == "c2f" or settings.get("lazy"):
        return None
    p = m.num_patches
    stop = settings.get("stop_at")
    target = 1 if stop is None else m.keep_count(stop)
    n_cells = int(cells(m.grid, int(settings.get("block", 1))).max()) + 1
    dense = m.flops()
    total = sum(dense.blocks[:m.prune_layer]) + dense.patch_embed + suffix_gflops(m, p)
    for variants, kept in _rounds(p, n_cells, target, int(settings.get("step", 10)),
                                  settings.get("mode", "greedy")):
        total += variants * suffix_gflops(m, kept)
    return float(total)


def _progress_reporter(progress: Callable[[float, str], None], image: int, images: int,
                       expected: int) -> Callable[[int], None]:
    done = 0

    def on_chunk(n: int) -> None:
        nonlocal done
        done += n
        frac = (image + min(done / expected, 1.0)) / images
        progress(min(frac, 0.999), f"golden ranking: image {image + 1}/{images}, {done} variants")
    return on_chunk


def _oneshot_image(sc: _Scorer, state: _ImageState, cell_of, target: int, log: list) -> None:
    """One LOO round; every patch not among the ``target`` most important goes in round 1."""
    cands, keys = _candidates(state, cell_of)
    scores = sc.score_sets(cands, state.present)
    log.append(_record_round(state, cands, scores, sc.m.num_patches))
    ranked = _rank_candidates(scores, keys).tolist()
    need = int(state.present.sum()) - target
    if need > 0:
        _remove(state, _take(cands, ranked, len(ranked), need))


# -- dataset job (``python -m patchrank golden``) ---------------------------------------------------
def rank_dataset(m, ds, out, *, score: str = "similarity", step: int = 10, block: int = 1,
                 stop_at: float | None = None, mode: str = "greedy", lazy: bool = False,
                 dtype: torch.dtype | None = None, limit: int | None = None,
                 batch_budget_mb: float = DEFAULT_BUDGET_MB, progress: bool = True) -> dict:
    """Golden rankings of ``ds`` (``data.datasets``) into the ranking folder ``out`` (``store``).

    Resumable: ids already in ``out`` are skipped. Under ``torchrun`` (WORLD_SIZE > 1, process
    group already initialised) the remaining ids are split round-robin across ranks; each image's
    ranking depends only on (model, settings, image), so any split gives the same records.
    Returns a summary (the same on every rank)."""
    import time


    from . import store

    dist = distributed.group()
    rank, world = distributed.rank_world()
    classnames = (ds.classnames or m.classnames) if score != "similarity" else None
    settings = golden_settings(m, score, step, block, stop_at, mode=mode, lazy=lazy, dtype=dtype,
                               classnames=classnames)
    ids = list(ds.ids[:limit] if limit is not None else ds.ids)
    if score == "label" and ids and ds.label(0) is None:
        raise PatchRankError(f"score='label' needs labelled data; {ds.spec} has no labels "
                             "(use class subfolders, or score='similarity')")
    distributed.on_rank0(lambda: store.prepare(out, m.model_id, settings, grid=m.grid,
                                               data=getattr(ds, "spec", None)))
    writer = store.ShardWriter(out, rank)
    try:
        done = store.done_ids(out)
        if dist:
            dist.barrier()          # every rank read the same done set before anyone appends
        todo = [i for i, iid in enumerate(ids) if iid not in done]
        mine = todo[rank::world]
        t0, gflops = time.perf_counter(), 0.0
        bar = progress_bar(len(mine), f"golden {score}/{mode} step {step}"
                           + (f" x{world} procs" if world > 1 else ""), unit="img",
                           enabled=bool(progress) and rank == 0)
        for i in mine:
            x = m.preprocess(ds.image(i)).unsqueeze(0)
            labels = [ds.label(i)] if score == "label" else None
            r = golden_ranking(m, x, score=score, labels=labels, step=step, block=block,
                               stop_at=stop_at, batch_budget_mb=batch_budget_mb, dtype=dtype,
                               classnames=classnames, mode=mode, lazy=lazy)
            writer.append(ids[i], r.order[0], r.removed_at[0])
            gflops += float(r.gflops[0])
            bar.update(1)
        bar.close()
        seconds = time.perf_counter() - t0
    finally:
        writer.close()
    totals = torch.tensor([float(len(mine)), gflops, seconds], dtype=torch.float64)
    if dist:
        t = totals.to(m.device)
        dist.all_reduce(t[:2])
        mx = t[2:].clone()
        dist.all_reduce(mx, op=dist.ReduceOp.MAX)
        totals = torch.cat([t[:2], mx]).cpu()
    computed, gflops, seconds = int(totals[0]), float(totals[1]), float(totals[2])
    return {"out": str(out), "data": getattr(ds, "spec", None), "model_id": m.model_id,
            "settings_hash": store.settings_hash(m.model_id, settings), "settings": settings,
            "images": len(ids), "already_done": len(ids) - len(todo), "computed": computed,
            "world_size": world, "seconds": round(seconds, 3),
            "images_per_min": round(60 * computed / seconds, 2) if seconds > 0 and computed else None,
            "gflops_per_image": round(gflops / computed, 3) if computed else None}


def read_classnames_file(path: str, current: Sequence[str] | None) -> tuple[str, ...]:
    """Class names from a file (one per line); as many as the dataset's classes when it has any."""
    from pathlib import Path

    from .data.datasets import _read_classnames
    names = _read_classnames(Path(path))
    if names is None:
        raise PatchRankError(f"--classnames {path}: no such file")
    if current and len(names) != len(current):
        raise PatchRankError(f"--classnames {path} lists {len(names)} names but the dataset has "
                             f"{len(current)} classes")
    return tuple(names)


# -- rankers registry --------------------------------------------------------------------------
#: Default golden variant for sweeps, the app and the CLI: one-shot leave-one-out with the
#: label-free score. Chosen on ``bundled-val`` by ``benchmarks/golden_variants.py`` (README: the
#: variant study): accuracy ties every search, it keeps the object (98.5 % of its patches at keep
#: 0.4, greedy 29-55 %) and costs 6-12x fewer FLOPs than the greedy searches.
DEFAULT_SETTINGS = {"score": "similarity", "step": 10, "block": 1, "mode": "oneshot"}


class GoldenRanker:
    """``rankers`` adapter: patch scores from a golden order (reuses the computed prefix)."""
    kind = "scores"

    def __init__(self, **settings):
        self.settings = {**DEFAULT_SETTINGS, **settings}
        self.name = "golden" if not settings else "golden(" + ", ".join(
            f"{k}={v}" for k, v in sorted(settings.items())) + ")"

    def rank(self, m, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        return golden_ranking(m, x, prefix=h, **self.settings).order

    def gflops(self, m) -> float | None:
        """The search's GFLOPs per image (``search_gflops``); None where it depends on the image."""
        keys = ("score", "step", "block", "stop_at", "mode", "lazy")   # what the cost depends on
        return search_gflops(m, golden_settings(m, **{k: v for k, v in self.settings.items() if k in keys}))

    def scores(self, m, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return ordering.scores_from_order(self.rank(m, x, h))
