"""Sample-ratio mismatch: are the answered requests of a layer split as configured?

Each layer counts the requests it answered by the arm that owns their bucket (conditions aside,
so a condition does not skew it). Pearson's chi-square of the observed counts against the
configured shares, with (arms - 1) degrees of freedom, gives a p-value; below ``alpha`` (0.001,
the usual SRM threshold) with at least ``min_requests`` counted, the layer is in alarm: an arm
that loses or gains requests (errors, timeouts, a client retrying one arm) makes every
comparison between its arms untrustworthy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

ALPHA = 0.001
MIN_REQUESTS = 1000


def chi2_sf(x: float, dof: int) -> float:
    """P(X >= x) for X ~ chi-square(dof): the regularized upper incomplete gamma Q(dof/2, x/2)."""
    if x <= 0:
        return 1.0
    a, z = dof / 2.0, x / 2.0
    if z < a + 1.0:  # the series of P, then Q = 1 - P
        term = total = 1.0 / a
        n = a
        for _ in range(10_000):
            n += 1.0
            term *= z / n
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(-z + a * math.log(z) - math.lgamma(a)))
    # Lentz's continued fraction for Q
    tiny = 1e-300
    b = z + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return min(1.0, h * math.exp(-z + a * math.log(z) - math.lgamma(a)))


@dataclass(frozen=True)
class SrmResult:
    requests: int
    chi2: float
    p_value: float
    alarm: bool
    observed: dict[str, int]
    expected_share: dict[str, float]

    def describe(self) -> dict:
        return {"requests": self.requests, "chi2": round(self.chi2, 4),
                "p_value": self.p_value, "alarm": self.alarm, "observed": self.observed,
                "expected_share": self.expected_share}


def srm_test(observed: Mapping[str, int], shares: Mapping[str, float], *, alpha: float = ALPHA,
             min_requests: int = MIN_REQUESTS) -> SrmResult:
    """``shares``: arm -> configured fraction (summing to 1, the arm-less ``default`` included)."""
    arms: Sequence[str] = [a for a, s in shares.items() if s > 0]
    n = sum(observed.get(a, 0) for a in shares)
    chi2 = 0.0
    for a in arms:
        expected = n * shares[a]
        chi2 += (observed.get(a, 0) - expected) ** 2 / expected if expected > 0 else 0.0
    stray = sum(observed.get(a, 0) for a in shares if shares[a] <= 0)
    p = chi2_sf(chi2, len(arms) - 1) if len(arms) > 1 and n else 1.0
    if stray:  # requests in an arm that owns no bucket: impossible unless the split is broken
        p = 0.0
    return SrmResult(n, chi2, p, n >= min_requests and p < alpha,
                     {a: int(observed.get(a, 0)) for a in shares}, dict(shares))
