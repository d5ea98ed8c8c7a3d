"""The shipped trade-off results (assets/results/) are what the shipped files compute, and they
meet the project's quality bars (README, results).

The sweep stores, per row, which evaluation images it got right (``results.pack_hits``). Here the
first ``SUBSET`` evaluation scenes are recomputed from the shipped golden rankings, predictor and
tokens, and compared with those rows image by image: the subset's accuracy within 0.5 points and
at most 1 % of images different (float noise near a decision boundary). A results file left
behind by a change of predictor would fail; ``test_the_check_would_catch_a_swapped_ranker``
proves it does for CLS attention in the predictor's place. The bars: at keep 0.6 and
0.4, golden >= predictor >= CLS attention, token norm and random; the predictor within 2 points
of golden at 0.6 and agreeing with golden better than CLS attention.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import patchrank as pr
from patchrank import metrics, rankings
from patchrank.results import unpack_hits

pytestmark = pytest.mark.shipped

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "assets" / "results" / "bundled.json"
GOLDEN = ROOT / "assets" / "results" / "golden-eval"
METHODS = ("golden", "predictor", "predictor+tokens", "attention", "norm", "norm-low", "random", "tome")
SUBSET = 300
RATIOS = (0.6, 0.4)
MAX_POINTS = 0.5        # subset accuracy, recomputed vs shipped
MAX_DIFFERENT = 0.01    # share of subset images whose correctness differs


@pytest.fixture(scope="module")
def shipped():
    res = json.loads(RESULTS.read_text())
    rows = {(r["method"], r["ratio"]): r for r in res["rows"]}
    return res, rows


def test_sweep_covers_every_method_and_eight_ratios_on_the_whole_split(shipped, bundled):
    res, rows = shipped
    assert res["meta"]["model_id"] == bundled.model_id
    assert res["meta"]["n_images"] == len(pr.bundled_eval())
    ratios = sorted({r for _, r in rows})
    assert len(ratios) >= 8 and min(ratios) <= 0.3 and max(ratios) == 1.0
    lo, hi = pr.load_tokens(model=bundled).keep_range      # tokens run where they were trained
    for m in METHODS:
        want = [r for r in ratios if m != "predictor+tokens" or lo <= r <= hi]
        assert all((m, r) in rows for r in want) and len(want) >= 5, m
    assert all(r["latency_ms_b1"] for r in res["rows"] if r["ratio"] < 1.0 and r["method"] != "golden")


def test_shipped_costs_include_the_ranker(shipped, bundled):
    """Equal cost means all cost: every pruned row's GFLOPs = encoder + its ranker's own."""
    _, rows = shipped
    for (meth, ratio), r in rows.items():
        if ratio < 1.0:
            assert r["gflops"] == pytest.approx(r["encoder_gflops"] + r["ranker_gflops"]), meth
    assert rows["predictor", 0.6]["ranker_gflops"] == pytest.approx(pr.load_predictor(model=bundled).gflops())
    assert rows["golden", 0.6]["ranker_gflops"] > 10 * rows["golden", 0.6]["encoder_gflops"]


@pytest.mark.parametrize("ratio", RATIOS)
def test_shipped_golden_predictor_baselines_order(shipped, ratio):
    _, rows = shipped
    acc = {m: 100 * rows[m, ratio]["accuracy"] for m in METHODS}
    assert acc["golden"] >= acc["predictor"]
    for base in ("attention", "norm", "random"):
        assert acc["predictor"] >= acc[base], base
    if ratio == 0.6:
        assert acc["golden"] - acc["predictor"] <= 2.0


@pytest.fixture(scope="module")
def recomputed(bundled):
    """Per-image correctness on the first SUBSET scenes, recomputed from the shipped files."""
    meta, golden = rankings.load_rankings(GOLDEN)
    assert meta["model_id"] == bundled.model_id and meta["data"] == "bundled-eval"
    ds = pr.bundled_eval(SUBSET)
    x = torch.stack([bundled.preprocess(im) for im in ds.images])
    labels = torch.as_tensor(ds.labels)
    clf = bundled.zero_shot(list(ds.classnames))
    tokens = pr.load_tokens(model=bundled)
    with torch.inference_mode():
        orders = {"golden": torch.stack([golden[i] for i in ds.ids]),
                  "predictor": bundled.rank(x, pr.load_predictor(model=bundled)),
                  "attention": bundled.rank(x, "attention")}
        hits = {}
        for ratio in RATIOS:
            keep = {n: o[:, :bundled.keep_count(ratio)].sort(1).values for n, o in orders.items()}
            for name, kept in keep.items():
                hits[name, ratio] = (clf.predict(bundled.encode_image(x, keep=kept)) == labels).numpy()
            emb = bundled.encode_image(x, keep=keep["predictor"], tokens=tokens)
            hits["predictor+tokens", ratio] = (tokens.zero_shot(bundled, list(ds.classnames)).predict(emb)
                                               == labels).numpy()
    return orders, hits


def _differs(mine: np.ndarray, row: dict) -> str | None:
    """Why recomputed correctness does not match a shipped row on the subset (None: it does)."""
    theirs = unpack_hits(row["hits"], SUBSET)
    points = 100 * abs(float(mine.mean()) - float(theirs.mean()))
    different = float((mine != theirs).mean())
    if points > MAX_POINTS or different > MAX_DIFFERENT:
        return f"{points:.2f} points apart, {100 * different:.1f} % of images differ"
    return None


@pytest.mark.parametrize("method", ["golden", "predictor", "predictor+tokens", "attention"])
def test_recomputed_accuracy_matches_the_shipped_rows(shipped, recomputed, method):
    _, rows = shipped
    _, hits = recomputed
    for ratio in RATIOS:
        why = _differs(hits[method, ratio], rows[method, ratio])
        assert why is None, f"{method} at keep {ratio}: {why}"


def test_the_check_would_catch_a_swapped_ranker(shipped, recomputed):
    """CLS attention's results in the predictor's rows would not pass the check above."""
    _, rows = shipped
    _, hits = recomputed
    assert any(_differs(hits["attention", r], rows["predictor", r]) for r in RATIOS)


def test_predictor_agrees_with_golden_better_than_attention(recomputed):
    orders, _ = recomputed
    pred = metrics.agreement(orders["predictor"], orders["golden"], keep_ratios=(0.6,))
    attn = metrics.agreement(orders["attention"], orders["golden"], keep_ratios=(0.6,))
    assert pred["kendall_tau"] > attn["kendall_tau"] + 0.05, (pred, attn)
    assert pred["kept_iou@0.6"] > attn["kept_iou@0.6"], (pred, attn)


def test_tokens_never_cost_more_than_half_a_point(shipped):
    """At every shipped keep ratio, adding the learnable tokens loses at most 0.5 points."""
    _, rows = shipped
    for (meth, ratio), r in rows.items():
        if meth == "predictor+tokens":
            base = rows["predictor", ratio]["accuracy"]
            assert 100 * (r["accuracy"] - base) >= -0.5, (ratio, r["accuracy"], base)
