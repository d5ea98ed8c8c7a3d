"""How closely a model in another format (bf16) reproduces float32: embeddings and top-1 class.

Why: bf16 keeps 8 bits of mantissa, so its outputs differ from float32's; what matters is that
the difference is no larger than open_clip's own bf16 forward's (the bar a user already
accepts) and that the predicted class stays the same. Both formats prune the *same* patches (the
float32 model's order), so the comparison measures the forward, not a ranker that may pick other
patches under rounding. ``benchmarks/bf16_agreement.py`` runs it on the bundled evaluation split.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .models import PatchModel


def agreement(ref: PatchModel, other: PatchModel, x: torch.Tensor, classnames: Sequence[str] | None,
              ratios: Sequence[float] = (1.0, 0.6, 0.4), ranker="norm", batch: int = 100) -> list[dict]:
    """Rows {config, cos_min, cos_median, top1_agree_pct, n}: ``other`` (e.g.
    ``ref.with_dtype(torch.bfloat16)``) against ``ref`` on images ``x`` [N,3,H,W]; config
    "open_clip" is open_clip's own ``encode_image`` in both formats, "keep R" PatchRank's pruned
    forward keeping the ``ranker``'s top R (ranked once, by ``ref``). Top-1 uses ``ref``'s
    zero-shot classifier over ``classnames`` for both (None: no top-1, e.g. random weights,
    whose classes are arbitrary)."""
    clf = None if classnames is None else ref.zero_shot(list(classnames))
    pairs: dict[str, tuple[list, list]] = {"open_clip": ([], [])}
    pairs.update({f"keep {r}": ([], []) for r in ratios})
    with torch.inference_mode():
        for xb in x.split(batch):
            pairs["open_clip"][0].append(ref.clip.encode_image(xb.to(ref.dtype)).float())
            pairs["open_clip"][1].append(other.clip.encode_image(xb.to(other.dtype)).float())
            order = ref.rank(xb, ranker)
            for r in ratios:
                keep = order[:, :ref.keep_count(r)].sort(dim=1).values
                pairs[f"keep {r}"][0].append(ref.encode_image(xb, keep=keep).float())
                pairs[f"keep {r}"][1].append(other.encode_image(xb, keep=keep).float())
    rows = []
    for config, (a, b) in pairs.items():
        a, b = torch.cat(a), torch.cat(b)
        cos = F.cosine_similarity(a, b, dim=-1)
        row = {"config": config, "cos_min": float(cos.min()), "cos_median": float(cos.median()), "n": len(a)}
        if clf is not None:
            same = (clf.probs(a).argmax(-1) == clf.probs(b).argmax(-1)).float().mean()
            row["top1_agree_pct"] = float(same) * 100
        rows.append(row)
    return rows
