"""One window of live rows, in a form that merges exactly across batches and worker processes.

A :class:`Window` holds, for the rows it has seen: each hidden layer's per-neuron moments
(:class:`~scoring.model.health.LayerMoments`: count, mean, sum of squared deviations, zeros), the
pCTRs binned finely on the log-odds axis with their sums (``FINE_BINS`` bins over
``LOGIT_RANGE``: per bin the count, the sum of p and the sum of p(1 - p)), and each group's
absent count. Every part is a sum, or merges with Chan et al.'s formula, so two windows merge
into the window of their union exactly, whichever worker saw which rows.

:func:`summarize` turns a window into the statistics of docs/insight.md, against a baseline:
F_l (and its ratio to the baseline), z_l, the mean-shift score D_l, the pCTR PSI on the 50
baseline bins, the expected AUC, and each group's absent share.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..model.health import (
    LOGIT_BINS,
    LOGIT_RANGE,
    LayerMoments,
    effective_requests,
    expected_fluctuation,
    psi,
)

FINE_BINS = LOGIT_BINS * 20  # 0.024 log-odds wide: the expected AUC's only approximation
_EDGES = np.linspace(*LOGIT_RANGE, FINE_BINS + 1)


@dataclass
class Window:
    """Mergeable statistics of a set of rows of one model version."""

    widths: Sequence[int]
    groups: Sequence[str]
    rows: int = 0
    requests: int = 0
    layers: list[LayerMoments] = field(default_factory=list)
    bin_n: np.ndarray = None      # type: ignore[assignment]
    bin_p: np.ndarray = None      # type: ignore[assignment]
    bin_pq: np.ndarray = None     # type: ignore[assignment]
    absent: np.ndarray = None     # type: ignore[assignment]
    nonfinite: int = 0
    started: float = 0.0
    ended: float = 0.0
    sum_sq: float = 0.0  # sum over requests of (rows of the request)^2: see ``effective_requests``

    def __post_init__(self) -> None:
        self.widths = [int(w) for w in self.widths]
        self.groups = list(self.groups)
        if not self.layers:
            self.layers = [LayerMoments(w) for w in self.widths]
        for name in ("bin_n", "bin_p", "bin_pq"):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(FINE_BINS))
        if self.absent is None:
            self.absent = np.zeros(len(self.groups))

    # -- adding rows ----------------------------------------------------------------------------

    def add(self, hidden: Sequence[np.ndarray], logit: np.ndarray, absent: np.ndarray,
            now: float, requests: int = 1, sum_sq: float | None = None,
            started: float | None = None) -> None:
        """Fold in the rows of ``requests`` requests: hidden outputs [rows, width] per layer, the
        rows' log-odds, and per group how many of the rows lack it."""
        logit = np.asarray(logit, dtype=np.float64)
        ok = np.isfinite(logit)
        n_bad = int((~ok).sum())
        if n_bad:  # counted, kept out of the statistics (they would poison every sum)
            self.nonfinite += n_bad
            hidden = [h[ok] for h in hidden]
            logit = logit[ok]
        for moments, h in zip(self.layers, hidden):
            good = np.isfinite(h).all(axis=1)
            moments.add(h if good.all() else h[good])
        p = 1.0 / (1.0 + np.exp(-np.clip(logit, -700, 700)))
        idx = np.clip(np.searchsorted(_EDGES, logit, side="right") - 1, 0, FINE_BINS - 1)
        self.bin_n += np.bincount(idx, minlength=FINE_BINS)
        self.bin_p += np.bincount(idx, weights=p, minlength=FINE_BINS)
        self.bin_pq += np.bincount(idx, weights=p * (1.0 - p), minlength=FINE_BINS)
        self.absent += absent
        self.sum_sq += float(logit.size + n_bad) ** 2 if sum_sq is None else float(sum_sq)
        self.rows += int(logit.size)
        self.requests += requests
        self.started = self.started or (started or now)
        self.ended = now

    def merge(self, other: "Window") -> None:
        if other.rows == 0 and other.nonfinite == 0:
            return
        for a, b in zip(self.layers, other.layers):
            a.merge(b)
        self.bin_n += other.bin_n
        self.bin_p += other.bin_p
        self.bin_pq += other.bin_pq
        self.absent += other.absent
        self.rows += other.rows
        self.requests += other.requests
        self.nonfinite += other.nonfinite
        self.sum_sq += other.sum_sq
        starts = [t for t in (self.started, other.started) if t]
        self.started = min(starts) if starts else 0.0
        self.ended = max(self.ended, other.ended)

    # -- what it says ---------------------------------------------------------------------------

    def histogram(self) -> np.ndarray:
        """pCTR counts on the 50 baseline bins (each the sum of 20 fine bins)."""
        return self.bin_n.reshape(LOGIT_BINS, -1).sum(axis=1)

    @property
    def all_rows(self) -> int:
        """Rows seen, those with a non-finite output included (the absent counts cover them)."""
        return self.rows + self.nonfinite

    def pctr_mean(self) -> float:
        return float(self.bin_p.sum() / self.rows) if self.rows else float("nan")

    def expected_auc(self) -> float:
        """The AUC expected if each row clicked with its pCTR (as
        :func:`scoring.model.health.expected_auc`), from the fine bins: pairs in different bins
        are ordered by bin, pairs within a bin count half."""
        p, pq = self.bin_p, self.bin_pq
        q = self.bin_n - p
        q_below = np.concatenate([[0.0], np.cumsum(q)[:-1]])
        concordant = float((p * q_below).sum() + 0.5 * (p * q - pq).sum())
        pairs = float(p.sum() * q.sum() - pq.sum())
        return concordant / pairs if pairs > 0 else float("nan")

    # -- storage (one worker's part, or the merged window in the shared directory) --------------

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form; arrays as base64 float64 (exact, and far cheaper to parse than lists
        of numbers: the shared store reads and writes this every second per worker)."""
        return {"widths": self.widths, "groups": self.groups, "rows": self.rows,
                "requests": self.requests, "nonfinite": self.nonfinite,
                "started": self.started, "ended": self.ended, "sum_sq": self.sum_sq,
                "layers": [{"n": m.n, "mean": _enc(m.mean), "m2": _enc(m.m2), "zeros": _enc(m.zeros)}
                           for m in self.layers],
                "bin_n": _enc(self.bin_n), "bin_p": _enc(self.bin_p), "bin_pq": _enc(self.bin_pq),
                "absent": _enc(self.absent)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "Window":
        layers = [LayerMoments(int(w), int(raw["n"]), _dec(raw["mean"], w), _dec(raw["m2"], w),
                               _dec(raw["zeros"], w))
                  for w, raw in zip(doc["widths"], doc["layers"])]
        return cls(doc["widths"], doc["groups"], int(doc["rows"]), int(doc["requests"]), layers,
                   _dec(doc["bin_n"], FINE_BINS), _dec(doc["bin_p"], FINE_BINS),
                   _dec(doc["bin_pq"], FINE_BINS), _dec(doc["absent"], len(doc["groups"])),
                   int(doc.get("nonfinite", 0)), float(doc.get("started", 0.0)),
                   float(doc.get("ended", 0.0)), float(doc.get("sum_sq", 0.0)))


def _enc(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f8").tobytes()).decode("ascii")


def _dec(text: Any, n: int) -> np.ndarray:
    a = np.frombuffer(base64.b64decode(text), dtype="<f8").astype(np.float64)
    if a.size != int(n):
        raise ValueError(f"a stored window array holds {a.size} values, expected {n}")
    return a


def summarize(w: Window, baseline: dict | None, reference: dict | None = None) -> dict[str, Any]:
    """The window's statistics (docs/insight.md). Against ``baseline`` (the package's) when it
    has one; else against ``reference`` (the version's first window, as :func:`reference_of`
    gives it), so a package without a baseline is compared with itself over time."""
    ref = baseline or reference
    ref_layers = (ref or {}).get("layers") or []
    layers = []
    for i, m in enumerate(w.layers):
        entry: dict[str, Any] = {"layer": i + 1, "fluctuation": m.fluctuation,
                                 "zero_share": float(m.zero_share.mean()) if m.width else 0.0}
        if i < len(ref_layers) and m.n:
            base = ref_layers[i]
            neurons = base["neurons"]
            mu0 = np.asarray(neurons["mean"], float)
            sd0 = np.asarray(neurons["sigma"], float)
            # a neuron constant on the reference rows has no scale: its shift counts in units of
            # the layer's mean sigma (or stays 0 when the whole layer was constant)
            scale = np.where(sd0 > 0, sd0, max(float(sd0.mean()), 0.0) or np.inf)
            center = expected_for(base, effective_requests(w.all_rows, w.sum_sq))
            entry["fluctuation_expected"] = center
            entry["fluctuation_ratio"] = m.fluctuation / center if center > 0 else None
            entry["mean_shift"] = float(np.sqrt(np.mean(((m.mean - mu0) / scale) ** 2)))
            entry["zero_share_base"] = base["zero_share"]
            if "band" in base:
                entry["band"] = band_for(base, m.n, (ref or {}).get("window") or m.n,
                                         (ref or {}).get("rows"), center)
        layers.append(entry)
    out: dict[str, Any] = {"rows": w.rows, "requests": w.requests, "nonfinite": w.nonfinite,
                           "started": w.started, "ended": w.ended,
                           "pctr_mean": w.pctr_mean(), "expected_auc": w.expected_auc(),
                           "layers": layers,
                           "pctr_histogram": w.histogram().tolist(),
                           "groups": {g: (float(a / w.all_rows) if w.all_rows else None)
                                      for g, a in zip(w.groups, w.absent)}}
    if ref is not None:
        out["pctr_psi"] = psi(ref["pctr"]["histogram"], w.histogram()) if w.rows else None
        out["expected_auc_base"] = ref["pctr"].get("expected_auc")
        out["groups_base"] = dict(ref.get("groups") or {})
    return out


def expected_for(base_layer: dict, requests: float) -> float:
    """The baseline's F_l for a window of ``requests`` requests: from its within- and
    between-request spreads when it has them (rows of one request are alike, so F_l grows with
    the number of requests a window holds), else its F_l as measured."""
    neurons = base_layer.get("neurons") or {}
    if neurons.get("sigma_within") is not None and neurons.get("sigma_between") is not None:
        return expected_fluctuation(neurons["sigma_within"], neurons["sigma_between"], requests)
    return float(base_layer["fluctuation"])


def band_for(base_layer: dict, rows: int, window: int, ref_rows: int | None = None,
             center: float | None = None) -> list[float]:
    """The layer's F_l band for a set of ``rows`` live rows. The baseline's bootstrap band is made
    for windows of ``window`` rows drawn from the reference rows; a live F_l differs from the
    baseline's by the sampling error of both (variance ~ 1/rows + 1/ref_rows, where the
    bootstrap's is ~ 1/window), so the band is widened around F_l by
    sqrt(window / rows + window / ref_rows) (never narrowed). ``center``: the F_l expected for the
    window's number of requests (:func:`expected_for`), where the band's offsets are moved."""
    lo, hi = base_layer["band"]
    f = base_layer["fluctuation"]
    c = f if center is None else center  # the band's offsets around F_l, moved to ``center``
    ratio = window / max(rows, 1) + (window / ref_rows if ref_rows else 0.0)
    s = max(1.0, float(np.sqrt(ratio)))
    return [max(0.0, float(c - (f - lo) * s)), float(c + (hi - f) * s)]  # F_l is never negative


def reference_of(w: Window) -> dict[str, Any]:
    """A window in the baseline's shape, for versions without a baseline (no bands)."""
    return {"window": w.rows,
            "layers": [{"fluctuation": m.fluctuation, "zero_share": float(m.zero_share.mean()),
                        "neurons": {"mean": m.mean.tolist(), "sigma": m.sigma.tolist()}}
                       for m in w.layers],
            "pctr": {"histogram": w.histogram().tolist(), "expected_auc": w.expected_auc()},
            "groups": {g: float(a / w.all_rows) for g, a in zip(w.groups, w.absent)} if w.all_rows else {}}
