"""One sync cycle, its retries and alarms, and the poll loop.

A cycle (:meth:`Syncer.cycle`):

1. fetch the remote ``checksums.md5``; if a local version has exactly these bytes, stop there:
   no other byte is downloaded;
2. pick a host at random; fail over on retriable errors (timeouts, dropped connections, 5xx,
   ``StandbyException``, ``RetriableException``);
3. download every file through the token bucket into ``<repo>/.staging/``, md5 while streaming;
   refuse names escaping the package, symlinks and files above ``max_file_bytes``;
4. validate the package with :func:`scoring.model.package.load_package`, then move it into place as
   ``<repo>/<model>/<version>/`` with one rename; the serving registry picks it up. A package
   that is intact but invalid is remembered in the repository's state (``refused``, by the md5 of
   its ``checksums.md5``), as is one the service rejected, and never downloaded again;
5. keep ``keep`` versions, never the live one nor the one just installed;
6. retry a failed attempt with exponential backoff and jitter; after the last one, alarm.

Only one process syncs a model at a time (``<repo>/<model>/.sync.lock``); the first cycle of a
process removes the model's staging leftovers, so a crash at any point leaves a valid repo.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import random
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..lifecycle.repo import ModelRepo
from ..model.checksums import parse_checksums
from ..model.manifest import CHECKSUMS, MANIFEST, PackageError, read_manifest
from ..model.package import load_package
from . import metrics
from .alarms import Alarms
from .fetch import HostPicker, Stopped, SyncError, Transfer
from .sources import Source, SourceError, open_source
from .throttle import TokenBucket, parse_rate

log = logging.getLogger(__name__)

SYNC_LOCK = ".sync.lock"
MAX_CHECKSUMS_BYTES = 1 << 20
DEFAULT_RATE = "50M"

UNCHANGED, INSTALLED, FAILED, SKIPPED = "unchanged", "installed", "failed", "skipped"


@dataclass
class SyncConfig:
    """Everything a syncer needs; the CLI flags and CTR_SYNC_* variables map onto these."""

    source: str
    repo: Path
    model: str
    interval: float = 60.0            # seconds between polls
    jitter: float = 0.1               # +/- fraction of the interval, so servers spread out
    rate_limit: float | None = field(default_factory=lambda: parse_rate(DEFAULT_RATE))
    keep: int = 3                     # versions kept on disk (the live one always)
    retries: int = 3                  # retries of a failed attempt within one cycle
    backoff: float = 1.0              # first retry delay; doubles each time, with jitter
    backoff_max: float = 30.0
    timeout: float = 30.0             # seconds a request may wait for the server (connect / read)
    cycle_timeout: float = 1800.0     # a cycle that takes longer fails
    max_file_bytes: int = 16 << 30
    max_package_bytes: int = 64 << 30  # all files of one version together
    user: str | None = None           # HDFS user.name
    alarm_webhook: str | None = None

    def __post_init__(self) -> None:
        self.repo = Path(self.repo)
        for name in ("interval", "timeout", "cycle_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be a fraction in [0, 1), got {self.jitter}")
        if self.keep < 1:
            raise ValueError(f"keep must be >= 1 version, got {self.keep}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.max_file_bytes < 1:
            raise ValueError(f"max file size must be >= 1 byte, got {self.max_file_bytes}")
        if self.max_package_bytes < 1:
            raise ValueError(f"max package size must be >= 1 byte, got {self.max_package_bytes}")


@dataclass
class SyncResult:
    status: str                      # unchanged | installed | failed | skipped
    message: str
    version: str | None = None       # the remote version when known
    bytes: int = 0
    seconds: float = 0.0
    attempts: int = 0
    download_seconds: float = 0.0    # time spent fetching the package files (installed only)

    @property
    def ok(self) -> bool:
        return self.status in (UNCHANGED, INSTALLED)


@dataclass
class SyncStatus:
    """A running syncer's health, for tests, logs and the in-process handle."""

    cycles: int = 0
    consecutive_failures: int = 0
    last_result: SyncResult | None = None
    last_success: float | None = None
    last_error: str | None = None
    bytes_total: int = 0


class Syncer:
    """Keeps ``<repo>/<model>/`` in step with one remote package path."""

    def __init__(self, config: SyncConfig, *, source: Source | None = None, alarms: Alarms | None = None,
                 rng: random.Random | None = None) -> None:
        self.config = config
        self.model = config.model
        self.repo = ModelRepo(config.repo)
        self.repo.model_dir(config.model)  # validates the name
        timeout = (min(config.timeout, 10.0), config.timeout)
        self.source = source or open_source(config.source, user=config.user, timeout=timeout)
        self.alarms = alarms or Alarms(config.model, config.alarm_webhook)
        self.bucket = TokenBucket(config.rate_limit)
        self.rng = rng or random.Random()
        self.status = SyncStatus()
        self.stop_event = threading.Event()
        self._cleaned = False

    # -- the public cycle -------------------------------------------------------------------

    def cycle(self, *, wait_for_lock: bool = False) -> SyncResult:
        """One poll: check, download if changed, install; retries inside; alarm on failure."""
        started = time.monotonic()
        try:
            with self._sync_lock(wait_for_lock) as held:
                if not held:
                    result = SyncResult(SKIPPED, "another process is syncing this model")
                else:
                    result = self._cycle_locked(started)
        except OSError as exc:  # the repository itself: not a directory, no permission, disk full
            result = SyncResult(FAILED, f"local repository {self.repo.root}: {exc}")
        except Exception as exc:  # a bug must not end a --once run with a traceback
            log.exception("model %r: sync cycle failed unexpectedly", self.model)
            result = SyncResult(FAILED, f"internal error ({type(exc).__name__}: {exc}); see the log")
        result.seconds = time.monotonic() - started
        self._record(result)
        return result

    def _cycle_locked(self, started: float) -> SyncResult:
        if not self._cleaned:
            n = self.repo.clean_staging(self.model)
            if n:
                log.info("model %r: removed %d staging leftover(s) of an interrupted sync", self.model, n)
            self._cleaned = True
        deadline = started + self.config.cycle_timeout
        state: dict = {}
        last: SyncError | None = None
        attempts = 0
        try:
            for attempt in range(self.config.retries + 1):
                attempts = attempt + 1
                try:
                    result = self._attempt(state, deadline)
                    result.attempts, result.bytes = attempts, self._bytes(state)
                    return result
                except SyncError as exc:
                    last = exc
                    log.warning("model %r: sync attempt %d/%d failed: %s", self.model, attempts,
                                self.config.retries + 1, exc)
                    if not exc.retriable or attempt == self.config.retries:
                        break
                    delay = min(self.config.backoff_max, self.config.backoff * 2 ** attempt)
                    delay *= self.rng.uniform(0.5, 1.5)
                    if time.monotonic() + delay > deadline:
                        break
                    if self.stop_event.wait(delay):
                        raise Stopped()
        except Stopped:
            return SyncResult(SKIPPED, "stopped", bytes=self._bytes(state), attempts=attempts)
        finally:
            staging = state.get("staging")
            if staging is not None and staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return SyncResult(FAILED, str(last), version=state.get("version"), bytes=self._bytes(state),
                          attempts=attempts)

    # -- one attempt ------------------------------------------------------------------------

    def _attempt(self, state: dict, deadline: float) -> SyncResult:
        picker = HostPicker(self.source.hosts, self.rng, self.model)
        text = picker.run(lambda host: self._fetch_small(host, CHECKSUMS, state))
        digest = hashlib.md5(text).hexdigest()
        try:
            sums = parse_checksums(text.decode("utf-8"), source=f"remote {CHECKSUMS}")
        except (PackageError, UnicodeDecodeError) as exc:
            raise SyncError(f"{self.source.describe()}: {exc}", retriable=False) from None
        if MANIFEST not in sums:
            raise SyncError(f"remote {CHECKSUMS} does not list {MANIFEST}; is {self.source.describe()} "
                            "a model package?", retriable=False)

        local = self._local_version_with(digest)
        if local is not None:
            return self._unchanged(local)
        refused = self.repo.refusal(self.model, digest)
        if refused is not None:
            raise SyncError(f"the remote package (version {refused.get('version')!r}) was refused "
                            f"before and has not changed: {refused.get('reason')}", retriable=False)

        if state.get("digest") != digest:  # first attempt, or the remote changed meanwhile
            if state.get("staging") is not None:
                shutil.rmtree(state["staging"], ignore_errors=True)
            small = state.get("small_bytes", 0)
            state.clear()
            state.update(small_bytes=small, digest=digest, staging=self.repo.staging_dir(self.model),
                         started=time.monotonic())
            state["transfer"] = Transfer(self.source, state["staging"], sums, bucket=self.bucket,
                                         max_file_bytes=self.config.max_file_bytes,
                                         max_package_bytes=self.config.max_package_bytes, model=self.model,
                                         stop=self.stop_event, deadline=deadline)
        transfer: Transfer = state["transfer"]
        names = sorted(sums, key=lambda n: (n != MANIFEST, n))  # the manifest first: fail fast
        if "listing" not in state:
            listing = picker.run(lambda host: self.source.stat_files(host, names))
            transfer.check_listing(listing)
            state["listing"] = listing or {}
        for name in names:
            if name not in transfer.done:
                info = state["listing"].get(name)
                picker.run(lambda host: transfer.fetch(host, name, info))
            if name == MANIFEST and "version" not in state:
                state["version"] = self._check_new_version(state["staging"])
        (state["staging"] / CHECKSUMS).write_bytes(text)
        download_seconds = time.monotonic() - state["started"]
        metrics.DOWNLOAD_SECONDS.labels(self.model).observe(download_seconds)
        result = self._install(state, digest)
        result.download_seconds = download_seconds
        return result

    def _fetch_small(self, host: str, name: str, state: dict) -> bytes:
        with self.source.open(host, name) as dl:
            if dl.length is not None and dl.length > MAX_CHECKSUMS_BYTES:
                raise SourceError(f"remote {name} is {dl.length} bytes; a {name} above "
                                  f"{MAX_CHECKSUMS_BYTES} bytes is not a model package's", retriable=False)
            buf = bytearray()
            for chunk in dl.chunks:
                self.bucket.consume(len(chunk), self.stop_event)
                buf += chunk
                if len(buf) > MAX_CHECKSUMS_BYTES:
                    raise SourceError(f"remote {name} is larger than {MAX_CHECKSUMS_BYTES} bytes",
                                      retriable=False, host=host)
            if dl.length is not None and len(buf) != dl.length:
                raise SourceError(f"remote {name}: connection ended after {len(buf)} of {dl.length} "
                                  "bytes", retriable=True, host=host)
        metrics.BYTES.labels(self.model).inc(len(buf))
        state["small_bytes"] = state.get("small_bytes", 0) + len(buf)
        return bytes(buf)

    def _check_new_version(self, staging: Path) -> str:
        try:
            manifest = read_manifest(staging)
        except PackageError as exc:
            raise SyncError(f"remote package: {exc}", retriable=False) from None
        version = manifest.version
        if manifest.name != self.model:
            raise SyncError(f"remote {MANIFEST}: name {manifest.name!r} does not match the model "
                            f"name {self.model!r} (--model / CTR_SYNC_MODEL); the service would refuse it",
                            retriable=False)
        if self.repo.path(self.model, version).exists():
            raise SyncError(f"remote version {version!r} differs from the installed {version!r} "
                            f"({CHECKSUMS} differ); each export needs a new version in {MANIFEST}",
                            retriable=False)
        return version

    def _install(self, state: dict, digest: str) -> SyncResult:
        staging, version = state["staging"], state["version"]
        try:
            load_package(staging, verify=False)  # md5s were checked on the bytes as they arrived
        except PackageError as exc:
            self.repo.refuse(self.model, digest, version, str(exc))
            raise SyncError(f"remote version {version!r} is not a valid package: {exc}",
                            retriable=False) from None
        try:
            self.repo.install(self.model, staging, version)
        except (PackageError, OSError) as exc:
            raise SyncError(f"installing version {version!r} failed: {exc}", retriable=False) from None
        self._prune()
        metrics.LAST_INSTALL.labels(self.model).set(time.time())
        return SyncResult(INSTALLED, f"installed version {version!r} from {self.source.describe()}",
                          version=version)

    def wait_live(self, version: str, timeout: float, every: float = 0.2) -> tuple[bool, str]:
        """Wait until the service records ``version`` live (True) or rejects it, or ``timeout``
        seconds pass (False); with what happened, in words."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.repo.state(self.model)
            if state.live == version:
                return True, f"version {version!r} is live"
            rejection = state.rejected.get(version)
            if rejection is not None and self.repo.is_rejected(self.model, version, state):
                return False, f"the service rejected version {version!r}: {rejection.reason}"
            if time.monotonic() >= deadline:
                return False, (f"version {version!r} is not live after {timeout:g}s (live: "
                               f"{state.live!r}); is ctr-serve running on {self.repo.root}?")
            if self.stop_event.wait(every):
                return False, f"stopped while waiting for version {version!r} to go live"

    # -- local state --------------------------------------------------------------------------

    def _local_version_with(self, digest: str) -> str | None:
        """A local version whose checksums.md5 has exactly the md5 ``digest`` (wanted first)."""
        wanted = self.repo.wanted(self.model)
        versions = self.repo.versions(self.model)
        for version in ([wanted] if wanted else []) + [v for v in reversed(versions) if v != wanted]:
            try:
                data = (self.repo.path(self.model, version) / CHECKSUMS).read_bytes()
            except OSError:
                continue
            if hashlib.md5(data).hexdigest() == digest:
                return version
        return None

    def _prune(self) -> None:
        """Keep ``keep`` versions. The repo never deletes the live one; while a newer version
        waits for the service to swap to it, keep at least two so it is not the one deleted."""
        keep = self.config.keep
        live, wanted = self.repo.state(self.model).live, self.repo.wanted(self.model)
        if live and wanted and wanted != live:
            keep = max(keep, 2)
        removed = self.repo.prune(self.model, keep)
        if removed:
            log.info("model %r: removed old version(s) %s (keeping %d)", self.model, removed, keep)

    def _unchanged(self, version: str) -> SyncResult:
        self._prune()
        wanted = self.repo.wanted(self.model)
        if version == wanted:
            return SyncResult(UNCHANGED, f"version {version!r} is current", version=version)
        rejection = self.repo.rejection(self.model, version)
        if rejection is not None and self.repo.is_rejected(self.model, version):
            return SyncResult(FAILED, f"remote version {version!r} is installed but the service "
                              f"rejected it: {rejection.reason}; {wanted!r} serves", version=version)
        return SyncResult(UNCHANGED, f"remote version {version!r} is installed; {wanted!r} serves "
                          "(after a rollback)", version=version)

    @contextlib.contextmanager
    def _sync_lock(self, wait: bool) -> Iterator[bool]:
        mdir = self.repo.model_dir(self.model)
        mdir.mkdir(parents=True, exist_ok=True)
        with open(mdir / SYNC_LOCK, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @staticmethod
    def _bytes(state: dict) -> int:
        transfer = state.get("transfer")
        return state.get("small_bytes", 0) + (transfer.bytes if transfer is not None else 0)

    # -- bookkeeping, alarms ------------------------------------------------------------------

    def _record(self, result: SyncResult) -> None:
        st = self.status
        st.cycles += 1
        st.last_result = result
        st.bytes_total += result.bytes
        metrics.CYCLES.labels(self.model, result.status).inc()
        metrics.CYCLE_SECONDS.labels(self.model, result.status).observe(result.seconds)
        if result.ok:
            if st.consecutive_failures:
                self.alarms.recovered(source=self.source.describe(), after_failures=st.consecutive_failures,
                                      version=result.version)
            st.consecutive_failures = 0
            st.last_success = time.time()
            st.last_error = None
            metrics.LAST_SUCCESS.labels(self.model).set(st.last_success)
            log.log(logging.INFO if result.status == INSTALLED else logging.DEBUG,
                    "model %r: %s (%.2fs)", self.model, result.message, result.seconds)
        elif result.status == FAILED:
            st.consecutive_failures += 1
            st.last_error = result.message
            self.alarms.failed(source=self.source.describe(), repo=str(self.repo.root),
                               error=result.message, consecutive_failures=st.consecutive_failures,
                               attempts=result.attempts, live_version=self.repo.wanted(self.model),
                               remote_version=result.version)
        metrics.CONSECUTIVE_FAILURES.labels(self.model).set(st.consecutive_failures)

    # -- the poll loop ------------------------------------------------------------------------

    def next_delay(self) -> float:
        j = self.config.jitter
        return self.config.interval * self.rng.uniform(1 - j, 1 + j)

    def run_forever(self, wake: threading.Event | None = None,
                    on_result: Callable[[SyncResult], None] | None = None,
                    on_start: Callable[[], None] | None = None) -> None:
        """Poll until :meth:`stop`; ``wake`` set by another thread starts a cycle at once."""
        wake = wake or threading.Event()
        log.info("model %r: syncing %s into %s every %.0fs (+/-%d%%), rate limit %s", self.model,
                 self.source.describe(), self.repo.root, self.config.interval, self.config.jitter * 100,
                 self.config.rate_limit or "none")
        while not self.stop_event.is_set():
            wake.clear()
            if on_start is not None:
                on_start()
            try:
                result = self.cycle()
            except Exception:  # a bug must not end the loop: the next poll may succeed
                log.exception("model %r: sync cycle crashed", self.model)
                result = SyncResult(FAILED, "internal error (see the log)")
            if on_result is not None:
                on_result(result)
            deadline = time.monotonic() + self.next_delay()
            while not self.stop_event.is_set() and not wake.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                wake.wait(min(left, 0.5))

    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        self.stop()
        self.source.close()
