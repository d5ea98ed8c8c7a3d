"""train-clip: the schedule, patch dropout, the contrastive targets, resuming, determinism by seed."""
import json

import pytest
import torch

from patchrank import train_clip as T
from tests.test_scenes import needs_fmnist

ONE = {"batch": 8, "steps": 4, "lr": 1e-3, "warmup": 2, "lr_floor": 1e-5, "weight_decay": 0.1,
       "grad_clip": 1.0, "seed": 0}
TWO = {k: v for k, v in ONE.items() if k not in ("steps", "lr", "warmup")}
TWO["cycles"] = [{"steps": 4, "lr": 1e-3, "warmup": 2}, {"steps": 3, "lr": 5e-4, "warmup": 1}]
MASKED = dict(TWO, patch_dropout=0.5, unmasked_tail=2)


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
    with pytest.raises(SystemExit, match="other settings"):
        T.train(tmp_path / "a", **kw)


def test_patch_dropout_until_the_unmasked_tail():
    assert [T.patch_dropout(s, MASKED) for s in range(8)] == [0.5] * 5 + [0.0] * 3
    assert [T.patch_dropout(s, TWO) for s in range(7)] == [0.0] * 7
    everywhere = dict(TWO, patch_dropout=0.25)
    assert [T.patch_dropout(s, everywhere) for s in range(7)] == [0.25] * 7


def test_resuming_must_not_move_the_unmasked_tail_under_finished_steps():
    one = dict(ONE, patch_dropout=0.5, unmasked_tail=2)          # steps 2, 3 unmasked
    two = dict(MASKED)                                           # steps 5, 6 unmasked
    assert T.resumable(one, two, 2)        # nothing unmasked yet: the tail may still move
    assert not T.resumable(one, two, 4)    # steps 2, 3 ran unmasked; the longer run masks them
    assert not T.resumable(ONE, two, 2)    # patch dropout itself changed


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
