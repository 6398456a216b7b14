"""Where the windows of each model version live: in memory (one worker process) or in a shared
directory (several), merged exactly.

Each worker folds its sampled rows into a small local part (:class:`~scoring.monitor.window.Window`)
and hands it here every second or so. The store merges the part into the version's current
window; once that holds ``rows`` rows it is closed: summarized (against the baseline), appended to
the last ``keep`` windows, and a fresh one starts. With a directory, one JSON file per model
version holds all of that, read and rewritten under an exclusive ``flock``: the windows are the
service's, not one worker's, and whichever worker closes a window raises its alarms.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from .window import Window

KEEP = 20

# (state of the version, the window just closed) -> its summary; may update state["streaks"]
Closer = Callable[[dict[str, Any], Window], dict[str, Any]]


def empty_state() -> dict[str, Any]:
    return {"current": None, "windows": [], "streaks": {}, "alarms": [], "reference": None,
            "closed": 0}


class WindowStore:
    """The windows of every model version this service watches."""

    def __init__(self, rows: int, directory: str | os.PathLike | None = None,
                 keep: int = KEEP) -> None:
        self.rows = int(rows)
        self.keep = keep
        self.directory = Path(directory) if directory else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._memory: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def add(self, model: str, version: str, part: Window, close: Closer) -> list[dict[str, Any]]:
        """Merge ``part`` into the version's current window; returns the windows it closed."""
        closed = []
        with self._state(model, version) as state:
            try:
                current = Window.from_json(state["current"]) if state["current"] else None
            except (ValueError, KeyError, TypeError):  # a foreign or damaged entry: start over
                current = None
            if current is None or list(current.widths) != list(part.widths) or \
                    list(current.groups) != list(part.groups):
                if current is not None:  # the same version name, another net: forget the old one
                    state.update(empty_state())
                current = Window(part.widths, part.groups)
            current.merge(part)
            if current.rows >= self.rows:
                summary = close(state, current)
                state["closed"] += 1
                summary["index"] = state["closed"]
                state["windows"] = (state["windows"] + [summary])[-self.keep:]
                closed.append(summary)
                current = Window(part.widths, part.groups)
            state["current"] = current.to_json()
        return closed

    def read(self, model: str, version: str) -> dict[str, Any]:
        """A copy of the version's state (``empty_state()`` when nothing was seen yet)."""
        if self.directory is None:
            with self._lock:
                return json.loads(json.dumps(self._memory.get((model, version)) or empty_state()))
        path = self._path(model, version)
        try:
            with open(path, "rb") as fh:
                fcntl.flock(fh, fcntl.LOCK_SH)
                return json.loads(fh.read() or b"null") or empty_state()
        except FileNotFoundError:
            return empty_state()
        except ValueError:
            return empty_state()

    def versions(self, model: str) -> list[str]:
        if self.directory is None:
            with self._lock:
                return sorted(v for m, v in self._memory if m == model)
        d = self.directory / model
        return sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []

    def forget(self, model: str, keep: set[str]) -> None:
        """Drop the state of the model's versions not in ``keep``."""
        for version in self.versions(model):
            if version in keep:
                continue
            if self.directory is None:
                with self._lock:
                    self._memory.pop((model, version), None)
            else:
                try:
                    self._path(model, version).unlink()
                except FileNotFoundError:
                    pass

    def _path(self, model: str, version: str) -> Path:
        assert self.directory is not None
        return self.directory / model / f"{version}.json"

    @contextmanager
    def _state(self, model: str, version: str) -> Iterator[dict[str, Any]]:
        if self.directory is None:
            with self._lock:
                state = self._memory.setdefault((model, version), empty_state())
                yield state
            return
        path = self._path(model, version)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        with os.fdopen(fd, "r+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                state = json.loads(fh.read() or b"null") or empty_state()
            except ValueError:  # a torn or foreign file: start over rather than stop watching
                state = empty_state()
            yield state
            data = json.dumps(state, separators=(",", ":")).encode()
            fh.seek(0)
            fh.write(data)
            fh.truncate()
