"""Process memory from /proc (Linux): RSS, PSS and what the model files contribute to them.

Worker processes map the same package files read-only, so the page cache holds each table once:
every worker's RSS counts those pages, its PSS only its share (1/N with N workers touching them).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Memory:
    rss: int  # bytes
    pss: int
    file_rss: int  # the part of rss in mappings of files under the given directory
    file_pss: int


def memory(pid: int, under: str | os.PathLike | None = None) -> Memory:
    """RSS/PSS of a process, and of its mappings of files below ``under``."""
    prefix = str(Path(under).resolve()) if under else None
    rss = pss = frss = fpss = 0
    in_file = False
    with open(f"/proc/{pid}/smaps") as fh:
        for line in fh:
            head = line.split(None, 1)[0]
            if not head.endswith(":"):  # a mapping's header line: "addr perms offset dev inode path"
                parts = line.split(None, 5)
                path = parts[5].strip() if len(parts) > 5 else ""
                in_file = bool(prefix) and path.startswith(prefix)
            elif head == "Rss:":
                kb = int(line.split()[1]) * 1024
                rss += kb
                frss += kb if in_file else 0
            elif head == "Pss:":
                kb = int(line.split()[1]) * 1024
                pss += kb
                fpss += kb if in_file else 0
    return Memory(rss, pss, frss, fpss)


def _status_bytes(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss(pid: int) -> int:
    """VmHWM: the highest RSS the process reached, in bytes."""
    return _status_bytes(pid, "VmHWM:")


def current_rss(pid: int) -> int:
    return _status_bytes(pid, "VmRSS:")


def wait_ready_everywhere(url: str, in_a_row: int, timeout: float) -> bool:
    """Poll ``url``/readyz on new connections (which the kernel spreads over worker processes)
    until ``in_a_row`` answers in a row are 200; False on timeout."""
    import httpx

    deadline = time.monotonic() + timeout
    ok_count = 0
    while ok_count < in_a_row and time.monotonic() < deadline:
        try:
            ok = httpx.get(f"{url}/readyz", timeout=10).status_code == 200
        except httpx.TransportError:
            ok = False
        ok_count = ok_count + 1 if ok else 0
        time.sleep(0.02)
    return ok_count >= in_a_row


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def uvicorn_workers(pid: int) -> list[int]:
    """The worker processes uvicorn spawned under ``pid`` (not multiprocessing's helpers)."""
    workers = []
    for child in children(pid):
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmd or b"multiprocessing-fork" in cmd:
            workers.append(child)
    return workers
