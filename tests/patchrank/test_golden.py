"""Golden ranking: identical to a brute-force reference written as plainly as possible."""
import pytest
import torch
import torch.nn.functional as F

import patchrank as pr
from patchrank import forward, rankers
from patchrank.errors import PatchRankError
from patchrank.golden import cells, golden_ranking

from tests.conftest import tiny_vit

CLASSES = ["cat", "dog", "car", "tree"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster on one thread (and far faster when the machine is busy)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@torch.no_grad()
def brute_force(m, x, score="similarity", labels=None, step=10, block=1, stop_at=None):
    """Greedy backward elimination, one candidate at a time, each through forward.encode.

    Returns (orders, removed_at) as lists of lists. Conventions under test: candidates are the
    present patches of each block x block cell; the `step` candidates with the lowest harm go
    (ties: larger smallest-patch-id first), never going below the target (a cell is then split,
    larger ids first); survivors ordered by their last harm descending (ties: smaller id first).
    Harms: 1/2 |u - v|^2 of unit embeddings, -log p(label), -log max_c p(c), in float64."""
    rows, cols = m.grid
    num = rows * cols
    k = m.prune_layer
    clf = m.zero_shot(CLASSES) if score != "similarity" else None
    target = 1 if stop_at is None else max(1, round(stop_at * num))
    orders, removed_ats = [], []
    for b in range(x.shape[0]):
        xb = x[b:b + 1]
        full = forward.encode(m.visual, xb, k)

        def score_of(keep):
            emb = forward.encode(m.visual, xb, k, keep=torch.tensor([keep]))
            if score == "similarity":
                u, v = F.normalize(full.double(), dim=-1), F.normalize(emb.double(), dim=-1)
                return (0.5 * ((u - v) ** 2).sum()).item()
            logits = clf.logit_scale * F.normalize(emb.double(), dim=-1) @ clf.text.double().T
            logp = torch.log_softmax(logits, dim=-1)[0]
            return -(logp[labels[b]].item() if score == "label" else logp.max().item())

        present = list(range(num))
        removed, removed_at, last = [], [0] * num, {}
        rnd = 0
        while True:
            cellmap = {}
            for p in present:
                r, c = divmod(p, cols)
                cellmap.setdefault((r // block, c // block), []).append(p)
            if len(cellmap) == 1:           # one cell left: its patches become the candidates
                cellmap = {p: [p] for p in present}
            scored = []
            for cand in cellmap.values():
                s = score_of([p for p in present if p not in cand])
                for p in cand:
                    last[p] = s
                scored.append((s, min(cand), cand))
            if len(present) <= target:
                break                       # only reached when no round ran (stop_at = 1.0)
            rnd += 1
            scored.sort(key=lambda t: (-t[0], t[1]), reverse=True)
            budget = len(present) - target
            for _, _, cand in scored[:step]:
                for p in sorted(cand, reverse=True):
                    if budget > 0:
                        present.remove(p)
                        removed.append(p)
                        removed_at[p] = rnd
                        budget -= 1
            if len(present) <= target:
                break
        for p in present:
            removed_at[p] = rnd + 1
        orders.append(sorted(present, key=lambda p: (-last[p], p)) + removed[::-1])
        removed_ats.append(removed_at)
    return orders, removed_ats


def _model(grid, dtype=torch.float64):
    m = tiny_vit(prune_layer=1, grid=grid)
    m.clip.to(dtype)
    torch.manual_seed(1)
    return m, torch.randn(2, 3, *m.image_size, dtype=dtype)


@pytest.mark.parametrize("score", ["similarity", "label", "max"])
@pytest.mark.parametrize("step", [1, 10])
@pytest.mark.parametrize("block, grid", [(1, 4), (2, 5)])
def test_matches_brute_force(score, step, block, grid):
    m, x = _model(grid)
    if step == 1:
        x = x[:1]                     # the slow brute force; batching is covered by step 10
    labels = [1, 3][:len(x)] if score == "label" else None
    kw = dict(score=score, labels=labels, step=step, block=block)
    got = golden_ranking(m, x, classnames=CLASSES, mode="greedy", **kw)
    want_order, want_removed = brute_force(m, x, **kw)
    assert got.order.tolist() == want_order
    assert got.removed_at.tolist() == want_removed


@pytest.mark.parametrize("stop_at, step, block", [(0.5, 3, 2), (0.6, 2, 1), (1.0, 1, 1)])
def test_stop_at_matches_brute_force(stop_at, step, block):
    m, x = _model(5)
    got = golden_ranking(m, x, mode="greedy", step=step, block=block, stop_at=stop_at)
    want_order, want_removed = brute_force(m, x, step=step, block=block, stop_at=stop_at)
    assert got.order.tolist() == want_order
    assert got.removed_at.tolist() == want_removed
    assert (got.removed_at == (got.rounds + 1)[:, None]).sum(1).tolist() == [m.keep_count(stop_at)] * 2


def test_float32_matches_brute_force():
    m, x = _model(4, torch.float32)
    got = golden_ranking(m, x, mode="greedy", step=10)
    assert got.order.tolist() == brute_force(m, x, step=10)[0]


def test_ranking_invariants_and_chunking():
    m, x = _model(5)
    r = golden_ranking(m, x, mode="greedy", step=2)
    p = m.num_patches
    assert r.order.shape == (2, p) and r.order.dtype == torch.long
    assert torch.equal(r.order.sort(1).values, torch.arange(p).expand(2, -1))
    along = r.removed_at.gather(1, r.order)            # most important first -> removed last
    assert (along[:, 1:] <= along[:, :-1]).all()
    assert len(r.scores) == int(r.rounds.max()) == 12  # 24 removals, 2 per round
    assert torch.isnan(r.scores[-1]).sum(1).tolist() == [p - 3, p - 3]
    assert r.variants.tolist() == [1 + sum(range(p, 2, -2))] * 2 and (r.gflops > 0).all()
    tiny_chunks = golden_ranking(m, x, mode="greedy", step=2, batch_budget_mb=1e-6)      # one variant per chunk
    single = golden_ranking(m, x[1:], mode="greedy", step=2)
    with torch.inference_mode():
        inf = golden_ranking(m, x, mode="greedy", step=2)
    assert torch.equal(tiny_chunks.order, r.order) and torch.equal(inf.order, r.order)
    assert torch.equal(single.order[0], r.order[1])
    assert torch.equal(r.keep(0.4), r.order[:, :10].sort(1).values)


@pytest.mark.parametrize("mode, step", [("greedy", 2), ("oneshot", 10)])
def test_progress_reports_rise_to_the_end_without_changing_the_order(mode, step):
    m, x = _model(5)
    seen = []
    r = golden_ranking(m, x, mode=mode, step=step, progress=lambda f, msg: seen.append((f, msg)))
    fracs = [f for f, _ in seen]
    assert len(fracs) >= 8 and fracs == sorted(fracs) and 0 < fracs[0] and fracs[-1] > 0.95
    assert all(f < 1 for f in fracs) and "image 2/2" in seen[-1][1]
    assert torch.equal(r.order, golden_ranking(m, x, mode=mode, step=step).order)


def test_oneshot_is_loo_order():
    m, x = _model(4)
    r = golden_ranking(m, x, mode="oneshot")
    s = r.scores[0]                                         # the single LOO round
    assert len(r.scores) == 1 and not torch.isnan(s).any()
    assert torch.equal(r.order, torch.sort(s, dim=1, descending=True, stable=True).indices)
    b2 = golden_ranking(m, x, mode="oneshot", block=2, stop_at=0.5)
    assert b2.variants.tolist() == [1 + 4, 1 + 4]         # full + 4 cells of a 4x4 grid
    assert (b2.removed_at == 2).sum(1).tolist() == [8, 8]


def test_lazy_and_c2f_are_valid_and_cheaper():
    m, x = _model(4)
    plain = golden_ranking(m, x, mode="greedy", step=1, stop_at=0.25)
    lazy = golden_ranking(m, x, mode="greedy", step=1, stop_at=0.25, lazy=True)
    c2f = golden_ranking(m, x, step=8, stop_at=0.25, mode="c2f")
    for r in (lazy, c2f):
        assert torch.equal(r.order.sort(1).values, torch.arange(m.num_patches).expand(2, -1))
    assert (lazy.variants < plain.variants).all()
    assert (lazy.rounds == plain.rounds).all()
    assert (c2f.rounds < plain.rounds).all()
    with pytest.raises(PatchRankError, match="mode='greedy' only"):
        golden_ranking(m, x, mode="oneshot", lazy=True)


@pytest.mark.parametrize("step, block", [(1, 1), (2, 1), (1, 2)])
def test_lazy_is_exact_when_scores_never_rise(monkeypatch, step, block):
    """A synthetic objective whose harms only grow as patches go: lazy re-scoring must pick
    exactly what plain greedy picks, with fewer evaluations."""
    from patchrank import golden_scorer
    m, x = _model(5)
    w = torch.rand(m.num_patches, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    calls = []

    def fake(self, removals, present):
        gone = m.num_patches - int(present.sum())
        calls.append(len(removals))
        return torch.stack([w[r].sum() * (1 + 0.05 * gone) for r in removals])

    monkeypatch.setattr(golden_scorer.Scorer, "score_sets", fake)
    plain = golden_ranking(m, x[:1], mode="greedy", step=step, block=block, stop_at=0.3)
    n_plain, calls[:] = sum(calls), []
    lazy = golden_ranking(m, x[:1], mode="greedy", step=step, block=block, stop_at=0.3,
                          lazy=True)
    assert torch.equal(lazy.order, plain.order) and torch.equal(lazy.removed_at, plain.removed_at)
    assert sum(calls) < n_plain


def test_label_needs_labels_and_bad_settings():
    m, x = _model(4)
    with pytest.raises(PatchRankError, match="needs labels"):
        golden_ranking(m, x, score="label", classnames=CLASSES)
    with pytest.raises(PatchRankError, match="one entry per image"):
        golden_ranking(m, x, score="label", labels=[0], classnames=CLASSES)
    with pytest.raises(PatchRankError, match="class indices"):
        golden_ranking(m, x, score="label", labels=[0, 9], classnames=CLASSES)
    with pytest.raises(PatchRankError, match="class names"):
        golden_ranking(m, x, score="max")                   # the tiny model has no default names
    for kw, msg in [({"score": "cos"}, "score must"), ({"step": 0}, "step must"),
                    ({"block": 9}, "block must"), ({"stop_at": 1.5}, "keep ratio"),
                    ({"mode": "beam"}, "mode must")]:
        with pytest.raises(PatchRankError, match=msg):
            golden_ranking(m, x, **kw)


def test_cells_odd_grid():
    c = cells((5, 5), 2)
    assert c.view(5, 5)[0].tolist() == [0, 0, 1, 1, 2] and c.view(5, 5)[4].tolist() == [6, 6, 7, 7, 8]
    assert torch.bincount(c).tolist() == [4, 4, 2, 4, 4, 2, 2, 2, 1]


def test_registered_ranker_and_lower_precision():
    m, x = _model(4, torch.float32)
    assert "golden" in rankers.available()
    from patchrank.golden import DEFAULT_SETTINGS
    want = golden_ranking(m, x, **DEFAULT_SETTINGS).order   # the registered default variant
    assert torch.equal(golden_ranking(m, x).order, want)     # and the function's own default
    assert torch.equal(m.rank(x, "golden"), want)
    emb = m.encode_image(x, keep_ratio=0.5, ranker="golden")
    assert torch.allclose(emb, m.encode_image(x, keep=want[:, :8].sort(1).values), atol=1e-6)
    bf = golden_ranking(m, x, mode="greedy", step=4, dtype=torch.bfloat16)    # autocast; valid, not exact
    assert bf.settings["dtype"] == "bfloat16"
    assert torch.equal(bf.order.sort(1).values, torch.arange(m.num_patches).expand(2, -1))


def test_bundled_smoke(bundled, eval_batch):
    """The real model, one image, one cheap round (49 cells): shapes and settings."""
    x, y = eval_batch
    r = pr.golden_ranking(bundled, x[:1], score="label", labels=y[:1], block=2, mode="oneshot",
                          stop_at=0.6)
    assert r.order.shape == (1, bundled.num_patches) and int(r.rounds[0]) == 1
    assert int(r.variants[0]) == 1 + 49
    assert r.settings["classnames"] == list(bundled.classnames)


@pytest.mark.parametrize("settings", [dict(mode="oneshot"), dict(mode="greedy", step=3),
                                      dict(mode="greedy", step=2, stop_at=0.5),
                                      dict(mode="oneshot", block=2)])
def test_search_gflops_is_what_the_search_spends(settings):
    """The analytic cost a sweep charges to golden rows equals the FLOPs the search counted."""
    from patchrank.golden import golden_settings, search_gflops
    m, x = _model(4)
    r = golden_ranking(m, x[:1], **settings)
    expected = search_gflops(m, golden_settings(m, **settings))
    assert expected == pytest.approx(float(r.gflops[0]), rel=1e-9)
    assert search_gflops(m, golden_settings(m, mode="c2f")) is None
