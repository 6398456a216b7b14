"""Model health statistics (DeepInsight, docs/insight.md) and the package's baseline of them.

Definitions (background: the DeepInsight seed). A row is one (request, ad). For hidden layer l and
neuron j, over a set of rows: mean ``mu_lj``, population standard deviation ``sigma_lj`` and zero
share ``z_lj`` of the post-ReLU output. **Layer fluctuation** ``F_l = mean_j sigma_lj``; the mean
absolute deviation form ``mean_j mean_rows |h - mu_lj|`` is reported beside it.

:class:`LayerMoments` accumulates ``mu``, ``sigma`` and ``z`` in float64 over batches of rows
(Welford's update per batch, merged with Chan et al.'s parallel formula, so windows from several
workers combine exactly). :func:`expected_auc` is the AUC expected if clicks were drawn as
Bernoulli(pCTR) (a ratio of expectations over pairs of different rows, as in NannyML's CBPE);
:func:`psi` compares two histograms (population stability index).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

LOGIT_BINS = 50
LOGIT_RANGE = (-12.0, 12.0)  # pCTR 6e-6 .. 1 - 6e-6; rows outside fall in the end bins
PSI_FLOOR = 1e-4             # share given to an empty bin so PSI stays finite


@dataclass
class LayerMoments:
    """Running per-neuron count, mean, sum of squared deviations and zeros of one layer."""

    width: int
    n: int = 0
    mean: np.ndarray = field(default=None)  # type: ignore[assignment]
    m2: np.ndarray = field(default=None)    # type: ignore[assignment]
    zeros: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.mean is None:
            self.mean = np.zeros(self.width)
            self.m2 = np.zeros(self.width)
            self.zeros = np.zeros(self.width)

    def add(self, h: np.ndarray) -> None:
        """Fold in a batch of rows ``h`` [rows, width] (post-ReLU outputs)."""
        h = np.asarray(h, dtype=np.float64)
        if h.shape[0] == 0:
            return
        if h.ndim != 2 or h.shape[1] != self.width:
            raise ValueError(f"expected rows of {self.width} neurons, got shape {list(h.shape)}")
        batch = LayerMoments(self.width, h.shape[0], h.mean(axis=0),
                             ((h - h.mean(axis=0)) ** 2).sum(axis=0), (h == 0).sum(axis=0).astype(np.float64))
        self.merge(batch)

    def merge(self, other: "LayerMoments") -> None:
        """Chan et al.: the moments of the union of two sets of rows, exactly."""
        if other.n == 0:
            return
        if self.n == 0:
            self.n, self.mean, self.m2, self.zeros = other.n, other.mean.copy(), other.m2.copy(), other.zeros.copy()
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.n / n)
        self.m2 = self.m2 + other.m2 + delta ** 2 * (self.n * other.n / n)
        self.zeros = self.zeros + other.zeros
        self.n = n

    @property
    def sigma(self) -> np.ndarray:
        return np.sqrt(self.m2 / self.n) if self.n else np.zeros(self.width)

    @property
    def zero_share(self) -> np.ndarray:
        return self.zeros / self.n if self.n else np.zeros(self.width)

    @property
    def fluctuation(self) -> float:
        return float(self.sigma.mean()) if self.width else 0.0


def mean_abs_fluctuation(h: np.ndarray) -> float:
    """The mean-absolute-deviation form of F_l over rows ``h`` (two passes: needs the rows)."""
    h = np.asarray(h, dtype=np.float64)
    return float(np.abs(h - h.mean(axis=0)).mean()) if h.size else 0.0


def logit_histogram(p: np.ndarray) -> np.ndarray:
    """Counts of pCTRs in ``LOGIT_BINS`` equal bins of log-odds over ``LOGIT_RANGE`` (rows
    beyond it in the end bins)."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-300, 1 - 1e-16)
    z = np.clip(np.log(p) - np.log1p(-p), *LOGIT_RANGE)
    edges = np.linspace(*LOGIT_RANGE, LOGIT_BINS + 1)
    return np.histogram(z, bins=edges)[0].astype(np.float64)


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index sum((a - e) * ln(a / e)) of two histograms (as shares; an empty
    bin counts as ``PSI_FLOOR``)."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.sum() <= 0 or a.sum() <= 0:
        return 0.0
    e = np.maximum(e / e.sum(), PSI_FLOOR)
    a = np.maximum(a / a.sum(), PSI_FLOOR)
    return float(((a - e) * np.log(a / e)).sum())


def expected_auc(p: np.ndarray) -> float:
    """The AUC expected if each row clicked with probability ``p_i``: expected concordant
    (click, no-click) pairs over expected pairs, pairs of two different rows, ties counting
    half. O(n log n)."""
    p = np.asarray(p, dtype=np.float64)
    if p.size < 2:
        return float("nan")
    order = np.argsort(p, kind="stable")
    s, q = p[order], 1.0 - p[order]
    # for each row, the expected no-clicks among rows with a strictly lower score, and with an
    # equal score (itself excluded)
    uniq, start, counts = np.unique(s, return_index=True, return_counts=True)
    q_cum = np.concatenate([[0.0], np.cumsum(q)])
    group_q = q_cum[start + counts] - q_cum[start]
    below = np.repeat(q_cum[start], counts)
    tied = np.repeat(group_q, counts) - q
    concordant = float((s * (below + 0.5 * tied)).sum())
    pairs = float(s.sum() * q.sum() - (s * q).sum())
    return concordant / pairs if pairs > 0 else float("nan")


def variance_components(h: np.ndarray, request: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per neuron, the within-request and between-request variances of rows ``h`` [rows, width]
    grouped by ``request`` (one index per row), by one-way ANOVA (unbiased; unequal requests
    through the usual n0). The ads of one request share its context, so a set of rows from few
    requests shows less variance than the traffic has: a window of ``k`` requests expects a
    population variance of ``within + between * (1 - 1/k)`` (:func:`expected_fluctuation`)."""
    h = np.asarray(h, dtype=np.float64)
    _, inv, m = np.unique(np.asarray(request), return_inverse=True, return_counts=True)
    n, N = m.size, h.shape[0]
    if n < 2 or N <= n:
        return np.var(h, axis=0) if N else np.zeros(h.shape[1]), np.zeros(h.shape[1])
    sums = np.zeros((n, h.shape[1]))
    np.add.at(sums, inv, h)
    means = sums / m[:, None]
    within = ((h - means[inv]) ** 2).sum(axis=0) / (N - n)
    between_ms = (m[:, None] * (means - h.mean(axis=0)) ** 2).sum(axis=0) / (n - 1)
    n0 = (N - (m ** 2).sum() / N) / (n - 1)
    between = np.maximum((between_ms - within) / n0, 0.0)
    return within, between


def expected_fluctuation(sigma_within: np.ndarray, sigma_between: np.ndarray, requests: float) -> float:
    """F_l a window of ``requests`` requests is expected to show: mean over neurons of
    sqrt(within + between * (1 - 1/requests)) (standard deviations given). For requests of
    unequal sizes m_i, pass the effective number (sum m_i)^2 / sum m_i^2 (:func:`effective_requests`)."""
    k = max(1.0, float(requests))
    sw, sb = np.asarray(sigma_within, float), np.asarray(sigma_between, float)
    return float(np.sqrt(sw ** 2 + sb ** 2 * (1.0 - 1.0 / k)).mean()) if sw.size else 0.0


def effective_requests(rows: float, sum_sq: float) -> float:
    """The number of equal requests whose rows vary like these: (sum m_i)^2 / sum m_i^2 for
    requests of m_i rows (a window of one 5,000-ad request and fifty 10-ad ones is about 1.2)."""
    return float(rows) ** 2 / sum_sq if sum_sq > 0 else 1.0
