"""The local model repository: ``<repo>/<name>/<version>/`` holds one package each.

* A version directory the syncer writes appears only complete: packages are built in
  ``<repo>/.staging/`` (same filesystem) and moved into place with one ``rename``. Operators may
  also copy a version in (``cp -a``, ``rsync -a``, ``tar x``, ``mv``); it is "installed" the
  moment the repository first sees it, whatever its files' mtimes say.
* ``<repo>/<name>/.state.json`` (:mod:`scoring.lifecycle.state`) records which version is live,
  when that was decided, when each version was first seen, earlier live versions (rollback) and
  rejected versions. It is rewritten atomically under a file lock, so worker processes and a sync
  sidecar can share one repository; a repository this process cannot write is served from memory.
* Names starting with ``.`` are the repository's own; they are never taken for models or versions.

Which version should serve (:meth:`ModelRepo.wanted`): a decision (``live``) stands until a
version first seen *after* it arrives; then the newest such version is tried. This is what lets a
rollback stick while new exports, synced or copied in, still go live by themselves. A rejected
version is skipped while its files stay as they were when it failed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..model.manifest import PackageError, check_name, is_valid_name
from .state import (
    FORMAT,
    HISTORY_MAX,
    ModelState,
    Rejection,
    StateFile,
    checksums_md5,
    fingerprint,
    fsync_dir,
)

log = logging.getLogger(__name__)

STAGING = ".staging"


class RollbackConflict(LookupError):
    """The live version is not the one the rollback expected to step back from."""


@dataclass(frozen=True)
class Rollback:
    """What a rollback did: ``changed`` is False when it had already been done (a retry)."""

    from_version: str | None
    to_version: str
    changed: bool


class ModelRepo:
    """A directory of models and their versions."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._states: dict[str, StateFile] = {}
        self._ignored: set[tuple[str, str]] = set()  # (what, name) already warned about

    # -- listing ----------------------------------------------------------------------------

    def models(self) -> list[str]:
        """Model directories; names outside the safe alphabet (``lost+found``, ``x copy``) are
        not models, and are named once in a warning."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and self._usable(p.name, "model directory"))

    def _usable(self, name: str, what: str) -> bool:
        if is_valid_name(name):
            return True
        if (what, name) not in self._ignored:
            self._ignored.add((what, name))
            log.warning("repository %s: ignoring the %s %r: names are 1-128 letters, digits, "
                        "'_', '-', '.', not starting with '.' or '-'", self.root.name, what, name)
        return False


    def model_dir(self, name: str) -> Path:
        return self.root / check_name(name, "model name")

    def path(self, name: str, version: str) -> Path:
        return self.model_dir(name) / check_name(version, "version")

    def _present(self, name: str) -> list[str]:
        """Version directories with a usable name (``v2 copy`` is not a version: warned once)."""
        mdir = self.model_dir(name)
        if not mdir.is_dir():
            return []
        return [p.name for p in mdir.iterdir() if p.is_dir() and not p.name.startswith(".")
                and self._usable(p.name, f"version directory of model {name!r}")]

    def versions(self, name: str, state: ModelState | None = None) -> list[str]:
        """Version directories of a model, oldest first: by when the repository first saw them
        (a version not seen yet counts as now), then by mtime and name for versions first seen
        in the same look."""
        state = state or self.state(name)
        now = time.time()
        mdir = self.model_dir(name)

        def key(v: str) -> tuple[float, float, str]:
            try:
                mtime = (mdir / v).stat().st_mtime
            except OSError:
                mtime = 0.0
            return state.installed.get(v, now), mtime, v

        return sorted(self._present(name), key=key)

    def observe(self, name: str) -> ModelState:
        """Record the first sighting of every version directory not seen before (and forget the
        ones that are gone); returns the state. A state written by the first release (which
        ordered unrecorded versions by mtime) has its unrecorded versions taken as seen before
        its last decision, so an upgrade does not put an old copy live."""
        sf = self.state_file(name)
        state = sf.read()
        present = set(self._present(name))
        if not self.model_dir(name).is_dir() or (
                state.format >= FORMAT and present == set(state.installed)):
            return state
        with sf.locked():
            state = sf.read()
            now = time.time()
            stamp = min(now, state.live_since) if state.format < FORMAT and state.live else now
            new = sorted(present - set(state.installed))
            gone = set(state.installed) - present
            if not new and not gone and state.format >= FORMAT:
                return state
            for v in new:
                state.installed[v] = stamp
            for v in gone:
                state.installed.pop(v, None)
                state.rejected.pop(v, None)
                state.held.pop(v, None)
            state.format = FORMAT
            sf.write(state)
        if new:
            log.info("model %r: found version(s) %s in the repository", name, new)
        return state

    def wanted(self, name: str) -> str | None:
        """The version that should serve now: the newest one first seen after the last decision
        (and not rejected as its files are), else the live one, else the newest."""
        state = self.observe(name)
        versions = [v for v in self.versions(name, state) if not self.is_rejected(name, v, state)
                    and (v == state.live or not self.is_held(name, v, state))]
        if not versions:
            return None
        fresh = [v for v in versions if state.installed.get(v, time.time()) > state.live_since]
        if fresh:
            return fresh[-1]
        if state.live in versions:
            return state.live
        return versions[-1]

    # -- state ------------------------------------------------------------------------------

    def state_file(self, name: str) -> StateFile:
        sf = self._states.get(name)
        if sf is None:
            sf = self._states[name] = StateFile(self.model_dir(name), name)
        return sf

    def state(self, name: str) -> ModelState:
        return self.state_file(name).read()

    def promote(self, name: str, version: str, decided_at: float, *, force: bool = False,
                judged: bool = False) -> str | None:
        """Record ``version`` as live, as decided at ``decided_at`` (when the caller read
        :meth:`wanted`, before it spent seconds loading), and return the version live afterwards.

        Several processes following one repository call this; the first to finish writes, the
        others find it already live and change nothing. A decision older than the recorded one
        (e.g. a rollback made while the caller was loading) loses: the recorded version is
        returned and the caller should not serve ``version``. Because ``live_since`` is the
        decision time, a version first seen while the caller was loading stays fresh.

        A version the guarded swap of any process holds is not recorded (that decision stands),
        unless ``force``: an admin's promote, which clears the hold and wins over everything, or
        ``judged``: an admin's promote that the guarded swap judged again and passed."""
        sf = self.state_file(name)
        with sf.locked():
            state = sf.read()
            if force:  # an admin's promote past the guarded swap, recorded with the files' identity
                state.held.pop(version, None)
                state.forced[version] = self.fingerprint(name, version)
                while len(state.forced) > HISTORY_MAX:
                    state.forced.pop(next(iter(state.forced)))
                state.make_live(version, decided_at)
                sf.write(state)
                return version
            if not judged and self.is_held(name, version, state) and \
                    not self.is_forced(name, version, state):
                return state.live  # another process's guarded swap held it first: that stands
            if state.live == version or (state.live and decided_at < state.live_since):
                return state.live
            state.held.pop(version, None)
            state.make_live(version, decided_at)
            sf.write(state)
        return version

    def previous(self, name: str, state: ModelState | None = None) -> str | None:
        """The most recent earlier live version that is still in the repo (rollback target)."""
        state = state or self.state(name)
        present = set(self._present(name))
        for v in reversed(state.history):
            if v != state.live and v in present and not self.is_rejected(name, v, state) \
                    and not self.is_held(name, v, state):
                return v
        return None

    def rollback(self, name: str, expected: str | None, to: str | None = None, *,
                 retry_window: float = 0.0) -> Rollback:
        """Make an earlier version live again, as one compare-and-set.

        ``expected`` is the version the caller sees live; ``to`` the target (default: the
        previous live version). If the live version is no longer ``expected`` because this very
        rollback was already done (a retried call, or the same call on another worker), nothing
        changes and ``changed`` is False; if it moved for another reason, :class:`RollbackConflict`.
        With ``retry_window`` > 0 and no ``to``, a rollback recorded less than that many seconds
        ago that left the live version as it is now is taken for this one (a retried call).
        Versions present now count as seen before the rollback, so it sticks until a new one
        appears. Raises LookupError when there is nothing to roll back to."""
        self.observe(name)
        sf = self.state_file(name)
        with sf.locked():
            state = sf.read()
            last = state.last_rollback or {}
            if (to is None and retry_window > 0 and last.get("to") == state.live
                    and time.time() - float(last.get("at", 0.0)) < retry_window):
                return Rollback(last.get("from"), state.live, False)
            if to is not None and state.live == to:
                return Rollback(last.get("from") if last.get("to") == to else None, to, False)
            if expected is not None and state.live != expected:
                if last.get("from") == expected and last.get("to") == state.live and to in (None, state.live):
                    return Rollback(expected, state.live, False)
                raise RollbackConflict(f"model {name!r}: the live version is {state.live!r}, not "
                                       f"{expected!r} as the rollback expected; nothing was rolled back")
            if to is None:
                target = self.previous(name, state)
                if target is None:
                    raise LookupError(f"model {name!r}: no previous version is kept in the "
                                      "repository to roll back to")
            else:
                if to not in self._present(name):
                    raise LookupError(f"model {name!r}: version {to!r} is not in the repository; "
                                      f"versions: {self.versions(name, state)}")
                if self.is_rejected(name, to, state):
                    raise LookupError(f"model {name!r}: version {to!r} was rejected: "
                                      f"{state.rejected[to].reason}")
                target = to
            origin = state.live
            now = time.time()
            state.held.pop(target, None)  # the operator chose it: every process serves it
            state.history = [v for v in state.history if v != target]
            if origin:
                state.rejected.pop(origin, None)
            state.live, state.live_since = target, now
            state.last_rollback = {"from": origin, "to": target, "at": now}
            sf.write(state)
        return Rollback(origin, target, True)

    # -- rejections ---------------------------------------------------------------------------

    def fingerprint(self, name: str, version: str) -> str:
        return fingerprint(self.path(name, version))

    def reject(self, name: str, version: str, reason: str, fingerprint: str, *,
               content: bool = False) -> None:
        """Remember that a version failed validation with its files as ``fingerprint`` says, so
        no process retries it until they change. ``content``: every md5 matched (the package
        is bad, not an unfinished copy); the syncer then never downloads it again."""
        listed = checksums_md5(self.path(name, version)) if content else None
        sf = self.state_file(name)
        with sf.locked():
            state = sf.read()
            state.rejected[version] = Rejection(reason[:500], fingerprint, time.time(), content)
            if listed is not None:
                state.refuse(listed, version, reason)
            sf.write(state)

    def refuse(self, name: str, checksums_md5: str, version: str, reason: str) -> None:
        """Remember a package (by the md5 of its ``checksums.md5``) that is intact and invalid,
        so the syncer never downloads those bytes again."""
        sf = self.state_file(name)
        with sf.locked():
            state = sf.read()
            state.refuse(checksums_md5, version, reason)
            sf.write(state)

    def refusal(self, name: str, checksums_md5: str) -> dict | None:
        """Why the package with this ``checksums.md5`` md5 was refused, or None."""
        return self.state(name).refused.get(checksums_md5)

    def rejection(self, name: str, version: str, state: ModelState | None = None) -> Rejection | None:
        state = state or self.state(name)
        return state.rejected.get(version)

    def is_rejected(self, name: str, version: str, state: ModelState | None = None) -> bool:
        """Rejected, and its files are still what they were when it failed."""
        rej = self.rejection(name, version, state)
        if rej is None:
            return False
        if not rej.fingerprint:  # recorded by an older release: files unknown, keep it rejected
            return True
        return rej.fingerprint == self.fingerprint(name, version)

    def clear_rejections(self, name: str) -> list[str]:
        """Forget every rejection and hold of a model (an operator's explicit reload: they are
        judged again); returns them."""
        sf = self.state_file(name)
        with sf.locked():
            state = sf.read()
            cleared = sorted(set(state.rejected) | set(state.held))
            if cleared:
                state.rejected.clear()
                state.held.clear()
                sf.write(state)
        return cleared

    # -- the guarded swap ---------------------------------------------------------------------

    def hold(self, name: str, version: str, reason: str, fingerprint: str) -> bool:
        """Record that the guarded swap holds ``version`` back (as its files are now), unless it
        went live meanwhile (another process judged it first); returns whether it is held."""
        sf = self.state_file(name)
        with sf.locked():
            state = sf.read()
            if state.live == version or self.is_forced(name, version, state):
                return False
            state.held[version] = Rejection(reason[:1000], fingerprint, time.time())
            sf.write(state)
        return True

    def is_forced(self, name: str, version: str, state: ModelState | None = None) -> bool:
        """Promoted past the guarded swap by an admin, and its files are still what they were."""
        state = state or self.state(name)
        fp = state.forced.get(version)
        return fp is not None and fp == self.fingerprint(name, version)

    def is_held(self, name: str, version: str, state: ModelState | None = None) -> bool:
        """Held by the guarded swap, and its files are still what they were then."""
        state = state or self.state(name)
        held = state.held.get(version)
        return held is not None and held.fingerprint == self.fingerprint(name, version)

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
        fsync_dir(dest.parent)
        sf = self.state_file(name)
        with sf.locked():
            state = sf.read()
            state.installed[version] = time.time()
            state.rejected.pop(version, None)
            sf.write(state)
        return dest

    def prune(self, name: str, keep: int) -> list[str]:
        """Keep ``keep`` versions, the live one counted, and delete the older rest. The live version
        and the newest one (which may be waiting to go live) are never deleted. Returns those
        deleted."""
        keep = max(1, keep)
        sf = self.state_file(name)
        if sf.read_only_reason:
            return []
        with sf.locked():
            state = sf.read()
            versions = self.versions(name, state)
            kept = {state.live} if state.live in versions else set()
            for v in reversed(versions):
                if len(kept) >= keep and v != versions[-1]:
                    break
                kept.add(v)
            doomed = [v for v in versions if v not in kept]
            for v in doomed:
                shutil.rmtree(self.path(name, v), ignore_errors=True)
                state.installed.pop(v, None)
                state.rejected.pop(v, None)
                state.history = [h for h in state.history if h != v]
            if doomed:
                sf.write(state)
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


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for fn in filenames:
            with contextlib.suppress(OSError), open(Path(dirpath) / fn, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(Path(dirpath))
