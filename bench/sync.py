"""Model sync benchmark: from a new version landing on HttpFS to the first response scored by it.

    python -m bench.sync [--quick] [--rate-limit 50M] [--interval 5] [--json PATH]

A real ``ctr-serve`` (1 worker) serves the demo-size model (``write_demo``: about 228 MB; with
``--quick`` tables 8x smaller, about 29 MB) and syncs in-process (``CTR_SYNC_SOURCE``) from the test
HttpFS gateway of the test suite (``tests/fakes/hdfs.py``), run in its own process at idle CPU
priority (it stands for another machine: on a serving host it costs nothing). Two load threads
score 50-ad requests the whole time. Then a new version lands on the gateway (data files first,
``checksums.md5`` last, as an export job would write) and the script records:

* time to serve: landing -> first response whose ``version`` is the new one, split into the wait
  for the next poll, the download (staging dir appears -> version installed) and load + warm + swap;
* scoring latency p50/p99 before the new version lands, while the download runs, and while the new
  version is loaded and warmed; pooled over several rounds (a new export each), medians of the
  phase times.

One run per ``--rate-limit`` value (default ``50M,0``: the ``ctr-sync`` default, then full speed,
the worst case for the serving latency). ``--sidecar`` syncs with a ``ctr-sync --low-priority``
process next to ``ctr-serve`` instead of in-process.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from scoring.lifecycle.repo import ModelRepo
from scoring.model.demo import AD_GROUPS, CONTEXT_GROUPS, write_demo
from scoring.model.manifest import CHECKSUMS

from .http import free_port

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
MODEL_PATH = "models/ctr"
SEED_FIGURE_S = 120.0


def packages(shift: int) -> tuple[Path, Path]:
    """Two demo-net versions, written once and reused (bench/results/ is not tracked)."""
    out = []
    for seed, version in ((0, "b1"), (1, "b2")):
        path = RESULTS / f"sync-shift{shift}-{version}"
        if not (path / CHECKSUMS).is_file():
            shutil.rmtree(path, ignore_errors=True)
            write_demo(path, seed=seed, version=version, name="ctr", bucket_shift=shift)
        out.append(path)
    return out[0], out[1]


def size_of(pkg: Path) -> int:
    return sum(f.stat().st_size for f in pkg.rglob("*") if f.is_file())


def bodies(n: int, ads: int = 50) -> list[bytes]:
    rng = np.random.default_rng(7)

    def val(g: str) -> list[str]:
        return [f"{g}:{int(rng.integers(1_000_000))}" for _ in range(int(rng.integers(1, 3)))]

    return [json.dumps({"context": {g: val(g) for g in CONTEXT_GROUPS},
                        "ads": [{"id": f"a{i}", "features": {g: val(g) for g in AD_GROUPS}}
                                for i in range(ads)]}).encode() for _ in range(n)]


class Load:
    """Closed-loop scoring clients; every sample is (send time, seconds, version)."""

    def __init__(self, port: int, threads: int = 2, think: float = 0.002) -> None:
        self.port, self.think = port, think
        self.samples: list[tuple[float, float, str]] = []
        self._scanned = 0
        self.errors = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.bodies = bodies(16)
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self, k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        i = k
        while not self.stop.is_set():
            body = self.bodies[i % len(self.bodies)]
            i += 1
            t0 = time.monotonic()
            try:
                conn.request("POST", "/v1/models/ctr/score", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                dt = time.monotonic() - t0
                version = json.loads(data).get("version", "?") if resp.status == 200 else f"HTTP {resp.status}"
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                with self.lock:
                    self.errors += 1
                continue
            with self.lock:
                self.samples.append((t0, dt, version))
            time.sleep(self.think)

    def first(self, version: str, after: float) -> float | None:
        """When the first response scored by ``version`` (sent after ``after``) came back.
        Scans only samples added since the last call: the watcher must not steal the clients' CPU."""
        with self.lock:
            new = self.samples[self._scanned:]
            self._scanned = len(self.samples)
        return next((t + dt for t, dt, v in new if v == version and t >= after), None)

    def window(self, start: float, end: float) -> list[float]:
        with self.lock:
            return [dt for t, dt, _ in self.samples if start <= t < end]

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) * 1000 if xs else float("nan")


def variant(src: Path, version: str, out: Path) -> Path:
    """``src`` under another version name: arrays hard-linked (same bytes to download), a new
    manifest.json and checksums.md5, so it is a new export as far as the syncer can tell."""
    from scoring.model.checksums import format_checksums, md5_file, parse_checksums
    from scoring.model.manifest import MANIFEST

    shutil.copytree(src, out, copy_function=os.link)
    for name in (MANIFEST, CHECKSUMS):
        data = (out / name).read_bytes()
        (out / name).unlink()  # break the hard link before rewriting
        (out / name).write_bytes(data)
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["version"] = version
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    sums = parse_checksums((out / CHECKSUMS).read_text())
    sums[MANIFEST] = md5_file(out / MANIFEST)
    (out / CHECKSUMS).write_text(format_checksums(sums))
    return out


def place(src: Path, dst: Path) -> float:
    """Land a version: data files replaced first, checksums.md5 last; returns the landing time."""
    for f in sorted(src.rglob("*")):
        rel = f.relative_to(src)
        if f.is_file() and rel.as_posix() != CHECKSUMS:
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, dst / rel)
    os.replace(src / CHECKSUMS, dst / CHECKSUMS)
    return time.monotonic()


def _remote_host() -> None:
    """The gateway stands for another machine: on a serving host it would use no CPU at all, so
    here it runs at idle priority and takes only CPU time the service does not want."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        pass


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"ctr-serve exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("ctr-serve not ready in time")


class Round(NamedTuple):
    """Monotonic times of one round: baseline start, landed, download start, installed, served."""

    base: float
    landed: float
    download: float
    installed: float
    served: float


def run(v1: Path, v2: Path, *, rate: str, interval: float, baseline_s: float, rounds: int, work: Path,
        sidecar: bool = False) -> dict:
    ns = work / "hdfs"
    target = ns / MODEL_PATH
    shutil.rmtree(work, ignore_errors=True)
    target.parent.mkdir(parents=True)
    shutil.copytree(v1, target)
    repo = ModelRepo(work / "repo")
    staged = repo.staging_dir("ctr")
    shutil.rmtree(staged)
    shutil.copytree(v1, staged)
    repo.install("ctr", staged, "b1")
    # Each round lands a new export, alternating the two weight sets.
    exports = [variant(v2 if k % 2 == 0 else v1, f"r{k}", ns / f"export-r{k}") for k in range(rounds)]

    gw = subprocess.Popen([sys.executable, "-m", "tests.fakes.hdfs", "--root", str(ns)], cwd=ROOT,
                          stdout=subprocess.PIPE, text=True, preexec_fn=_remote_host)
    address = gw.stdout.readline().strip()
    port = free_port()
    source = f"httpfs://{address}/{MODEL_PATH}"
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    if not sidecar:
        env.update({"CTR_SYNC_SOURCE": source, "CTR_SYNC_INTERVAL": str(interval), "CTR_SYNC_RATE_LIMIT": rate,
                    "CTR_SYNC_KEEP": "2"})
    log = open(work / "server.log", "wb")
    srv = subprocess.Popen([sys.executable, "-m", "scoring", "--model-repo", str(repo.root), "--port", str(port),
                            "--no-demo", "--keep-versions", "2"] + (["--poll-interval", "0.5"] if sidecar else []),
                           cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    side = subprocess.Popen([sys.executable, "-m", "model_sync", "--source", source, "--repo", str(repo.root),
                             "--model", "ctr", "--interval", str(interval), "--rate-limit", rate, "--keep", "2",
                             "--low-priority"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT) if sidecar else None
    load = None
    marks = []
    try:
        wait_ready(port, srv)
        load = Load(port)
        time.sleep(1.0)  # warm the connections and the request path
        staging = repo.root / ".staging"
        for k, export in enumerate(exports):
            version = f"r{k}"
            t_base = time.monotonic()
            time.sleep(baseline_s)
            landed = place(export, target)
            dl_start = installed = served = None
            deadline = landed + interval * 1.2 + 600
            while time.monotonic() < deadline and served is None:
                now = time.monotonic()
                if dl_start is None and staging.is_dir() and any(staging.glob("ctr-*")):
                    dl_start = now
                if installed is None and repo.path("ctr", version).is_dir():
                    installed = now
                    dl_start = dl_start or now
                served = load.first(version, landed)
                time.sleep(0.01)
            if served is None:
                raise SystemExit(f"{version} never served; see {work / 'server.log'}")
            marks.append((t_base, landed, dl_start, installed, served))
            time.sleep(1.0)  # let the old version's pages go before the next baseline
    finally:
        if load is not None:
            load.close()
        srv.terminate()
        srv.wait(30)
        if side is not None:
            side.terminate()
            side.wait(30)
        gw.terminate()
        gw.wait(10)
        log.close()
    rs = [Round(*m) for m in marks]
    base = [x for r in rs for x in load.window(r.base, r.landed)]
    during = [x for r in rs for x in load.window(r.download, r.installed)]
    swap = [x for r in rs for x in load.window(r.installed, r.served)]

    def med(xs: list[float]) -> float:
        return round(statistics.median(xs), 2)

    size = size_of(v2)
    download_s = med([r.installed - r.download for r in rs])
    return {
        "mode": "sidecar" if sidecar else "in-process", "rate_limit": rate, "package_bytes": size,
        "interval_s": interval, "rounds": rounds,
        "time_to_serve_s": [round(r.served - r.landed, 2) for r in rs],
        "poll_wait_s": med([r.download - r.landed for r in rs]),
        "download_s": download_s,
        "load_warm_swap_s": med([r.served - r.installed for r in rs]),
        "download_MiBps": round(size / (1 << 20) / download_s, 1),
        "p50_ms": {"before": round(pct(base, 50), 2), "download": round(pct(during, 50), 2),
                   "load_swap": round(pct(swap, 50), 2)},
        "p99_ms": {"before": round(pct(base, 99), 2), "download": round(pct(during, 99), 2),
                   "load_swap": round(pct(swap, 99), 2)},
        "samples": {"before": len(base), "download": len(during), "load_swap": len(swap)},
        "errors": load.errors,
        "p99_ratio_download": round(pct(during, 99) / pct(base, 99), 2) if base and during else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tables 8x smaller (~29 MB), shorter baseline")
    p.add_argument("--rate-limit", default="50M,0",
                   help="comma-separated rate limits, one run each; 0 = full speed (default 50M,0)")
    p.add_argument("--interval", type=float, default=5.0, help="CTR_SYNC_INTERVAL (default 5 s)")
    p.add_argument("--rounds", type=int, help="new exports per rate limit (default 3; 2 with --quick)")
    p.add_argument("--sidecar", action="store_true",
                   help="sync with a ctr-sync process next to ctr-serve instead of in-process")
    p.add_argument("--json", type=Path, default=RESULTS / "sync.json")
    args = p.parse_args(argv)
    shift = 3 if args.quick else 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    v1, v2 = packages(shift)
    print(f"packages ready ({size_of(v2) / 1e6:.0f} MB each) in {time.perf_counter() - t0:.1f}s", flush=True)
    baseline = 2.0 if args.quick else 4.0
    rounds = args.rounds or (2 if args.quick else 3)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        for rate in args.rate_limit.split(","):
            r = run(v1, v2, rate=rate, interval=args.interval, baseline_s=baseline, rounds=rounds,
                    work=Path(tmp) / f"run-{rate}", sidecar=args.sidecar)
            results.append(r)
            print(json.dumps(r), flush=True)
    print()
    print("| rate limit | package | time to serve (each round) | poll wait | download | load+warm+swap | "
          "p99 before | p99 during download | ratio | p99 during load/swap |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['rate_limit'] if r['rate_limit'] != '0' else 'none'} | {r['package_bytes'] / 1e6:.0f} MB | "
              f"{', '.join(f'{t}' for t in r['time_to_serve_s'])} s | {r['poll_wait_s']} s | {r['download_s']} s "
              f"({r['download_MiBps']} MiB/s) | {r['load_warm_swap_s']} s | {r['p99_ms']['before']} ms | "
              f"{r['p99_ms']['download']} ms | {r['p99_ratio_download']}x | {r['p99_ms']['load_swap']} ms |")
    worst = max(t for r in results for t in r["time_to_serve_s"])
    print(f"\nslowest time to serve {worst} s vs the seed's {SEED_FIGURE_S:.0f} s "
          f"(total {time.perf_counter() - t0:.0f}s)")
    args.json.write_text(json.dumps({"quick": args.quick, "runs": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
