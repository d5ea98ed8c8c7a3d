"""The Explore tab's one state (``app.state``), without a server: every redraw is for one view,
refusals clear what belonged to the old image or labels, and the numbers say what they mean."""
from tests.app import app_support as S  # noqa: F401  (sets the app temp folder before gradio loads)
import pytest

from app import engine, handlers as H, state, sessions
from app.state import SKIP, Out, View

LABELS = "top, pair of trousers, sandal, sneaker, bag, ankle boot"


@pytest.fixture
def sid(monkeypatch):
    S.fast_golden(monkeypatch)
    H.ANALYSES.clear()
    sid = "test-state"
    s = sessions.session(sid)
    s.model_key, s.analysis, s.view = "bundled", None, None
    return sid


def _stream(sid, image, view):
    return list(state.image_stream(image, "exact", view, session=sid))


def test_image_stream_ends_in_one_consistent_state(sid):
    steps = _stream(sid, str(S.EXAMPLE), View(0.3, "golden", "attention", LABELS))
    assert len(steps) == 3                           # fast rankers, golden + top-5, curve
    first, golden, curve = steps
    assert "computing" in first["agreement"] and first["top_l"].value is None
    assert "at least" not in golden["cost"] and "At keep ratio 0.30" in golden["cost"]
    assert "59 of 196" in golden["agreement"] and "Kendall tau" in golden["agreement"]
    assert golden["top_l"].label.endswith("keep 0.30: top-5") and golden["top_l"].value
    assert golden["mask_l"].label == "Left: golden, keep 0.30 (59/196)"
    assert curve["curve"] is not None and "Full model" in curve["curve_md"]


def test_ratio_redraw_covers_masks_top5_and_costs(sid):
    _stream(sid, str(S.EXAMPLE), View(0.5, "golden", "attention", LABELS))
    d = state.draw(sid, heat=False, view=View(0.2, "golden", "attention", LABELS))
    assert d["heat_l"] is SKIP and d["heat_r"] is SKIP        # rankings do not depend on the ratio
    for key in ("mask_l", "mask_r", "top_l", "top_r"):
        assert "0.20" in d[key].label, key
    assert "Keep ratio 0.20**: 39 of 196" in d["agreement"] and "Kept tokens** 39 of 196" in d["cost"]
    assert sessions.session(sid).view.ratio == 0.2


def test_refused_image_clears_everything_and_stops_redraws(sid, tmp_path):
    _stream(sid, str(S.EXAMPLE), View(0.5, "golden", "attention", LABELS))
    odd = S.odd_images(tmp_path)
    (step,) = _stream(sid, str(odd["not_image"]), View(0.5, "golden", "attention", LABELS))
    assert step["image"] is None and "Image refused" in step["status"]
    assert step["top_full"].value is None and step["cost"] == "" and step["curve"] is None
    assert step["files"] is None and step["agreement"] == ""
    assert all(v is SKIP for v in state.draw(sid, heat=False).values())   # nothing old is redrawn
    (step,) = _stream(sid, None, View())                                   # removed image
    assert step["status"] == state.NO_IMAGE


def test_refused_labels_clear_their_results(sid):
    _stream(sid, str(S.EXAMPLE), View(0.5, "golden", "attention", LABELS))
    (step,) = list(state.labels_stream(View(0.5, "golden", "attention", " , "), session=sid))
    assert set(step) == set(state.LABEL_KEYS)
    assert step["top_full"].value is None and step["curve"] is None and step["files"] is None
    assert "Labels refused" in step["cost"]


def test_labels_outside_the_bundled_vocabulary_are_named(sid):
    _stream(sid, str(S.EXAMPLE), View(0.5, "golden", "attention", LABELS))
    d = state.draw(sid, view=View(0.5, "golden", "attention", "cat, dog, sandal"))
    assert "'cat', 'dog' are outside the bundled model's vocabulary" in d["cost"] and "'sandal'" not in d["cost"]
    assert engine.unknown_labels(engine.REGISTRY.bundled(), ["sandal", "ankle boot"]) == []


def test_mergers_are_drawn_or_not_offered(sid):
    offered = [v for _, v in H.ranker_choices()]
    mergers = [n for n in engine.registered_rankers() if engine.is_merger(n)]
    assert all((m in offered) == (m in engine.DRAWABLE_MERGERS) for m in mergers)
    _stream(sid, str(S.EXAMPLE), View(0.5, "golden", "attention+fuse", LABELS))
    d = state.draw(sid, view=View(0.5, "golden", "attention+fuse", LABELS))
    assert isinstance(d["mask_r"], Out) and d["mask_r"].label.startswith("Right: EViT")
    a = sessions.session(sid).analysis
    assert "attention+fuse" in a.merger_orders and "Kendall tau" in d["agreement"]
    assert d["top_r"].value                                  # EViT's pruned top-5 is computed


def test_number_box_transients_are_not_ratios():
    assert not state.ratio_in_range("") and not state.ratio_in_range(0) and not state.ratio_in_range(None)
    assert state.ratio_in_range(0.02) and state.ratio_in_range("0.5") and state.ratio_in_range(1)


def test_prune_layer_reanalyses_and_the_predictor_stays_at_its_own_block(sid):
    _stream(sid, str(S.EXAMPLE), View(0.5, "golden", "predictor", LABELS))
    assert sessions.session(sid).analysis.model.prune_layer == 1 and "predictor" in sessions.session(sid).analysis.orders
    sessions.session(sid).layer = 2
    steps = list(state.reanalysis_stream(View(0.5, "golden", "predictor", LABELS), session=sid))
    a = sessions.session(sid).analysis
    assert a.model.prune_layer == 2 and engine.REGISTRY.bundled().prune_layer == 1   # shared model untouched
    assert "exists only for that layer" in a.missing["predictor"]
    assert steps[0]["right"] == "attention" and "from block 2 on" in steps[-2]["agreement"]
    assert "pruned at block 2" in steps[-2]["status"]
    sessions.session(sid).layer = None


def test_class_conditioned_golden_and_smallest_keep_ratio(sid, monkeypatch):
    seen = {}

    def golden(m, x, mode, progress=None, target=None):
        seen["target"] = target
        return engine.ranker_order(m, x, "norm")
    monkeypatch.setattr(engine, "golden_order", golden)
    sessions.session(sid).golden_target = "class:sandal"
    steps = _stream(sid, str(S.EXAMPLE), View(0.5, "golden", "attention", LABELS))
    assert seen["target"]["score"] == "label" and seen["target"]["classnames"][seen["target"]["labels"][0]] == "sandal"
    assert H.golden_title(sessions.session(sid).analysis) == "for 'sandal'"
    d = sessions.session(sid).curve
    for name, row in d["rankers"].items():            # kept from min_keep on, and changed just below it
        i = d["ratios"].index(row["min_keep"])
        assert all(t == d["top_class"] for t in row["top1"][i:]), name
        assert row["flip"] is None or row["flip"] < row["min_keep"]
    assert "smallest keep ratio" in steps[-1]["minkeep"]
    sessions.session(sid).golden_target = "similarity"
