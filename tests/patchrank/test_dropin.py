"""``pr.prune``: a pruned CLIP that open_clip's own code takes as a CLIP, sharing the weights and
leaving the original exactly as it was."""
import open_clip
import pytest
import torch
from open_clip.zero_shot_classifier import build_zero_shot_classifier

import patchrank as pr
from patchrank.errors import ModelMismatch, PatchRankError

from tests.conftest import tiny_vit


@pytest.fixture(scope="module")
def pred(bundled):
    return pr.load_predictor(model=bundled)


def _state(clip):
    return {k: v.clone() for k, v in clip.state_dict().items()}


def test_keep_one_is_open_clip_bit_for_bit(bundled, eval_batch, pred):
    x, _ = eval_batch
    fast = pr.prune(bundled.clip, keep_ratio=1.0, ranker=pred)
    assert torch.equal(fast.encode_image(x), bundled.clip.encode_image(x))
    assert torch.equal(fast.encode_image(x, normalize=True), bundled.clip.encode_image(x, normalize=True))
    # a real-CLIP architecture, random init: same, including the per-call ratio
    t = tiny_vit(prune_layer=1)
    xt = torch.randn(3, 3, *t.image_size)
    assert torch.equal(pr.prune(t.clip, 0.5, "norm").encode_image(xt, keep_ratio=1.0), t.clip.encode_image(xt))


def test_pruned_equals_patchrank_forward(bundled, eval_batch, pred):
    x, _ = eval_batch
    fast = pr.prune(bundled.clip, keep_ratio=0.6, ranker=pred)
    assert torch.equal(fast.encode_image(x), bundled.encode_image(x, keep_ratio=0.6, ranker=pred))
    fast.keep_ratio = 0.4
    assert torch.equal(fast.encode_image(x), bundled.encode_image(x, keep_ratio=0.4, ranker=pred))
    assert torch.equal(fast.encode_image(x, keep_ratio=0.8), bundled.encode_image(x, keep_ratio=0.8, ranker=pred))
    assert not torch.allclose(fast.encode_image(x), bundled.clip.encode_image(x))   # it does prune
    assert fast.gflops(0.4) < fast.gflops(0.8) < fast.gflops(1.0) == float(bundled.flops())


def test_original_model_untouched(eval_batch):
    m = pr.load_model()
    m.clip.train()                                     # a flag prune() must leave alone
    x, _ = eval_batch
    with torch.no_grad():
        before, state = m.clip.encode_image(x), _state(m.clip)
        fast = pr.prune(m.clip, 0.5, ranker="predictor", tokens="bundled").eval()
        fast.encode_image(x)
        fast(x, m.tokenizer(["a photo of a bag."]))
    assert m.clip.training is False                    # fast.eval() reaches the shared modules ...
    m.clip.train()
    fast2 = pr.prune(m.clip, 0.5, "norm")
    assert m.clip.training is True                     # ... but prune() itself changes nothing
    fast2.encode_image(x)
    with torch.no_grad():
        assert torch.equal(m.clip.encode_image(x), before)
    assert all(torch.equal(v, state[k]) for k, v in m.clip.state_dict().items())
    assert not any(mod._forward_hooks or mod._forward_pre_hooks for mod in m.clip.modules())
    # weights shared, not copied
    assert fast2.clip.visual.conv1.weight.data_ptr() == m.clip.visual.conv1.weight.data_ptr()


def test_open_clip_interface(bundled, eval_batch, pred):
    x, _ = eval_batch
    fast = pr.prune(bundled.clip, 0.6, pred)
    text = bundled.tokenizer(["a photo of a shirt.", "a photo of a bag."])
    img, txt, scale = fast(x, text)
    ref_img, ref_txt, ref_scale = bundled.clip(x, text)
    assert torch.equal(txt, ref_txt) and torch.equal(scale, ref_scale)
    assert torch.allclose(img, torch.nn.functional.normalize(fast.encode_image(x), dim=-1))
    assert fast.visual.image_size == bundled.clip.visual.image_size
    assert fast.visual.output_dim == bundled.clip.visual.output_dim
    assert fast.logit_scale is bundled.clip.logit_scale
    # output_dict models answer with open_clip's dict
    t = tiny_vit(prune_layer=1)
    t.clip.output_dict = True
    out = pr.prune(t.clip, 0.5, "attention")(torch.randn(2, 3, *t.image_size))
    assert set(out) == {"image_features", "text_features", "logit_scale"} and out["text_features"] is None


@pytest.mark.slow
def test_open_clip_zero_shot_classifier_same_accuracy(bundled, eval_split, pred):
    """open_clip's build_zero_shot_classifier on the pruned model = PatchRank's own head, on the
    whole bundled evaluation split (1,200 scenes)."""
    fast = pr.prune(bundled.clip, 0.6, pred)
    weights = build_zero_shot_classifier(fast, bundled.tokenizer, eval_split.classnames,
                                         bundled.templates, num_classes_per_batch=None)
    clf = bundled.zero_shot(eval_split.classnames)
    ours, theirs = [], []
    with torch.no_grad():
        for i in range(0, len(eval_split), 200):
            x = torch.stack([bundled.preprocess(im) for im in eval_split.images[i:i + 200]])
            theirs.append((fast.encode_image(x, normalize=True) @ weights).argmax(1))
            ours.append(clf.predict(bundled.encode_image(x, keep_ratio=0.6, ranker=pred)))
    labels = torch.as_tensor(eval_split.labels)
    acc_theirs = (torch.cat(theirs) == labels).float().mean().item()
    acc_ours = (torch.cat(ours) == labels).float().mean().item()
    assert acc_theirs == acc_ours
    assert acc_ours > 0.8              # the pruned bundled model still classifies (model card: ~91 %)


@pytest.mark.slow
def test_torch_compile(bundled, eval_batch, pred):
    x, _ = eval_batch
    fast = pr.prune(bundled.clip, 0.6, pred)
    compiled = torch.compile(fast.encode_image)
    with torch.no_grad():
        assert torch.allclose(compiled(x), fast.encode_image(x), atol=1e-5, rtol=1e-4)


def test_names_and_files(tmp_path, bundled, eval_batch, pred):
    x, _ = eval_batch
    a = pr.prune("bundled", 0.6, "predictor")          # a name and the bundled predictor
    assert torch.equal(a.encode_image(x), bundled.encode_image(x, keep_ratio=0.6, ranker=pred))
    path = pred.save(tmp_path / "p.safetensors")
    b = pr.prune(bundled.clip, 0.6, str(path))          # a predictor file on an anonymous CLIP
    assert torch.equal(b.encode_image(x), a.encode_image(x))


def test_bad_input(bundled, pred):
    with pytest.raises(PatchRankError, match=r"keep ratio must be in \(0, 1\]"):
        pr.prune(bundled.clip, 1.5, pred)
    fast = pr.prune(bundled.clip, 0.6, pred)
    with pytest.raises(PatchRankError, match="keep ratio"):
        fast.keep_ratio = 0
    with pytest.raises(PatchRankError, match="keep ratio"):
        fast.encode_image(torch.zeros(1, 3, 112, 112), keep_ratio=float("nan"))
    other = tiny_vit(prune_layer=1)
    with pytest.raises(ModelMismatch, match="trained for model"):
        pr.prune(other.clip, 0.6, pred)                 # a predictor made for another model
    with pytest.raises(PatchRankError, match="unknown ranker 'nope'"):
        pr.prune(bundled.clip, 0.6, "nope")
    rn = open_clip.create_model("RN50", pretrained=None)
    with pytest.raises(PatchRankError, match="ViT towers only"):
        pr.prune(rn, 0.6, "norm")
    with pytest.raises(PatchRankError, match="takes an open_clip CLIP"):
        pr.prune(torch.nn.Linear(2, 2), 0.6, "norm")
