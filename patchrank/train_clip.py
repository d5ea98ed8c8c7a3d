"""Train the bundled CLIP on generated scenes (``python -m patchrank train-clip``).

Recipe (see MODEL_CARD.md for why): open_clip ``CLIP`` built from ``configs/bundled_clip.json``,
the CLIP contrastive loss with multi-positive targets (every caption in the batch that is *true*
of an image is a positive for it: same class, and same colour unless the caption names none),
class-balanced scenes generated on the fly and deterministic by (seed, step), AdamW in float32,
warm-up then cosine to a floor, and FLIP-style patch dropout (Li et al. 2023, "Scaling
Language-Image Pre-training via Masking": drop a random half of the patch tokens while training,
~2x cheaper steps for nearly the same accuracy per sample) with an unmasked tail, then a
short second cycle that drops a random 0-90 % per step, so the model also decides from the few
dozen tokens that pruning at low keep ratios leaves it (each cycle: ``schedule``, ``patch_dropout``).
Precision: float32 throughout. The brief expected AMX (bf16 working weights ~6x faster), but the
machines this project actually runs on are AMD EPYC (Zen 3, AVX2 only: no AMX, no avx512_bf16),
where a 2048^2 bf16 matmul runs at ~0.3 GFLOP/s against ~130 in fp32 (measured; see README).
Checkpoints are atomic and the run resumes from the last one; every random draw is seeded by
(seed, step), so a resumed run equals an uninterrupted one.
"""
from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data import scenes as S
from .errors import PatchRankError
from .progress import bar as progress_bar
from .files import atomic_path

CONFIG_PATH = Path(__file__).parent / "configs" / "bundled_clip.json"
MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)


def load_config(path: str | os.PathLike = CONFIG_PATH) -> dict:
    with open(path) as f:
        return json.load(f)


def build_clip(model_cfg: dict):
    """An open_clip CLIP (random init) from a plain config dict."""
    import open_clip
    return open_clip.model.CLIP(**model_cfg)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [B,H,W,3] -> normalised float [B,3,H,W]; equals open_clip's eval preprocessing for
    images already at the model's size (Resize/CenterCrop are identities there; tested)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)
    return (x - MEAN) / STD


class _Batches(torch.utils.data.Dataset):
    """Item ``step`` is the whole training batch of that step (so resuming needs no state)."""

    def __init__(self, seed: int, batch: int, steps: int, start: int, token_table: dict):
        self.seed, self.batch, self.steps, self.start = seed, batch, steps, start
        self.token_table = token_table
        self.gen = None

    def __len__(self):
        return self.steps - self.start

    def __getitem__(self, i):
        torch.set_num_threads(1)
        if self.gen is None:
            self.gen = S.SceneGenerator("train", self.seed)
        step = self.start + i
        scenes = self.gen.batch(range(step * self.batch, (step + 1) * self.batch))
        x = np.stack([s.image for s in scenes])
        tokens = torch.stack([self.token_table[s.caption] for s in scenes])
        return step, torch.from_numpy(x), tokens, positives(scenes)


def positives(scenes) -> torch.Tensor:
    """[B_img, B_txt] bool: caption j is true of image i (same class; same colour if it names one).

    Pairing only same class *and* colour would make "a photo of a bag." a negative for every bag
    of another colour in the batch, though it is true of all of them; that is exactly the
    zero-shot prompt, so the wrong targets would blur the very text embedding we evaluate with."""
    label = torch.tensor([s.label for s in scenes])
    colour = torch.tensor([s.colour for s in scenes])
    named = torch.tensor([s.names_colour for s in scenes])
    return (label[:, None] == label[None, :]) & (~named[None, :] | (colour[:, None] == colour[None, :]))


def all_captions() -> list[str]:
    return sorted({t.format(c=c, k=k) for t in S.TEMPLATES for c in S.CLASSNAMES for k in S.COLOUR_NAMES})


def used_token_ids(tokenizer) -> torch.Tensor:
    """Sorted BPE ids that training captions and the zero-shot prompts use (pad, SOT, EOT included).

    Training uses a compact embedding table of just these rows (the full 49,408-row table would
    cost a dense 6.3 M-parameter gradient and AdamW update per step for ~60 live rows); export
    scatters them back into a standard-size table. Sorting keeps EOT (49407) the largest id, which
    open_clip's argmax text pooling relies on."""
    prompts = all_captions() + [S.ZERO_SHOT_TEMPLATE.format(c) for c in S.CLASSNAMES]
    return torch.unique(tokenizer(prompts))


_CYCLE_KEYS = ("steps", "lr", "warmup", "patch_dropout", "unmasked_tail")


def schedule(cfg: dict) -> list[dict]:
    """The training cycles of a train config, oldest format included.

    A config either names one cycle at its top level (``steps``, ``lr``, ``warmup``, optional
    ``patch_dropout``, ``unmasked_tail``) or a list ``cycles`` of them. Each cycle warms up
    linearly to its peak and decays by a cosine to ``lr_floor`` (SGDR-style warm restarts,
    Loshchilov & Hutter 2017) and drops patches its own way. Appending a cycle leaves every
    earlier step unchanged, so a finished run's checkpoint resumes into the longer schedule
    exactly where a fresh run of it would be."""
    if "cycles" in cfg:
        stray = [k for k in ("patch_dropout", "unmasked_tail") if k in cfg]
        if stray:
            raise ValueError(f"with 'cycles', set {stray} inside each cycle, not at the top level")
        given = cfg["cycles"]
    else:
        given = [{k: cfg[k] for k in _CYCLE_KEYS if k in cfg}]
    cycles = [{"patch_dropout": 0.0, "unmasked_tail": 0, **c} for c in given]
    for c in cycles:
        missing = [k for k in ("steps", "lr", "warmup") if k not in c]
        if missing:
            raise ValueError(f"a training cycle needs {missing}")
        if not 0 <= c["unmasked_tail"] <= c["steps"] or c["steps"] < 1:
            raise ValueError(f"a cycle needs steps >= 1 and 0 <= unmasked_tail <= steps, got {c}")
        rate = c["patch_dropout"]
        lo, hi = rate if isinstance(rate, (list, tuple)) else (rate, rate)
        if not 0 <= lo <= hi < 1:
            raise ValueError(f"patch_dropout must be a rate or a [lo, hi] range in [0, 1), got {rate}")
    return cycles


def _cycle_at(step: int, cfg: dict) -> tuple[dict | None, int]:
    """The cycle that ``step`` falls in and the step's index inside it (None past the end)."""
    for c in schedule(cfg):
        if step < c["steps"]:
            return c, step
        step -= c["steps"]
    return None, step


def total_steps(cfg: dict) -> int:
    return sum(c["steps"] for c in schedule(cfg))


def _lr(step: int, cfg: dict) -> float:
    floor = cfg["lr_floor"]
    c, step = _cycle_at(step, cfg)
    if c is None:
        return floor
    warm, total, peak = c["warmup"], c["steps"], c["lr"]
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(t, 1.0)))


def resumable(saved: dict, cfg: dict, step: int) -> bool:
    """Whether a checkpoint at ``step`` made with ``saved`` settings continues under ``cfg``:
    every setting outside the cycles equal, and every cycle that had begun by ``step`` identical
    (so learning rate and patch dropout agree for all finished steps; later cycles may change)."""
    rest = lambda d: {k: v for k, v in d.items() if k not in ("cycles",) + _CYCLE_KEYS}
    if rest(saved) != rest(cfg):
        return False
    done, new = 0, schedule(cfg)
    for i, c in enumerate(schedule(saved)):
        if done >= step:
            break
        if i >= len(new) or new[i] != c:
            return False
        done += c["steps"]
    return True


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor,
                     pos: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP loss (Radford et al. 2021) with soft multi-positive targets.

    ``pos[i, j]``: caption j is true of image i (``positives``); the image->text targets of row i
    spread uniformly over its true captions, the text->image targets of caption j over the images
    it is true of. The diagonal is always true, so no row is empty."""
    logits = scale * F.normalize(img.float(), dim=-1) @ F.normalize(txt.float(), dim=-1).T
    pos = pos.float()
    i2t = pos / pos.sum(1, keepdim=True)
    t2i = pos.T / pos.T.sum(1, keepdim=True)
    return 0.5 * (torch.sum(-i2t * logits.log_softmax(1), 1).mean()
                  + torch.sum(-t2i * logits.T.log_softmax(1), 1).mean())


def patch_dropout(step: int, cfg: dict) -> float:
    """Fraction of patch tokens dropped at ``step``, from the step's cycle: ``patch_dropout``
    (a number, or ``[lo, hi]`` for a rate drawn uniformly per step, seeded by (seed, step)) until
    the cycle's last ``unmasked_tail`` steps, then 0 (FLIP's unmasked tuning closes the train/test
    gap). A range up to 0.9 teaches the model to decide from a few dozen tokens, which is what a
    pruned forward at low keep ratios gives it."""
    c, i = _cycle_at(step, cfg)
    if c is None or not c["patch_dropout"] or i >= c["steps"] - c["unmasked_tail"]:
        return 0.0
    rate = c["patch_dropout"]
    if isinstance(rate, (list, tuple)):
        lo, hi = rate
        return float(np.random.default_rng([cfg["seed"], step]).uniform(lo, hi))
    return float(rate)


@torch.inference_mode()
def zero_shot_accuracy(model, tokenizer, images: np.ndarray, labels: np.ndarray,
                       batch: int = 200) -> float:
    text = model.encode_text(tokenizer([S.ZERO_SHOT_TEMPLATE.format(c) for c in S.CLASSNAMES]))
    dtype = next(model.parameters()).dtype
    text = F.normalize(text.float(), dim=-1)
    correct = 0
    for i in range(0, len(images), batch):
        x = images_to_tensor(images[i:i + batch]).to(dtype)
        emb = F.normalize(model.encode_image(x).float(), dim=-1)
        correct += int(((emb @ text.T).argmax(1).numpy() == labels[i:i + batch]).sum())
    return correct / len(images)


def _save_atomic(obj, path: Path):
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def train(out_dir: str | os.PathLike, steps: int | None = None, seed: int | None = None,
          threads: int | None = 2, eval_every: int = 300, ckpt_every: int = 100, eval_n: int = 600,
          config_path: str | os.PathLike = CONFIG_PATH, progress: bool = True) -> dict:
    """Train (or resume) the bundled CLIP into ``out_dir``; returns the final log entry."""
    import open_clip
    from open_clip.transformer import PatchDropout

    if threads:                    # None: leave torch's setting (the CLI sets --threads once)
        torch.set_num_threads(threads)
    cfg = load_config(config_path)
    tcfg = dict(cfg["train"])
    if seed is not None:
        tcfg["seed"] = seed
    try:
        schedule(tcfg)             # a bad cycle stops the run here, before anything is built
    except ValueError as e:
        raise PatchRankError(f"{config_path}: bad train schedule: {e}") from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "ckpt.pt"

    ctx = cfg["model_cfg"]["text_cfg"]["context_length"]
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=ctx)
    used = used_token_ids(tokenizer)
    remap = torch.full((cfg["model_cfg"]["text_cfg"]["vocab_size"],), -1, dtype=torch.long)
    remap[used] = torch.arange(len(used))
    compact_cfg = copy.deepcopy(cfg["model_cfg"])
    compact_cfg["text_cfg"]["vocab_size"] = len(used)

    torch.manual_seed(tcfg["seed"])
    master = build_clip(compact_cfg)
    decay = [p for n, p in master.named_parameters() if p.ndim >= 2 and "logit_scale" not in n]
    no_decay = [p for n, p in master.named_parameters() if not (p.ndim >= 2 and "logit_scale" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tcfg["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=_lr(0, tcfg), betas=(0.9, 0.98), eps=1e-6)
    start, log, elapsed0 = 0, [], 0.0
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=True)
        if not resumable(state["train_cfg"], tcfg, state["step"]) or state["model_cfg"] != compact_cfg:
            raise PatchRankError(f"{ckpt_path} was made with other settings ({state['train_cfg']}); "
                                 "use another --out or delete it")
        master.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start, log, elapsed0 = state["step"], json.loads(state["log"]), state["elapsed"]
        print(f"resuming from step {start}", file=sys.stderr)
    work = master   # fp32: see the module docstring

    table = {c: remap[t] for c, t in zip(all_captions(), tokenizer(all_captions()))}
    test = S.SceneGenerator("test", seed=1).batch(range(eval_n))
    test_x = np.stack([s.image for s in test])
    test_y = np.array([s.label for s in test])

    end = total_steps(tcfg) if steps is None else min(steps, total_steps(tcfg))
    if start >= end:
        print(f"{ckpt_path} is already at step {start}", file=sys.stderr)
        return log[-1] if log else {}
    data = _Batches(tcfg["seed"], tcfg["batch"], end, start, table)
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=1, prefetch_factor=4,
                                         persistent_workers=False)
    bar = progress_bar(end, "train-clip", initial=start, enabled=progress)
    t0, losses = time.time(), []
    entry = log[-1] if log else {}
    for step, x, tokens, pos in loader:
        lr = _lr(step, tcfg)
        for g in opt.param_groups:
            g["lr"] = lr
        drop = patch_dropout(step, tcfg)
        work.visual.patch_dropout = PatchDropout(drop) if drop > 0 else torch.nn.Identity()
        torch.manual_seed(tcfg["seed"] * 1_000_003 + step)   # dropout draws depend on (seed, step) only
        work.train()
        x = images_to_tensor(x.numpy())
        img = work.encode_image(x)
        txt = work.encode_text(tokens)
        scale = work.logit_scale.float().exp().clamp(max=100)
        loss = contrastive_loss(img, txt, scale, pos)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(master.parameters(), tcfg["grad_clip"])
        opt.step()
        losses.append(float(loss.detach()))
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", lr=f"{lr:.1e}",
                        acc=entry.get("acc", float("nan")))
        if done % eval_every == 0 or done == end:
            work.eval()
            acc = zero_shot_accuracy(work, lambda p: remap[tokenizer(p)], test_x, test_y)
            entry = {"step": done, "loss": float(np.mean(losses[-50:])), "acc": acc, "lr": lr,
                     "seconds": round(elapsed0 + time.time() - t0, 1)}
            log.append(entry)
            print(json.dumps(entry), file=sys.stderr)
        if done % ckpt_every == 0 or done == end:
            _save_atomic({"model": master.state_dict(), "opt": opt.state_dict(), "step": done,
                          "train_cfg": tcfg, "model_cfg": compact_cfg, "log": json.dumps(log),
                          "used_token_ids": used, "full_model_cfg": json.dumps(cfg["model_cfg"]),
                          "elapsed": elapsed0 + time.time() - t0},
                         ckpt_path)
    bar.close()
    return log[-1] if log else {}
