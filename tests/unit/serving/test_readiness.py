"""``/readyz`` with several workers: every worker must have marked itself ready."""

from __future__ import annotations

import os
import subprocess
import sys

from scoring.serving.readiness import ReadyBoard


def test_ready_only_when_every_live_worker_marked(tmp_path):
    board = ReadyBoard(tmp_path / "ready", workers=2)
    loaded = {"ok": False}
    poll = board.poller(lambda: loaded["ok"])
    poll()
    assert board.ready_workers() == 0  # not loaded: no mark
    loaded["ok"] = True
    poll()
    assert board.ready_workers() == 1  # this process; the other worker has not marked yet
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "ready" / str(other.pid)).touch()
        assert board.ready_workers() == 2
    finally:
        other.kill()
        other.wait()
    assert board.ready_workers() == 1  # a dead worker's mark does not count, and is removed
    assert not (tmp_path / "ready" / str(other.pid)).exists()
    assert (tmp_path / "ready" / str(os.getpid())).exists()
