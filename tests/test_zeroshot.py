"""Zero-shot head: caching, probabilities, ensembles and refusals."""
import pytest
import torch

from patchrank.errors import PatchRankError


def test_bundled_zero_shot_is_cached_and_normalised(bundled, eval_batch):
    clf = bundled.zero_shot()
    assert clf is bundled.zero_shot()
    assert torch.allclose(clf.text.norm(dim=-1), torch.ones(len(clf.classnames)), atol=1e-5)
    x, _ = eval_batch
    with torch.inference_mode():
        emb = bundled.encode_image(x)
    p = clf.probs(emb)
    assert p.shape == (len(x), len(bundled.classnames))
    assert torch.allclose(p.sum(-1), torch.ones(len(x)), atol=1e-5)
    assert torch.equal(clf.predict(emb), p.argmax(-1))


def test_template_ensemble_differs(tiny):
    a = tiny.zero_shot(["cat", "dog"])
    b = tiny.zero_shot(["cat", "dog"], templates="ensemble")
    assert len(b.templates) > 1 and not torch.allclose(a.text, b.text)
    with pytest.raises(PatchRankError, match="'{}'"):
        tiny.zero_shot(["cat"], templates=["no slot here"])


@pytest.mark.parametrize("names, msg", [
    ([], "at least one"),
    (["cat", "  "], "empty"),
    (["cat", "Cat "], "duplicate"),
    (["word " * 40], "too long"),
    ("cat", "list"),
    ([f"c{i}" for i in range(1001)], "at most"),
])
def test_bad_classnames(tiny, names, msg):
    with pytest.raises(PatchRankError, match=msg):
        tiny.zero_shot(names)


def test_500_labels_work(tiny):
    assert tiny.zero_shot([f"thing {i}" for i in range(500)]).text.shape[0] == 500
