"""Golden ranking: the order in which patches can be removed at the prune layer hurting least.

Greedy backward elimination with leave-one-out (LOO) scoring (the paper's search, with the
released code's bugs fixed: docs/paper.md): each round scores every remaining candidate -- one
patch, or with ``block=2`` one 2x2 cell of the grid (all of its still-present patches) -- by
removing it alone and running the blocks from the prune layer on; the ``step`` candidates
whose removal hurts least are dropped; repeat on the reduced set.

Every score is the *harm* of a removal R (higher = removing R hurts more = R more important),
computed in float64 from the variant's float32 embedding:

- ``similarity``: 1/2 ||u - v||^2 with u, v the unit embeddings of the full image and of X minus R
  (label free). It equals 1 - cos(u, v), but is computed from the difference u - v: a patch moves
  the embedding by ~1e-6 in cosine, below float32's resolution near 1 (6e-8 relative steps
  leave only a few dozen distinct values among 196 patches), while the difference keeps its full
  relative precision.
- ``label``: -log p(y | X minus R), p = softmax_c(s * cos(f, t_c)) (needs labels; zeroshot.py);
- ``max``: -max_c log p(c | X minus R), the top class of *each* variant.

The prefix (blocks before the prune layer) runs once per image (``forward.run_prefix``); every
variant is a gather of it run through ``forward.run_suffix`` in chunks sized by a memory budget
(``golden_scorer``). The rounds of each mode are in ``golden_rounds``; ranking a dataset into a
folder (``python -m patchrank golden``) is ``golden_job``'s.

Modes: ``greedy`` (the above; ``step=10`` is the paper's setting), ``oneshot`` (a single LOO round,
ordered by its scores: the project's "golden ranking" and every function's default, see the
README's variant study),
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

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from .errors import PatchRankError
from .forward import run_prefix
from .golden_rounds import C2F_RATIO, C2F_TOL, MODES, ImageState, cells, final_order, search_image
from .golden_scorer import Scorer, suffix_gflops
from .ordering import scores_from_order

SCORES = ("similarity", "label", "max")
DEFAULT_BUDGET_MB = 512


@dataclass(frozen=True)
class SearchSettings:
    """The settings of a golden search and their defaults, defined here once: ``golden_ranking``,
    the dataset job and the ``golden`` command read them. The defaults are one-shot
    leave-one-out with the label-free score, chosen on ``bundled-val`` by
    ``benchmarks/golden_variants.py`` (README, the variant study): accuracy ties every search,
    it keeps the object where greedy drops much of it, and it costs several times fewer FLOPs
    than the greedy searches. ``step`` is the paper's greedy setting (docs/paper.md)."""
    score: str = "similarity"
    step: int = 10
    block: int = 1
    mode: str = "oneshot"
    stop_at: float | None = None
    lazy: bool = False
    batch_budget_mb: float = DEFAULT_BUDGET_MB


SEARCH = SearchSettings()
#: The golden variant of sweeps, the app and the ``golden`` ranker (``GoldenRanker``).
DEFAULT_SETTINGS = {"score": SEARCH.score, "step": SEARCH.step, "block": SEARCH.block, "mode": SEARCH.mode}


@dataclass
class Ranking:
    """Result of ``golden_ranking`` for a batch of B images with P patches.

    ``order``: [B,P] patch ids, most important first (a full order). ``removed_at``: [B,P] the
    1-based round in which each patch was removed; patches never removed (the survivor when run
    to one patch, the kept set with ``stop_at``) get ``rounds + 1``. ``scores``: one [B,P] float64
    tensor per round with the harm of removing each present patch (higher = more important; a
    cell's harm for all its patches; NaN for patches already gone or images already finished;
    lazy mode holds the bound used for candidates not re-scored). ``variants``/``gflops``: [B]
    number of suffix forwards run and analytic GFLOPs spent (prefix + full + all variants;
    1 MAC = 2 FLOPs)."""
    order: torch.Tensor
    removed_at: torch.Tensor
    scores: list[torch.Tensor]
    settings: dict
    rounds: torch.Tensor
    variants: torch.Tensor
    gflops: torch.Tensor

    def keep(self, ratio: float) -> torch.Tensor:
        """Kept patch ids [B,n_keep] (sorted by id) at a keep ratio, n_keep = round(ratio * P), >= 1."""
        n_keep = max(1, round(float(ratio) * self.order.shape[1]))
        return self.order[:, :n_keep].sort(dim=1).values

def golden_settings(m, score: str = SEARCH.score, step: int = SEARCH.step, block: int = SEARCH.block,
                    stop_at: float | None = SEARCH.stop_at, *, mode: str = SEARCH.mode,
                    lazy: bool = SEARCH.lazy,
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



def golden_ranking(m, x: torch.Tensor, score: str = SEARCH.score, labels=None, step: int = SEARCH.step,
                   block: int = SEARCH.block, stop_at: float | None = SEARCH.stop_at,
                   batch_budget_mb: float = SEARCH.batch_budget_mb, dtype: torch.dtype | None = None,
                   classnames: Sequence[str] | None = None, *, mode: str = SEARCH.mode,
                   lazy: bool = SEARCH.lazy, templates=None, prefix: torch.Tensor | None = None,
                   progress: Callable[[float, str], None] | None = None) -> Ranking:
    """Golden ranking of a batch ``x`` [B,3,H,W] (module docstring for the algorithm).

    ``step``: candidates dropped per round (cells when ``block=2``; a round never goes below the
    target, splitting a cell if needed). ``stop_at``: None runs to one patch; a keep ratio stops
    at ``m.keep_count(stop_at)`` patches and orders those by the last round's scores.
    ``dtype``: None computes in the model's dtype; e.g. ``torch.bfloat16`` runs the suffix under
    autocast (faster on AMX CPUs and GPUs, but not faithful: its order disagrees with float32's,
    ``benchmarks/golden_bf16.py``; the CLI refuses it). ``classnames``/``templates``: the
    zero-shot head for ``label``/``max`` (default ``m.classnames``). ``prefix``: tokens entering
    the prune layer if already computed. Per-round chunks hold as many variants as
    ``batch_budget_mb`` allows. ``progress(fraction, message)`` is called after every chunk of
    variants (the app's bar)."""
    if score == "label" and labels is None:
        raise PatchRankError("score='label' needs labels (the true class of each image); "
                             "pass labels=..., or use score='similarity' or 'max' (label free)")
    settings = golden_settings(m, score, step, block, stop_at, mode=mode, lazy=lazy, dtype=dtype,
                               classnames=classnames, templates=templates)
    x = m._input(x)
    b, p = x.shape[0], m.num_patches
    clf, y = _zero_shot_head(m, score, labels, classnames, templates, b)
    target = 1 if stop_at is None else m.keep_count(stop_at)
    cell_of = cells(m.grid, block)
    dense = m.flops()
    prefix_gflops = float(sum(dense.blocks[:m.prune_layer]) + dense.patch_embed)
    states: list[ImageState] = []
    logs: list[list[torch.Tensor]] = []
    with torch.no_grad():
        h_all = prefix if prefix is not None else run_prefix(m.visual, x, m.prune_layer)
        for i in range(b):
            sc = Scorer(m, h_all[i:i + 1], score, clf, None if y is None else int(y[i]),
                        batch_budget_mb, dtype)
            if progress is not None:
                sc.on_chunk = _progress_reporter(progress, i, b, _expected_variants(
                    p, int(cell_of.max()) + 1, target, step, mode))
            state, log = search_image(sc, cell_of, mode, step, target, lazy)
            state.variants = sc.variants
            state.gflops = sc.gflops + (prefix_gflops if prefix is None else 0.0)
            states.append(state)
            logs.append(log)
    return _ranking(states, logs, settings, p)


def _zero_shot_head(m, score: str, labels, classnames, templates, b: int):
    """(classifier, labels tensor [B]) the score needs: (None, None) for ``similarity``."""
    clf, y = None, None
    if score != "similarity":
        clf = m.zero_shot(classnames, templates)
    if score == "label":
        y = torch.as_tensor(labels).long().reshape(-1)
        if y.numel() != b:
            raise PatchRankError(f"labels must have one entry per image ({b}), got {y.numel()}")
        if int(y.min()) < 0 or int(y.max()) >= len(clf.classnames):
            raise PatchRankError(f"labels must be class indices in [0, {len(clf.classnames) - 1}]")
    return clf, y


def _ranking(states: list[ImageState], logs: list[list[torch.Tensor]], settings: dict, p: int) -> Ranking:
    """The batch's ``Ranking``: per-round harms stacked, NaN rows for images already finished."""
    n_rounds = max(len(lg) for lg in logs)
    scores = []
    for r in range(n_rounds):
        rows = [lg[r] if r < len(lg) else torch.full((p,), float("nan"), dtype=torch.float64)
                for lg in logs]
        scores.append(torch.stack(rows))
    return Ranking(order=torch.stack([final_order(s) for s in states]),
                   removed_at=torch.stack([s.removed_at for s in states]),
                   scores=scores, settings=settings,
                   rounds=torch.tensor([s.rounds for s in states]),
                   variants=torch.tensor([s.variants for s in states]),
                   gflops=torch.tensor([s.gflops for s in states], dtype=torch.float64))


def _progress_reporter(progress: Callable[[float, str], None], image: int, images: int,
                       expected: int) -> Callable[[int], None]:
    """The scorer's per-chunk callback (variants just run) as the fraction of the whole batch
    done, for a caller's ``progress(fraction, message)`` (the app's bar; the dataset job draws
    its own per image with ``progress.bar``)."""
    done = 0

    def on_chunk(n: int) -> None:
        nonlocal done
        done += n
        frac = (image + min(done / expected, 1.0)) / images
        progress(min(frac, 0.999), f"golden ranking: image {image + 1}/{images}, {done} variants")
    return on_chunk


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
    n_cells = int(cells(m.grid, int(settings["block"])).max()) + 1
    dense = m.flops()
    total = sum(dense.blocks[:m.prune_layer]) + dense.patch_embed + suffix_gflops(m, p)
    for variants, kept in _rounds(p, n_cells, target, int(settings["step"]), settings["mode"]):
        total += variants * suffix_gflops(m, kept)
    return float(total)


class GoldenRanker:
    """``rankers`` adapter: patch scores from a golden order (reuses the computed prefix)."""
    kind = "scores"

    def __init__(self, **settings):
        self.settings = {**DEFAULT_SETTINGS, **settings}
        self.name = "golden" if not settings else "golden(" + ", ".join(
            f"{key}={value}" for key, value in sorted(settings.items())) + ")"

    def rank(self, m, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        return golden_ranking(m, x, prefix=h, **self.settings).order

    def gflops(self, m) -> float | None:
        """The search's GFLOPs per image (``search_gflops``); None where it depends on the image."""
        keys = ("score", "step", "block", "stop_at", "mode", "lazy")   # what the cost depends on
        return search_gflops(m, golden_settings(m, **{k: v for k, v in self.settings.items() if k in keys}))

    def scores(self, m, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return scores_from_order(self.rank(m, x, h))
