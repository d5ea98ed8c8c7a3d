"""Zero-shot head: caching, probabilities, ensembles and refusals."""
import open_clip
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


def test_template_ensemble_is_open_clips(tiny):
    a = tiny.zero_shot(["cat", "dog"])
    b = tiny.zero_shot(["cat", "dog"], templates="ensemble")
    assert len(b.templates) == len(open_clip.OPENAI_IMAGENET_TEMPLATES) == 80
    assert b.templates[0] == open_clip.OPENAI_IMAGENET_TEMPLATES[0]("{}")     # shown as text
    assert not torch.allclose(a.text, b.text)
    assert torch.equal(b.text, tiny.zero_shot(["cat", "dog"], open_clip.OPENAI_IMAGENET_TEMPLATES).text)
    with pytest.raises(PatchRankError, match="'{}'"):
        tiny.zero_shot(["cat"], templates=["no slot here"])


@pytest.mark.parametrize("templates", ["OPENAI_IMAGENET_TEMPLATES", "SIMPLE_IMAGENET_TEMPLATES"])
def test_classifier_equals_open_clips(templates, tiny):
    """Callable templates work as given, and the classifier is the one open_clip builds
    (random-init model; open_clip batches by classes, we by prompts: equal to float rounding)."""
    names = ["cat", "dog", "golden retriever", "space shuttle", "cup"]
    tpl = getattr(open_clip, templates)
    ours = tiny.zero_shot(names, templates=tpl)
    theirs = open_clip.build_zero_shot_classifier(tiny.clip, tiny.tokenizer, names, tpl,
                                                  num_classes_per_batch=2, device="cpu")
    assert ours.text.shape == (len(names), theirs.shape[0])
    torch.testing.assert_close(ours.text, theirs.T, rtol=0, atol=1e-6)
    assert all(isinstance(t, str) and "{}" in t for t in ours.templates)


def test_mixed_and_bad_templates(tiny):
    mixed = tiny.zero_shot(["cat"], templates=["a photo of a {}.", lambda c: f"art of the {c}."])
    assert mixed.templates == ("a photo of a {}.", "art of the {}.")
    with pytest.raises(PatchRankError, match="callable that puts the name in"):
        tiny.zero_shot(["cat"], templates=[lambda c: "a photo"])
    with pytest.raises(PatchRankError, match="not int"):
        tiny.zero_shot(["cat"], templates=[3])


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
