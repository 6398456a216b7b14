"""Load generators for the HTTP benchmarks: wrk for the maximum, an open-loop generator for
latency at a fixed rate.

``wrk`` (Debian's package) finds the maximum throughput: closed loop, a few connections, a Lua
script that cycles through prepared bodies. Debian has no wrk2, and wrk's closed loop hides
queueing at a fixed rate (coordinated omission), so latency at 25/50/75 % of the maximum comes
from :func:`open_loop`: requests start on a fixed schedule (``t0 + i / rate``) whether or not
earlier ones have finished, on a pool of keep-alive connections that grows up to 64 when every
connection is busy (then a request waits for one), and each latency is measured from the
*scheduled* start, as wrk2 does. It is asyncio on
uvloop over raw sockets with prebuilt request bytes; it spins (rather than sleeps on libuv's
1-ms timers) for the last 1.5-2 ms before each send, so sends leave on time to within tens of
microseconds. On its own core at these rates (hundreds to a few thousand requests per second)
it is mostly idle; ``calibrate`` reports its floor against ``/healthz``.
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

LUA = r"""
-- cycle through the prepared bodies, one POST each
local bodies = {}
for line in io.lines("%(bodies)s") do bodies[#bodies + 1] = line end
local i = 0
request = function()
  i = i %% #bodies + 1
  return wrk.format("POST", "%(path)s", {["Content-Type"] = "application/json"}, bodies[i])
end
"""


@dataclass
class WrkResult:
    requests_per_s: float
    latency_ms: dict[str, float]
    non_2xx: int
    errors: int
    output: str = field(repr=False, default="")


def wrk(url: str, path: str, bodies: Sequence[bytes], *, seconds: float, connections: int = 8,
        cpu: int | None = 1) -> WrkResult:
    """Closed-loop maximum with wrk (one thread), pinned to ``cpu``."""
    exe = shutil.which("wrk")
    if exe is None:
        raise SystemExit("wrk is missing: apt-get install -y wrk")
    with tempfile.TemporaryDirectory() as tmp:
        bfile = Path(tmp) / "bodies.jsonl"
        bfile.write_bytes(b"\n".join(bodies) + b"\n")
        script = Path(tmp) / "post.lua"
        script.write_text(LUA % {"bodies": bfile, "path": path})
        cmd = [exe, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
               "-s", str(script), url]
        if cpu is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", str(cpu)] + cmd
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {}
    for pct, value, unit in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        lat[f"p{pct}"] = float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return WrkResult(rps, lat, int(non2xx.group(1)) if non2xx else 0,
                     sum(map(int, errors.groups())) if errors else 0, out)


def http_request(host: str, port: int, path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


@dataclass
class OpenLoopResult:
    rate: float
    seconds: float
    sent_at: np.ndarray     # scheduled start, seconds since t0
    latency: np.ndarray     # seconds from scheduled start to full response
    status: np.ndarray      # HTTP status (0: connection error)
    max_send_lag: float     # worst lateness of a send behind its schedule
    connections: int

    def percentiles(self, mask: np.ndarray | None = None) -> dict[str, float]:
        lat = self.latency if mask is None else self.latency[mask]
        if lat.size == 0:
            return {}
        q = np.percentile(lat, [50, 90, 99, 99.9]) * 1e3
        return {"p50": q[0], "p90": q[1], "p99": q[2], "p99.9": q[3], "n": int(lat.size)}

    @property
    def non_200(self) -> int:
        return int((self.status != 200).sum())

    @property
    def achieved(self) -> float:
        return len(self.latency) / self.seconds if self.seconds else 0.0


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    await reader.readexactly(int(m.group(1)) if m else 0)
    return status


async def _open_loop(host: str, port: int, requests: Sequence[bytes], rate: float,
                     seconds: float, connections: int, max_connections: int) -> OpenLoopResult:
    n = int(rate * seconds)
    interval = 1.0 / rate
    idle: asyncio.Queue = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait(await asyncio.open_connection(host, port))
    opened = connections
    latency = np.full(n, np.nan)
    status = np.zeros(n, dtype=np.int32)
    tasks = set()
    lag = 0.0

    async def one(i: int, due: float) -> None:
        nonlocal opened
        conn = None
        try:
            if idle.empty() and opened < max_connections:
                opened += 1
                conn = await asyncio.open_connection(host, port)
            else:  # wait for a connection; the wait counts in the latency (from ``due``)
                conn = await idle.get()
            reader, writer = conn
            writer.write(requests[i % len(requests)])
            status[i] = await _read_response(reader)
            latency[i] = time.perf_counter() - due
            idle.put_nowait(conn)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            latency[i] = time.perf_counter() - due
            status[i] = 0
            if conn is not None:
                conn[1].close()
                opened -= 1

    perf = time.perf_counter
    t0 = perf() + 0.05
    for i in range(n):
        due = t0 + i * interval
        while True:
            wait = due - perf()
            if wait <= 0:
                break
            await asyncio.sleep(wait - 0.0015 if wait > 0.002 else 0)
        lag = max(lag, perf() - due)
        task = asyncio.ensure_future(one(i, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(list(tasks), timeout=30)
    while not idle.empty():
        idle.get_nowait()[1].close()
    sent = np.arange(n) * interval
    done = ~np.isnan(latency)
    return OpenLoopResult(rate, seconds, sent[done], latency[done], status[done], lag, opened)


def open_loop(host: str, port: int, requests: Sequence[bytes], *, rate: float, seconds: float,
              connections: int = 16, max_connections: int = 64) -> OpenLoopResult:
    """Send ``requests`` (full HTTP/1.1 request bytes, cycled) at ``rate`` per second.

    Python's cyclic garbage collector is off while it runs (its heap is frozen first): in a
    process that has imported NumPy, Numba and the service's modules, a full collection stalls
    the generator for 10 ms and more, and every request due meanwhile would be charged to the
    server (latency counts from the schedule). Each task's garbage is freed by reference
    counting anyway."""
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        return runner(_open_loop(host, port, requests, rate, seconds, connections, max_connections))
    finally:
        gc.enable()
        gc.unfreeze()


def pin(cpu: int | None) -> None:
    """Keep this process (the load generator) on one core."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def calibrate(host: str, port: int, rate: float = 500, seconds: float = 2) -> dict[str, float]:
    """The generator's floor: latency of GET /healthz (no work in the server) at ``rate``."""
    req = f"GET /healthz HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    return open_loop(host, port, [req], rate=rate, seconds=seconds).percentiles()
