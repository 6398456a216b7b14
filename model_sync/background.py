"""In-process sync: the syncer in a daemon thread of another program (``ctr-serve``).

``config_from_env()`` reads ``CTR_SYNC_*`` variables (None when ``CTR_SYNC_SOURCE`` is unset);
``start_background_sync(config)`` starts polling and returns a :class:`SyncHandle` whose
``sync_now()`` runs a cycle at once (what ``POST /v1/models/{name}/reload`` does) and waits for it.

    CTR_SYNC_SOURCE        the remote package URL (required to enable sync)
    CTR_SYNC_MODEL         local model name (default: the last part of the source path)
    CTR_SYNC_INTERVAL      seconds between polls (60)
    CTR_SYNC_RATE_LIMIT    bytes per second, K/M/G suffix (50M; 0 = no limit)
    CTR_SYNC_KEEP          versions kept (3)
    CTR_SYNC_USER          HDFS user.name
    CTR_SYNC_ALARM_WEBHOOK URL that receives a JSON POST when a sync fails
    CTR_SYNC_TIMEOUT       seconds a request may wait (30)
    CTR_SYNC_RETRIES       retries within a cycle (3)
"""

from __future__ import annotations

import logging
import os
import posixpath
import threading
from pathlib import Path
from typing import Mapping

from .syncer import SyncConfig, Syncer, SyncResult, SyncStatus
from .throttle import parse_rate

log = logging.getLogger(__name__)

ENV_PREFIX = "CTR_SYNC_"


def config_from_env(repo: str | os.PathLike, env: Mapping[str, str] | None = None) -> SyncConfig | None:
    """A :class:`SyncConfig` from ``CTR_SYNC_*``; None when ``CTR_SYNC_SOURCE`` is not set.
    Raises ValueError naming the variable when one is malformed."""
    env = os.environ if env is None else env
    source = env.get(ENV_PREFIX + "SOURCE", "").strip()
    if not source:
        return None

    def get(name: str, conv, default):
        raw = env.get(ENV_PREFIX + name, "").strip()
        if not raw:
            return default
        try:
            return conv(raw)
        except ValueError as exc:
            raise ValueError(f"{ENV_PREFIX}{name}={raw!r}: {exc}") from None

    model = env.get(ENV_PREFIX + "MODEL", "").strip() or posixpath.basename(source.split("?")[0].rstrip("/"))
    kwargs = dict(source=source, repo=Path(repo), model=model,
                  interval=get("INTERVAL", float, 60.0), keep=get("KEEP", int, 3),
                  timeout=get("TIMEOUT", float, 30.0), retries=get("RETRIES", int, 3),
                  user=get("USER", str, None), alarm_webhook=get("ALARM_WEBHOOK", str, None))
    rate = get("RATE_LIMIT", parse_rate, "default")
    if rate != "default":
        kwargs["rate_limit"] = rate
    try:
        return SyncConfig(**kwargs)
    except ValueError as exc:
        raise ValueError(f"{ENV_PREFIX}*: {exc}") from None


class SyncHandle:
    """A syncer polling in a daemon thread."""

    def __init__(self, syncer: Syncer) -> None:
        self.syncer = syncer
        self._wake = threading.Event()
        self._cond = threading.Condition()
        self._requested = 0   # sync_now() calls so far
        self._in_cycle = 0    # requests the running cycle answers
        self._answered = 0    # requests answered by a finished cycle
        self._last: SyncResult | None = None
        self._thread = threading.Thread(target=self._run, name=f"ctr-sync-{syncer.model}", daemon=True)

    @property
    def model(self) -> str:
        return self.syncer.model

    @property
    def status(self) -> SyncStatus:
        return self.syncer.status

    def _run(self) -> None:
        self.syncer.run_forever(self._wake, on_result=self._on_result, on_start=self._on_start)

    def _on_start(self) -> None:
        with self._cond:
            self._in_cycle = self._requested

    def _on_result(self, result: SyncResult) -> None:
        with self._cond:
            self._answered = self._in_cycle
            self._last = result
            self._cond.notify_all()

    def start(self) -> "SyncHandle":
        self._thread.start()
        return self

    def trigger(self) -> None:
        """Start a cycle now instead of at the next poll (returns at once)."""
        self._wake.set()

    def sync_now(self, timeout: float | None = None) -> SyncResult | None:
        """Run a cycle now and wait for its result; None if ``timeout`` seconds pass first.
        A cycle that was already running when this was called does not count."""
        with self._cond:
            self._requested += 1
            ticket = self._requested
        self.trigger()
        with self._cond:
            ok = self._cond.wait_for(lambda: self._answered >= ticket, timeout)
            return self._last if ok else None

    def stop(self, timeout: float = 10.0) -> None:
        self.syncer.stop()
        self._wake.set()
        self._thread.join(timeout)
        self.syncer.close()


def start_background_sync(config: SyncConfig) -> SyncHandle:
    """Start polling ``config.source`` into ``config.repo`` from a daemon thread."""
    handle = SyncHandle(Syncer(config)).start()
    log.info("in-process model sync started for model %r from %s", config.model, handle.syncer.source.describe())
    return handle
