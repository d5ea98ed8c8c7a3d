"""Confidence intervals for the accuracies the sweeps report.

An accuracy measured on a few hundred images is an estimate; the interval says how far apart two
methods must be before the difference means anything. Wilson's score interval is used because,
unlike the normal approximation, it stays inside [0, 1] and remains sensible at 0 % or 100 %
and on small subsets.
"""
from __future__ import annotations

import math

#: Two-sided 95 % normal quantile, Phi^-1(0.975).
Z95 = 1.959963984540054


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927, JASA 22:209-212):
    (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), with p = correct / n; NaNs
    for n = 0, where there is nothing to estimate."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = correct / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    return (0.0 if correct == 0 else lo, 1.0 if correct == n else hi)   # exact at the extremes
