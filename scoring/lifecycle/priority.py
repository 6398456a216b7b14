"""Background work that must never delay a request: the calling thread gives its CPU away.

Model loads (md5, validation, layout, warm-up) and downloads run beside the request path, often
on the same core. :func:`lower_thread_priority` makes the calling thread (Linux applies
``setpriority`` / ``sched_setscheduler`` to one thread when given its thread id) run only on CPU
time nothing else wants: ``SCHED_IDLE`` where allowed, else ``nice 19``. A thread at idle
priority that holds the GIL cannot starve the request thread for long: a thread waiting for the
GIL is not runnable, so the holder gets the core, and the work is done in short slices that
release the GIL (hashing, file reads, compiled loops).
"""

from __future__ import annotations

import os
import threading


def lower_thread_priority(idle: bool = True, niceness: int = 19) -> str:
    """Lower the calling thread's CPU priority; returns what was set (for a log line)."""
    tid = threading.get_native_id()
    if idle:
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            return "SCHED_IDLE"
        except (AttributeError, OSError):
            pass
    try:
        os.setpriority(os.PRIO_PROCESS, tid, niceness)
        return f"nice {niceness}"
    except (AttributeError, OSError):
        return "unchanged"
