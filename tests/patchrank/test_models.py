"""load_model: sources of weights, refusals, fast failures, precision."""
import time

import pytest
import torch

import patchrank as pr
from patchrank.errors import PatchRankError, WeightsUnavailable
from patchrank.models import default_prune_layer


def test_bundled_loads_offline_quickly():
    pr.load_model()  # warm imports
    t = time.perf_counter()
    m = pr.load_model()
    elapsed = time.perf_counter() - t
    assert elapsed < 3.0, f"bundled model took {elapsed:.1f}s to load"
    assert m.grid == (14, 14) and m.num_patches == 196
    assert m.model_id.startswith("bundled/")
    assert m.classnames and m.embed_dim == m.clip.visual.output_dim


@pytest.mark.parametrize("name, tag, match", [
    ("ViT-B-32", "openai", "not in the Hugging Face cache"),
    ("ViT-B-32", "opneai", "no pretrained tag"),
    ("ViT-B-16", "/nonexistent/weights.safetensors", "not found"),
])
def test_missing_weights_fail_fast_with_instructions(name, tag, match):
    t = time.perf_counter()
    with pytest.raises(WeightsUnavailable, match=match) as e:
        pr.load_model(name, pretrained=tag)
    assert time.perf_counter() - t < 5.0
    if tag == "openai":   # names the repo and file, and how to supply them, in Python
        msg = str(e.value)
        assert "timm/vit_base_patch32_clip_224.openai" in msg and "open_clip_model.safetensors" in msg
        assert "hf download" in msg and "pretrained=" in msg and "force_quick_gelu=True" in msg


def test_unknown_model_name_suggests():
    with pytest.raises(PatchRankError, match="did you mean"):
        pr.load_model("ViT-B-61")


def test_missing_local_dir():
    with pytest.raises(WeightsUnavailable, match="open_clip_config.json"):
        pr.load_model("local-dir:/nonexistent/folder")


def test_non_vit_tower_refused():
    with pytest.raises(PatchRankError, match="ViT towers only"):
        pr.load_model("RN50", pretrained=None)


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_local_checkpoint_roundtrip(tmp_path, suffix):
    import open_clip
    from safetensors.torch import save_file
    torch.manual_seed(3)
    src = open_clip.create_model("ViT-S-32", pretrained=None)
    path = tmp_path / f"vit-s-32{suffix}"
    sd = {k: v.contiguous() for k, v in src.state_dict().items()}
    torch.save(sd, path) if suffix == ".pt" else save_file(sd, str(path))
    m = pr.load_model("ViT-S-32", pretrained=str(path))
    got = m.clip.state_dict()
    assert all(torch.equal(got[k], sd[k]) for k in sd)
    assert m.prune_layer == 3 and m.grid == (7, 7)


@pytest.mark.slow
def test_local_dir(tmp_path):
    import json

    import open_clip
    from safetensors.torch import save_file
    cfg = open_clip.get_model_config("ViT-S-32")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    src = open_clip.create_model("ViT-S-32", pretrained=None)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()},
              str(tmp_path / "open_clip_model.safetensors"))
    m = pr.load_model(f"local-dir:{tmp_path}")
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        assert torch.allclose(m.encode_image(x), src.eval().encode_image(x), atol=1e-5)


def test_prune_layer_default_and_setter(tiny):
    assert default_prune_layer(12) == 3 and default_prune_layer(24) == 6 and default_prune_layer(4) == 1
    tiny.prune_layer = 2
    assert tiny.prune_layer == 2
    for bad in (-1, tiny.num_layers, 1.5):
        with pytest.raises(PatchRankError, match="prune_layer"):
            tiny.prune_layer = bad


def test_at_layer_shares_weights_and_leaves_the_model_alone(tiny):
    k0 = tiny.prune_layer
    other = tiny.at_layer(k0 + 1)
    assert other.prune_layer == k0 + 1 and tiny.prune_layer == k0 and tiny.at_layer(k0) is tiny
    assert other.clip is tiny.clip and other.model_id == tiny.model_id
    x = torch.randn(1, 3, *tiny.image_size)
    keep = torch.arange(4)[None]
    with torch.inference_mode():
        a, b = tiny.encode_image(x, keep), other.encode_image(x, keep)
        assert not torch.allclose(a, b)                  # pruned at another block
        assert torch.allclose(tiny.encode_image(x), other.encode_image(x), atol=1e-6)
    assert float(other.flops(keep=4)) > float(tiny.flops(keep=4))     # pruned later: more work
    with pytest.raises(PatchRankError, match="prune_layer"):
        tiny.at_layer(tiny.num_layers)


def test_model_id_tells_weights_apart():
    from tests.conftest import tiny_vit
    assert tiny_vit(seed=0).model_id == tiny_vit(seed=0).model_id
    assert tiny_vit(seed=0).model_id != tiny_vit(seed=1).model_id


def test_bf16_weights_agree_with_fp32(eval_split):
    """bfloat16 weights: same predictions as float32 on the bundled eval scenes (top-1 agreement)."""
    m32, m16 = pr.load_model(), pr.load_model(dtype=torch.bfloat16)
    assert m16.dtype == torch.bfloat16
    x = torch.stack([m32.preprocess(im) for im in eval_split.images[:32]])
    clf = m32.zero_shot()
    with torch.inference_mode():
        p32 = clf.predict(m32.encode_image(x))
        p16 = clf.predict(m16.encode_image(x).float())
    assert (p32 == p16).float().mean() >= 0.9


def test_bad_dtype():
    with pytest.raises(PatchRankError, match="dtype"):
        pr.load_model(dtype=torch.int8)
