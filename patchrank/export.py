"""``export_onnx``: the pruned image encoder as one ONNX graph, patch selection included.

The graph holds the whole pruned forward for a fixed kept count: prefix blocks, the ranker (a
predictor's MLP-Mixer, token norms or CLS attention), the choice of the top patches, the gather
and the suffix. A serving stack (onnxruntime, TensorRT, a browser) then prunes without PyTorch.

One translation is ours: the ranking's deterministic order (``torch.sort(stable=True)``,
descending, ties by patch id) has no ONNX counterpart in torch's exporter, so it is written as
ONNX ``TopK`` over the whole axis, whose specification breaks ties by the lower index: the same
order, not an approximation. The file is checked against eager PyTorch with onnxruntime before it
is reported as written.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .dropin import PrunedCLIP, prune
from .errors import PatchRankError

#: Rankers that cannot become a fixed graph: random draws per call; golden search loops over
#: candidate removals with data-dependent control flow.
UNTRACEABLE = {"random": "draws new patches on every call", "golden": "is a per-image search",
               "golden-greedy": "is a per-image search"}
#: Eager vs onnxruntime: the smallest cosine similarity accepted between their embeddings.
MIN_COSINE = 1 - 1e-4


class _ImageEncoder(torch.nn.Module):
    """``encode_image`` as a module's forward: what the exporter traces."""

    def __init__(self, fast: PrunedCLIP):
        super().__init__()
        self.fast = fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fast.encode_image(x)


def _stable_sort(self, stable=None, dim: int = -1, descending: bool = False):
    """aten.sort.stable as ONNX TopK over the full axis (ties: lower index first, as stable)."""
    from onnxscript import opset18 as op
    n = op.Shape(self, start=dim, end=dim + 1) if dim != -1 else op.Shape(self, start=-1)
    return op.TopK(self, n, axis=dim, largest=descending, sorted=True)


def _require_onnx() -> Any:
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise PatchRankError(f"ONNX export needs onnx, onnxscript and onnxruntime ({e.name} is "
                             "missing): pip install 'patchrank[export]'") from None
    return onnxruntime


def export_onnx(model: Any, out: str | os.PathLike, *, keep_ratio: float = 0.6, ranker: Any = "norm",
                tokens: Any = None, pretrained: str | None = None, check: bool = True) -> dict:
    """Write the pruned image encoder of ``model`` (anything ``prune`` takes, or a ``PrunedCLIP``
    whose own ratio/ranker/tokens are then used) to ``out`` with a dynamic batch axis.

    Input ``image`` [B,3,H,W] preprocessed as for the model; output ``embedding`` [B,D]
    (unnormalised, as ``encode_image``). Returns the kept count, the check's agreement and the
    file size."""
    ort = _require_onnx()
    fast = model if isinstance(model, PrunedCLIP) else prune(model, keep_ratio, ranker, tokens,
                                                            pretrained=pretrained)
    name = getattr(fast._plan.ranker, "name", type(fast._plan.ranker).__name__)
    if name in UNTRACEABLE:
        raise PatchRankError(f"ranker {name!r} cannot be exported: it {UNTRACEABLE[name]}; use a "
                             "predictor, 'norm' or 'attention'")
    m = fast.patch_model
    if m.dtype != torch.float32:
        raise PatchRankError(f"export float32 weights (this model is {m.dtype}); onnxruntime "
                             "converts precision itself")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    enc = _ImageEncoder(fast).eval()
    x = torch.randn(2, 3, *m.image_size, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                enc, (x,), None, dynamo=True, input_names=["image"], output_names=["embedding"],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
                custom_translation_table={torch.ops.aten.sort.stable: _stable_sort}, verbose=False)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PatchRankError(f"could not export {m.model_id} pruned with {name!r}: {first}") from None
    report = {"out": str(out), "model_id": m.model_id, "keep_ratio": fast.keep_ratio,
              "kept": m.keep_count(fast.keep_ratio), "num_patches": m.num_patches, "ranker": name,
              "gflops": round(fast.gflops(), 4), "export_seconds": round(time.perf_counter() - t0, 2)}
    # Written in a scratch folder beside ``out`` under its final name (a weights file of a model
    # over protobuf's 2 GB limit goes beside it as OUT.data and is referenced by that name), checked,
    # then moved into place: a failed check or a kill never leaves a half-written model at ``out``.
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}.") as scratch:
        tmp = Path(scratch) / out.name
        n_params = sum(p.numel() for p in enc.parameters())
        program.save(str(tmp), external_data=n_params * 4 > 1.8e9)
        if check:
            report.update(check_onnx(tmp, fast, ort))
        for f in sorted(Path(scratch).iterdir()):
            os.replace(f, out.parent / f.name)
    report["bytes"] = out.stat().st_size
    return report


def check_onnx(path: str | os.PathLike, fast: PrunedCLIP, ort: Any = None) -> dict:
    """onnxruntime (CPU) vs eager on seeded random batches of 1 and 3: the smallest cosine and the
    largest absolute difference; raises when the cosine falls below ``MIN_COSINE``."""
    ort = ort or _require_onnx()
    m = fast.patch_model
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(1)
    cos, diff = 1.0, 0.0
    for b in (1, 3):
        x = torch.randn(b, 3, *m.image_size, generator=g)
        got = sess.run(None, {"image": x.numpy()})[0].astype(np.float64)
        with torch.no_grad():
            want = fast.encode_image(x).double().numpy()
        c = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        cos, diff = min(cos, float(c.min())), max(diff, float(np.abs(got - want).max()))
    if cos < MIN_COSINE:
        raise PatchRankError(f"the exported graph disagrees with PyTorch (cosine {cos:.6f} < "
                             f"{MIN_COSINE}); not written")
    return {"check_cosine_min": round(cos, 8), "check_max_abs_diff": float(f"{diff:.3g}")}
