"""Ranking agreement between two patch orders (e.g. predictor vs golden).

Every function takes two orders ``pred`` and ``ref`` of shape [B,P] (or [P]): patch ids, most
important first (the convention of ``Ranking.order`` and ``Predictor.rank``), and returns one
value per image as a float tensor [B]. Orders are permutations, so rank correlations have no ties
(tau-b equals tau-a then; the tie-aware form is kept for score vectors via ``kendall_tau_b``).
"""
from __future__ import annotations

import torch

from .errors import PatchRankError

#: The paper's "top-n match" counts the 50 least important of 196 patches (docs/paper.md).
PAPER_BOTTOM_FRACTION = 50 / 196


def keep_count(ratio: float, num_patches: int) -> int:
    """round(ratio * P), at least 1 — the same rule as ``PatchModel.keep_count`` (docs/design.md)."""
    if not 0.0 < float(ratio) <= 1.0:
        raise PatchRankError(f"keep ratio must be in (0, 1], got {ratio!r}")
    return max(1, round(float(ratio) * num_patches))


def _pair(pred: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pred, ref = torch.as_tensor(pred), torch.as_tensor(ref)
    if pred.dim() == 1:
        pred = pred.unsqueeze(0)
    if ref.dim() == 1:
        ref = ref.unsqueeze(0)
    if pred.shape != ref.shape or pred.dim() != 2:
        raise PatchRankError(f"orders must both be [B,P] with the same shape, got "
                             f"{tuple(pred.shape)} and {tuple(ref.shape)}")
    p = pred.shape[1]
    for name, o in (("pred", pred), ("ref", ref)):
        if o.dtype.is_floating_point:
            raise PatchRankError(f"{name} must be an order of patch ids (integers); "
                                 "turn scores into an order with ordering.order_from_scores")
        srt = o.sort(dim=1).values
        if not torch.equal(srt, torch.arange(p, device=o.device).expand_as(srt)):
            raise PatchRankError(f"{name} is not a permutation of 0..{p - 1} in every row")
    return pred.long(), ref.long().to(pred.device)


def ranks(order: torch.Tensor) -> torch.Tensor:
    """Position of each patch in ``order`` (0 = most important): the inverse permutation."""
    b, p = order.shape
    r = torch.empty_like(order)
    r.scatter_(1, order, torch.arange(p, device=order.device).expand(b, -1))
    return r


def _set_mask(ids: torch.Tensor, p: int) -> torch.Tensor:
    m = torch.zeros(ids.shape[0], p, dtype=torch.bool, device=ids.device)
    return m.scatter_(1, ids, True)


def bottom_overlap(pred: torch.Tensor, ref: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """|bottom-n(pred) ∩ bottom-n(ref)| / n, the paper's "top-n match" (docs/paper.md: n = 50 of 196).

    ``n`` defaults to the paper's share of the patches, round(50/196 * P)."""
    pred, ref = _pair(pred, ref)
    p = pred.shape[1]
    n = max(1, round(PAPER_BOTTOM_FRACTION * p)) if n is None else int(n)
    if not 1 <= n <= p:
        raise PatchRankError(f"n must be in [1, {p}], got {n}")
    inter = _set_mask(pred[:, p - n:], p) & _set_mask(ref[:, p - n:], p)
    return inter.sum(1).float() / n


def kept_iou(pred: torch.Tensor, ref: torch.Tensor, keep_ratio: float = 0.6) -> torch.Tensor:
    """IoU of the kept sets (top round(ratio*P) patches) of the two orders."""
    pred, ref = _pair(pred, ref)
    p = pred.shape[1]
    k = keep_count(keep_ratio, p)
    a, b = _set_mask(pred[:, :k], p), _set_mask(ref[:, :k], p)
    return (a & b).sum(1).float() / (a | b).sum(1).float()


def kendall_tau_b(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Kendall's tau-b of two value vectors per row [B,P] (ties allowed), exact O(P^2).

    tau_b = (C - D) / sqrt((n0 - n1)(n0 - n2)) with n0 = P(P-1)/2 pairs and n1, n2 the pairs tied
    in a and in b (Kendall 1945). Rows constant in a or b give NaN, as the formula does."""
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    if a.dim() == 1:
        a, b = a.unsqueeze(0), b.unsqueeze(0)
    if a.shape != b.shape:
        raise PatchRankError(f"shapes differ: {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] > 64:   # bound the [B,P,P] sign tables
        return torch.cat([kendall_tau_b(a[i:i + 64], b[i:i + 64]) for i in range(0, a.shape[0], 64)])
    sa = torch.sign(a.unsqueeze(2) - a.unsqueeze(1))        # [B,P,P]
    sb = torch.sign(b.unsqueeze(2) - b.unsqueeze(1))
    p = a.shape[1]
    upper = torch.triu(torch.ones(p, p, dtype=torch.bool, device=a.device), diagonal=1)
    s = (sa * sb)[:, upper].sum(1)                          # C - D
    n0 = p * (p - 1) / 2
    n1 = (sa[:, upper] == 0).sum(1)
    n2 = (sb[:, upper] == 0).sum(1)
    return (s / torch.sqrt((n0 - n1) * (n0 - n2))).float()


def kendall_tau(pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Kendall tau of two orders (tau-b; equal to tau-a since orders have no ties)."""
    pred, ref = _pair(pred, ref)
    return kendall_tau_b(ranks(pred), ranks(ref))


def spearman(pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Spearman's rho of two orders: 1 - 6 Σ d² / (P (P² - 1)), d the rank differences."""
    pred, ref = _pair(pred, ref)
    p = pred.shape[1]
    if p < 2:
        return torch.ones(pred.shape[0])
    d = (ranks(pred) - ranks(ref)).double()
    return (1 - 6 * (d * d).sum(1) / (p * (p * p - 1))).float()


def agreement(pred: torch.Tensor, ref: torch.Tensor, keep_ratios: tuple[float, ...] = (0.6, 0.4),
              bottom_n: int | None = None) -> dict[str, float]:
    """Mean of every metric over the batch, as plain floats (for reports and JSON)."""
    out = {"kendall_tau": float(kendall_tau(pred, ref).mean()),
           "spearman": float(spearman(pred, ref).mean()),
           "bottom_overlap": float(bottom_overlap(pred, ref, bottom_n).mean())}
    for r in keep_ratios:
        out[f"kept_iou@{r:g}"] = float(kept_iou(pred, ref, r).mean())
    return out
