"""bf16 forwards give float32's answers as closely as open_clip's own bf16 (the inference bar:
cosine >= 0.999, top-1 agreement >= 99 %), and ``with_dtype`` leaves the float32 model alone."""
import pytest
import torch

import patchrank as pr
from patchrank.dtype_agreement import agreement


@pytest.fixture(scope="module")
def scenes(bundled):
    ds = pr.bundled_eval(120)
    return torch.stack([bundled.preprocess(im) for im in ds.images]), ds.classnames


def test_bf16_pruned_forward_agrees_with_float32(bundled, scenes):
    """On 120 evaluation scenes, pruned with the shipped predictor's kept patches."""
    x, names = scenes
    rows = agreement(bundled, bundled.with_dtype(torch.bfloat16), x, names,
                     ranker=pr.load_predictor(model=bundled))
    assert [r["config"] for r in rows] == ["open_clip", "keep 1.0", "keep 0.6", "keep 0.4"]
    oc = rows[0]
    for r in rows:
        assert r["n"] == len(x) and r["cos_min"] >= 0.999 and r["top1_agree_pct"] >= 99, r
        assert r["cos_median"] >= oc["cos_median"] - 1e-4, (r, oc)   # as close as open_clip's own


def test_agreement_sees_a_different_model(bundled, scenes):
    """The measure can fail: a model with perturbed weights falls below the bar."""
    x, names = scenes
    other = bundled.with_dtype(torch.float64)
    with torch.no_grad():
        for p in other.visual.transformer.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    rows = agreement(bundled, other, x[:20], names)
    assert min(r["cos_min"] for r in rows) < 0.999


def test_with_dtype_copies_only_the_image_tower(bundled):
    b = bundled.with_dtype(torch.bfloat16)
    assert b.dtype == torch.bfloat16 and bundled.dtype == torch.float32
    assert bundled.visual.conv1.weight.dtype == torch.float32          # the original is unchanged
    assert b.clip.transformer is bundled.clip.transformer              # the text tower is shared
    assert b.model_id == bundled.model_id and b.prune_layer == bundled.prune_layer
    assert b.zero_shot() is bundled.zero_shot()                         # so are its classifiers
    assert bundled.with_dtype(torch.float32) is bundled
