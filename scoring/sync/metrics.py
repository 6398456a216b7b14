"""Prometheus metrics of the syncer, labelled by model.

They live in prometheus-client's default registry, so in-process sync shows them on the service's
own ``/metrics``; the ``ctr-sync`` daemon serves them with ``--metrics-port``.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

CYCLES = Counter("ctr_sync_cycles_total", "Sync cycles by result (unchanged, installed, failed, skipped)",
                 ["model", "result"])
CONSECUTIVE_FAILURES = Gauge("ctr_sync_consecutive_failures", "Failed cycles in a row (0 after a success)",
                             ["model"])
LAST_SUCCESS = Gauge("ctr_sync_last_success_timestamp_seconds",
                     "Unix time of the last cycle that left the live version current", ["model"])
LAST_INSTALL = Gauge("ctr_sync_last_install_timestamp_seconds", "Unix time of the last installed version",
                     ["model"])
BYTES = Counter("ctr_sync_downloaded_bytes_total", "Bytes downloaded (including checksums.md5)", ["model"])
CYCLE_SECONDS = Histogram("ctr_sync_cycle_duration_seconds", "Duration of a sync cycle, retries included",
                          ["model", "result"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900))
DOWNLOAD_SECONDS = Histogram("ctr_sync_download_duration_seconds",
                             "Duration of downloading one new version (all files)", ["model"],
                             buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900))
FAILOVERS = Counter("ctr_sync_failovers_total", "Moves to another host after a retriable error", ["model"])
ALARMS = Counter("ctr_sync_alarms_total", "Alarms raised (cycles that failed after all retries)", ["model"])


COLLECTORS = (CYCLES, CONSECUTIVE_FAILURES, LAST_SUCCESS, LAST_INSTALL, BYTES, CYCLE_SECONDS, DOWNLOAD_SECONDS,
              FAILOVERS, ALARMS)


def register(registry: CollectorRegistry) -> None:
    """Also expose the sync metrics on another registry (a service's own /metrics)."""
    for collector in COLLECTORS:
        try:
            registry.register(collector)
        except ValueError:  # already there
            pass


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Serve /metrics on ``host:port`` from a daemon thread."""
    start_http_server(port, addr=host)
