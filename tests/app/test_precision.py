"""The app's forward format: bf16 on CPUs with a bf16 unit (AMX, AVX512-BF16) for real CLIP,
float32 elsewhere and for the bundled model; the status line says which; bf16 and float32 give
the same top-1 class on every example."""
from pathlib import Path

from tests.app import app_support as S  # noqa: F401  (sets the app temp folder before gradio loads)
import pytest
import torch
from PIL import Image

from app import engine, handlers as H, precision, sessions
from app.examples import example_files
from patchrank import hardware
from patchrank.errors import PatchRankError
from tests.conftest import tiny_vit

AMX, AVX512_BF16, AVX2_ONLY = frozenset({"amx_bf16", "avx512_bf16"}), frozenset({"avx512_bf16"}), frozenset()


@pytest.fixture
def auto(monkeypatch):
    monkeypatch.delenv("PATCHRANK_APP_DTYPE", raising=False)


def test_format_follows_the_cpu_flags(auto, bundled):
    real = tiny_vit()                                     # stands in for a real CLIP: not "bundled"
    assert precision.inference_dtype(real, AMX) == torch.bfloat16
    assert precision.inference_dtype(real, AVX512_BF16) == torch.bfloat16
    assert precision.inference_dtype(real, AVX2_ONLY) == torch.float32
    assert precision.inference_dtype(bundled, AMX) == torch.float32      # tiny: stays float32
    assert hardware.bf16_unit(AMX) == "AMX" and hardware.bf16_unit(AVX512_BF16) == "AVX512-BF16"
    assert hardware.bf16_unit(AVX2_ONLY) is None


def test_this_cpus_flags_match_proc_cpuinfo():
    """torch's probe and the kernel's flag list say the same about this machine."""
    info = Path("/proc/cpuinfo")
    if not info.exists():
        pytest.skip("no /proc/cpuinfo on this OS")
    words = set(info.read_text().split())
    assert hardware.cpu_flags() == frozenset(f for f in hardware.BF16_FLAGS if f in words)


def test_environment_forces_a_format(monkeypatch, bundled):
    monkeypatch.setenv("PATCHRANK_APP_DTYPE", "float32")
    assert precision.inference_dtype(tiny_vit(), AMX) == torch.float32
    assert "set by PATCHRANK_APP_DTYPE" in engine.describe(bundled)
    monkeypatch.setenv("PATCHRANK_APP_DTYPE", "bfloat16")
    assert precision.inference_dtype(bundled, AVX2_ONLY) == torch.bfloat16
    monkeypatch.setenv("PATCHRANK_APP_DTYPE", "fp16")
    with pytest.raises(PatchRankError, match="PATCHRANK_APP_DTYPE must be auto, float32 or bfloat16"):
        precision.forced_format()


def test_bf16_copy_made_once_and_shared_across_layers(monkeypatch, bundled):
    monkeypatch.setenv("PATCHRANK_APP_DTYPE", "bfloat16")
    a = precision.inference_model(bundled)
    assert a.dtype == torch.bfloat16 and bundled.dtype == torch.float32
    assert precision.inference_model(bundled).clip is a.clip
    other = engine.at_layer(bundled, 2)
    b = precision.inference_model(other)
    assert b.clip is a.clip and b.prune_layer == 2


def test_status_line_says_the_format(monkeypatch):
    S.fast_golden(monkeypatch)
    sid = "test-precision"
    sessions.session(sid).model_key = "bundled"
    for fmt in ("bfloat16", "float32"):
        monkeypatch.setenv("PATCHRANK_APP_DTYPE", fmt)
        status = H.analyze_views(str(S.EXAMPLE), "exact", 0.5, "golden", "attention", session=sid)[-1]
        assert f"forwards in {fmt} (set by PATCHRANK_APP_DTYPE)" in status


def test_bf16_and_float32_same_top1_on_every_example(monkeypatch, bundled):
    """Full and pruned (keep 0.6, norm order) embeddings, through the app's engine calls."""
    labels = list(bundled.classnames)
    files = example_files()
    assert len(files) >= 10
    for f in files:
        x = bundled.preprocess(Image.open(f).convert("RGB"))[None]
        keep = engine.ranker_order(bundled, x, "norm")[:bundled.keep_count(0.6)]
        top, emb = {}, {}
        for fmt in ("float32", "bfloat16"):
            monkeypatch.setenv("PATCHRANK_APP_DTYPE", fmt)
            emb[fmt] = engine.embed_full(bundled, x)
            full = engine.probs(bundled, labels, emb[fmt])[0]
            kept = engine.probs(bundled, labels, engine.embed_kept(bundled, x, [keep]))[0]
            top[fmt] = (int(full.argmax()), int(kept.argmax()))
        assert top["float32"] == top["bfloat16"], (Path(f).name, top)
        assert not torch.equal(emb["float32"], emb["bfloat16"])        # bf16 really ran
