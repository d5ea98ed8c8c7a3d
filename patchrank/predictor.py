"""The patch-ranking predictor (paper phase II, docs/paper.md): a tiny network that reads the tokens
entering the prune layer of the *same* CLIP and scores every patch; trained to reproduce golden
rankings.

Architecture (docs/paper.md, from the official ``train_predictor.py``): channel average pooling D -> 64,
one MLP-Mixer block (Tolstikhin et al. 2021: token MLP (1+P) -> 32 -> (1+P), channel MLP
64 -> 256 -> 64, GELU, pre-LayerNorm eps 1e-6), drop CLS, Linear(64, 1) -> one score per patch.
About 46 K parameters for 196 patches. Unlike the official script, which fed it the last block of
a second full ViT (docs/paper.md, making pruning pointless), it reads the prefix the pruned forward
computes anyway, so it adds ~0.06% of ViT-B/16's FLOPs.

Losses (all take scores [B,P] and golden orders [B,P], most important first):
- ``kl``: the paper's keep-set target, KL(p || softmax(scores)) with p ~uniform on the
  ``n_keep`` most important golden patches, ~0 elsewhere (docs/paper.md; ``n_keep`` from a
  configurable keep ratio).
- ``margin``: pairwise hinge on sampled pairs, the paper's commented alternative.
- ``listwise``: Plackett-Luce likelihood of the full golden order (Plackett 1975; ListMLE,
  Xia et al. 2008).
The default is ``margin`` (``DEFAULT_LOSS``), not the paper's ``kl``: ``kl`` only teaches the
keep/drop boundary at one ratio, while the pairwise loss learns the whole order and agreed best
with golden rankings of held-out scenes (README, "Predictor").
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .bundled import BUNDLED_DIR
from .checkpoints import load_tensors, locate, save_with_header
from .checkpoints import read_header as read_file_header
from .errors import ModelMismatch, PatchRankError, WeightsUnavailable, check_made_for
from .metrics import keep_count
from .ordering import order_from_scores

FORMAT = "patchrank-predictor"
FORMAT_VERSION = 1
#: The file ``load_predictor("hf-hub:org/repo")`` reads from a Hub repository.
HUB_FILE = "predictor.safetensors"


def default_path() -> Path:
    return BUNDLED_DIR / "predictor.safetensors"


class Predictor(nn.Module):
    """Scores patches from the tokens entering the prune layer [B,1+P,D] -> [B,P].

    It is a ranker (``scores(m, x, h)``), so ``m.encode_image(x, keep_ratio=0.6, ranker=p)``
    prunes with it. ``model_id``/``prune_layer`` name the model and layer it was trained for;
    using it with another model raises ``ModelMismatch``. ``meta`` carries training settings."""

    name, kind = "predictor", "scores"

    def __init__(self, width: int, num_patches: int, *, pool_dim: int = 64, token_hidden: int = 32,
                 channel_hidden: int = 256, model_id: str | None = None,
                 prune_layer: int | None = None, meta: dict | None = None):
        super().__init__()
        self.width, self.num_patches = int(width), int(num_patches)
        self.pool_dim, self.token_hidden, self.channel_hidden = pool_dim, token_hidden, channel_hidden
        self.model_id, self.prune_layer = model_id, prune_layer
        self.meta = dict(meta or {})
        n = self.num_patches + 1
        self.pool = nn.AdaptiveAvgPool1d(pool_dim)     # over channels: mean of D/64 neighbours
        self.norm1 = nn.LayerNorm(pool_dim, eps=1e-6)
        self.token_mlp = nn.Sequential(nn.Linear(n, token_hidden), nn.GELU(), nn.Linear(token_hidden, n))
        self.norm2 = nn.LayerNorm(pool_dim, eps=1e-6)
        self.channel_mlp = nn.Sequential(nn.Linear(pool_dim, channel_hidden), nn.GELU(),
                                         nn.Linear(channel_hidden, pool_dim))
        self.head = nn.Linear(pool_dim, 1)

    @classmethod
    def for_model(cls, m, **kwargs) -> "Predictor":
        """A fresh (random-init) predictor shaped for model ``m`` and its prune layer."""
        meta = {"weights_fingerprint": m.fingerprint, **kwargs.pop("meta", {})}
        return cls(m.width, m.num_patches, model_id=m.model_id, prune_layer=m.prune_layer, meta=meta, **kwargs)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if h.dim() != 3 or h.shape[1] != self.num_patches + 1 or h.shape[2] != self.width:
            raise PatchRankError(f"predictor expects tokens [B,{self.num_patches + 1},{self.width}], "
                                 f"got {tuple(h.shape)}")
        x = self.pool(h.to(self.head.weight.dtype))                             # [B,1+P,C]
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)   # mix tokens
        x = x + self.channel_mlp(self.norm2(x))                                 # mix channels
        return self.head(x[:, 1:]).squeeze(-1)                                  # drop CLS

    # -- ranker protocol ----------------------------------------------------------------------
    def check_model(self, m) -> None:
        """Refuse a model other than the one this predictor was trained for."""
        check_made_for("this predictor", self.model_id, self.prune_layer, m, "train-predictor",
                       self.meta.get("weights_fingerprint"))
        if (m.width, m.num_patches) != (self.width, self.num_patches):
            raise ModelMismatch(f"this predictor reads {self.num_patches} patches of width "
                                f"{self.width}; model {m.model_id!r} has {m.num_patches} of width {m.width}")

    def scores(self, m, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        # No dropout or batch norm: train and eval modes compute the same, so no mode switching
        # (which would mutate a module shared between requests).
        self.check_model(m)
        with torch.no_grad():
            return self(h)

    def rank(self, m, x: torch.Tensor) -> torch.Tensor:
        """Patch order [B,P], most important first."""
        with torch.inference_mode():
            return order_from_scores(self.scores(m, x, m.prefix(x)))

    # -- cost -----------------------------------------------------------------------------------
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def gflops(self, m=None) -> float:
        """Analytic GFLOPs per image, 1 MAC = 2 FLOPs (as ``patchrank.flops``); ``m`` is accepted
        for the sweep's ranker interface and unused. LayerNorm, GELU and biases left out. Pooling N*D adds; token MLP 2*C*(2*N*T); channel MLP 2*N*(2*C*H);
        head 2*P*C; with N = 1+P tokens, C pooled channels, T/H hidden widths."""
        n, c, t, hid, p = self.num_patches + 1, self.pool_dim, self.token_hidden, self.channel_hidden, self.num_patches
        return (n * self.width + 4 * c * n * t + 4 * n * c * hid + 2 * p * c) / 1e9

    def cost(self, m, keep_ratio: float = 0.6) -> dict:
        """Parameters and FLOPs, absolute and as a share of the image encoder (pruned at
        ``keep_ratio``; parameters against the whole image tower)."""
        enc = float(m.flops(keep=m.keep_count(keep_ratio)))
        enc_params = sum(p.numel() for p in m.visual.parameters())
        return {"params": self.num_params(), "params_share": self.num_params() / enc_params,
                "gflops": self.gflops(), "encoder_gflops": enc,
                "gflops_share": self.gflops() / enc, "keep_ratio": keep_ratio}

    # -- files ----------------------------------------------------------------------------------
    def header(self) -> dict:
        return {"format": FORMAT, "version": FORMAT_VERSION, "model_id": self.model_id,
                "prune_layer": self.prune_layer, "width": self.width, "num_patches": self.num_patches,
                "arch": {"pool_dim": self.pool_dim, "token_hidden": self.token_hidden,
                         "channel_hidden": self.channel_hidden},
                **{k: v for k, v in self.meta.items() if k not in ("format", "version", "arch")}}

    def save(self, path: str | os.PathLike) -> Path:
        """safetensors weights with the JSON header in the file's metadata."""
        return save_with_header(self, path, self.header())

    def extra_repr(self) -> str:
        return f"model_id={self.model_id!r}, prune_layer={self.prune_layer}, params={self.num_params()}"


def read_header(path: str | os.PathLike) -> dict:
    """The JSON header of a predictor file, without loading its tensors."""
    return read_file_header(path, FORMAT, "predictor")


def load_predictor(path: str | os.PathLike | None = None, model=None) -> Predictor:
    """Load a predictor file (default: the bundled one, ``patchrank/assets/bundled/predictor.safetensors``):
    a local path, or ``hf-hub:org/repo`` (its ``predictor.safetensors``) / ``hf-hub:org/repo/FILE``
    from the Hugging Face Hub, through huggingface_hub's cache and settings.

    With ``model``, a file made for another model (other id, shape or prune layer) is refused
    with ``ModelMismatch`` naming both ids; without it the check happens at first use."""
    if path is None:
        path = default_path()
        if not path.is_file():
            raise WeightsUnavailable(f"the bundled predictor is missing ({path}); train one with "
                                     "`python -m patchrank train-predictor --model bundled ...`")
    else:
        path = locate(path, "predictor", HUB_FILE, "--predictor")
    head = read_header(path)
    arch = head.get("arch", {})
    meta = {k: v for k, v in head.items()
            if k not in ("format", "version", "model_id", "prune_layer", "width", "num_patches", "arch")}
    p = Predictor(head["width"], head["num_patches"], model_id=head.get("model_id"),
                  prune_layer=head.get("prune_layer"), meta=meta, **arch)
    try:
        p.load_state_dict(load_tensors(path, "predictor"), strict=True)
    except RuntimeError as e:        # tensors that do not fit the header's shapes
        raise PatchRankError(f"{path}: its tensors do not match its header ({str(e).splitlines()[0]})") from e
    p.eval()
    if model is not None:
        p.check_model(model)
        p.to(model.device)
    return p


# -- losses ---------------------------------------------------------------------------------------
def keep_set_target(order: torch.Tensor, keep_ratio: float = 0.6) -> torch.Tensor:
    """The paper's target distribution (docs/paper.md): logit 0 for the ``n_keep`` most important
    golden patches and -5 - 0.1*j for position j >= n_keep, softmaxed -> ~1/n_keep on the kept
    set, ~0 on the rest."""
    b, p = order.shape
    n_keep = keep_count(keep_ratio, p)
    j = torch.arange(p, device=order.device, dtype=torch.float32)
    logits = torch.where(j < n_keep, torch.zeros_like(j), -5.0 - 0.1 * j)
    target = torch.softmax(logits, dim=0)
    return torch.zeros(b, p, device=order.device).scatter_(1, order, target.expand(b, -1).contiguous())


def kl_keep_loss(scores: torch.Tensor, order: torch.Tensor, keep_ratio: float = 0.6, **_) -> torch.Tensor:
    """KL(target || softmax(scores)), summed over patches, mean over the batch (docs/paper.md)."""
    return F.kl_div(F.log_softmax(scores, dim=1), keep_set_target(order, keep_ratio), reduction="batchmean")


def margin_loss(scores: torch.Tensor, order: torch.Tensor, pairs: int = 1000, margin: float = 1.0,
                generator: torch.Generator | None = None, **_) -> torch.Tensor:
    """Pairwise hinge max(0, margin - (s_i - s_j)) for sampled pairs where i precedes j in the
    golden order (the paper's commented ``MarginRankingLoss(margin=1)`` on random pairs)."""
    b, p = order.shape
    pos = torch.randint(0, p, (b, pairs, 2), generator=generator).to(order.device)
    hi, lo = pos.min(dim=-1).values, pos.max(dim=-1).values
    valid = (hi != lo).float()
    s_hi = scores.gather(1, order.gather(1, hi))
    s_lo = scores.gather(1, order.gather(1, lo))
    return (F.relu(margin - (s_hi - s_lo)) * valid).sum() / valid.sum().clamp_min(1)


def listwise_loss(scores: torch.Tensor, order: torch.Tensor, **_) -> torch.Tensor:
    """Plackett-Luce negative log-likelihood of the golden order, per patch:
    -log P(order) = Σ_j [logsumexp(s_{order[j:]}) - s_{order[j]}] (ListMLE, Xia et al. 2008)."""
    s = scores.gather(1, order)
    suffix_lse = torch.logcumsumexp(s.flip(1), dim=1).flip(1)
    return (suffix_lse - s).mean()


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "kl": kl_keep_loss, "margin": margin_loss, "listwise": listwise_loss}
#: Chosen on ``bundled-val`` (README, "Predictor"): the pairwise margin loss agreed best with
#: golden rankings of scenes nothing trains on (Kendall tau 0.617 vs 0.607 listwise, 0.535 KL).
DEFAULT_LOSS = "margin"
