"""The local model repository: ``<repo>/<name>/<version>/`` holds one package each.

* A version directory appears only complete: packages are built in ``<repo>/.staging/`` (same
  filesystem) and moved into place with one ``rename``.
* ``<repo>/<name>/.state.json`` records which version is live, when that was decided, the order
  versions were installed in, the versions that went live before (for rollback) and versions that
  failed validation (never retried). It is rewritten atomically under a file lock, so several
  worker processes and a sync sidecar can share one repository.
* Names starting with ``.`` are the repository's own; they are never taken for models or versions.

Which version should serve: an operator's or a worker's decision (``live``) stands until a version
installed *after* that decision arrives; then the newest such version is tried. This is what lets a
rollback stick while new exports still go live by themselves.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..model.manifest import PackageError, check_name

log = logging.getLogger(__name__)

STATE = ".state.json"
LOCK = ".lock"
STAGING = ".staging"
HISTORY_MAX = 20


@dataclass
class ModelState:
    """What ``.state.json`` holds for one model."""

    live: str | None = None
    live_since: float = 0.0
    history: list[str] = field(default_factory=list)      # versions live before, oldest first
    installed: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)  # version -> why

    @classmethod
    def from_json(cls, raw: dict) -> "ModelState":
        return cls(live=raw.get("live"), live_since=float(raw.get("live_since", 0.0)),
                   history=list(raw.get("history", [])), installed=dict(raw.get("installed", {})),
                   rejected=dict(raw.get("rejected", {})))

    def to_json(self) -> dict:
        return {"live": self.live, "live_since": self.live_since, "history": self.history,
                "installed": self.installed, "rejected": self.rejected}


class ModelRepo:
    """A directory of models and their versions."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    # -- listing ----------------------------------------------------------------------------

    def models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def model_dir(self, name: str) -> Path:
        return self.root / check_name(name, "model name")

    def path(self, name: str, version: str) -> Path:
        return self.model_dir(name) / check_name(version, "version")

    def install_time(self, name: str, version: str, state: ModelState | None = None) -> float:
        state = state or self.state(name)
        if version in state.installed:
            return state.installed[version]
        try:
            return self.path(name, version).stat().st_mtime
        except OSError:
            return 0.0

    def versions(self, name: str) -> list[str]:
        """Version directories of a model, oldest install first."""
        mdir = self.model_dir(name)
        if not mdir.is_dir():
            return []
        state = self.state(name)
        names = [p.name for p in mdir.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return sorted(names, key=lambda v: (self.install_time(name, v, state), v))

    def newest(self, name: str) -> str | None:
        versions = [v for v in self.versions(name) if v not in self.state(name).rejected]
        return versions[-1] if versions else None

    def wanted(self, name: str) -> str | None:
        """The version that should serve now: the newest one installed after the last decision
        (and not rejected), else the live one, else the newest."""
        state = self.state(name)
        versions = [v for v in self.versions(name) if v not in state.rejected]
        if not versions:
            return None
        fresh = [v for v in versions if self.install_time(name, v, state) > state.live_since]
        if fresh:
            return fresh[-1]
        if state.live in versions:
            return state.live
        return versions[-1]

    # -- state ------------------------------------------------------------------------------

    def state(self, name: str) -> ModelState:
        path = self.model_dir(name) / STATE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return ModelState()
        except (OSError, ValueError) as exc:
            log.error("model %r: %s is unreadable (%s); treating as empty", name, path, exc)
            return ModelState()
        return ModelState.from_json(raw) if isinstance(raw, dict) else ModelState()

    @contextlib.contextmanager
    def locked(self, name: str) -> Iterator[None]:
        """An exclusive lock on one model's state (across processes)."""
        mdir = self.model_dir(name)
        mdir.mkdir(parents=True, exist_ok=True)
        with open(mdir / LOCK, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _write_state(self, name: str, state: ModelState) -> None:
        mdir = self.model_dir(name)
        tmp = mdir / f"{STATE}.{uuid.uuid4().hex}.tmp"
        tmp.write_text(json.dumps(state.to_json(), indent=1), encoding="utf-8")
        os.replace(tmp, mdir / STATE)

    def set_live(self, name: str, version: str) -> ModelState:
        """Record ``version`` as live now; the one it replaces joins the history."""
        with self.locked(name):
            state = self.state(name)
            if state.live != version:
                if state.live:
                    state.history = [v for v in state.history if v != state.live] + [state.live]
                    state.history = state.history[-HISTORY_MAX:]
                state.live = version
            state.live_since = time.time()
            self._write_state(name, state)
        return state

    def promote(self, name: str, version: str, decided_at: float) -> str | None:
        """Record ``version`` as live, as decided at ``decided_at`` (when the caller read
        :meth:`wanted`, before it spent seconds loading), and return the version live afterwards.

        Several processes following one repository call this; the first to finish writes, the
        others find it already live and change nothing. A decision older than the recorded one
        (e.g. a rollback made while the caller was loading) loses: the recorded version is
        returned and the caller should not serve ``version``. Because ``live_since`` is the
        decision time, a version installed while the caller was loading stays fresh."""
        with self.locked(name):
            state = self.state(name)
            if state.live == version or (state.live and decided_at < state.live_since):
                return state.live
            if state.live:
                state.history = [v for v in state.history if v != state.live] + [state.live]
                state.history = state.history[-HISTORY_MAX:]
            state.live = version
            state.live_since = decided_at
            self._write_state(name, state)
        return version

    def previous(self, name: str) -> str | None:
        """The most recent earlier live version that is still in the repo (rollback target)."""
        state = self.state(name)
        present = set(self.versions(name))
        for v in reversed(state.history):
            if v != state.live and v in present and v not in state.rejected:
                return v
        return None

    def rollback(self, name: str) -> str:
        """Make the previous live version live again; raise if there is none."""
        with self.locked(name):
            state = self.state(name)
            present = set(self.versions(name))
            target = next((v for v in reversed(state.history)
                           if v != state.live and v in present and v not in state.rejected), None)
            if target is None:
                raise LookupError(f"model {name!r}: no previous version is kept in the repository")
            state.history = [v for v in state.history if v != target]
            if state.live:
                state.rejected.pop(state.live, None)
            state.live = target
            state.live_since = time.time()
            self._write_state(name, state)
        return target

    def reject(self, name: str, version: str, reason: str) -> None:
        """Remember that a version failed validation so no process retries it."""
        with self.locked(name):
            state = self.state(name)
            state.rejected[version] = reason[:500]
            self._write_state(name, state)

    # -- install, prune, staging ------------------------------------------------------------

    def staging_dir(self, name: str) -> Path:
        """A fresh, empty directory on the repo's filesystem to build a package in."""
        check_name(name, "model name")
        path = self.root / STAGING / f"{name}-{uuid.uuid4().hex[:12]}"
        path.mkdir(parents=True)
        return path

    def install(self, name: str, staged: str | os.PathLike, version: str) -> Path:
        """Move a complete, verified package into place with one rename."""
        dest = self.path(name, version)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            raise PackageError(f"version {version!r} of model {name!r} is already installed")
        _fsync_tree(Path(staged))
        os.rename(staged, dest)
        _fsync_dir(dest.parent)
        with self.locked(name):
            state = self.state(name)
            state.installed[version] = time.time()
            self._write_state(name, state)
        return dest

    def prune(self, name: str, keep: int) -> list[str]:
        """Keep ``keep`` versions, the live one counted, and delete the older rest. The live version
        and the newest one (which may be waiting to go live) are never deleted. Returns those
        deleted."""
        keep = max(1, keep)
        with self.locked(name):
            state = self.state(name)
            versions = self.versions(name)
            kept = {state.live} if state.live in versions else set()
            for v in reversed(versions):
                if len(kept) >= keep and v != versions[-1]:
                    break
                kept.add(v)
            doomed = [v for v in versions if v not in kept]
            for v in doomed:
                shutil.rmtree(self.path(name, v), ignore_errors=True)
                state.installed.pop(v, None)
                state.history = [h for h in state.history if h != v]
            if doomed:
                self._write_state(name, state)
        return doomed

    def clean_staging(self, name: str | None = None, older_than: float = 0.0) -> int:
        """Remove leftovers of interrupted downloads (of one model, or of all); returns how many.

        Call it for a model only while holding that model's download lock, or at a start when
        no download can be running."""
        staging = self.root / STAGING
        if not staging.is_dir():
            return 0
        prefix = f"{check_name(name, 'model name')}-" if name else ""
        now, n = time.time(), 0
        for p in staging.iterdir():
            if prefix and not p.name.startswith(prefix):
                continue
            with contextlib.suppress(OSError):
                if now - p.stat().st_mtime >= older_than:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
                    n += 1
        return n


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for fn in filenames:
            with contextlib.suppress(OSError), open(Path(dirpath) / fn, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(Path(dirpath))
