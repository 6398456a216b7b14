"""Live models: follow the repository, load -> validate -> warm -> swap one reference; rollback.

Each served model is one :class:`LiveModel` in a dict. A request looks its model up once and keeps
that handle to the end, so it is scored by exactly one version and the response names it; the old
version's arrays are released when the last request holding it finishes (reference counting).

A new version goes live only after :func:`scoring.model.package.load_package` validated it (checksums,
shapes, NaN/Inf), the engine laid it out, compiled and warmed its kernels and touched every page of
its tables. A version that fails is logged, counted, recorded as rejected in the repository (so no
process retries it in a loop) and the current version keeps serving.

Several worker processes each run a registry over the same repository and follow its
``.state.json``: the first to load a new version records it live; rollbacks recorded by one are
picked up by the others at their next poll.

Entries of other kinds (a model served by TF Serving) can be added with :meth:`Registry.add`; the
repository poller leaves them alone.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import ModelNotFound, NotReady, ScoringError
from ..model.manifest import PackageError
from .loader import NATIVE, LiveModel, Loader, load_native
from .repo import ModelRepo

log = logging.getLogger(__name__)

SWITCH_INTERVAL = 0.001  # seconds; see Registry.start


@dataclass
class SyncResult:
    """What one look at the repository did for one model."""

    name: str
    live: str | None
    changed: bool = False
    failed: tuple[str, str] | None = None  # (version, reason)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "version": self.live, "changed": self.changed}
        if self.failed:
            out["failed"] = {"version": self.failed[0], "reason": self.failed[1]}
        return out


class Registry:
    """The models this process serves, kept in step with a :class:`ModelRepo`."""

    def __init__(self, repo: ModelRepo, *, models: Sequence[str] | None = None,
                 default_model: str | None = None, keep: int = 3, poll_interval: float = 2.0,
                 metrics: Any = None, loader: Loader = load_native) -> None:
        self.repo = repo
        self.keep = keep
        self.poll_interval = poll_interval
        self.metrics = metrics
        self.loader = loader
        self._configured = list(models) if models is not None else None  # [] = no native model
        self._default_name = default_model
        self._live: dict[str, LiveModel] = {}
        self._static: set[str] = set()
        self._expected: list[str] | None = self._configured
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._failed: dict[str, tuple[str, str]] = {}   # model -> last (version, reason)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_at = time.time()

    # -- the request path --------------------------------------------------------------------

    def get(self, name: str) -> LiveModel:
        """The live version of ``name``; hold on to it for the whole request."""
        model = self._live.get(name)
        if model is None:
            raise self._missing(name)
        return model

    def default(self) -> LiveModel:
        """The model ``POST /v1/score`` uses."""
        name = self._default_name
        if name is None:
            live = self._live
            if len(live) == 1:
                return next(iter(live.values()))
            expected = self._expected or []
            name = expected[0] if len(expected) == 1 else ("demo" if "demo" in live else None)
            if name is None:
                if not live:
                    raise NotReady("not ready: no model is loaded yet")
                raise ModelNotFound(f"several models are served ({sorted(live)}); name one in the "
                                    "path (/v1/models/{name}/score) or set CTR_DEFAULT_MODEL")
        return self.get(name)

    def _missing(self, name: str) -> ScoringError:
        if name in (self._expected or ()) or (self._expected is None and self._in_repo(name)):
            failure = self._failed.get(name)
            why = f" (last failure: version {failure[0]}: {failure[1]})" if failure else ""
            return NotReady(f"model {name!r} is not loaded yet{why}")
        return ModelNotFound(f"model {name!r} is not served here; GET /v1/models lists the models")

    def _in_repo(self, name: str) -> bool:
        try:
            return self.repo.model_dir(name).is_dir()
        except PackageError:
            return False

    # -- other kinds ---------------------------------------------------------------------------

    def add(self, model: LiveModel) -> None:
        """Serve a model that does not come from the repository (e.g. TF Serving-backed)."""
        self._static.add(model.name)
        self._set_live(model)

    # -- following the repository -------------------------------------------------------------

    def expected(self) -> list[str]:
        """Models that must be live before the process is ready."""
        if self._expected is None:
            return sorted(self._static)
        return sorted(set(self._expected) | self._static)

    def sync_all(self) -> list[SyncResult]:
        names = self._configured if self._configured is not None else self.repo.models()
        if self._expected is None:
            self._expected = list(names)
        results = []
        for name in names:
            try:
                results.append(self.sync(name))
            except Exception:  # a poller must survive anything; the next poll tries again
                log.exception("model %r: sync failed", name)
        return results

    def sync(self, name: str) -> SyncResult:
        """Bring ``name`` to the version the repository wants now (load it first; on failure keep
        the current version and reject the bad one)."""
        with self._lock(name):
            decided_at = time.time()
            wanted = self.repo.wanted(name)
            current = self._live.get(name)
            if wanted is None or (current is not None and current.version == wanted):
                return SyncResult(name, current.version if current else None)
            if self._failed.get(name, ("",))[0] == wanted:
                return SyncResult(name, current.version if current else None, failed=self._failed[name])
            return self._load_and_swap(name, wanted, decided_at, current)

    def _load_and_swap(self, name: str, version: str, decided_at: float,
                       current: LiveModel | None, *, rollback: bool = False) -> SyncResult:
        log.info("model %r: loading version %r", name, version)
        t0 = time.perf_counter()
        try:
            model = self.loader(name, version, str(self.repo.path(name, version)))
        except Exception as exc:  # any failure: the version is bad here; keep serving
            reason = str(exc) if isinstance(exc, (PackageError, OSError)) else f"{type(exc).__name__}: {exc}"
            log.error("model %r: version %r failed to load, keeping %r: %s", name, version,
                      current.version if current else None, reason,
                      exc_info=not isinstance(exc, (PackageError, OSError)))
            self._failed[name] = (version, reason)
            if self.metrics:
                self.metrics.model_loaded(name, time.perf_counter() - t0, ok=False)
            if isinstance(exc, PackageError) and not rollback:
                # the files are bad for every process: record it so none retries it. Anything
                # else (a bug, memory) is remembered here only, so a restart or reload retries.
                try:
                    self.repo.reject(name, version, reason)
                except OSError as err:
                    log.error("model %r: cannot record version %r as rejected: %s", name, version, err)
            return SyncResult(name, current.version if current else None, failed=(version, reason))
        seconds = time.perf_counter() - t0
        if self.metrics:
            self.metrics.model_loaded(name, seconds, ok=True)
        if not rollback:
            live = self.repo.promote(name, version, decided_at)
            if live != version:  # a newer decision (e.g. a rollback) won; follow it next poll
                log.info("model %r: %r loaded but %r was decided meanwhile", name, version, live)
                return SyncResult(name, current.version if current else None)
        self._set_live(model)
        self._failed.pop(name, None)
        # Move every object alive now (the app, libraries, the new engine) out of the cyclic
        # GC's reach: a full collection of them takes ~70 ms, which would stall a request every
        # few hundred. Reference counting still frees them (the old version, when released).
        gc.freeze()
        log.info("model %r: version %r is live (was %r; load %.2fs, warm %.2fs, %d MB)", name,
                 version, current.version if current else None, seconds, model.warm_seconds,
                 model.nbytes >> 20)
        self._prune(name)
        return SyncResult(name, version, changed=True)

    def _set_live(self, model: LiveModel) -> None:
        self._live[model.name] = model  # one reference swap; requests keep what they looked up
        if self.metrics:
            self.metrics.model_live(model.name, model.version, model.md5, model.kind, model.loaded_at)

    def _prune(self, name: str) -> None:
        try:
            doomed = self.repo.prune(name, self.keep)
        except OSError as exc:
            log.warning("model %r: pruning old versions failed: %s", name, exc)
            return
        if doomed:
            log.info("model %r: removed old versions %s (keeping %d)", name, doomed, self.keep)

    def reload(self, name: str) -> SyncResult:
        """Look at the repository for ``name`` now (the admin reload endpoint)."""
        if name in self._static:
            raise ScoringError(f"model {name!r} is not served from the repository; nothing to reload", 409)
        if not self._in_repo(name) and name not in self._live:
            raise ModelNotFound(f"model {name!r} is not in the repository {self.repo.root}")
        if self._expected is not None and name not in self._expected:
            self._expected.append(name)
        self._failed.pop(name, None)  # an operator asked: try a version that failed here again
        return self.sync(name)

    def rollback(self, name: str) -> SyncResult:
        """Serve the previous good version again and record that in the repository."""
        if name in self._static:
            raise ScoringError(f"model {name!r} is not served from the repository; nothing to roll back", 409)
        if not self._in_repo(name):
            raise ModelNotFound(f"model {name!r} is not in the repository {self.repo.root}")
        with self._lock(name):
            target = self.repo.previous(name)
            if target is None:
                raise ScoringError(f"model {name!r}: no previous version is kept in the repository "
                                   "to roll back to", 409)
            current = self._live.get(name)
            result = self._load_and_swap(name, target, time.time(), current, rollback=True)
            if result.failed:
                raise ScoringError(f"model {name!r}: rollback to {target!r} failed to load: "
                                   f"{result.failed[1]}; still serving "
                                   f"{current.version if current else None!r}", 409)
            recorded = self.repo.rollback(name)
            if recorded != target:  # the repository moved meanwhile; follow it at the next poll
                log.warning("model %r: rolled back to %r but the repository chose %r", name,
                            target, recorded)
            return result

    # -- status --------------------------------------------------------------------------------

    def ready(self) -> tuple[bool, list[str]]:
        """Whether every expected model is live; otherwise what is missing and why."""
        if self._expected is None:
            return False, ["the repository has not been read yet"]
        missing = []
        for name in self.expected():
            if name not in self._live:
                failure = self._failed.get(name)
                why = f" (version {failure[0]} failed: {failure[1]})" if failure else " (loading)"
                missing.append(f"model {name!r} is not loaded{why}")
        if not self._expected and not self._live:
            missing.append(f"no models in the repository {self.repo.root}")
        return not missing, missing

    def describe(self, name: str) -> dict[str, Any]:
        model = self._live.get(name)
        if model is None:
            err = self._missing(name)
            if isinstance(err, ModelNotFound):
                raise err
            out: dict[str, Any] = {"name": name, "version": None, "kind": NATIVE,
                                   "state": "loading", "md5": None, "loaded_at": None}
        else:
            out = model.describe()
        if name not in self._static and self._in_repo(name):
            state = self.repo.state(name)
            out["versions"] = self.repo.versions(name)
            out["previous"] = self.repo.previous(name)
            out["rejected"] = state.rejected
        failure = self._failed.get(name)
        if failure:
            out["last_failure"] = {"version": failure[0], "reason": failure[1]}
        return out

    def names(self) -> list[str]:
        return sorted(set(self._live) | set(self._expected or ()))

    # -- the poller ----------------------------------------------------------------------------

    def start(self) -> None:
        """Load what the repository holds, then poll it every ``poll_interval`` seconds."""
        if self._thread is not None:
            return
        # Loads hold the GIL in stretches (numpy headers, the JIT dispatcher, layout). A waiting
        # thread gets it back after the switch interval: 5 ms by default, 1 ms here, so the
        # event loop is never kept from requests for long while a new version loads beside it.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="model-registry", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        _lower_thread_priority()
        while True:
            try:
                self.sync_all()
            except Exception:
                log.exception("registry poll failed")
            if self._stop.wait(self.poll_interval):
                return

    def _lock(self, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(name, threading.Lock())


def _lower_thread_priority(niceness: int = 10) -> None:
    """Loads run beside the request path on the same core: let requests win the CPU (Linux
    applies setpriority to one thread when given its thread id)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):
        pass
