"""ONNX export of the pruned image encoder, ranker inside the graph, checked with onnxruntime."""
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

import patchrank as pr
from patchrank.cli import main
from patchrank.errors import ModelMismatch, PatchRankError
from patchrank.export import export_onnx

from tests.conftest import tiny_vit

pytestmark = pytest.mark.slow


def _onnx_vs_eager(path, fast, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {"image": x.numpy()})[0])
    with torch.no_grad():
        want = fast.encode_image(x)
    return torch.nn.functional.cosine_similarity(got, want, dim=-1).min().item()


def test_predictor_in_the_graph(bundled, eval_batch, tmp_path):
    """Real scenes through the exported file = the eager pruned forward (cosine >= 1 - 1e-4), at
    batch sizes other than the one traced; the file holds the predictor's weights."""
    x, _ = eval_batch
    rep = export_onnx(bundled, tmp_path / "enc.onnx", keep_ratio=0.6, ranker="predictor")
    assert rep["kept"] == 118 and rep["check_cosine_min"] >= 1 - 1e-4
    fast = pr.prune(bundled, 0.6, "predictor")
    assert _onnx_vs_eager(tmp_path / "enc.onnx", fast, x) >= 1 - 1e-4
    assert _onnx_vs_eager(tmp_path / "enc.onnx", fast, x[:1]) >= 1 - 1e-4
    sess = ort.InferenceSession(str(tmp_path / "enc.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image"]
    assert list(tmp_path.iterdir()) == [tmp_path / "enc.onnx"]        # no scratch left behind


@pytest.mark.parametrize("ranker", ["norm", "attention", "tome"])
def test_training_free_rankers(ranker, tmp_path):
    t = tiny_vit(prune_layer=2)
    rep = export_onnx(t.clip, tmp_path / "t.onnx", keep_ratio=0.5, ranker=ranker)
    x = torch.randn(4, 3, *t.image_size)
    assert _onnx_vs_eager(tmp_path / "t.onnx", pr.prune(t.clip, 0.5, ranker), x) >= 1 - 1e-4
    assert rep["kept"] == 8


def test_keep_one_exports_open_clip(tmp_path):
    t = tiny_vit(prune_layer=1)
    export_onnx(t.clip, tmp_path / "full.onnx", keep_ratio=1.0, ranker="norm")
    sess = ort.InferenceSession(str(tmp_path / "full.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, *t.image_size)
    with torch.no_grad():
        assert np.allclose(sess.run(None, {"image": x.numpy()})[0], t.clip.encode_image(x).numpy(), atol=1e-5)


def test_cli_and_refusals(bundled, tmp_path, capsys, monkeypatch):
    assert main(["export", "--out", str(tmp_path / "c.onnx"), "--keep", "0.5", "--ranker", "norm",
                 "--no-progress"]) == 0
    assert (tmp_path / "c.onnx").is_file()
    assert main(["export", "--out", str(tmp_path / "r.onnx"), "--ranker", "random"]) == 1
    assert "ranker 'random' cannot be exported: it draws new patches" in capsys.readouterr().err
    assert not (tmp_path / "r.onnx").exists()
    with pytest.raises(ModelMismatch):
        export_onnx(tiny_vit(prune_layer=1).clip, tmp_path / "m.onnx", ranker="predictor")
    with pytest.raises(PatchRankError, match="float32"):
        export_onnx(pr.load_model(dtype=torch.bfloat16), tmp_path / "b.onnx")
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(PatchRankError, match=r"pip install 'patchrank\[export\]'"):
        export_onnx(bundled, tmp_path / "x.onnx")
