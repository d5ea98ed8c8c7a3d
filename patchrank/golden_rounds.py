"""The elimination rounds of one image's golden search: greedy (plain or lazy), one-shot and
coarse-to-fine, over single patches or cells of the grid (``golden`` has the algorithm and
the tie-breaking rule).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .errors import PatchRankError
from .golden_scorer import Scorer

MODES = ("greedy", "oneshot", "c2f")
#: c2f accepts a joint removal of j candidates while its extra harm <= RATIO * (sum of the j
#: single extra harms) + TOL * (the round's mean |single extra harm|): relative, unit free.
C2F_RATIO = 2.0
C2F_TOL = 1.0


@dataclass
class ImageState:
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


def _candidates(state: ImageState, cell_of: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
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


def _record_round(state: ImageState, cands, scores: torch.Tensor, num_patches: int) -> torch.Tensor:
    full = torch.full((num_patches,), float("nan"), dtype=torch.float64)
    for c, s in zip(cands, scores.tolist()):
        full[c] = s
    state.last_scores = full
    return full


def _remove(state: ImageState, sets: list[torch.Tensor]) -> None:
    state.rounds += 1
    for pats in sets:
        for p in pats.tolist():
            state.present[p] = False
            state.removed.append(p)
            state.removed_at[p] = state.rounds


def _greedy_image(sc: Scorer, state: ImageState, cell_of, step: int, target: int,
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


def _lazy_scores(sc: Scorer, state, cands, keys, bound, cell_of,
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


def _c2f_image(sc: Scorer, state: ImageState, cell_of, step: int, target: int,
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


def final_order(state: ImageState) -> torch.Tensor:
    """Survivors by last harms descending (ties: lower id first), then removals reversed."""
    alive = state.present.nonzero().squeeze(1)
    s = state.last_scores[alive]
    alive = alive[torch.sort(s, descending=True, stable=True).indices]
    removed = torch.tensor(state.removed[::-1], dtype=torch.long)
    return torch.cat([alive, removed])


def _oneshot_image(sc: Scorer, state: ImageState, cell_of, target: int, log: list) -> None:
    """One LOO round; every patch not among the ``target`` most important goes in round 1."""
    cands, keys = _candidates(state, cell_of)
    scores = sc.score_sets(cands, state.present)
    log.append(_record_round(state, cands, scores, sc.m.num_patches))
    ranked = _rank_candidates(scores, keys).tolist()
    need = int(state.present.sum()) - target
    if need > 0:
        _remove(state, _take(cands, ranked, len(ranked), need))


def search_image(sc: Scorer, cell_of: torch.Tensor, mode: str, step: int, target: int,
                 lazy: bool) -> tuple[ImageState, list[torch.Tensor]]:
    """One image's search down to ``target`` patches: its final state and the per-round harms
    [P] (a round of harms is added when ``target`` kept everything, to order the patches)."""
    p = sc.m.num_patches
    base = sc.start()
    state = ImageState(torch.ones(p, dtype=torch.bool), removed_at=torch.zeros(p, dtype=torch.long))
    log: list[torch.Tensor] = []
    if mode == "oneshot":
        _oneshot_image(sc, state, cell_of, target, log)
    elif mode == "c2f":
        _c2f_image(sc, state, cell_of, step, target, base, log)
    else:
        _greedy_image(sc, state, cell_of, step, target, lazy, log)
    if not log:   # stop_at kept everything: one scoring round orders the patches
        cands, _ = _candidates(state, cell_of)
        log.append(_record_round(state, cands, sc.score_sets(cands, state.present), p))
    state.removed_at[state.present] = state.rounds + 1
    return state, log
