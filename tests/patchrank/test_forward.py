"""The one pruned forward: exact equality with open_clip, and a plainly written reference."""
import pytest
import torch

import patchrank as pr
from patchrank import forward
from patchrank.errors import PatchRankError


def _random_vit(name):
    m = pr.load_model(name, pretrained=None)
    torch.manual_seed(0)
    return m, torch.randn(2, 3, *m.image_size)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-B-16"])
def test_keep_all_equals_open_clip_random_vits(name):
    m, x = _random_vit(name)
    with torch.inference_mode():
        ref = m.clip.encode_image(x)
        assert torch.allclose(m.encode_image(x), ref, atol=1e-5, rtol=0)
        perm = torch.randperm(m.num_patches, generator=torch.Generator().manual_seed(1))
        shuffled = m.encode_image(x, keep=perm.expand(2, -1))
        ordered = m.encode_image(x, keep=torch.arange(m.num_patches).expand(2, -1))
    assert torch.allclose(ordered, ref, atol=1e-5, rtol=0)
    assert torch.allclose(shuffled, ref, atol=1e-5, rtol=0)


def test_keep_all_equals_open_clip_bundled(bundled, eval_batch):
    x, _ = eval_batch
    with torch.inference_mode():
        ref = bundled.clip.encode_image(x)
        assert torch.allclose(bundled.encode_image(x), ref, atol=1e-5, rtol=0)
        perm = torch.randperm(bundled.num_patches).expand(len(x), -1)
        assert torch.allclose(bundled.encode_image(x, keep=perm), ref, atol=1e-5, rtol=0)


def _reference_pruned(clip, x, k, keep):
    """Written as plainly as possible, straight from open_clip's stages."""
    v = clip.visual
    out = []
    for b in range(x.shape[0]):
        h = v._embeds(x[b:b + 1])
        for i, blk in enumerate(v.transformer.resblocks):
            if i == k:
                rows = [h[:, 0:1]] + [h[:, 1 + int(p):2 + int(p)] for p in keep[b]]
                h = torch.cat(rows, dim=1)
            h = blk(h)
        pooled, _ = v._pool(h)
        out.append(pooled @ v.proj)
    return torch.cat(out)


@pytest.mark.parametrize("k", [0, 1, 3])
def test_pruned_equals_reference_loop(tiny, k):
    tiny.prune_layer = k
    torch.manual_seed(0)
    x = torch.randn(3, 3, *tiny.image_size)
    keep = torch.stack([torch.randperm(tiny.num_patches)[:7] for _ in range(3)])
    with torch.inference_mode():
        got = tiny.encode_image(x, keep=keep)
        ref = _reference_pruned(tiny.clip, x, k, keep)
    assert torch.allclose(got, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("pool", ["tok", "avg"])
def test_last_block_runs_for_cls_only_when_only_cls_is_pooled(pool):
    """The CLS-only final block (``forward.run_block(..., cls_only=True)``) is taken exactly when it is exact."""
    from tests.conftest import tiny_vit
    m = tiny_vit(prune_layer=2, pool_type=pool)
    assert forward.pools_cls_only(m.visual) == (pool == "tok")
    torch.manual_seed(1)
    x = torch.randn(2, 3, *m.image_size)
    keep = torch.stack([torch.randperm(m.num_patches)[:9] for _ in range(2)])
    with torch.inference_mode():
        assert torch.allclose(m.encode_image(x, keep=keep), _reference_pruned(m.clip, x, 2, keep),
                              atol=1e-5, rtol=0)
        assert torch.allclose(m.encode_image(x), m.clip.encode_image(x), atol=1e-5, rtol=0)


def test_pruned_differs_from_full(tiny):
    x = torch.randn(1, 3, *tiny.image_size)
    with torch.inference_mode():
        assert not torch.allclose(tiny.encode_image(x), tiny.encode_image(x, keep=torch.tensor([[0, 5]])))


def test_extra_tokens_shallow_and_deep(tiny):
    """Extra tokens are appended after the gather and dropped before pooling."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, *tiny.image_size)
    keep = torch.tensor([[1, 4, 9], [0, 2, 3]])
    v, k = tiny.visual, tiny.prune_layer
    extra = torch.randn(2, tiny.width)
    with torch.inference_mode():
        got = forward.encode(v, x, k, keep=keep, extra=extra)
        h = forward.gather_patches(forward.run_prefix(v, x, k), keep)
        h = torch.cat([h, extra.expand(2, -1, -1)], 1)
        ref = forward.head(v, forward.run_blocks(v, h, k)[:, :4])
        assert torch.allclose(got, ref, atol=1e-6)
        deep = torch.randn(tiny.num_layers - k, 2, tiny.width)
        d = forward.encode(v, x, k, keep=keep, extra=deep)
        assert d.shape == got.shape and not torch.allclose(d, got)
        same = forward.encode(v, x, k, keep=keep, extra=extra.expand(tiny.num_layers - k, -1, -1))
        assert not torch.allclose(same, got)  # deep re-injection resets the slots each block


@pytest.mark.parametrize("keep, msg", [
    (torch.tensor([[0, 99]]), "lie in"),
    (torch.tensor([[-1, 2]]), "lie in"),
    (torch.tensor([[3, 3]]), "repeat"),
    (torch.zeros(1, 0, dtype=torch.long), "at least one"),
    (torch.tensor([[0.0, 1.0]]), "integer"),
    (torch.tensor([[[0, 1]]]), "shape"),
    ([0, 1], "LongTensor"),
])
def test_invalid_keep_is_refused(tiny, keep, msg):
    x = torch.randn(1, 3, *tiny.image_size)
    with pytest.raises(PatchRankError, match=msg):
        tiny.encode_image(x, keep=keep)


def test_keep_ratio_validation(tiny):
    for bad in (0, -0.1, 1.5, float("nan"), "a"):
        with pytest.raises(PatchRankError, match="keep ratio"):
            tiny.keep_count(bad)
    assert tiny.keep_count(1.0) == tiny.num_patches
    assert tiny.keep_count(0.01) == 1
    assert tiny.keep_count(0.5) == round(0.5 * tiny.num_patches)


def test_bad_image_tensor(tiny):
    with pytest.raises(PatchRankError, match="batch"):
        tiny.encode_image(torch.randn(1, 3, 5, 5))


def test_model_untouched_between_calls(tiny):
    """No hooks or state: a pruned call leaves the module exactly as it was."""
    before = {k: v.clone() for k, v in tiny.clip.state_dict().items()}
    hooks = sum(len(mod._forward_pre_hooks) + len(mod._forward_hooks) for mod in tiny.clip.modules())
    x = torch.randn(1, 3, *tiny.image_size)
    with torch.inference_mode():
        tiny.encode_image(x, keep=torch.tensor([[1, 2]]))
    after = tiny.clip.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert hooks == sum(len(mod._forward_pre_hooks) + len(mod._forward_hooks) for mod in tiny.clip.modules())
