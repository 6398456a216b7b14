"""The guarded swap: score recent live requests with a candidate version before it goes live.

:func:`evaluate` runs, on the registry's worker after the candidate is loaded and warm, both the
candidate and the live version over the last ``sample_requests`` sampled live requests (hashed,
from the health monitor). With fewer rows than ``min_rows`` (a fresh start, low traffic) it adds
the candidate package's reference requests (``health/requests.jsonl``), or requests generated from
its manifest, so it always runs. The candidate is held back when (each limit configurable):

- its output is not a finite number for some row (where the live version's is);
- the mean shift of its log-odds from the live version's is beyond ``logit_shift`` (0.2);
- the KS distance between its and the live version's pCTRs is beyond ``ks`` (0.1);
- a layer's fluctuation F_l, on live and reference rows, is outside its own baseline band
  (widened for fewer rows than the band's window, and by ``band_margin``, 2: the band is a 99%
  range for one layer and one window, the gate decides once over every layer; not when the live
  version is outside its own band on the same rows: then the traffic is what moved, and the
  comparisons above decide);
- a layer's dead-neuron share is up by more than ``dead_share`` (5 points) over its baseline
  (over the live version's share on the same rows when the package has no baseline).

Generated requests only feed the comparisons with the live version: they are not traffic the
baseline describes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from ..engine.features import EncodedBatch
from ..engine.instrument import forward_batches
from ..errors import InvalidRequest
from ..model.health import LayerMoments, effective_requests
from ..model.manifest import PackageError
from .monitor import layout_key
from .window import band_for, expected_for

log = logging.getLogger(__name__)

GENERATED_ADS = 50
CHUNK_ROWS = 4096  # rows per pass through the layers (a few MB; the time is in BLAS)


@dataclass(frozen=True)
class GateConfig:
    """Limits of the guarded swap (``CTR_GATE`` JSON, per model under ``"models"``)."""

    enabled: bool = True
    logit_shift: float = 0.2
    ks: float = 0.1
    band: bool = True
    band_margin: float = 2.0  # hold beyond this many times the band's half-width (see below)
    dead_share: float = 0.05
    sample_requests: int = 2000
    min_rows: int = 5000
    max_rows: int = 20_000  # newest first: 0.6-0.7 s per swap on the demo model at 20% load

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], where: str = "CTR_GATE") -> "GateConfig":
        known = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in known:
                raise ValueError(f"{where}.{key}: unknown setting; known: {sorted(known)}")
            want = bool if key in ("enabled", "band") else (int if key in (
                "sample_requests", "min_rows", "max_rows") else float)
            if want is bool:
                ok = isinstance(value, bool)
            elif want is int:
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            else:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
                    np.isfinite(value) and value >= 0
            if not ok:
                raise ValueError(f"{where}.{key}: expected a {'boolean' if want is bool else 'non-negative number'}, got {value!r}")
            values[key] = want(value)
        return cls(**values)


@dataclass
class Decision:
    """What the gate found for one candidate version."""

    version: str
    against: str | None
    passed: bool
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    at: float = 0.0
    result: str = ""  # passed, held, forced, skipped

    def describe(self) -> dict[str, Any]:
        out = asdict(self)
        out["result"] = self.result or ("passed" if self.passed else "held")
        return out

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


@dataclass
class _Side:
    """One engine's outputs over the gate's rows."""

    logits: list[np.ndarray] = field(default_factory=list)
    nonfinite: int = 0
    all_layers: list[LayerMoments] = field(default_factory=list)
    band_layers: list[LayerMoments] = field(default_factory=list)

    def add(self, hidden: Sequence[np.ndarray], logit: np.ndarray, in_band: np.ndarray) -> None:
        """Rows of one chunk; ``in_band``: per row, whether it is live or reference traffic."""
        if not self.all_layers:
            self.all_layers = [LayerMoments(h.shape[1]) for h in hidden]
            self.band_layers = [LayerMoments(h.shape[1]) for h in hidden]
        every = bool(in_band.all())
        for i, h in enumerate(hidden):
            if not np.isfinite(h).all():
                h = np.where(np.isfinite(h), h, 0.0)
            self.all_layers[i].add(h)
            if in_band.any():
                self.band_layers[i].add(h if every else h[in_band])
        self.logits.append(logit)


def _outputs(engine: Any, batches: list[EncodedBatch]) -> tuple[list[np.ndarray], np.ndarray]:
    """The hidden layers and log-odds of the rows of ``batches``, computed over all of them at
    once (``forward_batches``); the engine's own kernels score each request too, and every row
    of a request they find not a number for counts as not finite."""
    hidden, logit = forward_batches(engine, batches)
    start = 0
    for b in batches:
        try:
            engine.score_encoded(b)
        except InvalidRequest:  # NonFiniteOutput: the serving kernels overflow on this request
            if np.isfinite(logit[start:start + b.n_ads]).all():  # the NumPy twin did not
                logit[start:start + b.n_ads] = np.nan  # trust the kernels
        start += b.n_ads
    return hidden, logit


def _chunks(pairs: list, rows: int) -> Iterator[list]:
    chunk, n = [], 0
    for p in pairs:
        chunk.append(p)
        n += p[0].n_ads
        if n >= rows:
            yield chunk
            chunk, n = [], 0
    if chunk:
        yield chunk


def _reference_batches(candidate: Any, live: Any | None, config: GateConfig, need: int,
                       notes: list[str]) -> list[tuple[EncodedBatch, EncodedBatch | None, str]]:
    """Up to ``need`` rows of the package's reference requests, then of generated ones."""
    from ..model.baseline import reference_requests
    from ..model.quantize import generated_requests

    pkg = candidate.package
    try:
        reference = reference_requests(pkg) or []
    except PackageError as exc:
        notes.append(f"reference requests unusable ({exc}); generated requests used instead")
        reference = []
    out: list[tuple[EncodedBatch, EncodedBatch | None, str]] = []
    rows = skipped = 0

    def take(requests, source: str) -> None:
        nonlocal rows, skipped
        for req in requests:
            if rows >= need:
                return
            try:
                cb = candidate.layout.encode(req.get("context") or {}, req.get("ads") or [])
            except (InvalidRequest, AttributeError, TypeError):
                skipped += 1
                continue
            lb = None
            if live is not None:
                try:
                    lb = live.layout.encode(req.get("context") or {}, req.get("ads") or [])
                except (InvalidRequest, AttributeError, TypeError):
                    lb = None
            out.append((cb, lb, source))
            rows += cb.n_ads

    take(reference, "reference")
    if skipped:
        notes.append(f"{skipped} reference request(s) do not fit the model and were skipped")
    if rows < need:
        n = max(1, -(-(need - rows) // GENERATED_ADS))
        take(({"context": c, "ads": a} for c, a in
               generated_requests(pkg, min(n, config.sample_requests), GENERATED_ADS)), "generated")
    return out


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov distance: the largest gap between the two ECDFs."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return float(np.abs(np.searchsorted(a, grid, side="right") / a.size
                        - np.searchsorted(b, grid, side="right") / b.size).max())


def evaluate(candidate: Any, live: Any | None, samples: Sequence[EncodedBatch],
             config: GateConfig = GateConfig(), *, version: str = "",
             live_version: str | None = None) -> Decision:
    """Judge engine ``candidate`` against engine ``live`` (None: nothing serves yet) on
    ``samples``, the last sampled live requests of the model (oldest first)."""
    t0 = time.perf_counter()
    reasons: list[str] = []
    notes: list[str] = []
    comparable = live is not None and layout_key(candidate) == layout_key(live)
    if live is not None and not comparable:
        notes.append("the feature groups changed: live samples are not used; the comparisons "
                     "with the live version run on reference requests only")
    pairs: list[tuple[EncodedBatch, EncodedBatch | None, str]] = []
    rows = 0
    if comparable:
        for b in reversed(list(samples)[-config.sample_requests:]):  # newest first, up to max_rows
            if rows + b.n_ads > config.max_rows:
                break
            pairs.append((b, b, "live"))
            rows += b.n_ads
    sources = {"live": len(pairs), "reference": 0, "generated": 0}
    if rows < max(1, config.min_rows):
        for cb, lb, source in _reference_batches(candidate, live, config,
                                                 max(1, config.min_rows) - rows, notes):
            pairs.append((cb, lb, source))
            sources[source] += 1

    cand, base = _Side(), _Side()
    shift_c, shift_l = [], []
    band_rows = bad_c = 0
    band_sum_sq = 0.0
    with _one_blas_thread():
        for chunk in _chunks(pairs, CHUNK_ROWS):
            counts = np.array([cb.n_ads for cb, _, _ in chunk], dtype=np.int64)
            in_band = np.repeat([src != "generated" for _, _, src in chunk], counts).astype(bool)
            band_rows += int(in_band.sum())
            band_sizes = counts[np.array([src != "generated" for _, _, src in chunk])]
            band_sum_sq += float((band_sizes.astype(np.float64) ** 2).sum())
            hc, zc = _outputs(candidate, [cb for cb, _, _ in chunk])
            cand.add(hc, zc, in_band)
            paired = np.repeat([lb is not None for _, lb, _ in chunk], counts).astype(bool) \
                if live is not None else np.zeros(zc.size, dtype=bool)
            bad = ~np.isfinite(zc)
            if paired.any():
                hl, zl = _outputs(live, [lb for _, lb, _ in chunk if lb is not None])
                base.add(hl, zl, in_band[paired])
                shift_c.append(zc[paired])
                shift_l.append(zl)
                bad[paired] &= np.isfinite(zl)  # rows the live version cannot score either
            bad_c += int(bad.sum())
    logit_c = np.concatenate(cand.logits) if cand.logits else np.zeros(0)
    stats: dict[str, Any] = {"rows": int(logit_c.size), "band_rows": band_rows}

    if logit_c.size == 0:
        reasons.append("no request could be scored to judge it (no live samples, and neither "
                       "reference nor generated requests fit the model)")

    # 1. a finite output
    paired_c = np.concatenate(shift_c) if shift_c else np.zeros(0)
    paired_l = np.concatenate(shift_l) if shift_l else np.zeros(0)
    live_ok = np.isfinite(paired_l)
    stats["nonfinite_rows"] = bad_c
    if bad_c:
        reasons.append(f"its output is not a finite number for {bad_c} of {logit_c.size} rows "
                       "(an overflow inside the net)")

    # 2, 3. against the live version, on the same rows
    both = np.isfinite(paired_c) & live_ok
    if both.any():
        with np.errstate(over="ignore", invalid="ignore"):
            shift = float(np.mean(paired_c[both] - paired_l[both]))
        stats["logit_shift"] = shift
        if not abs(shift) <= config.logit_shift:
            reasons.append(f"mean log-odds shift {shift:+.3g} against live version "
                           f"{live_version!r} (limit {config.logit_shift:g})")
        pc = 1.0 / (1.0 + np.exp(-np.clip(paired_c[both], -700, 700)))
        pl = 1.0 / (1.0 + np.exp(-np.clip(paired_l[both], -700, 700)))
        ks = _ks(pc, pl)
        stats["ks"] = ks
        if ks > config.ks:
            reasons.append(f"KS distance {ks:.3f} between its pCTRs and live version "
                           f"{live_version!r}'s (limit {config.ks:g})")
    elif live is not None:
        notes.append("no rows both versions could score: not compared with the live version")

    # 4, 5. hidden layers against the candidate's own baseline (or the live version's layers)
    baseline = getattr(candidate.package, "baseline", None)
    live_base = getattr(getattr(live, "package", None), "baseline", None)
    band_requests = effective_requests(band_rows, band_sum_sq)  # unequal requests: see health
    layers = []
    for i, m in enumerate(cand.band_layers if baseline is not None and band_rows else cand.all_layers):
        entry: dict[str, Any] = {"layer": i + 1, "fluctuation": m.fluctuation,
                                 "zero_share": float(m.zero_share.mean()) if m.width else 0.0}
        if baseline is not None and band_rows and i < len(baseline["layers"]):
            bl = baseline["layers"][i]
            center = expected_for(bl, band_requests)
            band = _widen(band_for(bl, m.n, int(baseline.get("window") or m.n), baseline.get("rows"),
                                   center), center, config.band_margin)
            entry.update(band=band, zero_share_base=bl["zero_share"])
            if config.band and not band[0] <= m.fluctuation <= band[1]:
                live_out = _live_out_of_band(base, live_base, i, comparable, config.band_margin,
                                             band_requests)
                if live_out:
                    notes.append(f"layer {i + 1}: F_l {m.fluctuation:.4g} is outside its baseline "
                                 f"band, but the live version is outside its own on these rows too "
                                 "(the traffic moved): not held for it")
                else:
                    reasons.append(f"layer {i + 1}: fluctuation F_l {m.fluctuation:.4g} outside its "
                                   f"baseline band [{band[0]:.4g}, {band[1]:.4g}] on {m.n} rows")
            limit = bl["zero_share"] + config.dead_share
            if entry["zero_share"] > limit:
                reasons.append(f"layer {i + 1}: dead-neuron share {entry['zero_share']:.1%} against "
                               f"{bl['zero_share']:.1%} in its baseline (limit +"
                               f"{config.dead_share * 100:g} points)")
        elif base.all_layers and i < len(base.all_layers) and base.all_layers[i].width == m.width:
            other = float(base.all_layers[i].zero_share.mean())
            entry["zero_share_live"] = other
            if entry["zero_share"] > other + config.dead_share:
                reasons.append(f"layer {i + 1}: dead-neuron share {entry['zero_share']:.1%} against "
                               f"{other:.1%} for live version {live_version!r} (limit +"
                               f"{config.dead_share * 100:g} points)")
        layers.append(entry)
    stats["layers"] = layers
    if baseline is None:
        notes.append("the package has no health baseline: its layers are compared with the live "
                     "version's only")
    elif not band_rows:
        notes.append("no live or reference rows: the baseline band was not checked")
    return Decision(version=version, against=live_version if live is not None else None,
                    passed=not reasons, reasons=reasons, notes=notes, stats=stats,
                    sources=sources, seconds=time.perf_counter() - t0, at=time.time())


def _live_out_of_band(side: _Side, live_base: dict | None, i: int, comparable: bool,
                      margin: float, requests: float) -> bool:
    if not comparable or live_base is None or not side.band_layers or i >= len(side.band_layers):
        return False
    m = side.band_layers[i]
    if m.n == 0 or i >= len(live_base["layers"]):
        return False
    layer = live_base["layers"][i]
    center = expected_for(layer, requests)
    band = _widen(band_for(layer, m.n, int(live_base.get("window") or m.n), live_base.get("rows"),
                           center), center, margin)
    return not band[0] <= m.fluctuation <= band[1]


def _widen(band: list[float], center: float, margin: float) -> list[float]:
    """``band`` stretched around ``center`` by ``margin``. The band is a 99% range of one
    layer's F_l in one window; the gate decides once, over every layer, so it holds only beyond
    a margin of it (2: about five standard errors), where a broken version lands far outside."""
    return [center - (center - band[0]) * margin, center + (band[1] - center) * margin]


class _one_blas_thread:
    """BLAS on one thread while the gate runs: its helper threads would not run at the idle
    priority of the registry's worker, and would take the request path's core."""

    def __enter__(self) -> None:
        try:
            from threadpoolctl import threadpool_limits
            self._limit = threadpool_limits(1, user_api="blas")
        except ImportError:  # pragma: no cover - a dependency; degrade, do not fail the swap
            self._limit = None

    def __exit__(self, *exc: Any) -> None:
        if self._limit is not None:
            self._limit.restore_original_limits()


class SwapGate:
    """The registry's guarded swap: judges candidates on the monitor's recent samples, keeps the
    last decisions per model, and raises the alarm when it holds a version back."""

    KEEP = 20

    def __init__(self, monitor: Any = None, config: GateConfig = GateConfig(),
                 per_model: Mapping[str, GateConfig] | None = None, metrics: Any = None,
                 webhook: Any = None) -> None:
        self.monitor = monitor
        self.config = config
        self.per_model = dict(per_model or {})
        self.metrics = metrics
        self.webhook = webhook
        self._decisions: dict[str, list[dict[str, Any]]] = {}

    def config_for(self, name: str) -> GateConfig:
        return self.per_model.get(name, self.config)

    def judge(self, candidate: Any, current: Any | None) -> Decision | None:
        config = self.config_for(candidate.name)
        engine = candidate.scorer
        if not config.enabled or getattr(engine, "package", None) is None \
                or not getattr(engine, "supports_health", True):  # model graphs: not yet
            return None
        live = current.scorer if current is not None and getattr(
            current.scorer, "package", None) is not None and getattr(
            current.scorer, "supports_health", True) else None
        samples = []
        if self.monitor is not None and live is not None:
            self.monitor.drain(flush=False)  # the samples still queued count too
            samples = self.monitor.recent(candidate.name, layout_key(live))
        decision = evaluate(engine, live, samples, config, version=candidate.version,
                            live_version=current.version if current is not None else None)
        self._record(candidate.name, decision)
        log.info("model %r: guarded swap %s version %r in %.2fs on %s rows (%s)%s",
                 candidate.name, "passed" if decision.passed else "HELD", candidate.version,
                 decision.seconds, decision.stats.get("rows"), decision.sources,
                 "" if decision.passed else f": {decision.reason}")
        if self.metrics is not None:
            self.metrics.gate.labels(candidate.name, "passed" if decision.passed else "held").inc()
            self.metrics.gate_seconds.labels(candidate.name).set(decision.seconds)
            if decision.passed:
                self.metrics.child(self.metrics.held, candidate.name, candidate.version).set(0)
        return decision

    def held(self, name: str, version: str, decision: Decision) -> None:
        log.error("ALARM model %r: version %r is held back by the guarded swap, the live version "
                  "keeps serving: %s", name, version, decision.reason)
        if self.metrics is not None:
            self.metrics.child(self.metrics.held, name, version).set(1)
        if self.webhook is not None:
            self.webhook.event(model=name, version=version, statistic="guarded_swap",
                               value=None, limit=None, reason=decision.reason, held=True)

    def forced(self, name: str, version: str, current: Any | None) -> Decision:
        decision = Decision(version=version, against=current.version if current else None,
                            passed=True, notes=["promoted by an admin with force=true; not judged"],
                            at=time.time(), result="forced")
        self._record(name, decision)
        log.warning("model %r: version %r promoted past the guarded swap (force=true)", name, version)
        if self.metrics is not None:
            self.metrics.gate.labels(name, "forced").inc()
            self.metrics.child(self.metrics.held, name, version).set(0)
        return decision

    def _record(self, name: str, decision: Decision) -> None:
        self._decisions[name] = (self._decisions.get(name, []) + [decision.describe()])[-self.KEEP:]

    def decisions(self, name: str) -> list[dict[str, Any]]:
        return list(self._decisions.get(name, []))

    def last(self, name: str) -> dict[str, Any] | None:
        found = self._decisions.get(name)
        return found[-1] if found else None
