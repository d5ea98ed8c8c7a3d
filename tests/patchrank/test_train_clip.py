"""train-clip: the schedule, patch dropout, the contrastive targets, resuming, determinism by seed."""
import json

import pytest
import torch

from patchrank import train_clip as T
from patchrank import train_schedule as TS
from patchrank.errors import PatchRankError
from tests.patchrank.test_scenes import needs_fmnist

ONE = {"batch": 8, "steps": 4, "lr": 1e-3, "warmup": 2, "lr_floor": 1e-5, "weight_decay": 0.1,
       "grad_clip": 1.0, "seed": 0}
TWO = {k: v for k, v in ONE.items() if k not in ("steps", "lr", "warmup")}
TWO["cycles"] = [{"steps": 4, "lr": 1e-3, "warmup": 2}, {"steps": 3, "lr": 5e-4, "warmup": 1}]
MASKED = dict(TWO, cycles=[dict(TWO["cycles"][0], patch_dropout=0.5, unmasked_tail=1),
                           dict(TWO["cycles"][1], patch_dropout=[0.5, 0.9], unmasked_tail=1)])


def test_schedule_warms_up_decays_and_restarts():
    lrs = [TS.lr_at(s, TWO) for s in range(8)]
    assert lrs[:4] == [TS.lr_at(s, ONE) for s in range(4)]          # first cycle = the one-cycle config
    assert lrs[0] == pytest.approx(5e-4) and lrs[1] == pytest.approx(1e-3)
    assert lrs[3] < lrs[2] == lrs[1]                          # cosine after warm-up
    assert lrs[4] == pytest.approx(5e-4)                         # warm restart to the second peak
    assert 1e-5 < lrs[6] < lrs[5] == pytest.approx(5e-4)
    assert lrs[7] == pytest.approx(1e-5)                         # past the schedule: the floor
    assert TS.total_steps(TWO) == 7


def test_resumable_only_when_the_past_schedule_is_unchanged():
    assert TS.resumable(ONE, TWO, 4)                  # finished one-cycle run continues into two
    assert TS.resumable(ONE, TWO, 2)
    shorter = dict(TWO, cycles=[{"steps": 5, "lr": 1e-3, "warmup": 2}])
    assert not TS.resumable(ONE, shorter, 2)          # the cosine of a running cycle would change
    assert not TS.resumable(ONE, dict(TWO, batch=16), 4)
    assert not TS.resumable(ONE, dict(TWO, seed=1), 4)


@pytest.mark.slow
@needs_fmnist
def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    cfg = {"model_cfg": {"embed_dim": 16,
                         "vision_cfg": {"image_size": 112, "patch_size": 16, "width": 32, "layers": 1,
                                        "head_width": 16, "mlp_ratio": 2.0},
                         "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32,
                                      "heads": 2, "layers": 1}},
           "prune_layer": 0, "train": MASKED}
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
    bad = dict(cfg, train=dict(MASKED, batch=4))
    path.write_text(json.dumps(bad))
    with pytest.raises(PatchRankError, match="other settings"):
        T.train(tmp_path / "a", **kw)


def test_patch_dropout_per_cycle_until_its_unmasked_tail():
    rates = [TS.patch_dropout(s, MASKED) for s in range(8)]
    assert rates[:4] == [0.5, 0.5, 0.5, 0.0]                      # cycle 1: fixed rate, then its tail
    assert rates[6:] == [0.0, 0.0]                                # cycle 2's tail; past the end
    assert 0.5 <= rates[4] < 0.9 and 0.5 <= rates[5] < 0.9 and rates[4] != rates[5]   # drawn per step
    assert rates == [TS.patch_dropout(s, MASKED) for s in range(8)]   # ...seeded by (seed, step)
    assert rates[4:6] != [TS.patch_dropout(s, dict(MASKED, seed=1)) for s in (4, 5)]
    assert [TS.patch_dropout(s, TWO) for s in range(7)] == [0.0] * 7
    one = dict(ONE, patch_dropout=0.25, unmasked_tail=1)          # the one-cycle (top-level) format
    assert [TS.patch_dropout(s, one) for s in range(5)] == [0.25] * 3 + [0.0] * 2
    with pytest.raises(ValueError, match="inside each cycle"):
        TS.schedule(dict(TWO, patch_dropout=0.5))                   # would be silently ignored
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        TS.schedule(dict(ONE, patch_dropout=[0.5, 1.0]))            # nothing left to encode
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        TS.schedule(dict(ONE, patch_dropout=[0.6, 0.5]))
    with pytest.raises(ValueError, match=r"needs \['lr'\]"):
        TS.schedule(dict(TWO, cycles=[{"steps": 4, "warmup": 2}]))   # would fail mid-run
    with pytest.raises(ValueError, match="unmasked_tail <= steps"):
        TS.schedule(dict(ONE, unmasked_tail=5))


def test_a_bad_schedule_stops_the_run_before_it_starts(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"model_cfg": {}, "prune_layer": 0,
                                "train": dict(ONE, patch_dropout=[0.5, 1.0])}))
    with pytest.raises(PatchRankError, match=r"bad train schedule: patch_dropout must be"):
        T.train(tmp_path / "run", config_path=path, progress=False)
    assert not (tmp_path / "run").exists()


def test_resuming_must_not_change_a_cycle_that_has_begun():
    one = dict(ONE, patch_dropout=0.5, unmasked_tail=2)
    longer = dict(TWO, cycles=[dict(TWO["cycles"][0], patch_dropout=0.5, unmasked_tail=2),
                               dict(TWO["cycles"][1], patch_dropout=[0.5, 0.9])])
    assert TS.resumable(one, longer, 4)     # the finished one-cycle run goes on into a new cycle
    moved = dict(longer, cycles=[dict(longer["cycles"][0], unmasked_tail=1), longer["cycles"][1]])
    assert not TS.resumable(one, moved, 2)  # its tail moved under a cycle already running
    assert not TS.resumable(ONE, longer, 2)  # patch dropout itself changed


@needs_fmnist
def test_scenes_say_whether_their_caption_names_the_colour():
    from patchrank.data import scenes as S
    gen = S.SceneGenerator("train", seed=0)
    seen = set()
    for sc in gen.batch(range(60)):
        named = [k for k in S.COLOUR_NAMES if k in sc.caption.rstrip(".").split()]
        assert sc.names_colour == bool(named), sc.caption
        assert named in ([], [S.COLOUR_NAMES[sc.colour]]), sc.caption
        seen.add(sc.names_colour)
    assert seen == {True, False}


def test_colourless_captions_are_positives_for_every_item_of_their_class():
    from types import SimpleNamespace as Scene
    scenes = [Scene(label=0, colour=0, names_colour=True),     # a red top: "a red top."
              Scene(label=0, colour=1, names_colour=False),    # an orange top: "a photo of a top."
              Scene(label=0, colour=2, names_colour=True),     # a yellow top: "a yellow top."
              Scene(label=1, colour=0, names_colour=False)]    # a red bag: "a photo of a bag."
    pos = T.positives(scenes)
    assert pos.tolist() == [[True, True, False, False],   # a red top: its own caption, "a top"
                            [False, True, False, False],  # an orange top: "a red top" is false
                            [False, True, True, False],
                            [False, False, False, True]]  # a bag: nothing about tops is true
    img, txt = torch.randn(4, 8), torch.randn(4, 8)
    loss = T.contrastive_loss(img, txt, torch.tensor(10.0), pos)
    # the same loss written out: mean over rows of -sum_j target_ij log softmax_ij, both ways
    logits = 10 * torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T
    p = pos.float()
    i2t = -(p / p.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    t2i = -(p.T / p.T.sum(1, keepdim=True) * logits.T.log_softmax(1)).sum(1).mean()
    assert torch.allclose(loss, (i2t + t2i) / 2)
    assert torch.allclose(T.contrastive_loss(img, txt, torch.tensor(10.0), torch.eye(4, dtype=torch.bool)),
                          (torch.nn.functional.cross_entropy(logits, torch.arange(4))
                           + torch.nn.functional.cross_entropy(logits.T, torch.arange(4))) / 2)
