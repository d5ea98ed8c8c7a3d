"""Baselines: same kept count, same layer, same pruned forward; references written plainly."""
import functools

import pytest
import torch

from patchrank import baselines as B
from patchrank import forward, rankers
from patchrank.errors import PatchRankError

from tests.conftest import tiny_vit
from patchrank import ordering

SCORERS = [B.RandomRanker, B.AttentionRanker, B.NormRanker]
MERGERS = [B.ToMeMerger, B.AttentionFuseMerger, lambda: B.ToMeMerger("tokens")]
NAMES = ["random", "attention", "attention+fuse", "norm", "tome"]


@functools.lru_cache(maxsize=None)
def _model(k, seed=0):
    """One tiny model per (prune layer, seed), built once per module (never mutated here)."""
    return tiny_vit(prune_layer=k, seed=seed)


@pytest.fixture(scope="module")
def tiny():
    """Overrides conftest's per-test tiny model: these tests never mutate it, so build it once."""
    return _model(1)


def _x(m, b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, *m.image_size, generator=g)


@pytest.mark.parametrize("k", [0, 1, 3])
@pytest.mark.parametrize("make", SCORERS + MERGERS)
def test_keep_all_equals_full_embedding(k, make):
    m = _model(k)
    x = _x(m)
    with torch.inference_mode():
        full = m.clip.encode_image(x)
        got = m.encode_image(x, keep_ratio=1.0, ranker=make())
    assert torch.allclose(got, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("make", SCORERS)
def test_scorers_keep_the_right_count_through_the_one_forward(tiny, make):
    x = _x(tiny)
    r = make()
    with torch.inference_mode():
        h = forward.run_prefix(tiny.visual, x, tiny.prune_layer)
        s = r.scores(tiny, x, h)
        assert s.shape == (3, tiny.num_patches)
        for ratio in (0.25, 0.6):
            n = tiny.keep_count(ratio)
            keep = ordering.keep_from_scores(s, n)
            assert keep.shape == (3, n)
            via_ranker = tiny.encode_image(x, keep_ratio=ratio, ranker=r)
            via_ids = tiny.encode_image(x, keep=keep)
            assert torch.equal(via_ranker, via_ids)


@pytest.mark.parametrize("make", MERGERS)
def test_mergers_return_cls_plus_k_tokens(tiny, make):
    x = _x(tiny)
    with torch.inference_mode():
        h = tiny.prefix(x)
        for k in (1, 5, 8, 9, 15, 16):
            out = make().reduce(tiny, h, k)
            assert out.shape == (3, 1 + k, tiny.width)
            assert torch.equal(out[:, 0], h[:, 0])       # CLS untouched, first
    assert tiny.encode_image(x, keep_ratio=0.5, ranker=make()).shape == (3, tiny.embed_dim)


def _mha_cls_attention(block, h):
    """Reference: ask nn.MultiheadAttention itself for its (head-averaged) weights."""
    y = block.ln_1(h)
    _, w = block.attn(y, y, y, need_weights=True, average_attn_weights=True)
    return w[:, 0, 1:]


@pytest.mark.parametrize("k", [0, 1, 2])
def test_attention_scores_equal_multihead_attention_weights(k):
    m = _model(k, seed=3)
    x = _x(m, seed=1)
    blocks = m.visual.transformer.resblocks
    with torch.inference_mode():
        h = m.prefix(x)
        got = B.AttentionRanker().scores(m, x, h)
        if k == 0:    # no earlier block: block 0's own attention on its input
            ref = _mha_cls_attention(blocks[0], h)
        else:         # the last block before pruning, on its own input
            ref = _mha_cls_attention(blocks[k - 1], forward.run_prefix(m.visual, x, k - 1))
        assert torch.allclose(got, ref, atol=1e-6)
        assert torch.allclose(B.cls_attention(blocks[k], h), _mha_cls_attention(blocks[k], h), atol=1e-6)
    assert (got.sum(1) <= 1 + 1e-5).all() and (got >= 0).all()


def test_norm_scores_are_token_norms(tiny):
    x = _x(tiny)
    with torch.inference_mode():
        h = tiny.prefix(x)
        s = B.NormRanker().scores(tiny, x, h)
    for b in range(3):
        for p in range(tiny.num_patches):
            assert s[b, p].item() == pytest.approx(torch.sqrt((h[b, 1 + p] ** 2).sum()).item(), rel=1e-5)


def test_random_is_deterministic_by_default_and_follows_the_generator(tiny):
    x = _x(tiny)
    h = tiny.prefix(x)
    r = B.RandomRanker()
    assert torch.equal(r.scores(tiny, x, h), r.scores(tiny, x, h))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(r.scores(tiny, x, h, generator=g1), r.scores(tiny, x, h, generator=g2))
    assert not torch.equal(r.scores(tiny, x, h, generator=g1), r.scores(tiny, x, h))
    assert not torch.equal(B.RandomRanker(seed=1).scores(tiny, x, h), r.scores(tiny, x, h))


def test_fuse_keeps_top_attention_and_averages_the_rest(tiny):
    x = _x(tiny)
    k = 6
    with torch.inference_mode():
        h = tiny.prefix(x)
        a = B.cls_attention(tiny.visual.transformer.resblocks[tiny.prune_layer], h)
        out = B.AttentionFuseMerger().reduce(tiny, h, k)
    for b in range(3):
        ranked = sorted(range(tiny.num_patches), key=lambda p: (-a[b, p].item(), p))
        kept, dropped = sorted(ranked[:k - 1]), ranked[k - 1:]
        for j, p in enumerate(kept):
            assert torch.equal(out[b, 1 + j], h[b, 1 + p])
        w = torch.stack([a[b, p] for p in dropped])
        fused = sum(a[b, p] * h[b, 1 + p] for p in dropped) / w.sum()
        assert torch.allclose(out[b, -1], fused, atol=1e-5)


@pytest.mark.parametrize("metric", ["keys", "tokens"])
def test_tome_groups_partition_and_tokens_are_group_means(tiny, metric):
    x = _x(tiny, b=4)
    with torch.inference_mode():
        h = tiny.prefix(x)
        for k in (1, 3, 7, 8, 12, 15):     # k < P/2 needs several bipartite rounds
            res = B.ToMeMerger(metric).merge(tiny, h, k)
            assert res.tokens.shape == (4, 1 + k, tiny.width)
            for b in range(4):
                groups = res.groups[b].tolist()
                assert sorted(set(groups)) == list(range(k))          # k non-empty groups
                for j in range(k):
                    members = [p for p in range(tiny.num_patches) if groups[p] == j]
                    assert res.sizes[b, j].item() == len(members)
                    # size-weighted means of means = the plain mean of all member patches
                    mean = torch.stack([h[b, 1 + p] for p in members]).mean(0)
                    assert torch.allclose(res.tokens[b, 1 + j], mean, atol=1e-5)


def test_tome_single_round_merges_most_similar_pairs():
    """Hand-made tokens: A tokens 0 and 2 are copies of B tokens 3 and 1; merging 2 of 4 pairs
    them, keeps 4 and 6 apart, and leaves the copies' means unchanged."""
    d = 8
    g = torch.Generator().manual_seed(0)
    t = torch.randn(8, d, generator=g)
    t[0], t[2] = t[3] * 2.0, t[1] * 3.0           # same direction: cosine 1
    h = torch.cat([torch.zeros(1, d), t])[None]
    res = B.bipartite_merge(h, 6)
    grp = res.groups[0].tolist()
    assert grp[0] == grp[3] and grp[2] == grp[1]
    assert len(set(grp)) == 6
    assert torch.allclose(res.tokens[0, 1 + grp[0]], (t[0] + t[3]) / 2)


def test_tome_groups_helper_and_errors(tiny):
    x = _x(tiny, b=2)
    g = B.tome_groups(tiny, x, keep_ratio=0.25)
    assert g.shape == (2, tiny.num_patches) and int(g.max()) == tiny.keep_count(0.25) - 1
    with pytest.raises(PatchRankError):
        B.ToMeMerger("values")
    with pytest.raises(PatchRankError):
        B.bipartite_merge(tiny.prefix(x), 0)


@pytest.mark.parametrize("name", NAMES)
def test_registered_names_run_end_to_end(bundled, eval_batch, name):
    x = eval_batch[0][:4]
    with torch.inference_mode():
        out = bundled.encode_image(x, keep_ratio=0.6, ranker=name)
        full = bundled.encode_image(x)
    assert out.shape == full.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, full)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from 2 threads, and on a busy machine OpenMP spin-waits make them
    many times slower; restore the session's setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_every_builtin_ranker_declares_its_cost(bundled):
    """Equal cost means all cost: each registered ranker says what choosing patches costs."""
    f, k = bundled.flops(), bundled.prune_layer
    for name in rankers.available():
        g = rankers.ranker_gflops(bundled, name)
        assert g is not None and g >= 0, name
    assert rankers.ranker_gflops(bundled, "random") == 0
    assert rankers.ranker_gflops(bundled, "norm") == rankers.ranker_gflops(bundled, "norm-low") > 0
    recompute = f.patch_embed + sum(f.blocks[:k - 1])
    assert rankers.ranker_gflops(bundled, "attention") > recompute > 0
    assert rankers.ranker_gflops(bundled, "golden") > 100 * float(f)    # a search per image


@pytest.mark.parametrize("name", ["attention", "tome"])
def test_ranker_cost_matches_the_flop_counter(bundled, eval_batch, name):
    """The analytic cost equals what torch's FLOP counter sees the ranker run (matmuls, the
    convolution and attention; like ours it leaves out LayerNorm and softmax)."""
    from torch.utils.flop_counter import FlopCounterMode
    x = eval_batch[0][:2]
    r = rankers.resolve(name)
    with torch.no_grad():
        h = forward.run_prefix(bundled.visual, x, bundled.prune_layer)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        if hasattr(r, "scores"):
            r.scores(bundled, x, h)
        else:
            r.reduce(bundled, h, bundled.keep_count(0.5))
    measured = fc.get_total_flops() / 1e9 / len(x)
    assert rankers.ranker_gflops(bundled, r) == pytest.approx(measured, rel=0.02)


def test_low_norm_ranker_is_the_reverse_of_norm(bundled, eval_batch):
    x = eval_batch[0][:2]
    h = bundled.prefix(x)
    hi, lo = rankers.resolve("norm").scores(bundled, x, h), rankers.resolve("norm-low").scores(bundled, x, h)
    assert torch.equal(ordering.order_from_scores(lo), ordering.order_from_scores(-hi))
    assert rankers.resolve("norm-low").name == "norm-low"
