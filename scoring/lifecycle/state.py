"""``<repo>/<model>/.state.json``: what the repository remembers about one model, and how it is
kept.

* ``live`` / ``live_since``: the version a process decided to serve, and when it decided.
* ``history``: versions live before, oldest first (rollback targets).
* ``installed``: version -> the moment the repository first saw it (the syncer's install, or the
  first look at a directory an operator copied in; never a file's mtime, which ``cp -a``,
  ``rsync -a`` and ``tar x`` carry over from wherever the package was built).
* ``rejected``: version -> :class:`Rejection`, keyed on the version's files (``fingerprint``), so
  a version whose files change (a half-finished copy completed) is tried again.
* ``last_rollback``: ``{"from", "to", "at"}``, which makes a repeated rollback a no-op.
* ``format``: 2 (a file without it was written by the first release, which ordered versions it
  had not recorded by mtime).
* ``refused``: md5 of a ``checksums.md5`` -> ``{"version", "reason", "at"}``: packages whose every
  file was intact and that still failed validation (in the syncer, or in the service). The syncer
  never downloads the same bytes again, across restarts and ``--once`` runs.

:class:`StateFile` reads and writes it. A write goes to a temporary file, is fsynced and renamed
over the old one, and the directory is fsynced: a crash leaves the old state or the new one.
A file that cannot be parsed is moved aside (``.state.json.unreadable-<time>``) and logged as an
ERROR, never silently taken as empty and overwritten. A repository this process cannot write
(a read-only mount, a directory owned by another uid, a full disk) is served from memory: the
state of this process lives in memory over whatever the file says, with one WARNING naming the
cause, and the disk is tried again every minute.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

STATE = ".state.json"
LOCK = ".lock"
HISTORY_MAX = 20
REFUSED_MAX = 100
READ_ONLY_RETRY = 60.0  # seconds between tries of the disk while the repository is not writable
FORMAT = 2              # 1: the first release, which ordered unrecorded versions by mtime
MAX_STATE_BYTES = 16 << 20


@dataclass
class Rejection:
    """Why a version was refused, and the fingerprint of its files at the time."""

    reason: str
    fingerprint: str = ""
    at: float = 0.0
    content: bool = False  # every file matched its md5: the package itself is bad, not a copy

    @classmethod
    def from_json(cls, raw: Any) -> "Rejection":
        if isinstance(raw, str):  # the first state format: version -> reason
            return cls(reason=raw)
        raw = raw if isinstance(raw, dict) else {}
        return cls(reason=str(raw.get("reason", "")), fingerprint=str(raw.get("fingerprint", "")),
                   at=float(raw.get("at", 0.0)), content=bool(raw.get("content", False)))

    def to_json(self) -> dict:
        return {"reason": self.reason, "fingerprint": self.fingerprint, "at": self.at,
                "content": self.content}


@dataclass
class ModelState:
    """What ``.state.json`` holds for one model."""

    live: str | None = None
    live_since: float = 0.0
    history: list[str] = field(default_factory=list)
    installed: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, Rejection] = field(default_factory=dict)
    last_rollback: dict[str, Any] | None = None
    refused: dict[str, dict[str, Any]] = field(default_factory=dict)
    held: dict[str, Rejection] = field(default_factory=dict)  # by the guarded swap
    # promoted past the guarded swap by an admin: version -> fingerprint of its files then
    forced: dict[str, str] = field(default_factory=dict)
    format: int = FORMAT

    @classmethod
    def from_json(cls, raw: dict) -> "ModelState":
        return cls(format=int(raw.get("format", 1)), live=raw.get("live"), live_since=float(raw.get("live_since", 0.0)),
                   history=[str(v) for v in raw.get("history", [])],
                   installed={str(k): float(v) for k, v in dict(raw.get("installed", {})).items()},
                   rejected={str(k): Rejection.from_json(v)
                             for k, v in dict(raw.get("rejected", {})).items()},
                   last_rollback=raw.get("last_rollback") if isinstance(raw.get("last_rollback"), dict)
                   else None,
                   refused={str(k): dict(v) for k, v in dict(raw.get("refused", {})).items()
                            if isinstance(v, dict)},
                   held={str(k): Rejection.from_json(v) for k, v in dict(raw.get("held", {})).items()},
                   forced={str(k): str(v) for k, v in dict(raw.get("forced") or {}).items()})

    def to_json(self) -> dict:
        return {"format": FORMAT, "live": self.live, "live_since": self.live_since,
                "history": self.history,
                "installed": self.installed,
                "rejected": {v: r.to_json() for v, r in self.rejected.items()},
                "last_rollback": self.last_rollback, "refused": self.refused,
                "held": {v: r.to_json() for v, r in self.held.items()}, "forced": self.forced}

    def refuse(self, checksums_md5: str, version: str, reason: str) -> None:
        self.refused[checksums_md5] = {"version": version, "reason": reason[:500], "at": time.time()}
        while len(self.refused) > REFUSED_MAX:
            self.refused.pop(next(iter(self.refused)))

    def make_live(self, version: str, at: float) -> None:
        """``version`` is live from ``at``; the one it replaces joins the history."""
        if self.live and self.live != version:
            self.history = [v for v in self.history if v != self.live] + [self.live]
            self.history = self.history[-HISTORY_MAX:]
        self.live = version
        self.live_since = at


def fingerprint(version_dir: Path) -> str:
    """The identity of a version's files as they are now: the md5 of its ``checksums.md5`` and
    the name, size and mtime of every file. Changes while a copy is under way; stable after."""
    h = hashlib.md5()
    try:
        h.update(hashlib.md5((version_dir / "checksums.md5").read_bytes()).digest())
    except OSError:
        h.update(b"no checksums.md5")
    entries = []
    for dirpath, dirnames, filenames in os.walk(version_dir):
        dirnames.sort()
        for fn in filenames:
            p = Path(dirpath) / fn
            with contextlib.suppress(OSError):
                st = p.lstat()
                entries.append(f"{p.relative_to(version_dir).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}")
    h.update("\n".join(sorted(entries)).encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def checksums_md5(version_dir: Path) -> str | None:
    """md5 of a version's ``checksums.md5`` (the package's identity), or None without one."""
    try:
        return hashlib.md5((version_dir / "checksums.md5").read_bytes()).hexdigest()
    except OSError:
        return None


class StateFile:
    """One model's ``.state.json`` and ``.lock``, or this process's memory when it cannot write."""

    def __init__(self, model_dir: Path, name: str) -> None:
        self.dir = model_dir
        self.name = name
        self._memory: ModelState | None = None   # set while writes fail: the process's own view
        self._retry_at = 0.0                     # when to try the disk again
        self.read_only_reason: str | None = None
        self.unreadable: str | None = None       # what happened to an unparsable state file
        self._bad_seen: str | None = None        # md5 of the unparsable bytes already reported
        self._local = threading.RLock()
        self._held = threading.local()

    # -- reading -------------------------------------------------------------------------------

    def read(self) -> ModelState:
        disk = self._read_disk()
        if self._memory is None:
            return disk
        return _overlay(disk, self._memory)

    def _read_bytes(self) -> bytes | None:
        with open(self.dir / STATE, "rb") as fh:
            return fh.read(MAX_STATE_BYTES + 1)

    def _read_disk(self) -> ModelState:
        try:
            data = self._read_bytes()
        except FileNotFoundError:
            return ModelState()
        except OSError as exc:
            self._went_read_only(f"cannot read {STATE} ({exc.strerror or exc})")
            return ModelState()
        try:
            return _parse(data)
        except ValueError as exc:
            return self._set_aside(data, exc)

    def _set_aside(self, data: bytes, exc: Exception) -> ModelState:
        """An unparsable state file: keep it for a human, start over from the directories. Under
        the lock, and only if the file still holds those bytes: another process may have set it
        aside and written a good one meanwhile."""
        digest = hashlib.md5(data).hexdigest()
        if digest == self._bad_seen:  # reported before and could not be moved: say it once
            return self._memory or ModelState()
        with self.locked():
            try:
                now = self._read_bytes()
            except OSError:
                return self._memory or ModelState()
            if now != data:
                try:
                    return _parse(now)
                except ValueError:
                    data, digest = now, hashlib.md5(now).hexdigest()
            path = self.dir / STATE
            aside = path.with_name(f"{STATE}.unreadable-{time.strftime('%Y%m%dT%H%M%S')}-"
                                   f"{uuid.uuid4().hex[:6]}")
            try:
                os.replace(path, aside)
                where = f"moved to {aside.name}"
            except OSError as err:
                where = f"left in place ({err.strerror or err})"
                self._bad_seen = digest
        self.unreadable = (f"{STATE} was unreadable ({str(exc)[:200]}); {where}; the state was "
                           f"rebuilt from the version directories at {time.strftime('%Y-%m-%d %H:%M:%S')}")
        log.error("model %r: %s", self.name, self.unreadable)
        return self._memory or ModelState()

    # -- writing -------------------------------------------------------------------------------

    def write(self, state: ModelState) -> None:
        if self._memory is not None:
            self._memory = state
            if time.monotonic() < self._retry_at:
                return
        tmp = self.dir / f"{STATE}.{uuid.uuid4().hex}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, json.dumps(state.to_json(), indent=1).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.dir / STATE)
            fsync_dir(self.dir)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            self._went_read_only(f"cannot write {STATE} ({exc.strerror or exc})")
            self._memory = state
            return
        if self._memory is not None:  # the disk takes writes again (space freed, remounted)
            log.warning("model %r: the repository directory is writable again; the state is "
                        "kept in %s from now on", self.name, STATE)
            self._memory, self.read_only_reason = None, None

    def _went_read_only(self, why: str) -> None:
        self._retry_at = time.monotonic() + READ_ONLY_RETRY
        if self.read_only_reason is None:
            self.read_only_reason = why
            log.warning("model %r: the repository directory %s is not writable by this process: "
                        "%s. Serving from memory: versions seen, the live version, rejections and "
                        "rollbacks are kept in this process only (other workers decide on their "
                        "own); the disk is tried again every %.0f s.", self.name, self.dir, why,
                        READ_ONLY_RETRY)
        if self._memory is None:
            try:
                self._memory = _parse(self._read_bytes())
            except (OSError, ValueError):
                self._memory = ModelState()

    # -- locking -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """An exclusive lock on this model's state, across processes (``flock`` on ``.lock``);
        only across threads when the directory cannot hold the lock file. Re-entrant."""
        with self._local:
            if getattr(self._held, "depth", 0):
                self._held.depth += 1
                try:
                    yield
                finally:
                    self._held.depth -= 1
                return
            fh = self._open_lock()
            self._held.depth = 1
            try:
                if fh is None:
                    yield
                    return
                with fh:
                    fcntl.flock(fh, fcntl.LOCK_EX)
                    try:
                        yield
                    finally:
                        fcntl.flock(fh, fcntl.LOCK_UN)
            finally:
                self._held.depth = 0

    def _open_lock(self):
        path = self.dir / LOCK
        if self._memory is None or time.monotonic() >= self._retry_at:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                return open(path, "a+")
            except OSError as exc:
                if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR,
                                     errno.ENOSPC, errno.EDQUOT):
                    raise
                self._went_read_only(f"cannot open {LOCK} ({exc.strerror or exc})")
        try:  # flock needs no write access: a lock file that exists still orders the readers
            return open(path, "r")
        except OSError:
            return None


def _parse(data: bytes | None) -> ModelState:
    """A state file's bytes; ValueError for anything that is not one."""
    try:
        if data is None or len(data) > MAX_STATE_BYTES:
            raise ValueError(f"larger than {MAX_STATE_BYTES} bytes")
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raise ValueError(f"expected a JSON object, got {type(raw).__name__}")
        return ModelState.from_json(raw)
    except (ValueError, TypeError, AttributeError, RecursionError) as exc:
        raise ValueError(str(exc)) from None


def _overlay(disk: ModelState, mine: ModelState) -> ModelState:
    """What a process that cannot write sees: the file (others may still write it, e.g. a syncer
    with write access) under its own decisions."""
    out = ModelState(format=max(disk.format, mine.format),
                     installed={**mine.installed, **disk.installed},
                     rejected={**disk.rejected, **mine.rejected},
                     refused={**disk.refused, **mine.refused},
                     held={**disk.held, **mine.held},
                     forced={**disk.forced, **mine.forced})
    newer = mine if mine.live_since >= disk.live_since else disk
    out.live, out.live_since = newer.live, newer.live_since
    out.history = list(newer.history)
    out.last_rollback = mine.last_rollback or disk.last_rollback
    return out


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
