"""Analytic FLOPs equal torch's FlopCounterMode on the real open_clip module."""
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop

import patchrank as pr
from patchrank import forward

# FlopCounterMode has no formula for the CPU flash-attention kernel: register the standard one
# (torch ships formulas for the other SDPA kernels only); then the attention matmuls (4*N^2*D per block) are counted.
try:
    register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu, get_raw=True)(sdpa_flop)
except RuntimeError:  # already registered (by torch itself in a newer version, or a rerun)
    pass


def prepacked_linear_flop(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of ``patchrank.prepacked``'s oneDNN linear (torch's counter has no formula for
    it): 2 * rows * in * out, the weight being [out, in]."""
    return 2 * math.prod(x_shape) * w_shape[0]


PREPACKED = {torch.ops.mkldnn._linear_pointwise: prepacked_linear_flop}


def counted_gflops(m, x, keep):
    # nn.MultiheadAttention's fused fast path has no FLOP formula either: switch it off.
    prev = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=PREPACKED) as fc:
            forward.encode(m.visual, x, m.prune_layer, keep=keep)
    finally:
        torch.backends.mha.set_fastpath_enabled(prev)
    return fc.get_total_flops() / 1e9


@pytest.fixture(scope="module")
def vit_b16():
    return pr.load_model("ViT-B-16", pretrained=None)


@pytest.mark.slow
@pytest.mark.parametrize("keep", [None, 118])
def test_analytic_equals_flop_counter_vit_b16(vit_b16, keep):
    x = torch.randn(1, 3, 224, 224)
    ids = None if keep is None else torch.randperm(196)[:keep].unsqueeze(0)
    counted = counted_gflops(vit_b16, x, ids)
    f = pr.flops(vit_b16, keep=keep)
    assert abs(f.executed - counted) / counted < 0.005, (f.executed, counted)
    assert f.executed < float(f)     # the last block runs for CLS only


def test_paper_table_values(vit_b16):
    """The paper's ViT-B/16 costs (docs/paper.md): 17.56 GMAC full, 12.25 GMAC at keep 118
    (prune layer 3), 9.60 at 78."""
    assert vit_b16.prune_layer == 3
    assert float(pr.flops(vit_b16)) / 2 == pytest.approx(17.56, abs=0.01)
    assert float(pr.flops(vit_b16, keep=118)) / 2 == pytest.approx(12.25, abs=0.01)
    assert float(pr.flops(vit_b16, keep=78)) / 2 == pytest.approx(9.60, abs=0.01)


def test_breakdown_and_extra_tokens(bundled):
    f = pr.flops(bundled, keep=100, extra_tokens=4)
    assert f.tokens[: bundled.prune_layer] == [197] * bundled.prune_layer
    assert f.tokens[bundled.prune_layer:] == [105] * (bundled.num_layers - bundled.prune_layer)
    assert float(f) == pytest.approx(sum(f.blocks) + f.patch_embed + f.projection)
    assert float(pr.flops(bundled, keep=100)) < float(f) < float(pr.flops(bundled))


def test_bundled_flops_match_counter(bundled, eval_batch):
    x, _ = eval_batch
    counted = counted_gflops(bundled, x[:1], torch.arange(60).unsqueeze(0))
    assert abs(pr.flops(bundled, keep=60).executed - counted) / counted < 0.005


def test_standard_count_equals_counter_on_open_clip(vit_b16):
    """The float value is the architecture's standard count: what open_clip's own forward runs."""
    x = torch.randn(1, 3, 224, 224)
    prev = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=PREPACKED) as fc:
            vit_b16.clip.encode_image(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(prev)
    counted = fc.get_total_flops() / 1e9
    assert abs(float(pr.flops(vit_b16)) - counted) / counted < 0.005
