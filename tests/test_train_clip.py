"""train-clip: the schedule, resuming into a longer schedule, and determinism by seed."""
import json

import pytest
import torch

from patchrank import train_clip as T
from tests.test_scenes import needs_fmnist

ONE = {"batch": 8, "steps": 4, "lr": 1e-3, "warmup": 2, "lr_floor": 1e-5, "weight_decay": 0.1,
       "grad_clip": 1.0, "seed": 0}
TWO = {k: v for k, v in ONE.items() if k not in ("steps", "lr", "warmup")}
TWO["cycles"] = [{"steps": 4, "lr": 1e-3, "warmup": 2}, {"steps": 3, "lr": 5e-4, "warmup": 1}]


def test_schedule_warms_up_decays_and_restarts():
    lrs = [T._lr(s, TWO) for s in range(8)]
    assert lrs[:4] == [T._lr(s, ONE) for s in range(4)]          # first cycle = the one-cycle config
    assert lrs[0] == pytest.approx(5e-4) and lrs[1] == pytest.approx(1e-3)
    assert lrs[3] < lrs[2] == lrs[1]                          # cosine after warm-up
    assert lrs[4] == pytest.approx(5e-4)                         # warm restart to the second peak
    assert 1e-5 < lrs[6] < lrs[5] == pytest.approx(5e-4)
    assert lrs[7] == pytest.approx(1e-5)                         # past the schedule: the floor
    assert T.total_steps(TWO) == 7


def test_resumable_only_when_the_past_schedule_is_unchanged():
    assert T.resumable(ONE, TWO, 4)                  # finished one-cycle run continues into two
    assert T.resumable(ONE, TWO, 2)
    shorter = dict(TWO, cycles=[{"steps": 5, "lr": 1e-3, "warmup": 2}])
    assert not T.resumable(ONE, shorter, 2)          # the cosine of a running cycle would change
    assert not T.resumable(ONE, dict(TWO, batch=16), 4)
    assert not T.resumable(ONE, dict(TWO, seed=1), 4)


@needs_fmnist
def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    cfg = {"model_cfg": {"embed_dim": 16,
                         "vision_cfg": {"image_size": 112, "patch_size": 16, "width": 32, "layers": 1,
                                        "head_width": 16, "mlp_ratio": 2.0},
                         "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32,
                                      "heads": 2, "layers": 1}},
           "prune_layer": 0, "train": TWO}
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    kw = dict(threads=1, eval_every=1000, eval_n=8, config_path=path, progress=False)
    T.train(tmp_path / "a", steps=3, **kw)                 # stopped mid-way...
    T.train(tmp_path / "a", **kw)                          # ...and resumed to the end
    T.train(tmp_path / "b", **kw)                          # one uninterrupted run
    a = torch.load(tmp_path / "a" / "ckpt.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=True)
    assert a["step"] == b["step"] == 7
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    bad = dict(cfg, train=dict(TWO, batch=4))
    path.write_text(json.dumps(bad))
    with pytest.raises(SystemExit, match="other settings"):
        T.train(tmp_path / "a", **kw)


def test_shipped_continuation_config_extends_the_shipped_run():
    """configs/bundled_clip_continue.json (MODEL_CARD: going further) resumes the shipped run."""
    shipped = T.load_config()
    more = T.load_config(T.CONFIG_PATH.with_name("bundled_clip_continue.json"))
    assert more["model_cfg"] == shipped["model_cfg"]
    done = T.total_steps(shipped["train"])
    assert T.resumable(shipped["train"], more["train"], done)
    assert T.total_steps(more["train"]) > done
