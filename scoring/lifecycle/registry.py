"""Live models: follow the repository, load -> validate -> warm -> swap one reference; rollback.

Each served model is one :class:`~scoring.lifecycle.loader.LiveModel` in a dict. A request looks
its model up once and keeps that handle to the end, so it is scored by exactly one version and the
response names it.

All model work happens on one thread, the registry's worker, at idle CPU priority
(:mod:`scoring.lifecycle.priority`): the poll every ``poll_interval`` seconds, ``reload`` and
``rollback`` from the admin endpoints (which only wait for it), and the syncer's "a version was
installed" nudge. A new version goes live only after the loader validated it (checksums, shapes,
NaN/Inf), the engine laid it out, compiled and warmed its kernels and touched every page of its
tables. A version that fails is logged, counted, recorded as rejected in the repository with the
fingerprint of its files (so no process retries it while they stay as they are, and a copy that
was caught half-way is tried again once it is complete and has stopped changing), and the current
version keeps serving. The version a swap replaces is released on the worker too, once no request
holds it: unmapping hundreds of MB never lands on a request.

Several worker processes each run a registry over the same repository and follow its
``.state.json``: the first to load a new version records it live; rollbacks recorded by one are
picked up by the others at their next poll.

Entries of other kinds (a model served by TF Serving) can be added with :meth:`Registry.add`; the
repository poller leaves them alone.
"""

from __future__ import annotations

import concurrent.futures
import gc
import logging
import queue
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from ..errors import ModelNotFound, NotReady, ScoringError
from ..model.checksums import ChecksumError
from ..model.demo import DEMO_NAME
from ..model.manifest import PackageError
from .loader import NATIVE, LiveModel, Loader, load_native
from .priority import lower_thread_priority
from .repo import ModelRepo, RollbackConflict

log = logging.getLogger(__name__)

SWITCH_INTERVAL = 0.001  # seconds; see Registry.start
WAIT_LIMIT = 600.0       # seconds an admin call waits for the worker before it answers 503
ROLLBACK_RETRY_WINDOW = 30.0  # seconds in which a bare rollback repeated is taken for a retry
RETIRED_MAX_AGE = 60.0   # seconds a replaced version may be held by others before we let go
T = TypeVar("T")


@dataclass
class SyncResult:
    """What one look at the repository did for one model; ``reason`` says why nothing changed."""

    name: str
    live: str | None
    changed: bool = False
    failed: tuple[str, str] | None = None  # (version, reason)
    reason: str | None = None
    rolled_back_from: str | None = None
    held: tuple[str, str] | None = None  # (version, reason): the guarded swap held it back
    gate: dict[str, Any] | None = None  # the guarded swap's decision, when one was made

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "version": self.live, "changed": self.changed}
        if self.failed:
            out["failed"] = {"version": self.failed[0], "reason": self.failed[1]}
        if self.held:
            out["held"] = {"version": self.held[0], "reason": self.held[1]}
        if self.gate is not None:
            out["gate"] = self.gate
        if self.reason:
            out["reason"] = self.reason
        if self.rolled_back_from is not None:
            out["from"] = self.rolled_back_from
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
        self._failed: dict[str, tuple[str, str]] = {}      # not the package's fault: retried on reload
        self._last_failure: dict[str, tuple[str, str]] = {}  # model -> (version, reason), any kind
        self._settling: dict[tuple[str, str], str] = {}    # (model, version) -> files last seen
        self._retired: list[tuple[float, LiveModel]] = []  # replaced versions, released here
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.priority = "unchanged"
        # the guarded swap (scoring.monitor.gate.SwapGate): judges a loaded version before it
        # goes live; None lets every valid version through
        self.gate: Any = None
        # models with a version canary (``<name>@next`` in an experiment arm): a new version
        # waits for an explicit promote instead of going live by itself
        self.canary: frozenset[str] = frozenset()
        # called on the worker after every poll (at its idle priority): e.g. pinned versions
        self.pollers: list[Callable[[], None]] = []
        self.on_abort: list[Callable[[str, str], None]] = []   # (model, version) aborted here
        self.on_reload: list[Callable[[str], None]] = []       # an operator's reload of a model

    # -- the request path --------------------------------------------------------------------

    def get(self, name: str) -> LiveModel:
        """The live version of ``name``; hold on to it for the whole request."""
        model = self._live.get(name)
        if model is None:
            raise self._missing(name)
        return model

    def live(self, name: str) -> LiveModel | None:
        """The live version of ``name``, or None (no error: for status pages)."""
        return self._live.get(name)

    def default(self) -> LiveModel:
        """The model ``POST /v1/score`` uses: the configured default, else the only model served.
        The built-in demo never wins over a real model, loaded or not: it is the default only
        when it is the only model there is."""
        name = self._default_name
        if name is None:
            live = self._live
            real = sorted((set(self._expected or ()) | set(live)) - {DEMO_NAME})
            if len(real) == 1:
                name = real[0]
            elif real:
                raise ModelNotFound(f"several models are served ({real}); name one in the "
                                    "path (/v1/models/{name}/score) or set CTR_DEFAULT_MODEL")
            elif DEMO_NAME in live:
                name = DEMO_NAME
            else:
                raise NotReady("not ready: no model is loaded yet")
        return self.get(name)

    def _missing(self, name: str) -> ScoringError:
        if name in (self._expected or ()) or (self._expected is None and self._in_repo(name)):
            failure = self._last_failure.get(name)
            why = f" (last failure: version {failure[0]}: {failure[1]})" if failure else ""
            return NotReady(f"model {name!r} is not loaded yet{why}")
        return ModelNotFound(f"model {name[:128]!r} is not served here; GET /v1/models lists the models")

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

    # -- operations: on the worker thread ------------------------------------------------------

    def reload(self, name: str) -> SyncResult:
        """Look at the repository for ``name`` now (the admin reload endpoint): versions rejected
        before are tried again. Runs on the worker thread; the caller waits."""
        if name in self._static:
            raise ScoringError(f"model {name!r} is not served from the repository; nothing to reload", 409)
        if not self._in_repo(name) and name not in self._live:
            raise ModelNotFound(f"model {name!r} is not in the model repository")
        return self._on_worker(lambda: self._reload(name))

    def rollback(self, name: str, to: str | None = None, expected: str | None = None) -> SyncResult:
        """Serve an earlier version again (``to``, default the previous live one) and record that
        in the repository, as a compare-and-set against ``expected`` (default: the version this
        process serves now), so a retried call or the same call on another worker does not step
        back twice. Runs on the worker thread; the caller waits."""
        if name in self._static:
            raise ScoringError(f"model {name!r} is not served from the repository; nothing to roll back", 409)
        if not self._in_repo(name):
            raise ModelNotFound(f"model {name!r} is not in the model repository")
        current = self._live.get(name)
        # without `from` or `to`, a repeat within a short window is taken for a retry of the
        # same call: it changes nothing (stepping back further takes ?to=)
        window = ROLLBACK_RETRY_WINDOW if expected is None and to is None else 0.0
        expected = expected if expected is not None else (current.version if current else None)
        return self._on_worker(lambda: self._rollback(name, to, expected, window))

    def promote(self, name: str, version: str, force: bool = False) -> SyncResult:
        """Serve ``version`` now (the admin promote endpoint): it is judged by the guarded swap
        again, or with ``force`` not at all, and recorded live for every process. Runs on the
        worker thread; the caller waits."""
        if name in self._static:
            raise ScoringError(f"model {name!r} is not served from the repository; nothing to promote", 409)
        if not self._in_repo(name):
            raise ModelNotFound(f"model {name!r} is not in the model repository")
        return self._on_worker(lambda: self._promote(name, version, force))

    def poke(self, name: str) -> None:
        """Look at ``name`` soon, on the worker (the syncer installed a version); returns at once."""
        if self._thread is None:
            self.sync(name)
        else:
            self._jobs.put((lambda: self.sync(name), None))

    def _on_worker(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the worker and wait for it (here when there is no worker). A worker that
        stops fails what is queued; a wait past ``WAIT_LIMIT`` answers 503 (the work goes on)."""
        if self._thread is None or threading.current_thread() is self._thread:
            return fn()
        if self._stop.is_set():
            raise NotReady("the service is shutting down")
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((fn, future))
        if self._stop.is_set():  # stopped while we queued: the worker may be gone
            self._fail_queued()
        try:
            return future.result(timeout=WAIT_LIMIT)
        except concurrent.futures.TimeoutError:
            raise NotReady(f"the model registry is still working after {WAIT_LIMIT:.0f} s (a load "
                           "in progress); GET /v1/models shows when it is done") from None

    def _fail_queued(self) -> None:
        while True:
            try:
                _, future = self._jobs.get_nowait()
            except queue.Empty:
                return
            if future is not None and future.set_running_or_notify_cancel():
                future.set_exception(NotReady("the service is shutting down"))

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
            live = current.version if current else None
            if name in self.canary and wanted is not None:
                wanted = self._canary_hold(name, wanted)
            if wanted is None or wanted == live:
                return SyncResult(name, live)  # why: explain(), asked by reload only
            failure = self._failed.get(name)
            if failure is not None and failure[0] == wanted:
                return SyncResult(name, live, failed=failure,
                                  reason=f"version {wanted!r} failed to load in this process: "
                                         f"{failure[1]} (POST .../reload tries it again)")
            fingerprint = self.repo.fingerprint(name, wanted)
            if self.repo.rejection(name, wanted) is not None:  # rejected, and its files changed since
                if self._settling.get((name, wanted)) != fingerprint:
                    self._settling[(name, wanted)] = fingerprint
                    return SyncResult(name, live, reason=f"the files of version {wanted!r} changed "
                                      "since it was rejected; it is tried again once they stop changing")
            self._settling.pop((name, wanted), None)
            return self._load_and_swap(name, wanted, decided_at, current, fingerprint)

    def _canary_hold(self, name: str, wanted: str) -> str:
        """With a canary, the recorded live version serves until a promote: a newer one goes
        to the canary arm only (also after a restart)."""
        state = self.repo.state(name)
        live = state.live
        if live and live != wanted and live in self.repo.versions(name, state) and \
                not self.repo.is_rejected(name, live, state):
            return live
        return wanted

    def canary_version(self, name: str) -> str | None:
        """``<name>@next``: the newest installed version not yet promoted (and not rejected or
        aborted), or None when the live version is the newest."""
        wanted = self.repo.wanted(name)
        live = self.repo.state(name).live
        return wanted if wanted is not None and wanted != live else None

    def abort(self, name: str, version: str) -> SyncResult:
        """An operator's abort of a canary: the version is rejected (no process serves it, the
        syncer does not fetch it again) until a reload clears it."""
        with self._lock(name):
            state = self.repo.observe(name)
            if version not in self.repo.versions(name, state):
                raise ScoringError(f"model {name!r}: version {version!r} is not in the repository", 409)
            if state.live == version:
                raise ScoringError(f"model {name!r}: version {version!r} is live; roll back "
                                   "instead (POST .../rollback)", 409)
            self.repo.reject(name, version, "aborted by an operator (POST .../abort)",
                             self.repo.fingerprint(name, version), content=True)
            current = self._live.get(name)
            for hook in self.on_abort:
                hook(name, version)
            log.warning("model %r: version %r aborted by an operator", name, version)
            return SyncResult(name, current.version if current else None,
                              reason=f"version {version!r} aborted; it serves nowhere")

    def _reload(self, name: str) -> SyncResult:
        self._failed.pop(name, None)
        for hook in self.on_reload:
            hook(name)
        for key in [k for k in self._settling if k[0] == name]:
            del self._settling[key]
        cleared = self.repo.clear_rejections(name)
        if cleared:
            log.info("model %r: reload: trying rejected version(s) %s again", name, cleared)
        result = self.sync(name)
        if self._expected is not None and name not in self._expected and name in self._live:
            self._expected.append(name)  # a model brought in by hand: readiness follows it now
        if not result.changed and result.reason is None:
            result.reason = self.explain(name, result.live)
        return result

    def _rollback(self, name: str, to: str | None, expected: str | None,
                  window: float = 0.0) -> SyncResult:
        with self._lock(name):
            current = self._live.get(name)
            state = self.repo.observe(name)
            target = to
            loaded: LiveModel | None = None
            last = state.last_rollback or {}
            retry = (window > 0 and last.get("to") == state.live
                     and time.time() - float(last.get("at", 0.0)) < window)
            if not retry and (expected is None or state.live == expected):  # load before recording
                target = to if to is not None else self.repo.previous(name, state)
                if target is None:
                    raise ScoringError(f"model {name!r}: no previous version is kept in the "
                                       "repository to roll back to", 409)
                if target not in self.repo.versions(name, state):
                    raise ScoringError(f"model {name!r}: version {target!r} is not in the "
                                       f"repository; versions: {self.repo.versions(name, state)}", 409)
                if current is None or current.version != target:
                    loaded, failure = self._load(name, target, self.repo.fingerprint(name, target),
                                                 reject=False)
                    if loaded is None:
                        raise ScoringError(f"model {name!r}: rollback to {target!r} failed to load: "
                                           f"{failure}; still serving "
                                           f"{current.version if current else None!r}", 409)
            # record it as one compare-and-set; a retry (or another worker's copy of this call)
            # finds it done and changes nothing
            try:
                done = self.repo.rollback(name, expected, target, retry_window=window)
            except RollbackConflict as exc:
                raise ScoringError(f"{exc}; GET /v1/models/{name} shows the live version, and "
                                   "POST .../rollback?to=<version> names the target", 409) from None
            except LookupError as exc:
                raise ScoringError(str(exc), 409) from None
            if loaded is None or loaded.version != done.to_version:
                if current is None or current.version != done.to_version:
                    loaded, failure = self._load(name, done.to_version,
                                                 self.repo.fingerprint(name, done.to_version),
                                                 reject=False)
                    if loaded is None:
                        raise ScoringError(f"model {name!r}: rolled back to {done.to_version!r} in "
                                           f"the repository but it failed to load here: {failure}", 409)
            if loaded is not None and loaded.version == done.to_version:
                self._swap_in(loaded, current)
            reason = None if done.changed else (
                f"already rolled back from {done.from_version!r} to {done.to_version!r}; to step "
                "back further, name the version: POST .../rollback?to=<version>"
                if done.from_version else f"version {done.to_version!r} is already live")
            changed = current is None or current.version != done.to_version
            return SyncResult(name, done.to_version, changed=changed, reason=reason,
                              rolled_back_from=done.from_version)

    def _load(self, name: str, version: str, fingerprint: str, *,
              reject: bool) -> tuple[LiveModel | None, str]:
        """Load a version (seconds: validate, lay out, warm). On failure, log, count and (with
        ``reject``, for a package error) record the rejection; returns (None, reason)."""
        log.info("model %r: loading version %r", name, version)
        t0 = time.perf_counter()
        gc.freeze()  # a collection the load's allocations trigger walks only what the load made
        try:
            model = self.loader(name, version, str(self.repo.path(name, version)))
        except Exception as exc:  # any failure: the version is bad here; keep serving
            reason = self._reason(exc)
            current = self._live.get(name)
            log.error("model %r: version %r failed to load, keeping %r: %s", name, version,
                      current.version if current else None, reason,
                      exc_info=not isinstance(exc, (PackageError, OSError)))
            if self.metrics:
                self.metrics.model_loaded(name, time.perf_counter() - t0, ok=False)
            self._last_failure[name] = (version, reason)
            if isinstance(exc, PackageError) and reject:
                # the files are bad for every process: record it so none retries them while they
                # stay as they were. Anything else (a bug, memory) is remembered here only, so a
                # restart or a reload retries.
                self.repo.reject(name, version, reason, fingerprint,
                                 content=not isinstance(exc, ChecksumError))
            else:
                self._failed[name] = (version, reason)
            return None, reason
        if self.metrics:
            self.metrics.model_loaded(name, time.perf_counter() - t0, ok=True)
        return model, ""

    def _reason(self, exc: Exception) -> str:
        """A load failure in words, with paths relative to the repository (the API shows it)."""
        if isinstance(exc, PackageError):
            return str(exc)
        text = f"{exc.strerror or exc}" if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
        filename = getattr(exc, "filename", None)
        if isinstance(exc, OSError) and filename:
            try:
                where = Path(filename).resolve().relative_to(self.repo.root.resolve())
            except (ValueError, OSError):
                where = Path(filename).name
            text = f"{where}: {text}"
        return text.replace(str(self.repo.root.resolve()), "<repo>").replace(str(self.repo.root), "<repo>")

    def _load_and_swap(self, name: str, version: str, decided_at: float,
                       current: LiveModel | None, fingerprint: str) -> SyncResult:
        live_before = current.version if current else None
        model, failure = self._load(name, version, fingerprint, reject=True)
        if model is None:
            return SyncResult(name, live_before, failed=(version, failure))
        decision = self._judge(name, version, model, current)
        overflow = self.overflowed(model) if decision is None else None
        if overflow is not None and self.repo.state(name).live != version:
            self._retired.append((time.monotonic(), model))
            log.error("model %r: version %r failed to load, keeping %r: %s", name, version,
                      live_before, overflow)
            self._last_failure[name] = (version, overflow)
            self.repo.reject(name, version, overflow, fingerprint, content=True)
            return SyncResult(name, live_before, failed=(version, overflow))
        if decision is not None and not decision.passed:
            if self.repo.hold(name, version, decision.reason, fingerprint):
                self._retired.append((time.monotonic(), model))  # released here, off the request path
                self._last_failure[name] = (version, f"held by the guarded swap: {decision.reason}")
                self.gate.held(name, version, decision)
                return SyncResult(name, live_before, held=(version, decision.reason),
                                  gate=decision.describe())
            log.info("model %r: %r went live in another process meanwhile; following it",
                     name, version)
        live = self.repo.promote(name, version, decided_at)
        if live != version:  # a newer decision (e.g. a rollback) won; follow it next poll
            log.info("model %r: %r loaded but %r was decided meanwhile", name, version, live)
            return SyncResult(name, live_before, reason=f"{live!r} was decided while {version!r} loaded")
        self._swap_in(model, current)
        self._prune(name)
        return SyncResult(name, version, changed=True)

    def _judge(self, name: str, version: str, model: LiveModel, current: LiveModel | None):
        """The guarded swap's decision on a loaded version, or None when it does not judge it
        (no gate, already live in another process, promoted by force)."""
        if self.gate is None:
            return None
        state = self.repo.state(name)
        if state.live == version or self.repo.is_forced(name, version, state):
            return None
        try:
            return self.gate.judge(model, current)
        except Exception:  # a fault of the gate itself must not stop deployments
            log.exception("model %r: the guarded swap failed on version %r; letting it through",
                          name, version)
            return None

    @staticmethod
    def overflowed(model: LiveModel) -> str | None:
        """Why a version the guarded swap did not judge must not serve: its net overflowed on
        the warm-up requests (the check the load itself made before there was a gate)."""
        if getattr(model.scorer, "warm_nonfinite", False):
            return ("its output is not a number on the warm-up requests (an overflow inside the "
                    "net: weights far too large?)")
        return None

    def _promote(self, name: str, version: str, force: bool) -> SyncResult:
        with self._lock(name):
            state = self.repo.observe(name)
            versions = self.repo.versions(name, state)
            if version not in versions:
                raise ScoringError(f"model {name!r}: version {version!r} is not in the repository; "
                                   f"versions: {versions}", 409)
            current = self._live.get(name)
            if state.live == version and current is not None and current.version == version:
                return SyncResult(name, version, reason=f"version {version!r} is already live")
            if self.repo.is_rejected(name, version, state):
                raise ScoringError(f"model {name!r}: version {version!r} was rejected: "
                                   f"{state.rejected[version].reason} (POST .../reload tries it "
                                   "again)", 409)
            decided_at = time.time()
            fingerprint = self.repo.fingerprint(name, version)
            if current is not None and current.version == version:
                model = current  # served here already; the repository is what lags
            else:
                model, failure = self._load(name, version, fingerprint, reject=False)
                if model is None:
                    raise ScoringError(f"model {name!r}: version {version!r} failed to load: {failure}", 409)
            decision = None
            if force:
                if self.gate is not None:
                    decision = self.gate.forced(name, version, current)
            else:
                decision = self._judge(name, version, model, current)
                problem = decision.reason if decision is not None and not decision.passed else (
                    self.overflowed(model) if decision is None else None)
                if problem is not None:
                    if model is not current:
                        self._retired.append((time.monotonic(), model))
                    if decision is not None:
                        self.repo.hold(name, version, decision.reason, fingerprint)
                        self.gate.held(name, version, decision)
                    raise ScoringError(f"model {name!r}: version {version!r} is held back: {problem}; "
                                       "add force=true to promote it anyway", 409)
            live = self.repo.promote(name, version, decided_at, force=force, judged=not force)
            if live != version:
                if model is not current:
                    self._retired.append((time.monotonic(), model))
                raise ScoringError(f"model {name!r}: {live!r} stays live: version {version!r} was "
                                   "held or overtaken meanwhile in another process; try again", 409)
            if model is not current:
                self._swap_in(model, current)
            self._failed.pop(name, None)
            self._last_failure.pop(name, None)
            return SyncResult(name, version, changed=current is None or current.version != version,
                              gate=decision.describe() if decision is not None else None)

    def _swap_in(self, model: LiveModel, current: LiveModel | None) -> None:
        self._set_live(model)
        self._failed.pop(model.name, None)
        self._last_failure.pop(model.name, None)
        # Move every object alive now (the app, libraries, the new engine) out of the cyclic
        # GC's reach: a full collection of them takes ~70-90 ms, which would stall a request
        # every few hundred. Reference counting still frees them (the old version, when released).
        gc.freeze()
        log.info("model %r: version %r is live (was %r; load %.2fs, warm %.2fs, %d MB)",
                 model.name, model.version, current.version if current else None,
                 model.load_seconds, model.warm_seconds, model.nbytes >> 20)

    def _set_live(self, model: LiveModel) -> None:
        old = self._live.get(model.name)
        self._live[model.name] = model  # one reference swap; requests keep what they looked up
        if old is not None and old is not model:
            self._retired.append((time.monotonic(), old))
        if self.metrics:
            self.metrics.model_live(model.name, model.version, model.md5, model.kind, model.loaded_at)

    def release_retired(self) -> int:
        """Drop the replaced versions no request holds any more (or held too long), here on the
        worker, so their memory is unmapped off the request path. Returns how many."""
        keep, dropped, now = [], 0, time.monotonic()
        for entry in self._retired:
            # references when no request holds it: the tuple, and getrefcount's argument
            if sys.getrefcount(entry[1]) > 2 and now - entry[0] < RETIRED_MAX_AGE:
                keep.append(entry)
            else:
                dropped += 1
        self._retired = keep
        return dropped

    def _prune(self, name: str) -> None:
        try:
            doomed = self.repo.prune(name, self.keep)
        except OSError as exc:
            log.warning("model %r: pruning old versions failed: %s", name, exc)
            return
        if doomed:
            log.info("model %r: removed old versions %s (keeping %d)", name, doomed, self.keep)

    # -- status --------------------------------------------------------------------------------

    def explain(self, name: str, live: str | None) -> str:
        """Why ``live`` is what serves (the answer of a reload that changed nothing)."""
        state = self.repo.state(name)
        versions = self.repo.versions(name, state)
        if not versions:
            return f"model {name!r} has no version in the repository"
        rejected = [v for v in versions if self.repo.is_rejected(name, v, state)]
        newer = versions[versions.index(live) + 1:] if live in versions else versions
        newer_held = [v for v in newer if self.repo.is_held(name, v, state)]
        if newer_held:
            v = newer_held[-1]
            return (f"version {v!r} is held by the guarded swap: {state.held[v].reason} "
                    f"(POST .../promote?version={v}&force=true serves it anyway)")
        newer_rejected = [v for v in newer if v in rejected]
        if newer_rejected:
            v = newer_rejected[-1]
            return f"version {v!r} was rejected: {state.rejected[v].reason}"
        if live is None:
            if rejected and len(rejected) == len(versions):
                return "every version in the repository was rejected: " + "; ".join(
                    f"{v}: {state.rejected[v].reason}" for v in rejected[-3:])
            waiting = [v for v in versions if v not in rejected]
            return f"loading version {waiting[-1]!r}" if waiting else "loading"
        waiting = self.canary_version(name) if name in self.canary else None
        if waiting is not None and waiting != live:
            return (f"version {waiting!r} waits for promotion: the canary ({name}@next) serves it "
                    f"to its arm (POST .../promote?version={waiting} or .../abort?version={waiting})")
        if newer and state.last_rollback and state.last_rollback.get("to") == live:
            return (f"rolled back to {live!r} at {_iso(state.last_rollback.get('at', 0.0))}; versions "
                    f"seen before the rollback ({', '.join(newer)}) stay off until a new one appears "
                    f"(or POST .../rollback?to=<version>)")
        return f"version {live!r} is live and is the newest version in the repository"

    def ready(self) -> tuple[bool, list[str]]:
        """Whether every expected model is live; otherwise what is missing and why."""
        if self._expected is None:
            return False, ["the repository has not been read yet"]
        missing = []
        for name in self.expected():
            if name not in self._live:
                failure = self._last_failure.get(name)
                why = f" (version {failure[0]} failed: {failure[1]})" if failure else (
                    f" ({self.explain(name, None)})" if self._in_repo(name) else " (loading)")
                missing.append(f"model {name!r} is not loaded{why}")
        if not self._expected and not self._live:
            missing.append("no models in the model repository")
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
            sf = self.repo.state_file(name)
            state = sf.read()
            out["versions"] = self.repo.versions(name, state)
            out["previous"] = self.repo.previous(name, state)
            out["rejected"] = {v: r.reason for v, r in state.rejected.items()}
            out["held"] = {v: r.reason for v, r in state.held.items()
                           if self.repo.is_held(name, v, state)}
            if model is None and out["held"]:
                out["state"] = "held"
            if sf.read_only_reason:
                out["repository_read_only"] = sf.read_only_reason
            if sf.unreadable:
                out["state_error"] = sf.unreadable
        if self.gate is not None:
            out["gate"] = self.gate.last(name)
        failure = self._last_failure.get(name)
        if failure:
            out["last_failure"] = {"version": failure[0], "reason": failure[1]}
        return out

    def names(self) -> list[str]:
        return sorted(set(self._live) | set(self._expected or ()))

    # -- the worker ----------------------------------------------------------------------------

    def start(self) -> None:
        """Load what the repository holds, then poll it every ``poll_interval`` seconds."""
        if self._thread is not None:
            return
        # Loads hold the GIL in short stretches (numpy headers, the JIT dispatcher, layout). A
        # waiting thread gets it back after the switch interval: 5 ms by default, 1 ms here.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="model-registry", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._jobs.put((None, None))
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._fail_queued()

    def _run(self) -> None:
        self.priority = lower_thread_priority(idle=True)
        log.debug("model registry worker at %s", self.priority)
        next_poll = 0.0
        while not self._stop.is_set():
            try:
                fn, future = self._jobs.get(timeout=max(0.0, next_poll - time.monotonic()))
            except queue.Empty:
                fn, future = None, None
            if fn is not None:
                self._run_job(fn, future)
            elif self._stop.is_set():
                break
            if time.monotonic() >= next_poll:
                try:
                    self.sync_all()
                except Exception:
                    log.exception("registry poll failed")
                for poll in list(self.pollers):
                    try:
                        poll()
                    except Exception:
                        log.exception("registry poller %r failed", poll)
                next_poll = time.monotonic() + self.poll_interval
            self.release_retired()

    @staticmethod
    def _run_job(fn: Callable[[], Any], future: concurrent.futures.Future | None) -> None:
        if future is not None and not future.set_running_or_notify_cancel():
            return
        try:
            result = fn()
        except BaseException as exc:  # handed to the waiting caller
            if future is None:
                log.exception("registry job failed")
            else:
                future.set_exception(exc)
            return
        if future is not None:
            future.set_result(result)

    def _lock(self, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(name, threading.Lock())


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
