"""Prometheus metrics of the service.

One :class:`Metrics` object per process owns its own ``CollectorRegistry`` (tests build several
apps in one process). With several worker processes, ``PROMETHEUS_MULTIPROC_DIR`` must be set
before ``prometheus_client`` is imported (``ctr-serve`` does it); ``/metrics`` then adds up every
worker's values from that directory.
"""

from __future__ import annotations

import os
from typing import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# 50 us .. 1 s: fine where the service lives (0.2-3 ms), coarse above
LATENCY_BUCKETS = (
    50e-6, 75e-6, 100e-6, 150e-6, 200e-6, 250e-6, 300e-6, 400e-6, 500e-6, 600e-6, 700e-6, 800e-6,
    900e-6, 1e-3, 1.25e-3, 1.5e-3, 1.75e-3, 2e-3, 2.5e-3, 3e-3, 4e-3, 5e-3, 7.5e-3, 10e-3, 15e-3,
    25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0)
ADS_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 300, 500, 1000, 2000, 5000)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """Every metric the service exports, on a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("ctr_requests", "Score requests by model, version and HTTP status",
                                ["model", "version", "status"], registry=r)
        self.latency = Histogram("ctr_request_seconds",
                                 "Score request time in the service, body read to response built",
                                 ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.ads = Histogram("ctr_request_ads", "Ads per score request", ["model"],
                             buckets=ADS_BUCKETS, registry=r)
        self.in_flight = Gauge("ctr_requests_in_flight", "Score requests being handled", registry=r,
                               multiprocess_mode="livesum")
        self.loads = Counter("ctr_model_loads", "Model version loads by result (ok, failed)",
                             ["model", "result"], registry=r)
        self.explains = Counter("ctr_explain_requests", "Explain requests by model and HTTP status",
                                ["model", "status"], registry=r)
        self.swaps = Counter("ctr_model_swaps", "Times a new version went live", ["model"], registry=r)
        self.load_seconds = Histogram("ctr_model_load_seconds",
                                      "Time to validate, load and warm a model version", ["model"],
                                      buckets=LOAD_BUCKETS, registry=r)
        self.live = Gauge("ctr_model_live", "1 for the version each model serves (0 for earlier ones)",
                          ["model", "version", "md5", "kind"], registry=r,
                          multiprocess_mode="livemax")
        self.live_since = Gauge("ctr_model_live_since_seconds",
                                "Unix time the live version went live", ["model"], registry=r,
                                multiprocess_mode="livemax")
        self._live_labels: dict[str, tuple[str, str, str, str]] = {}
        self._request_children: dict[tuple[str, str, int], Callable[[], None]] = {}
        self._observers: dict[str, tuple[Callable[[float], None], Callable[[float], None]]] = {}

    # -- hot path: cached children, no label lookups per request ------------------------------

    def count_request(self, model: str, version: str, status: int) -> None:
        key = (model, version, status)
        inc = self._request_children.get(key)
        if inc is None:
            inc = self.requests.labels(model, version, str(status)).inc
            if len(self._request_children) < 10_000:
                self._request_children[key] = inc
        inc()

    def observe(self, model: str, seconds: float, n_ads: int) -> None:
        """Latency and ads of one scored request."""
        pair = self._observers.get(model)
        if pair is None:
            pair = (self.latency.labels(model).observe, self.ads.labels(model).observe)
            if len(self._observers) < 1_000:
                self._observers[model] = pair
        pair[0](seconds)
        pair[1](n_ads)

    # -- model events ------------------------------------------------------------------------

    def model_live(self, model: str, version: str, md5: str, kind: str, since: float) -> None:
        old = self._live_labels.get(model)
        if old is not None:
            self.live.labels(*old).set(0)
        labels = (model, version, md5, kind)
        self.live.labels(*labels).set(1)
        self.live_since.labels(model).set(since)
        self._live_labels[model] = labels
        self.swaps.labels(model).inc()

    def model_loaded(self, model: str, seconds: float, ok: bool) -> None:
        self.loads.labels(model, "ok" if ok else "failed").inc()
        if ok:
            self.load_seconds.labels(model).observe(seconds)

    # -- exposition --------------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """The text exposition: this process's registry, or every worker's in multi-process mode."""
        path = multiprocess_dir()
        if path:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=path)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    @staticmethod
    def process_exited(pid: int | None = None) -> None:
        """Drop a finished worker's live gauges (multi-process mode)."""
        if multiprocess_dir():
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid or os.getpid())
