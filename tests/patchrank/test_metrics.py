"""Ranking metrics against brute-force references written with plain Python loops."""
import itertools
import math
import random

import pytest
import torch

from patchrank import metrics as M
from patchrank.errors import PatchRankError
from patchrank.stats import wilson_interval


def _orders(b, p, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(p, generator=g) for _ in range(b)])


def _pos(order):
    return {int(pid): i for i, pid in enumerate(order)}


def ref_kendall_b(x, y):
    """Kendall tau-b from its definition, pair by pair (ties counted separately)."""
    c = d = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = x[i] - x[j], y[i] - y[j]
        if dx == 0 and dy == 0:
            tx, ty = tx + 1, ty + 1
        elif dx == 0:
            tx += 1
        elif dy == 0:
            ty += 1
        elif (dx > 0) == (dy > 0):
            c += 1
        else:
            d += 1
    n0 = len(x) * (len(x) - 1) / 2
    return (c - d) / math.sqrt((n0 - tx) * (n0 - ty))


def ref_spearman(o1, o2):
    """Pearson correlation of the two rank vectors, computed by hand."""
    p1, p2 = _pos(o1), _pos(o2)
    xs = [p1[k] for k in range(len(o1))]
    ys = [p2[k] for k in range(len(o1))]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    cov = sum((a - mx) * (b - my) for a, b in zip(xs, ys))
    vx = sum((a - mx) ** 2 for a in xs)
    vy = sum((b - my) ** 2 for b in ys)
    return cov / math.sqrt(vx * vy)


@pytest.mark.parametrize("p", [2, 7, 49])
def test_kendall_and_spearman_match_brute_force(p):
    a, b = _orders(5, p, 1), _orders(5, p, 2)
    tau, rho = M.kendall_tau(a, b), M.spearman(a, b)
    for i in range(5):
        pa, pb = _pos(a[i].tolist()), _pos(b[i].tolist())
        ra, rb = [pa[k] for k in range(p)], [pb[k] for k in range(p)]
        assert tau[i].item() == pytest.approx(ref_kendall_b(ra, rb), abs=1e-6)
        assert rho[i].item() == pytest.approx(ref_spearman(a[i].tolist(), b[i].tolist()), abs=1e-6)


def test_kendall_tau_b_with_ties():
    rng = random.Random(0)
    x = [[rng.randint(0, 4) for _ in range(30)] for _ in range(4)]
    y = [[rng.randint(0, 3) for _ in range(30)] for _ in range(4)]
    got = M.kendall_tau_b(torch.tensor(x), torch.tensor(y))
    for i in range(4):
        assert got[i].item() == pytest.approx(ref_kendall_b(x[i], y[i]), abs=1e-6)


def test_kendall_chunked_rows_agree():
    a, b = _orders(130, 12, 3), _orders(130, 12, 4)
    full = M.kendall_tau(a, b)
    assert torch.allclose(full[:10], M.kendall_tau(a[:10], b[:10]))
    assert full.shape == (130,)


def test_extremes():
    a = _orders(3, 20)
    rev = a.flip(1)
    assert torch.allclose(M.kendall_tau(a, a), torch.ones(3))
    assert torch.allclose(M.kendall_tau(a, rev), -torch.ones(3))
    assert torch.allclose(M.spearman(a, rev), -torch.ones(3))
    assert torch.allclose(M.kept_iou(a, a, 0.3), torch.ones(3))
    assert torch.allclose(M.bottom_overlap(a, a), torch.ones(3))
    assert torch.allclose(M.kept_iou(a, rev, 0.5), torch.zeros(3))


@pytest.mark.parametrize("n", [None, 1, 5, 20])
def test_bottom_overlap_brute_force(n):
    a, b = _orders(4, 20, 5), _orders(4, 20, 6)
    got = M.bottom_overlap(a, b, n)
    nn_ = round(50 / 196 * 20) if n is None else n
    for i in range(4):
        sa, sb = set(a[i, 20 - nn_:].tolist()), set(b[i, 20 - nn_:].tolist())
        assert got[i].item() == pytest.approx(len(sa & sb) / nn_)


def test_paper_bottom_50_of_196():
    a, b = _orders(2, 196, 7), _orders(2, 196, 8)
    sa, sb = set(a[0, -50:].tolist()), set(b[0, -50:].tolist())
    assert M.bottom_overlap(a, b)[0].item() == pytest.approx(len(sa & sb) / 50)


@pytest.mark.parametrize("ratio", [0.05, 0.4, 0.6, 1.0])
def test_kept_iou_brute_force(ratio):
    a, b = _orders(4, 30, 9), _orders(4, 30, 10)
    k = max(1, round(ratio * 30))
    got = M.kept_iou(a, b, ratio)
    for i in range(4):
        sa, sb = set(a[i, :k].tolist()), set(b[i, :k].tolist())
        assert got[i].item() == pytest.approx(len(sa & sb) / len(sa | sb))


def test_one_dim_inputs_and_agreement_summary():
    a, b = _orders(1, 16, 11)[0], _orders(1, 16, 12)[0]
    assert M.kendall_tau(a, b).shape == (1,)
    s = M.agreement(a, b)
    assert set(s) == {"kendall_tau", "spearman", "bottom_overlap", "kept_iou@0.6", "kept_iou@0.4"}
    assert all(isinstance(v, float) for v in s.values())


def test_bad_inputs_are_refused():
    a = _orders(2, 10)
    with pytest.raises(PatchRankError, match="same shape"):
        M.kendall_tau(a, a[:, :5])
    with pytest.raises(PatchRankError, match="permutation"):
        M.spearman(a, torch.zeros_like(a))
    with pytest.raises(PatchRankError, match="integers"):
        M.kept_iou(a.float(), a)
    with pytest.raises(PatchRankError, match="keep ratio"):
        M.kept_iou(a, a, 0.0)
    with pytest.raises(PatchRankError, match="n must be"):
        M.bottom_overlap(a, a, 11)


# -- confidence intervals (patchrank.stats) --------------------------------------------------------
def test_wilson_interval_known_values():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-4)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
