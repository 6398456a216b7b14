"""Readiness of the whole process group: with ``--workers N`` every worker loads the models on
its own, and a probe reaches one of them. ``/readyz`` answers 200 only once all N workers have
their models loaded and warm, so a load balancer never sends traffic to a worker still compiling.

Each worker marks itself ready in a shared directory (a file named by its pid) from the
registry's worker thread after a poll finds every model live; ``/readyz`` counts the marks of
processes still alive. A worker the supervisor restarts marks itself again once it has loaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


class ReadyBoard:
    def __init__(self, directory: str | os.PathLike, workers: int) -> None:
        self.dir, self.workers = Path(directory), workers
        self.dir.mkdir(parents=True, exist_ok=True)
        self._marked = False

    def poller(self, ready: Callable[[], bool]) -> Callable[[], None]:
        """For the registry's pollers: mark this process once ``ready()`` holds (and again if
        the mark went missing)."""
        def poll() -> None:
            mark = self.dir / str(os.getpid())
            if (not self._marked or not mark.exists()) and ready():
                self.dir.mkdir(parents=True, exist_ok=True)
                mark.touch()
                self._marked = True
        return poll

    def ready_workers(self) -> int:
        n = 0
        try:
            marks = list(self.dir.iterdir())
        except OSError:  # the directory went away: the workers mark themselves again next poll
            return 0
        for mark in marks:
            if not mark.name.isdigit():
                continue
            try:
                os.kill(int(mark.name), 0)
            except ProcessLookupError:  # a worker that died: its mark goes with it
                mark.unlink(missing_ok=True)
                continue
            except PermissionError:
                pass
            n += 1
        return n
