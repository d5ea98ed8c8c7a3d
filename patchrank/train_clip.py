"""Train the bundled CLIP on generated scenes (``python -m patchrank train-clip``).

Recipe (see MODEL_CARD.md for why): open_clip ``CLIP`` built from ``configs/bundled_clip.json``,
the CLIP contrastive loss with multi-positive targets (every caption in the batch that is *true*
of an image is a positive for it: same class, and same colour unless the caption names none),
class-balanced scenes generated on the fly and deterministic by (seed, step), AdamW in float32,
warm-up then cosine to a floor, and FLIP-style patch dropout (Li et al. 2023, "Scaling
Language-Image Pre-training via Masking": drop a random half of the patch tokens while training,
~2x cheaper steps for nearly the same accuracy per sample) with an unmasked tail, then a
short second cycle that drops a random 0-90 % per step, so the model also decides from the few
dozen tokens that pruning at low keep ratios leaves it (each cycle: ``train_schedule``).
Precision: float32 throughout: bf16 working weights pay off only on CPUs with AMX or
avx512_bf16, and on the AVX2-only machines this project trains on bf16 matmuls are far slower
than fp32 ones (README).
Checkpoints are atomic and the run resumes from the last one; every random draw is seeded by
(seed, step), so a resumed run equals an uninterrupted one.
"""
from __future__ import annotations

import copy
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .data import scenes as S
from .errors import PatchRankError
from .progress import bar as progress_bar
from .train_schedule import lr_at, patch_dropout, resumable, schedule, total_steps
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


@torch.inference_mode()
def zero_shot_accuracy(model, tokenizer, images: np.ndarray, labels: np.ndarray,
                       batch: int = 200) -> float:
    p = next(model.parameters())
    text = model.encode_text(tokenizer([S.ZERO_SHOT_TEMPLATE.format(c) for c in S.CLASSNAMES]).to(p.device))
    text = F.normalize(text.float(), dim=-1)
    correct = 0
    for i in range(0, len(images), batch):
        x = images_to_tensor(images[i:i + batch]).to(device=p.device, dtype=p.dtype)
        emb = F.normalize(model.encode_image(x).float(), dim=-1)
        correct += int(((emb @ text.T).argmax(1).cpu().numpy() == labels[i:i + batch]).sum())
    return correct / len(images)


@dataclass(frozen=True)
class RunSettings:
    """How ``train`` runs besides the config's model and schedule, with each default defined
    once: evaluation every ``eval_every`` steps on ``eval_n`` test scenes, a checkpoint every
    ``ckpt_every`` steps, ``threads`` torch CPU threads (None: leave torch's setting; the CLI
    sets ``--threads`` once), on ``device`` (float32 there too; every random draw is still made
    on the CPU, so a GPU run draws what a CPU run does and differs only in rounding), with
    ``workers`` processes rendering scenes (one keeps up with a CPU; a GPU wants several)."""
    eval_every: int = 300
    ckpt_every: int = 100
    eval_n: int = 600
    threads: int | None = 2
    device: str = "cpu"
    workers: int = 1


RUN = RunSettings()


@dataclass
class _Run:
    """A training run's model, optimiser and bookkeeping: built, then resumed, then stepped."""
    cfg: dict
    tcfg: dict
    compact_cfg: dict
    tokenizer: Any
    used: torch.Tensor
    remap: torch.Tensor
    master: Any
    opt: torch.optim.Optimizer
    ckpt_path: Path
    start: int = 0
    log: list = field(default_factory=list)
    elapsed0: float = 0.0
    losses: list = field(default_factory=list)


def train(out_dir: str | os.PathLike, steps: int | None = None, seed: int | None = None,
          threads: int | None = RUN.threads, eval_every: int = RUN.eval_every,
          ckpt_every: int = RUN.ckpt_every, eval_n: int = RUN.eval_n,
          config_path: str | os.PathLike = CONFIG_PATH, progress: bool = True,
          device: str = RUN.device, workers: int = RUN.workers) -> dict:
    """Train (or resume) the bundled CLIP into ``out_dir``; returns the final log entry."""
    if threads:
        torch.set_num_threads(threads)
    run = _build(_train_config(config_path, seed), Path(out_dir), torch.device(device))
    _resume(run)
    table = {c: run.remap[t] for c, t in zip(all_captions(), run.tokenizer(all_captions()))}
    test = S.SceneGenerator("test", seed=1).batch(range(eval_n))
    test_x = np.stack([s.image for s in test])
    test_y = np.array([s.label for s in test])
    tcfg = run.tcfg
    end = total_steps(tcfg) if steps is None else min(steps, total_steps(tcfg))
    if run.start >= end:
        print(f"{run.ckpt_path} is already at step {run.start}", file=sys.stderr)
        return run.log[-1] if run.log else {}
    data = _Batches(tcfg["seed"], tcfg["batch"], end, run.start, table)
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=workers, prefetch_factor=4,
                                         persistent_workers=False)
    bar = progress_bar(end, "train-clip", initial=run.start, enabled=progress)
    t0 = time.time()
    entry = run.log[-1] if run.log else {}
    for step, x, tokens, pos in loader:
        lr = _step(run, step, x, tokens, pos)
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(run.losses[-20:]):.3f}", lr=f"{lr:.1e}",
                        acc=entry.get("acc", float("nan")))
        if done % eval_every == 0 or done == end:
            entry = _evaluate(run, done, lr, test_x, test_y, run.elapsed0 + time.time() - t0)
        if done % ckpt_every == 0 or done == end:
            _save_checkpoint(run, done, run.elapsed0 + time.time() - t0)
    bar.close()
    return run.log[-1] if run.log else {}


def _train_config(config_path: str | os.PathLike, seed: int | None) -> tuple[dict, dict]:
    """(config, its train part with ``seed`` applied); a bad schedule stops the run here,
    before anything is built."""
    cfg = load_config(config_path)
    tcfg = dict(cfg["train"])
    if seed is not None:
        tcfg["seed"] = seed
    try:
        schedule(tcfg)
    except ValueError as e:
        raise PatchRankError(f"{config_path}: bad train schedule: {e}") from None
    return cfg, tcfg


def _build(configs: tuple[dict, dict], out: Path, device: torch.device) -> _Run:
    """The tokenizer, the compact vocabulary (``used_token_ids``), the model seeded by the
    config's seed and AdamW (no weight decay on gains, biases and the logit scale)."""
    import open_clip
    cfg, tcfg = configs
    out.mkdir(parents=True, exist_ok=True)
    ctx = cfg["model_cfg"]["text_cfg"]["context_length"]
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=ctx)
    used = used_token_ids(tokenizer)
    remap = torch.full((cfg["model_cfg"]["text_cfg"]["vocab_size"],), -1, dtype=torch.long)
    remap[used] = torch.arange(len(used))
    compact_cfg = copy.deepcopy(cfg["model_cfg"])
    compact_cfg["text_cfg"]["vocab_size"] = len(used)
    torch.manual_seed(tcfg["seed"])
    master = build_clip(compact_cfg).to(device)      # initialised on the CPU, then moved
    decays = lambda n, p: p.ndim >= 2 and "logit_scale" not in n  # noqa: E731
    decay = [p for n, p in master.named_parameters() if decays(n, p)]
    no_decay = [p for n, p in master.named_parameters() if not decays(n, p)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tcfg["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr_at(0, tcfg), betas=(0.9, 0.98), eps=1e-6)
    return _Run(cfg, tcfg, compact_cfg, tokenizer, used, remap, master, opt, out / "ckpt.pt")


def _resume(run: _Run) -> None:
    """Continue from the run folder's checkpoint if there is one made with these settings."""
    if not run.ckpt_path.exists():
        return
    state = torch.load(run.ckpt_path, weights_only=True, map_location="cpu")
    if not resumable(state["train_cfg"], run.tcfg, state["step"]) or state["model_cfg"] != run.compact_cfg:
        raise PatchRankError(f"{run.ckpt_path} was made with other settings ({state['train_cfg']}); "
                             "use another --out or delete it")
    run.master.load_state_dict(state["model"])
    run.opt.load_state_dict(state["opt"])
    run.start, run.log, run.elapsed0 = state["step"], json.loads(state["log"]), state["elapsed"]
    print(f"resuming from step {run.start}", file=sys.stderr)


def _step(run: _Run, step: int, x: torch.Tensor, tokens: torch.Tensor, pos: torch.Tensor) -> float:
    """One optimiser step (fp32: see the module docstring); returns its learning rate. Patch
    dropout draws are seeded by (seed, step) alone, so a resumed run draws what an
    uninterrupted one does."""
    from open_clip.transformer import PatchDropout
    tcfg, model = run.tcfg, run.master
    lr = lr_at(step, tcfg)
    for g in run.opt.param_groups:
        g["lr"] = lr
    drop = patch_dropout(step, tcfg)
    model.visual.patch_dropout = PatchDropout(drop) if drop > 0 else torch.nn.Identity()
    torch.manual_seed(tcfg["seed"] * 1_000_003 + step)
    model.train()
    device = model.logit_scale.device
    img = model.encode_image(images_to_tensor(x.numpy()).to(device))
    txt = model.encode_text(tokens.to(device))
    scale = model.logit_scale.float().exp().clamp(max=100)
    loss = contrastive_loss(img, txt, scale, pos.to(device))
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg["grad_clip"])
    run.opt.step()
    run.losses.append(float(loss.detach()))
    return lr


def _evaluate(run: _Run, done: int, lr: float, test_x: np.ndarray, test_y: np.ndarray,
              seconds: float) -> dict:
    """Zero-shot accuracy on the test scenes, appended to the run's log (and to stderr)."""
    run.master.eval()
    acc = zero_shot_accuracy(run.master, lambda p: run.remap[run.tokenizer(p)], test_x, test_y)
    entry = {"step": done, "loss": float(np.mean(run.losses[-50:])), "acc": acc, "lr": lr,
             "seconds": round(seconds, 1)}
    run.log.append(entry)
    print(json.dumps(entry), file=sys.stderr)
    return entry


def _save_checkpoint(run: _Run, done: int, elapsed: float) -> None:
    """Everything a resumed run needs, replaced atomically."""
    state = {"model": {k: v.cpu() for k, v in run.master.state_dict().items()},
             "opt": run.opt.state_dict(), "step": done,
             "train_cfg": run.tcfg, "model_cfg": run.compact_cfg, "log": json.dumps(run.log),
             "used_token_ids": run.used, "full_model_cfg": json.dumps(run.cfg["model_cfg"]),
             "elapsed": elapsed}
    with atomic_path(run.ckpt_path) as tmp:
        torch.save(state, tmp)
