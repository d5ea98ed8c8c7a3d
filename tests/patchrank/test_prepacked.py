"""``patchrank.prepacked``: F.linear on a cached oneDNN-packed weight, exact, fresh and used only
where it may be (CPU float32/bfloat16, no autograd, PATCHRANK_PREPACK unset or not 0)."""
import gc
import threading
import time

import pytest
import torch
import torch.nn.functional as F

from patchrank import prepacked

D = 64


@pytest.fixture(autouse=True)
def _empty_cache():
    prepacked.clear()
    yield
    prepacked.clear()


def _entries(weight):
    """Cache entries keyed on this weight (one per ``rows`` selection)."""
    return sum(1 for key in list(prepacked._CACHE) if key[0] == id(weight))


def _close(got, ref):
    """Equal to float rounding of ``ref``'s dtype (another summation order, not other maths)."""
    assert got.dtype == ref.dtype and got.shape == ref.shape
    tol = 1e-2 if ref.dtype == torch.bfloat16 else 1e-5
    g, r = got.float(), ref.float()
    torch.testing.assert_close(g, r, rtol=tol, atol=tol * r.abs().max().item())


def _inputs(kind, dtype):
    g = torch.Generator().manual_seed(1)
    x3 = torch.randn(2, 7, D, generator=g)
    x = {"2d": torch.randn(5, D, generator=g),
         "3d": x3,
         "cls": x3[:, :1],                                   # non-contiguous 3-D view
         "t2d": torch.randn(D, 5, generator=g).t(),          # transposed 2-D
         "t3d": x3.transpose(0, 1)}[kind]                    # transposed 3-D
    return x.to(dtype)


def _fused(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3 * D, D, generator=g).to(dtype), torch.randn(3 * D, generator=g).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("rows", [None, slice(0, D), slice(D, None)], ids=["all", "q", "kv"])
@pytest.mark.parametrize("kind", ["2d", "3d", "cls", "t2d", "t3d"])
def test_equals_f_linear(kind, rows, dtype):
    """The packed path equals F.linear(x, W[rows], b[rows]) to float rounding, with and without bias."""
    w, b = _fused(dtype)
    x = _inputs(kind, dtype)
    sel = slice(None) if rows is None else rows
    for bias in (b, None):
        with torch.inference_mode():
            got = prepacked.linear(x, w, bias, rows=rows)
        _close(got, F.linear(x, w[sel], None if bias is None else bias[sel]))
    if prepacked._works(dtype):
        assert _entries(w) == 1, "the packed path was not taken"


def test_row_selections_packed_separately():
    """The q and kv row blocks and the whole of one fused weight are three cache entries, each giving its own rows."""
    w, b = _fused(torch.float32)
    x = torch.randn(2, 7, D)
    with torch.inference_mode():
        for _ in range(2):
            for rows in (slice(0, D), slice(D, None), None):
                sel = slice(None) if rows is None else rows
                _close(prepacked.linear(x, w, b, rows=rows), F.linear(x, w[sel], b[sel]))
    assert _entries(w) == 3


def test_packed_once_and_reused():
    """A call under inference_mode packs the weight into the cache and the next call reuses that packed copy."""
    lin = torch.nn.Linear(D, 3 * D)
    x = torch.randn(4, D)
    with torch.inference_mode():
        first = prepacked.linear(x, lin.weight, lin.bias)
        assert _entries(lin.weight) == 1
        (packed,) = [e.packed for e in prepacked._CACHE.values()]
        second = prepacked.linear(x, lin.weight, lin.bias)
    assert _entries(lin.weight) == 1
    assert prepacked._CACHE[(id(lin.weight), None)].packed is packed
    assert torch.equal(first, second)
    _close(first, F.linear(x, lin.weight, lin.bias).detach())


def test_in_place_update_repacks():
    """After an in-place write to the weight (an optimiser step) the output follows the new weight."""
    lin = torch.nn.Linear(D, 3 * D)
    x = torch.randn(4, D)
    with torch.inference_mode():
        old = prepacked.linear(x, lin.weight, lin.bias)
    with torch.no_grad():
        lin.weight.add_(1.0)
    with torch.inference_mode():
        new = prepacked.linear(x, lin.weight, lin.bias)
        ref = F.linear(x, lin.weight, lin.bias)
    assert not torch.allclose(old, ref, atol=1e-2), "the update must change the output"
    _close(new, ref)
    assert _entries(lin.weight) == 1


def test_to_bfloat16_repacks():
    """After nn.Linear.to(bfloat16) (same Parameter object) a bfloat16 input runs on the bfloat16 weight."""
    lin = torch.nn.Linear(D, 3 * D)
    weight = lin.weight
    x = torch.randn(4, D)
    with torch.inference_mode():
        _close(prepacked.linear(x, lin.weight, lin.bias), F.linear(x, lin.weight, lin.bias))
    lin.to(torch.bfloat16)
    assert lin.weight is weight       # the premise: the cache key (the weight's id) is unchanged
    xb = x.to(torch.bfloat16)
    with torch.inference_mode():
        got = prepacked.linear(xb, lin.weight, lin.bias)
        ref = F.linear(xb, lin.weight, lin.bias)
    _close(got, ref)
    assert _entries(lin.weight) == 1


def test_load_state_dict_repacks():
    """After load_state_dict of other weights the output follows the loaded weights."""
    lin, other = torch.nn.Linear(D, 3 * D), torch.nn.Linear(D, 3 * D)
    x = torch.randn(4, D)
    with torch.inference_mode():
        old = prepacked.linear(x, lin.weight, lin.bias)
    lin.load_state_dict(other.state_dict())
    with torch.inference_mode():
        new = prepacked.linear(x, lin.weight, lin.bias)
        ref = F.linear(x, other.weight, other.bias)
    assert not torch.allclose(old, ref, atol=1e-2), "the new weights must change the output"
    _close(new, ref)


def test_autograd_takes_plain_path():
    """With grad enabled and x or the weight requiring grad, the plain path runs: backward works, nothing is packed."""
    w, b = _fused(torch.float32)
    x = torch.randn(2, 7, D, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    out = prepacked.linear(x, w, b, rows=slice(D, None))
    assert out.requires_grad
    out.square().sum().backward()
    F.linear(xr, w[D:], b[D:]).square().sum().backward()
    assert torch.equal(x.grad, xr.grad)
    assert len(prepacked._CACHE) == 0

    lin = torch.nn.Linear(D, 3 * D)
    y = torch.randn(4, D)
    prepacked.linear(y, lin.weight, lin.bias).sum().backward()
    gw = lin.weight.grad.clone()
    lin.weight.grad = None
    F.linear(y, lin.weight, lin.bias).sum().backward()
    assert torch.equal(gw, lin.weight.grad)
    assert len(prepacked._CACHE) == 0


def test_env_switch_off(monkeypatch):
    """PATCHRANK_PREPACK=0 runs plain F.linear (bit-identical, nothing packed); unsetting it packs again."""
    w, b = _fused(torch.float32)
    x = torch.randn(2, 7, D)
    monkeypatch.setenv("PATCHRANK_PREPACK", "0")
    with torch.inference_mode():
        assert torch.equal(prepacked.linear(x, w, b), F.linear(x, w, b))
    assert len(prepacked._CACHE) == 0
    monkeypatch.delenv("PATCHRANK_PREPACK")
    with torch.inference_mode():
        prepacked.linear(x, w, b)
    assert _entries(w) == 1


def test_float64_takes_plain_path():
    """float64 runs plain F.linear: bit-identical and nothing packed."""
    w, b = _fused(torch.float64)
    x = torch.randn(2, 7, D, dtype=torch.float64)
    with torch.inference_mode():
        assert torch.equal(prepacked.linear(x, w, b), F.linear(x, w, b))
        assert torch.equal(prepacked.linear(x, w, b, rows=slice(0, D)), F.linear(x, w[:D], b[:D]))
    assert len(prepacked._CACHE) == 0


def test_freed_weight_drops_entry():
    """Freeing a weight drops its cache entries (the packed copy does not outlive the model)."""
    keep, _ = _fused(torch.float32, seed=1)
    w, b = _fused(torch.float32, seed=2)
    x = torch.randn(3, D)
    with torch.inference_mode():
        prepacked.linear(x, keep, None)
        prepacked.linear(x, w, b)
        prepacked.linear(x, w, b, rows=slice(D, None))
    assert len(prepacked._CACHE) == 3
    del w
    gc.collect()
    assert len(prepacked._CACHE) == 1
    assert _entries(keep) == 1


def test_threads_share_one_entry(monkeypatch):
    """4 threads calling linear at once on one fresh weight all get F.linear's answer, and it is packed once."""
    assert prepacked._works(torch.float32)            # its own one-time packing is not counted
    reorder, packs = torch.ops.mkldnn._reorder_linear_weight, []

    def slow_reorder(*args, **kwargs):                # widens the window in which threads race
        packs.append(threading.get_ident())
        time.sleep(0.05)
        return reorder(*args, **kwargs)

    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", slow_reorder)
    w, b = _fused(torch.float32, seed=3)
    xs = [torch.randn(2, 7, D, generator=torch.Generator().manual_seed(10 + i)) for i in range(4)]
    out, errors = [None] * 4, []
    start = threading.Barrier(4)

    def work(i):
        try:
            start.wait()
            with torch.inference_mode():
                out[i] = [prepacked.linear(xs[i], w, b) for _ in range(5)]
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in range(4):
        ref = F.linear(xs[i], w, b)
        for got in out[i]:
            _close(got, ref)
    assert len(packs) == 1, f"packed {len(packs)} times"
    assert _entries(w) == 1
    assert len(prepacked._CACHE) == 1


@pytest.mark.parametrize("keep_ratio", [0.6, 1.0])
def test_bundled_model_same_with_and_without_prepack(bundled, monkeypatch, keep_ratio):
    """The bundled model's pruned encode_image agrees to 1e-5 with prepacking on and off, and with open_clip's own encode_image."""
    m = bundled
    torch.manual_seed(0)
    x = torch.randn(2, 3, *m.image_size)
    with torch.inference_mode():
        ref = m.clip.encode_image(x)
        on = m.encode_image(x, keep_ratio=keep_ratio, ranker="norm")
        on_all = m.encode_image(x)
        assert len(prepacked._CACHE) > 0, "the model's linears were not packed"
        prepacked.clear()
        monkeypatch.setenv("PATCHRANK_PREPACK", "0")
        off = m.encode_image(x, keep_ratio=keep_ratio, ranker="norm")
        off_all = m.encode_image(x)
        assert len(prepacked._CACHE) == 0
    assert torch.allclose(on, off, atol=1e-5, rtol=0)
    assert torch.allclose(on_all, ref, atol=1e-5, rtol=0)
    assert torch.allclose(off_all, ref, atol=1e-5, rtol=0)
    if keep_ratio == 1.0:
        assert torch.allclose(on, ref, atol=1e-5, rtol=0)


def test_write_through_data_repacks():
    """A write through ``.data`` (no version bump, as EMA updates do) still repacks."""
    lin = torch.nn.Linear(D, 2 * D)
    x = torch.randn(4, D)
    with torch.inference_mode():
        prepacked.linear(x, lin.weight, lin.bias)
    lin.weight.data.add_(1.0)
    with torch.inference_mode():
        got = prepacked.linear(x, lin.weight, lin.bias)
    _close(got, F.linear(x, lin.weight, lin.bias).detach())


def test_inference_mode_weight_reloaded_repacks():
    """Weights made under inference_mode have no version counter; a reload is still seen."""
    with torch.inference_mode():
        lin = torch.nn.Linear(D, D)
        x = torch.randn(4, D)
        prepacked.linear(x, lin.weight, lin.bias)
        lin.load_state_dict({"weight": torch.randn(D, D), "bias": torch.randn(D)})
        got = prepacked.linear(x, lin.weight, lin.bias)
        _close(got, F.linear(x, lin.weight, lin.bias))


def test_autocast_and_jit_trace_take_plain_path():
    """Under CPU autocast the op's dtype is autocast's (bf16), and tracing records F.linear."""
    lin = torch.nn.Linear(D, D)
    x = torch.randn(4, D)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert prepacked.linear(x, lin.weight, lin.bias).dtype == torch.bfloat16
    assert not prepacked._CACHE
    with torch.no_grad():
        lin.weight.requires_grad_(False)
        lin.bias.requires_grad_(False)
        traced = torch.jit.trace(lambda t: prepacked.linear(t, lin.weight, lin.bias), x, check_trace=False)
    assert not prepacked._CACHE and torch.allclose(traced(x), F.linear(x, lin.weight, lin.bias))


def test_off_block_is_plain_in_its_thread_only():
    """``off()`` gives F.linear inside the block (nothing packed), restores after it, even on an
    exception, and leaves other threads packing."""
    lin = torch.nn.Linear(D, D)
    x = torch.randn(4, D)
    seen = []
    with torch.inference_mode():
        with prepacked.off():
            assert torch.equal(prepacked.linear(x, lin.weight, lin.bias), F.linear(x, lin.weight, lin.bias))
            other = threading.Thread(target=lambda: seen.append(prepacked.enabled()))
            other.start()
            other.join()
        assert not prepacked._CACHE and seen == [True]
        with pytest.raises(RuntimeError), prepacked.off():
            raise RuntimeError("inside")
        assert prepacked.enabled()
        prepacked.linear(x, lin.weight, lin.bias)
    assert _entries(lin.weight) == 1
