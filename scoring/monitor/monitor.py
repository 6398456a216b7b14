"""Model health on live traffic: sample requests, watch hidden layers, raise alarms.

The request path does almost nothing: :meth:`HealthMonitor.due` counts requests down and, once
every ``1 / rate`` requests, the engine hands the request's encoded batch (hashed ids; copied
when it views the scanner's pooled buffers) to :meth:`HealthMonitor.offer`, which appends it to a
bounded queue or, when the queue is full, counts a drop. Everything else runs on the monitor's own
thread at idle CPU priority: the instrumented forward pass (:mod:`scoring.engine.instrument`), the
local window part per model version, the hand-over to the :class:`~scoring.monitor.store.WindowStore`
every ``flush_seconds``, the summaries and alarms of the windows it closes, and the ring of the
last ``recent`` sampled requests per model that the guarded swap scores.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable

import numpy as np

from ..engine.features import EncodedBatch
from ..engine.instrument import forward_batches
from ..lifecycle.priority import lower_thread_priority
from .alarms import Rules, Webhook, update_streaks
from .metrics import HealthMetrics
from .store import WindowStore
from .window import Window, reference_of, summarize

log = logging.getLogger(__name__)

RATE = 0.01
QUEUE = 1024           # a second of samples at 10% of 3,000 req/s, with room
QUEUE_ROWS = 100_000    # rows waiting at most (requests may carry thousands of ads)
RECENT = 2000
RECENT_ROWS = 60_000    # rows kept for the guarded swap (it scores at most 20,000 by default)
VERSIONS_KEPT = 4       # model versions whose windows are kept, per model
FLUSH_SECONDS = 1.0
FLUSH_ROWS = 4000
CHUNK_ROWS = 4096       # rows per pass through the layers
POLL = 1.0              # seconds between the monitor's looks at its queue
ALARMS_KEPT = 50


def layout_key(engine: Any) -> tuple:
    """What makes two engines' encoded batches interchangeable: the groups of each side in slot
    order, and the dense width."""
    lay = engine.layout
    return (tuple(g.name for g in lay.ctx_groups), tuple(g.name for g in lay.ad_groups),
            engine.manifest.dense_dim)


def absent_counts(engine: Any, batch: EncodedBatch) -> np.ndarray:
    """Per group of the manifest (in its order): how many of the batch's rows lack it."""
    lay, n = engine.layout, batch.n_ads
    ctx_present = set(batch.ctx_keys[batch.ctx_lens > 0].tolist())
    n_ad = len(lay.ad_groups)
    ad_absent = np.full(n_ad, n, dtype=np.int64)
    if n_ad and n:
        present = np.zeros(n * n_ad, dtype=np.bool_)
        present[batch.ad_keys[batch.ad_lens > 0]] = True
        ad_absent = n - present.reshape(n, n_ad).sum(axis=0)
    by_name = {g.name: (0 if i in ctx_present else n) for i, g in enumerate(lay.ctx_groups)}
    by_name.update({g.name: int(ad_absent[i]) for i, g in enumerate(lay.ad_groups)})
    return np.array([by_name[g.name] for g in engine.manifest.groups], dtype=np.float64)


def copy_batch(b: EncodedBatch) -> EncodedBatch:
    return EncodedBatch(b.ctx_ids.copy(), b.ctx_keys.copy(), b.ctx_lens.copy(), b.ad_ids.copy(),
                        b.ad_keys.copy(), b.ad_lens.copy(), b.dense, b.n_ads)


class HealthMonitor:
    """Samples live requests and keeps every model version's health windows."""

    def __init__(self, store: WindowStore, *, rate: float = RATE, queue: int = QUEUE,
                 recent: int = RECENT, rules: Rules = Rules(), webhook: Webhook | None = None,
                 metrics: HealthMetrics | None = None, flush_seconds: float = FLUSH_SECONDS) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"health sample rate: expected a share in [0, 1], got {rate}")
        self.store = store
        self.rate = rate
        self.stride = max(1, round(1.0 / rate)) if rate > 0 else 0
        self._countdown = self.stride
        self.queue_size = queue
        self._queue: collections.deque = collections.deque()
        self.recent_size = recent
        self.rules = rules
        self.webhook = webhook or Webhook(None)
        self.metrics = metrics
        self.flush_seconds = flush_seconds
        self.sampled = 0
        self.dropped = 0
        self.processed = 0
        self._rows_in = 0   # written by the request thread only
        self._rows_out = 0  # written by the monitor's thread only
        self._recent: dict[str, collections.deque] = {}
        self._recent_rows: dict[str, int] = {}
        self._versions: dict[str, list[str]] = {}
        self._parts: dict[tuple[str, str], tuple[Any, Window]] = {}  # local, not yet in the store
        self._last_flush = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._work = threading.RLock()  # one pass of processing at a time (thread, flush, tests)

    # -- the request path ---------------------------------------------------------------------

    def due(self) -> bool:
        """Whether this request is sampled (one in ``1 / rate``); a countdown, no lock."""
        if self.stride == 0:
            return False
        self._countdown -= 1
        if self._countdown > 0:
            return False
        self._countdown = self.stride
        return True

    def keeper(self, model: Any) -> Callable[[Any, EncodedBatch, bool], None]:
        """What the engine calls with the sampled request's batch (``copy``: it views pooled
        buffers)."""
        def keep(engine: Any, batch: EncodedBatch, copy: bool) -> None:
            self.offer(model, copy_batch(batch) if copy else batch)
        return keep

    def offer(self, model: Any, batch: EncodedBatch) -> None:
        if len(self._queue) >= self.queue_size or \
                self._rows_in - self._rows_out + batch.n_ads > QUEUE_ROWS:
            self.dropped += 1
            if self.metrics:
                self.metrics.dropped.inc()
            return
        self.sampled += 1
        self._rows_in += batch.n_ads
        self._queue.append((model, batch, time.time()))

    # -- the monitor's thread -----------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None or self.stride == 0:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="model-health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
            self._thread = None
        self.drain()

    def _run(self) -> None:
        lower_thread_priority(idle=True)
        while not self._stop.is_set():
            try:
                self.drain(flush=False)
                if time.monotonic() - self._last_flush >= self.flush_seconds:
                    self.flush()
            except Exception:  # the monitor must outlive anything a model does
                log.exception("model health: processing a sample failed")
            # samples wait up to POLL seconds: several requests then go through the layers in
            # one pass, which is cheaper and holds the interpreter lock for less time in all
            self._stop.wait(POLL)

    def drain(self, flush: bool = True) -> bool:
        """Process every queued sample (the thread's loop; tests call it directly), a few
        thousand rows at a time."""
        worked = False
        with self._work:
            while self._queue:
                groups: dict[int, tuple[Any, list, list]] = {}  # by model object (its engine)
                rows = 0
                while self._queue and rows < CHUNK_ROWS:
                    model, batch, at = self._queue.popleft()
                    self._rows_out += batch.n_ads
                    rows += batch.n_ads
                    entry = groups.setdefault(id(model), (model, [], []))
                    entry[1].append(batch)
                    entry[2].append(at)
                for model, batches, times in groups.values():
                    try:
                        self.process(model, batches, max(times), started=min(times))
                    except Exception:  # one model's failure loses only its own samples
                        log.exception("model health: samples of %r version %r failed", model.name,
                                      model.version)
                worked = True
        if flush:
            self.flush()
        return worked

    def process(self, model: Any, batches: EncodedBatch | list[EncodedBatch],
                at: float | None = None, started: float | None = None) -> None:
        """Fold sampled requests of one model version into its local part: one pass through the
        layers over all their rows (:func:`~scoring.engine.instrument.forward_batches`)."""
        batches = [batches] if isinstance(batches, EncodedBatch) else list(batches)
        engine = model.scorer
        hidden, logit = forward_batches(engine, batches)
        key = (model.name, model.version)
        entry = self._parts.get(key)
        if entry is None:
            widths = [h.shape[1] for h in hidden]
            entry = self._parts[key] = (model, Window(widths, [g.name for g in engine.manifest.groups]))
        absent = sum(absent_counts(engine, b) for b in batches)
        entry[1].add(hidden, logit, absent, at or time.time(), requests=len(batches),
                     sum_sq=float(sum(b.n_ads ** 2 for b in batches)), started=started)
        lay = layout_key(engine)
        for b in batches:
            self._keep_recent(model.name, lay, b)
        self._track_version(model.name, model.version)
        self.processed += len(batches)
        if self.metrics:
            self.metrics.sampled.labels(model.name).inc(len(batches))
        if entry[1].rows >= FLUSH_ROWS:
            self._flush_one(key)

    def _keep_recent(self, name: str, key: tuple, batch: EncodedBatch) -> None:
        """The guarded swap's sample: the last ``recent`` requests, at most ``RECENT_ROWS`` rows."""
        ring = self._recent.get(name)
        if ring is None:
            ring = self._recent[name] = collections.deque()
        ring.append((key, batch))
        rows = self._recent_rows.get(name, 0) + batch.n_ads
        while len(ring) > 1 and (len(ring) > self.recent_size or rows > RECENT_ROWS):
            rows -= ring.popleft()[1].n_ads
        self._recent_rows[name] = rows

    def _track_version(self, name: str, version: str) -> None:
        """Keep the windows of a model's last ``VERSIONS_KEPT`` versions; forget older ones
        (their store entries and metric series)."""
        seen = self._versions.setdefault(name, [])
        if seen and seen[-1] == version:
            return
        if version in seen:
            seen.remove(version)
        seen.append(version)
        if len(seen) > VERSIONS_KEPT:
            old, seen[:] = seen[:-VERSIONS_KEPT], seen[-VERSIONS_KEPT:]
            self.store.forget(name, set(seen))
            if self.metrics:
                for v in old:
                    self.metrics.forget(name, v)

    def flush(self) -> None:
        """Hand every local part to the store (closing windows there)."""
        with self._work:
            self._last_flush = time.monotonic()
            for key in list(self._parts):
                self._flush_one(key)

    def _flush_one(self, key: tuple[str, str]) -> None:
        entry = self._parts.pop(key, None)
        if entry is None or (entry[1].rows == 0 and entry[1].nonfinite == 0):
            return
        model, part = entry
        baseline = getattr(getattr(model.scorer, "package", None), "baseline", None)
        for summary in self.store.add(model.name, model.version, part,
                                      lambda state, w: self._close(model, baseline, state, w)):
            log.debug("model %r version %r: health window %d closed", model.name,
                      model.version, summary["index"])

    def _close(self, model: Any, baseline: dict | None, state: dict, w: Window) -> dict[str, Any]:
        if baseline is None and state.get("reference") is None:
            state["reference"] = reference_of(w)  # no baseline: the first window is the yardstick
        s = summarize(w, baseline, state.get("reference"))
        violations = self.rules.violations(s)
        s["out_of_band"] = {k: {"value": v, "limit": lim} for k, (v, lim) in violations.items()}
        streaks = state.setdefault("streaks", {})
        before = set(streaks)
        fired = update_streaks(streaks, violations, self.rules.windows)
        for stat in fired:
            value, limit = violations[stat]
            log.error("ALARM model %r version %r: %s = %.4g out of band (%s) for %d windows in a "
                      "row", model.name, model.version, stat, value, limit, self.rules.windows)
            event = self.webhook.event(model=model.name, version=model.version, statistic=stat,
                                       value=value, limit=limit, windows=self.rules.windows)
            state["alarms"] = (state.get("alarms", []) + [event])[-ALARMS_KEPT:]
            if self.metrics:
                self.metrics.child(self.metrics.alarms, model.name, model.version, stat).inc()
        if self.metrics:
            self.metrics.window(model.name, model.version, s, streaks, before - set(violations))
        return s

    # -- what it knows ------------------------------------------------------------------------

    def recent(self, name: str, key: tuple | None = None) -> list[EncodedBatch]:
        """The last sampled requests of model ``name`` (oldest first); only those encoded for
        layout ``key`` when given."""
        ring = self._recent.get(name)
        if not ring:
            return []
        return [b for k, b in list(ring) if key is None or k == key]

    def health(self, name: str, version: str, baseline: dict | None) -> dict[str, Any]:
        """The answer of ``GET /v1/models/{name}/health`` for one version."""
        state = self.store.read(name, version)
        windows = list(state.get("windows") or [])
        current = state.get("current")
        if current and current.get("rows"):
            s = summarize(Window.from_json(current), baseline, state.get("reference"))
            s["closed"] = False
            windows.append(s)
        for w in windows:
            w.setdefault("closed", True)
        return {"model": name, "version": version, "baseline": baseline_summary(baseline),
                "window_rows": self.store.rows, "windows": windows,
                "out_of_band": state.get("streaks") or {}, "alarms": state.get("alarms") or [],
                "sampling": {"rate": self.rate, "sampled": self.sampled, "dropped": self.dropped,
                             "processed": self.processed, "queued": len(self._queue),
                             "queued_rows": max(0, self._rows_in - self._rows_out)}}


def baseline_summary(baseline: dict | None) -> dict[str, Any] | None:
    """The baseline without its per-neuron arrays."""
    if baseline is None:
        return None
    return {"rows": baseline.get("rows"), "requests": baseline.get("requests"),
            "window": baseline.get("window"),
            "layers": [{k: v for k, v in layer.items() if k != "neurons"}
                       for layer in baseline["layers"]],
            "pctr": baseline.get("pctr"), "groups": baseline.get("groups")}
