"""Cold starts: seconds from ``ctr-serve`` process start to ``/readyz`` 200 with the demo model
(226 MB of tables), by where the compiled kernels come from.

    python -m bench.coldstart [--quick] [--kernels DIR] [--workers N] [--json PATH]

* ``empty cache``: a fresh container without shipped kernels: every kernel compiles.
* ``restart, own cache``: the same container restarted: Numba's on-disk cache of that start.
* ``image kernels``: a fresh container whose image ships compiled kernels (``ctr-kernels build``,
  ``CTR_KERNEL_CACHE``): the level this CPU runs is copied into the empty cache and loaded.
* ``restart, image kernels``: that container restarted.

Each is a new process (``--workers 1``: on one core, ``taskset -c 0``; ``--workers 2``: as the
Kubernetes pod runs it, ready when every worker is), after the
model's files were read once (the page cache holds them, as on a node that pulled the image and
synced the model). ``--kernels DIR`` uses a directory built before; otherwise it is built here
(all levels; with ``--quick`` only the best level this CPU runs). Target: ready in <= 5 s with
the image's kernels. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from scoring.engine.kernel_cache import LEVELS, build, host_features, runs

from .engine import RESULTS, cpu_model

TARGET_S = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_repo(root: Path) -> Path:
    from scoring.lifecycle.repo import ModelRepo
    from scoring.model.demo import write_demo

    repo = ModelRepo(root)
    if "demo" not in repo.models():
        staged = repo.staging_dir("demo")
        write_demo(staged, version="seed0")
        repo.install("demo", staged, "seed0")
    for f in (root / "demo" / "seed0").rglob("*"):  # the page cache holds the model
        if f.is_file():
            f.read_bytes()
    return root


def time_to_ready(repo: Path, cache: Path, kernels: Path | None, log: Path,
                  workers: int = 1) -> tuple[float, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_CPU", "CTR_"))}
    env.update(NUMBA_CACHE_DIR=str(cache), NUMBA_NUM_THREADS="1")
    if kernels is not None:
        env["CTR_KERNEL_CACHE"] = str(kernels)
    port = free_port()
    pin = ["taskset", "-c", "0"] if workers == 1 and (os.cpu_count() or 1) > 1 and \
        shutil.which("taskset") else []
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([*pin, sys.executable, "-m", "scoring", "--model-repo", str(repo),
                                 "--port", str(port), "--no-demo", "--workers", str(workers)], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        while time.perf_counter() - t0 < 600:
            if proc.poll() is not None:
                raise SystemExit(f"ctr-serve exited:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.01)
        seconds = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(30)
    chosen = next((line.split("compiled kernels: ", 1)[1] for line in log.read_text().splitlines()
                   if "compiled kernels: " in line), "compiled for this host")
    return seconds, chosen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--kernels", type=Path, help="a directory `ctr-kernels build` wrote")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--json", type=Path, default=RESULTS / "coldstart.json")
    args = ap.parse_args(argv)
    print(f"CPU: {cpu_model()}; workers: {args.workers}; levels this CPU runs: "
          f"{[lv for lv in LEVELS if runs(lv, host_features())]}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    repo = demo_repo(RESULTS / "coldstart-repo")
    work = Path(tempfile.mkdtemp(prefix="coldstart-"))
    try:
        kernels = args.kernels
        if kernels is None:
            kernels = work / "kernels"
            levels = [lv for lv in LEVELS if runs(lv, host_features())][:1] if args.quick else list(LEVELS)
            t0 = time.perf_counter()
            build(kernels, levels)
            print(f"ctr-kernels build ({', '.join(levels)}): {time.perf_counter() - t0:.0f} s",
                  flush=True)
        rows = []
        own, shipped = work / "own-cache", work / "image-cache"
        for name, cache, k in (("empty cache", own, None), ("restart, own cache", own, None),
                               ("image kernels", shipped, kernels),
                               ("restart, image kernels", shipped, kernels)):
            seconds, chosen = time_to_ready(repo, cache, k, work / "server.log", args.workers)
            rows.append({"start": name, "seconds": round(seconds, 2), "kernels": chosen})
            print(f"{name:<24} ready in {seconds:6.2f} s   ({chosen})", flush=True)
        image = max(r["seconds"] for r in rows if "image" in r["start"])
        verdict = "met" if image <= TARGET_S else "MISSED"
        line = f"ready <= {TARGET_S:.0f} s with the image's kernels (230 MB model): {image:.2f} s: {verdict}"
        print(line)
        args.json.write_text(json.dumps({"cpu": cpu_model(), "workers": args.workers, "rows": rows, "target": line}, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
