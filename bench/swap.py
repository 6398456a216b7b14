"""Hot-swap benchmark: steady load on ``ctr-serve``, then 5 swaps to new demo versions.

    python -m bench.swap [--quick] [--rate R] [--json PATH]

The server runs on one core (``taskset -c 0``), this script and its open-loop generator on the
other. The load is 100-ad requests at a fixed rate (default: 30 % of the maximum wrk measures
first; on a core shared with other jobs, higher rates let their bursts build queues that drown
what a swap does). After a steady phase, five new versions of the demo model (same size, other seeds) are
installed one after another the way the syncer installs them (one rename into the repository);
the server picks each up at its next poll, validates, loads and warms it beside the serving path,
and swaps. Reported: non-200 responses, p99 in 1-s windows while a swap is under way against the
steady p99, and the server's peak RSS during the swaps against its steady RSS and the model size.
Not part of the test suite.
"""

from __future__ import annotations

import os

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from scoring.lifecycle.repo import ModelRepo  # noqa: E402
from scoring.model.demo import write_demo  # noqa: E402
from scoring.model.package import load_package  # noqa: E402

from .engine import RESULTS  # noqa: E402
from .http import HOST, free_port, make_bodies, run_and_report, start, stop  # noqa: E402
from .loadgen import OpenLoopResult, http_request, open_loop, pin, wrk  # noqa: E402
from .procmem import current_rss  # noqa: E402

SWAPS = 5
LOAD = 0.3  # of the measured maximum, when --rate is not given


def cached_version(seed: int) -> Path:
    """A demo package of this seed, written once into bench/results/ and copied from there."""
    path = RESULTS / "swap-cache" / f"seed{seed}"
    if not (path / "checksums.md5").is_file():
        shutil.rmtree(path, ignore_errors=True)
        write_demo(path, seed=seed, version=f"v{seed}")
    return path


def stage(repo: ModelRepo, seed: int) -> Path:
    staged = repo.staging_dir("demo")
    shutil.copytree(cached_version(seed), staged, dirs_exist_ok=True)
    return staged


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, int]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.every):
            try:
                self.samples.append((time.perf_counter(), current_rss(self.pid)))
            except OSError:
                return


def run(args: argparse.Namespace) -> dict:
    steady_s, gap_s = (5.0, 4.0) if args.quick else (15.0, 8.0)
    root = RESULTS / "swap-repo"
    shutil.rmtree(root, ignore_errors=True)
    repo = ModelRepo(root)
    first = repo.staging_dir("demo")
    shutil.copytree(cached_version(0), first, dirs_exist_ok=True)
    repo.install("demo", first, "v0")
    staged = [stage(repo, seed) for seed in range(1, SWAPS + 1)]  # copied before the load starts
    model_bytes = load_package(repo.path("demo", "v0"), verify=False, finite=False).nbytes
    _, bodies = make_bodies(repo.path("demo", "v0"))
    server_cpu, client_cpu = (0, 1) if (os.cpu_count() or 1) > 1 else (None, None)

    port = free_port()
    proc = start([sys.executable, "-m", "scoring", "--model-repo", str(root), "--port", str(port),
                  "--poll-interval", "0.5", "--log-level", "info"], port, "/readyz", server_cpu,
                 RESULTS / "swap-server.log")
    sampler = RssSampler(proc.pid)
    try:
        pin(client_cpu)
        url = f"http://{HOST}:{port}"
        rate = args.rate
        if not rate:
            wrk(url, "/v1/score", bodies, seconds=2, cpu=client_cpu)
            rate = LOAD * wrk(url, "/v1/score", bodies, seconds=3, cpu=client_cpu).requests_per_s
        total = steady_s + SWAPS * gap_s + 1.0
        reqs = [http_request(HOST, port, "/v1/score", b) for b in bodies]
        holder: dict[str, OpenLoopResult] = {}
        load = threading.Thread(target=lambda: holder.update(
            r=open_loop(HOST, port, reqs, rate=rate, seconds=total)))
        sampler.start()
        t0 = time.perf_counter() + 0.05  # the generator's schedule starts 50 ms after it is called
        load.start()
        swaps = []
        time.sleep(steady_s)
        with httpx.Client(base_url=url, timeout=30) as client:
            for k, path in enumerate(staged, 1):
                version = f"v{k}"
                t_install = time.perf_counter()
                repo.install("demo", path, version)
                while client.get("/v1/models/demo").json().get("version") != version:
                    time.sleep(0.05)
                    if time.perf_counter() - t_install > 120:
                        raise SystemExit(f"{version} never went live; see {RESULTS / 'swap-server.log'}")
                t_live = time.perf_counter()
                swaps.append({"version": version, "install_s": t_install - t0, "live_s": t_live - t0,
                              "seconds_to_live": round(t_live - t_install, 2)})
                time.sleep(max(0.0, t_install + gap_s - time.perf_counter()))
        load.join()
        sampler.halt.set()
    finally:
        sampler.halt.set()
        stop(proc)
    return analyse(holder["r"], swaps, sampler.samples, t0, steady_s, rate, model_bytes)


def analyse(res: OpenLoopResult, swaps: list[dict], rss: list[tuple[float, int]], t0: float,
            steady_s: float, rate: float, model_bytes: int) -> dict:
    """Steady = every 1-s window with no swap under way (before, between and after the swaps,
    skipping the first second); during = windows from an install to one second after it went
    live. p99 pooled over each set's requests, and per window."""
    windows = np.floor(res.sent_at).astype(int)
    busy = set()
    for s in swaps:
        busy.update(range(int(s["install_s"]), int(s["live_s"] + 1.0) + 1))
    steady_mask = (windows >= 1) & ~np.isin(windows, list(busy))
    swap_mask = np.isin(windows, list(busy))
    steady, during = res.percentiles(steady_mask), res.percentiles(swap_mask)
    per_window = []
    for w in sorted(set(windows.tolist())):
        mask = windows == w
        if mask.sum() >= 20:
            per_window.append({"window_s": w, "during_swap": w in busy, "n": int(mask.sum()),
                               "p99_ms": round(float(np.percentile(res.latency[mask], 99)) * 1e3, 3)})
    steady_w = [w["p99_ms"] for w in per_window if not w["during_swap"] and w["window_s"] >= 1]
    swap_w = [w["p99_ms"] for w in per_window if w["during_swap"]]
    times = np.array([t - t0 for t, _ in rss])
    values = np.array([v for _, v in rss], dtype=np.float64)
    steady_rss = float(np.median(values[(times >= 1.0) & (times < steady_s)]))
    peak_rss = float(values[times >= steady_s].max())
    return {
        "rate": round(rate, 1), "requests": int(res.latency.size), "non_200": res.non_200,
        "max_send_lag_ms": round(res.max_send_lag * 1e3, 3), "swaps": swaps,
        "steady": {k: round(v, 3) for k, v in steady.items()},
        "during_swaps": {k: round(v, 3) for k, v in during.items()},
        "p99_during_over_steady": round(during["p99"] / steady["p99"], 2),
        "window_p99_ms": {"steady_median": round(float(np.median(steady_w)), 3),
                          "steady_max": round(max(steady_w), 3),
                          "swap_median": round(float(np.median(swap_w)), 3),
                          "swap_max": round(max(swap_w), 3)},
        "windows": per_window,
        "model_mb": round(model_bytes / 2**20, 1),
        "steady_rss_mb": round(steady_rss / 2**20, 1),
        "peak_rss_mb": round(peak_rss / 2**20, 1),
        "peak_over_steady_in_models": round((peak_rss - steady_rss) / model_bytes, 2),
    }


def report(r: dict) -> str:
    w = r["window_p99_ms"]
    return "\n".join([
        f"open-loop load {r['rate']} req/s (100 ads each), {r['requests']} requests, "
        f"non-200: {r['non_200']}; generator's worst send lag {r['max_send_lag_ms']} ms",
        "swaps: " + ", ".join(f"{s['version']} live {s['seconds_to_live']} s after install"
                              for s in r["swaps"]),
        f"p99 steady {r['steady']['p99']:.2f} ms, during swaps {r['during_swaps']['p99']:.2f} ms "
        f"({r['p99_during_over_steady']}x); p50 {r['steady']['p50']:.2f} / "
        f"{r['during_swaps']['p50']:.2f} ms",
        f"p99 of 1-s windows: steady median {w['steady_median']:.2f} (max {w['steady_max']:.2f}) ms, "
        f"during swaps median {w['swap_median']:.2f} (max {w['swap_max']:.2f}) ms",
        f"RSS steady {r['steady_rss_mb']} MB, peak during swaps {r['peak_rss_mb']} MB: "
        f"+{r['peak_over_steady_in_models']}x the model size ({r['model_mb']} MB)"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short phases (under a minute)")
    parser.add_argument("--rate", type=float, default=None,
                        help="requests per second (default: 30%% of the measured maximum)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for seed in range(SWAPS + 1):  # written once, outside the timed part
        cached_version(seed)
    return run_and_report(run, report, args, "swap")


if __name__ == "__main__":
    sys.exit(main())
