"""Predictor: architecture, cost, losses, training on a learnable synthetic target, files, CLI."""
import io
import json
import math
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import patchrank as pr
from patchrank import predictor as P
from patchrank import predictor_training as T
from patchrank.errors import ModelMismatch, PatchRankError, WeightsUnavailable

from tests.conftest import tiny_vit
from patchrank import ordering

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The predictor and tiny models gain nothing from 2 threads; on a busy machine OpenMP
    spin-waits make them many times slower. Restore the session's setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class TensorSet:
    """The dataset interface train_predictor reads (``ids``, ``image(i)``), over tensors."""

    def __init__(self, x, prefix="img"):
        self.x = x
        self.ids = [f"{prefix}/{i:04d}" for i in range(len(x))]

    def image(self, i):
        return self.x[i]


def _images(m, n, seed=0):
    return torch.randn(n, 3, *m.image_size, generator=torch.Generator().manual_seed(seed))


def _linear_target(m, x, seed=1):
    """A learnable 'golden' order: patches sorted by a fixed random readout of their tokens at k."""
    w = torch.randn(m.width, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return ordering.order_from_scores(m.prefix(x)[:, 1:] @ w)


# -- architecture and cost ------------------------------------------------------------------------
def test_paper_size_and_reference_forward():
    p = P.Predictor(768, 196)
    assert p.num_params() == 46246       # the paper's ~46 K
    torch.manual_seed(0)
    h = torch.randn(2, 197, 768)
    x = h.view(2, 197, 64, 12).mean(-1)                 # pool: mean of 12 neighbouring channels
    y = F.layer_norm(x, (64,), p.norm1.weight, p.norm1.bias, 1e-6).transpose(1, 2)
    t1, t2 = p.token_mlp[0], p.token_mlp[2]
    x = x + (F.gelu(y @ t1.weight.T + t1.bias) @ t2.weight.T + t2.bias).transpose(1, 2)
    y = F.layer_norm(x, (64,), p.norm2.weight, p.norm2.bias, 1e-6)
    c1, c2 = p.channel_mlp[0], p.channel_mlp[2]
    x = x + F.gelu(y @ c1.weight.T + c1.bias) @ c2.weight.T + c2.bias
    ref = (x[:, 1:] @ p.head.weight.T + p.head.bias)[..., 0]
    with torch.no_grad():
        assert torch.allclose(p(h), ref, atol=1e-5)
    with pytest.raises(PatchRankError, match="expects tokens"):
        p(torch.randn(1, 50, 768))


def test_cost_is_below_one_percent_of_vit_b16():
    m = pr.load_model("ViT-B-16", pretrained=None)
    c = P.Predictor.for_model(m).cost(m, keep_ratio=0.6)
    assert c["params"] == 46246
    assert c["gflops_share"] <= 0.01 and c["params_share"] <= 0.01
    assert c["encoder_gflops"] == pytest.approx(float(m.flops(keep=118)))


# -- losses ---------------------------------------------------------------------------------------
def test_kl_target_and_loss_match_the_paper_formula():
    order = torch.stack([torch.randperm(196, generator=torch.Generator().manual_seed(s)) for s in range(3)])
    t = P.keep_set_target(order, keep_ratio=146 / 196)   # the paper's bottom-50 target
    assert torch.allclose(t.sum(1), torch.ones(3))
    top, bottom = order[:, :146], order[:, 146:]
    assert (t.gather(1, top) > 1 / 147).all() and (t.gather(1, bottom) < 1e-4).all()
    scores = torch.randn(3, 196)
    logq = scores.log_softmax(1)
    ref = sum(float((t[b] * (t[b].log() - logq[b])).sum()) for b in range(3)) / 3
    assert float(P.kl_keep_loss(scores, order, keep_ratio=146 / 196)) == pytest.approx(ref, rel=1e-5)


def test_listwise_loss_is_plackett_luce_nll():
    order = torch.stack([torch.randperm(9, generator=torch.Generator().manual_seed(s)) for s in range(2)])
    s = torch.randn(2, 9)
    total = 0.0
    for b in range(2):
        for j in range(9):
            rest = [float(s[b, order[b, i]]) for i in range(j, 9)]
            total += math.log(sum(math.exp(v) for v in rest)) - float(s[b, order[b, j]])
    assert float(P.listwise_loss(s, order)) == pytest.approx(total / 18, rel=1e-5)


def test_margin_loss_on_the_sampled_pairs():
    order = torch.stack([torch.randperm(12, generator=torch.Generator().manual_seed(s)) for s in range(2)])
    s = torch.randn(2, 12)
    got = P.margin_loss(s, order, pairs=40, margin=1.0, generator=torch.Generator().manual_seed(3))
    pos = torch.randint(0, 12, (2, 40, 2), generator=torch.Generator().manual_seed(3))
    terms = []
    for b in range(2):
        for a, c in pos[b].tolist():
            if a != c:
                hi, lo = order[b, min(a, c)], order[b, max(a, c)]
                terms.append(max(0.0, 1.0 - float(s[b, hi] - s[b, lo])))
    assert float(got) == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    perfect = ordering.scores_from_order(order) * 2.0     # every pair separated by >= 2
    assert float(P.margin_loss(perfect, order)) == 0.0


# -- training -------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss, key, floor", [("listwise", "kendall_tau", 0.85),
                                               ("margin", "kendall_tau", 0.85),
                                               ("kl", "kept_iou@0.6", 0.8)])
def test_learns_a_synthetic_ranking(loss, key, floor):
    """180 steps on a learnable target (order of a linear readout of the tokens at k) reach high
    held-out agreement: the training loop, losses and feature cache work."""
    m = tiny_vit(prune_layer=1)
    x = _images(m, 240)
    golden = _linear_target(m, x)
    ds = TensorSet(x)
    rankings = {ds.ids[i]: golden[i] for i in range(len(x))}
    res = T.train_predictor(m, ds, rankings, loss=loss, epochs=15, batch=16, val_fraction=0.2,
                            patience=None, seed=0)
    assert res.num_train == 192 and res.num_val == 48
    assert res.val_metrics[key] > floor, res.val_metrics
    untrained = _fresh_agreement(m, x, golden, res)
    assert res.val_metrics[key] > untrained[key] + 0.1
    assert res.predictor.meta["settings"]["loss"] == loss


def _fresh_agreement(m, x, golden, res):
    """Agreement of a fresh (untrained) predictor on the same images: the floor to beat."""
    from patchrank import metrics as M
    with torch.random.fork_rng():
        torch.manual_seed(123)
        fresh = P.Predictor.for_model(m)
    return M.agreement(fresh.rank(m, x), golden)


def test_training_is_deterministic_and_early_stopping_keeps_the_best_epoch():
    m = tiny_vit(prune_layer=1)
    x = _images(m, 48)
    noise = torch.stack([torch.randperm(m.num_patches, generator=torch.Generator().manual_seed(s))
                         for s in range(48)])        # unlearnable: validation loss soon rises
    ds = TensorSet(x)
    rankings = {ds.ids[i]: noise[i] for i in range(48)}
    kw = dict(loss="listwise", epochs=60, batch=8, lr=1e-2, val_fraction=0.25, patience=3, seed=4)
    a = T.train_predictor(m, ds, rankings, **kw)
    b = T.train_predictor(m, ds, rankings, **kw)
    for (k1, v1), (k2, v2) in zip(a.predictor.state_dict().items(), b.predictor.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    assert len(a.history) < 60
    best = min(e["val_loss"] for e in a.history)
    assert a.val_metrics["loss"] == pytest.approx(best, rel=1e-6)
    assert a.history[a.best_epoch - 1]["val_loss"] == best


def test_training_refuses_bad_inputs():
    m = tiny_vit(prune_layer=1)
    ds = TensorSet(_images(m, 4))
    good = {i: torch.randperm(m.num_patches) for i in ds.ids}
    with pytest.raises(PatchRankError, match="no image"):
        T.train_predictor(m, ds, {"other": good[ds.ids[0]]}, epochs=1)
    with pytest.raises(PatchRankError, match="full order"):
        T.train_predictor(m, ds, {i: torch.zeros(m.num_patches, dtype=torch.long) for i in ds.ids}, epochs=1)
    with pytest.raises(PatchRankError, match="unknown loss"):
        T.train_predictor(m, ds, good, loss="hinge", epochs=1)
    with pytest.raises(ModelMismatch, match="other-model"):
        T.train_predictor(m, ds, ({"model_id": "other-model"}, good), epochs=1)
    with pytest.raises(PatchRankError, match="prune layer 2"):
        T.train_predictor(m, ds, ({"model_id": m.model_id, "settings": {"prune_layer": 2}}, good), epochs=1)


# -- ranker protocol, files -------------------------------------------------------------------------
def test_predictor_prunes_through_the_one_forward(tiny):
    p = P.Predictor.for_model(tiny)
    x = _images(tiny, 3)
    with torch.inference_mode():
        s = p(tiny.prefix(x))
        got = tiny.encode_image(x, keep_ratio=0.5, ranker=p)
        ref = tiny.encode_image(x, keep=ordering.keep_from_scores(s, tiny.keep_count(0.5)))
        assert torch.equal(got, ref)
        assert torch.equal(p.rank(tiny, x), ordering.order_from_scores(s))
        assert torch.equal(tiny.rank(x, p), p.rank(tiny, x))
        assert torch.allclose(tiny.encode_image(x, keep_ratio=1.0, ranker=p), tiny.clip.encode_image(x), atol=1e-5)


def test_bundled_model_end_to_end(bundled, eval_batch):
    p = P.Predictor.for_model(bundled)
    x = eval_batch[0][:4]
    with torch.inference_mode():
        out = bundled.encode_image(x, keep_ratio=0.6, ranker=p)
    assert out.shape == (4, bundled.embed_dim) and torch.isfinite(out).all()
    assert p.rank(bundled, x).shape == (4, bundled.num_patches)


def test_save_load_round_trip_and_refusals(tmp_path, tiny):
    p = P.Predictor.for_model(tiny, meta={"loss": "kl", "val_metrics": {"kendall_tau": 0.5}})
    path = p.save(tmp_path / "pred.safetensors")
    q = pr.load_predictor(path, model=tiny)
    for (k1, v1), (k2, v2) in zip(p.state_dict().items(), q.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    head = P.read_header(path)
    assert head["model_id"] == tiny.model_id and head["prune_layer"] == tiny.prune_layer
    assert head["width"] == tiny.width and head["num_patches"] == tiny.num_patches
    assert q.meta["val_metrics"] == {"kendall_tau": 0.5} and q.meta["loss"] == "kl"
    x = _images(tiny, 2)
    assert torch.equal(p.rank(tiny, x), q.rank(tiny, x))

    other = tiny_vit(prune_layer=1, seed=7)
    with pytest.raises(ModelMismatch) as e:
        pr.load_predictor(path, model=other)
    assert tiny.model_id in str(e.value) and other.model_id in str(e.value)
    with pytest.raises(ModelMismatch):                     # checked at use too
        q.scores(other, x, other.prefix(x))
    tiny.prune_layer = 2
    with pytest.raises(ModelMismatch, match="prune_layer = 1"):
        pr.load_predictor(path, model=tiny)
    tiny.prune_layer = 1

    with pytest.raises(WeightsUnavailable, match="not found"):
        pr.load_predictor(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(PatchRankError, match="not a PatchRank predictor"):
        pr.load_predictor(tmp_path / "plain.safetensors")


def test_default_path_is_the_bundled_predictor(tmp_path, monkeypatch):
    from patchrank.bundled import BUNDLED_DIR
    assert P.default_path() == BUNDLED_DIR / "predictor.safetensors"
    monkeypatch.setattr(P, "BUNDLED_DIR", tmp_path)
    with pytest.raises(WeightsUnavailable, match="train-predictor"):
        pr.load_predictor()
    P.Predictor(16, 4, model_id="x").save(tmp_path / "predictor.safetensors")
    assert pr.load_predictor().model_id == "x"


def test_cli_train_predictor(tmp_path, bundled):
    """Rankings folder written through the store, bundled-eval images, JSON on stdout."""
    from patchrank import rankings
    from patchrank.cli import main
    from patchrank.data.datasets import open_dataset
    ds = open_dataset("bundled-eval", limit=24)
    x = torch.stack([bundled.preprocess(ds.image(i)) for i in range(24)])
    golden = _linear_target(bundled, x)
    out = tmp_path / "rankings"
    rankings.prepare(out, bundled.model_id, {"prune_layer": bundled.prune_layer, "score": "synthetic"},
                  grid=bundled.grid, data="bundled-eval")
    with rankings.ShardWriter(out) as w:
        for i in range(24):
            w.append(ds.ids[i], golden[i])
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(["train-predictor", "--rankings", str(out),     # --data: from the folder's meta
                   "--out", str(tmp_path / "p.safetensors"), "--epochs", "2", "--batch", "8",
                   "--val-fraction", "0.25", "--loss", "listwise", "--no-progress", "--threads", "1"])
    assert rc == 0
    summary = json.loads(buf.getvalue())
    assert summary["num_train"] == 18 and summary["num_val"] == 6
    assert summary["model_id"] == bundled.model_id and summary["cost"]["params"] > 0
    p = pr.load_predictor(tmp_path / "p.safetensors", model=bundled)
    assert p.meta["rankings"]["settings"]["score"] == "synthetic"
    rc = main(["train-predictor", "--rankings", str(tmp_path / "nothing"), "--data", "bundled-eval",
               "--out", str(tmp_path / "q.safetensors"), "--no-progress"])
    assert rc == 1                          # a run-time error (usage errors are 2)


@pytest.mark.slow
def test_interrupted_training_resumes_where_it_stopped(bundled, tmp_path):
    """A checkpoint after every epoch: killed while epoch 2 of 4 reports (before its checkpoint),
    the rerun redoes epoch 2 from epoch 1's state and ends with the weights an uninterrupted run
    has."""
    from patchrank import rankings
    from patchrank.data.datasets import open_dataset
    meta, ranks = rankings.load_rankings(ROOT / "assets" / "results" / "golden-eval")
    ds = open_dataset("bundled-eval", 64)
    kw = dict(epochs=4, batch=16, loss="margin", seed=3)
    whole = T.train_predictor(bundled, ds, (meta, ranks), **kw)

    def stop_after_two(stage, done, total, info=None):
        if stage == "train" and done == 2:
            raise KeyboardInterrupt
    ck = tmp_path / "p.safetensors.ckpt"
    with pytest.raises(KeyboardInterrupt):
        T.train_predictor(bundled, ds, (meta, ranks), progress=stop_after_two, checkpoint=ck, **kw)
    assert ck.is_file()
    epochs_seen = []
    resumed = T.train_predictor(bundled, ds, (meta, ranks), checkpoint=ck, **kw,
                                progress=lambda s, d, t, i=None: epochs_seen.append(d) if s == "train" else None)
    assert epochs_seen == [2, 3, 4]
    assert all(torch.equal(a, b) for a, b in zip(whole.predictor.state_dict().values(),
                                                 resumed.predictor.state_dict().values()))
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in whole.history]
    with pytest.raises(PatchRankError, match="checkpoint of another training"):
        T.train_predictor(bundled, ds, (meta, ranks), checkpoint=ck, **{**kw, "seed": 4})
