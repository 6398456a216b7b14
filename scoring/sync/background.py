"""In-process sync: the syncer in a daemon thread of another program (``ctr-serve``).

``config_from_env()`` reads ``CTR_SYNC_*`` variables (None when ``CTR_SYNC_SOURCE`` is unset);
``start_background_sync(config)`` starts polling and returns a :class:`SyncHandle` whose
``sync_now()`` runs a cycle at once (what ``POST /v1/models/{name}/reload`` does) and waits for it.

One poller per host: with ``ctr-serve --workers N`` every worker has a handle, but only the one
holding ``<repo>/<model>/.sync.leader`` (an exclusive ``flock``, held for the process's life)
polls the source; the others follow the repository through the registry, checking every few
seconds whether the leadership is free (the leader's process gone: the kernel drops its lock)
and running one cycle of their own only when their reload endpoint asks for it.

    CTR_SYNC_SOURCE        the remote package URL (required to enable sync)
    CTR_SYNC_MODEL         local model name (default: the last part of the source path)
    CTR_SYNC_INTERVAL      seconds between polls (60)
    CTR_SYNC_RATE_LIMIT    bytes per second, K/M/G suffix (50M; 0 = no limit)
    CTR_SYNC_KEEP          versions kept (3)
    CTR_SYNC_USER          HDFS user.name
    CTR_SYNC_ALARM_WEBHOOK URL that receives a JSON POST when a sync fails
    CTR_SYNC_TIMEOUT       seconds a request may wait (30)
    CTR_SYNC_RETRIES       retries within a cycle (3)
    CTR_SYNC_RELOAD_WAIT   seconds the reload endpoint waits for the sync it starts (60)
"""

from __future__ import annotations

import fcntl
import logging
import os
import posixpath
import threading
from pathlib import Path
from typing import Callable, Mapping

from ..lifecycle.priority import lower_thread_priority
from .sources import open_source
from .syncer import INSTALLED, SyncConfig, Syncer, SyncResult, SyncStatus
from .throttle import parse_rate

log = logging.getLogger(__name__)

ENV_PREFIX = "CTR_SYNC_"
LEADER_LOCK = ".sync.leader"
FOLLOWER_RECHECK = 5.0  # seconds between a follower's looks at the leadership


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
        open_source(source).close()  # a bad URL fails here, naming the variable
    except ValueError as exc:
        raise ValueError(f"{ENV_PREFIX}SOURCE: {exc}") from None
    try:
        return SyncConfig(**kwargs)
    except ValueError as exc:
        raise ValueError(f"{ENV_PREFIX}*: {exc}") from None


class SyncHandle:
    """A syncer polling in a daemon thread."""

    def __init__(self, syncer: Syncer, *, on_installed: Callable[[str, str], None] | None = None,
                 reload_wait: float = 60.0) -> None:
        self.syncer = syncer
        self.on_installed = on_installed
        self.reload_wait = reload_wait
        self.low_priority = True
        self._wake = threading.Event()
        self._cond = threading.Condition()
        self._requested = 0   # sync_now() calls so far
        self._in_cycle = 0    # requests the running cycle answers
        self._answered = 0    # requests answered by a finished cycle
        self._last: SyncResult | None = None
        self._leader_fh = None
        self.role = "starting"  # "leader": this process polls for the host; "follower"
        self.recheck = FOLLOWER_RECHECK
        self._thread = threading.Thread(target=self._run, name=f"ctr-sync-{syncer.model}", daemon=True)

    @property
    def model(self) -> str:
        return self.syncer.model

    @property
    def status(self) -> SyncStatus:
        return self.syncer.status

    def _run(self) -> None:
        if self.low_priority:  # downloads and md5s only use CPU time requests do not want
            log.debug("model %r: sync thread priority: %s", self.model, lower_thread_priority(idle=True))
        stop = self.syncer.stop_event
        while not stop.is_set():
            if self._lead():
                self.role = "leader"
                log.info("model %r: this process polls %s for the host (sync leader)", self.model,
                         self.syncer.source.describe())
                self.syncer.run_forever(self._wake, on_result=self._on_result, on_start=self._on_start)
                return
            self.role = "follower"
            if self._wake.wait(self.recheck) and not stop.is_set():
                self._wake.clear()  # a reload asked this worker: one cycle of its own (the
                self._on_start()    # sync lock keeps it from overlapping the leader's)
                self._on_result(self.syncer.cycle(wait_for_lock=True))

    def _lead(self) -> bool:
        """Take the host's leadership for this model if it is free (kept until the process ends)."""
        try:
            mdir = self.syncer.repo.model_dir(self.model)
            mdir.mkdir(parents=True, exist_ok=True)
            fh = open(mdir / LEADER_LOCK, "a+")
        except OSError as exc:  # a read-only or missing repository: poll anyway (the cycle says why)
            log.warning("model %r: no sync leadership file (%s); polling from this process", self.model, exc)
            return True
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return False
        self._leader_fh = fh
        return True

    def _on_start(self) -> None:
        with self._cond:
            self._in_cycle = self._requested

    def _on_result(self, result: SyncResult) -> None:
        if result.status == INSTALLED and self.on_installed is not None:
            try:  # e.g. tell the registry to look now instead of at its next poll
                self.on_installed(self.model, result.version or "")
            except Exception:
                log.exception("model %r: on_installed callback failed", self.model)
        with self._cond:
            self._answered = self._in_cycle
            self._last = result
            self._cond.notify_all()

    def start(self) -> "SyncHandle":
        if not self._thread.is_alive() and not self.syncer.stop_event.is_set():
            self._thread.start()
        return self

    def before_reload(self, name: str) -> dict | None:
        """For ``POST /v1/models/{name}/reload``: sync ``name`` now and say what happened (waits
        up to ``reload_wait`` seconds; a longer download goes on and installs when done)."""
        if name != self.model or not self._thread.is_alive():
            return None
        result = self.sync_now(self.reload_wait)
        if result is None:
            return {"status": "running", "message": f"still downloading after {self.reload_wait:.0f}s; "
                    "the new version goes live when it is installed"}
        return {"status": result.status, "message": result.message, "version": result.version}

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
        if self._leader_fh is not None:  # hand the leadership over at once
            self._leader_fh.close()
            self._leader_fh = None


def start_background_sync(config: SyncConfig, *, on_installed: Callable[[str, str], None] | None = None,
                          reload_wait: float = 60.0, start: bool = True) -> SyncHandle:
    """A :class:`SyncHandle` polling ``config.source`` into ``config.repo`` from a daemon thread
    (``start=False``: the caller starts it, e.g. with the app's lifespan). ``on_installed(model,
    version)`` is called after each newly installed version."""
    handle = SyncHandle(Syncer(config), on_installed=on_installed, reload_wait=reload_wait)
    if start:
        handle.start()
        log.info("in-process model sync started for model %r from %s", config.model,
                 handle.syncer.source.describe())
    return handle


def sync_service_from_env(repo: str | os.PathLike, env: Mapping[str, str] | None = None, *,
                          on_installed: Callable[[str, str], None] | None = None) -> SyncHandle | None:
    """What ``ctr-serve`` runs in-process: a not-yet-started :class:`SyncHandle` built from
    ``CTR_SYNC_*`` (None when ``CTR_SYNC_SOURCE`` is unset). Its ``start``/``stop`` go with the
    app's lifespan and ``before_reload`` with the reload endpoint."""
    env = os.environ if env is None else env
    config = config_from_env(repo, env)
    if config is None:
        return None
    raw_wait = env.get(ENV_PREFIX + "RELOAD_WAIT", "").strip() or "60"
    try:
        reload_wait = float(raw_wait)
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}RELOAD_WAIT={raw_wait!r}: expected seconds") from None
    return start_background_sync(config, on_installed=on_installed, reload_wait=reload_wait, start=False)
