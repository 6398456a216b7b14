"""Hot-swap benchmark: p99 around swaps against steady p99, for both triggers, at two loads.

    python -m bench.swap [--quick] [--loads 0.2,0.5] [--triggers poll,reload] [--json PATH]

The server runs on one core (``taskset -c 0``), this script and its open-loop generator on the
other. wrk measures the maximum throughput first (100-ad demo requests); then, for each trigger
and each load (a share of that maximum), a fixed-rate open-loop load runs while new versions of
the demo model (226 MB of tables each: retrains of it, which the guarded swap, on as in
production, judges and lets through) go live one after another:

* ``poll``: each version is installed the way the syncer installs it (one rename into the
  repository) and the server picks it up at its next poll (``--poll-interval 0.5``);
* ``reload``: the server does not poll (``--poll-interval 3600``); each version is installed, then
  ``POST /v1/models/demo/reload`` asks for it.

Reported per phase: non-200 responses, and p99 of the requests *scheduled* in the windows around
each swap (from the install to one second after the new version went live) against p99 of the
1-s windows with no swap under way (skipping the first second), both from the same run. "noise"
is the same ratio between two halves of the steady windows (even and odd seconds): what the
machine's jitter alone makes of a p99 ratio in this run. Also the server's peak RSS against its
steady RSS and the model size. ``BENCH_SERVER_PYTHONPATH`` runs the server from another checkout
(to compare releases in one run). Not part of the test suite.
"""

from __future__ import annotations

import os

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from scoring.lifecycle.repo import ModelRepo  # noqa: E402
from scoring.model.checksums import format_checksums, parse_checksums  # noqa: E402
from scoring.model.demo import write_demo  # noqa: E402
from scoring.model.package import load_package  # noqa: E402

from .engine import RESULTS, cpu_model  # noqa: E402
from .http import HOST, free_port, make_bodies, run_and_report, start, stop  # noqa: E402
from .loadgen import OpenLoopResult, http_request, open_loop, pin, wrk  # noqa: E402
from .procmem import current_rss  # noqa: E402

SEEDS = (1, 2, 3)      # distinct packages, reused under new version names
ADMIN_TOKEN = "bench-swap"
TARGETS = {0.2: 1.2, 0.5: 1.5}  # p99 around swaps / steady p99, per load


def cached_version(seed: int) -> Path:
    """A retrain of the demo model (seed 0, every weight and embedding moved by 2% noise drawn
    from ``seed``, the output bias then calibrated like the original's: what a daily retrain
    looks like, so the guarded swap lets it through), with its own health baseline; written once
    into bench/results/ and copied from there."""
    path = RESULTS / "swap-cache" / f"retrain{seed}"
    if not (path / "checksums.md5").is_file():
        shutil.rmtree(path, ignore_errors=True)
        write_retrain(path, seed)
    return path


def write_retrain(path: Path, seed: int, noise: float = 0.02) -> Path:
    from scoring.model.demo import center_output
    from scoring.model.export import Group, export_numpy
    from scoring.model.package import load_package
    from scoring.model.quantize import generated_requests

    base = RESULTS / "swap-cache" / "demo-seed0"
    if not (base / "checksums.md5").is_file():
        shutil.rmtree(base, ignore_errors=True)
        write_demo(base, seed=0, version="seed0", baseline_requests=0)
    pkg = load_package(base)
    rng = np.random.default_rng(seed)

    def moved(a):
        a = np.asarray(a, dtype=np.float32)
        return (a * (1 + noise * rng.standard_normal(a.shape, dtype=np.float32))).astype(np.float32)

    groups = [Group(g.name, g.side, moved(t), g.pooling) for g, t in zip(pkg.manifest.groups, pkg.tables)]
    weights, biases = [moved(w) for w in pkg.weights], [moved(b) for b in pkg.biases]
    center_output(groups, weights, biases, np.random.default_rng(0))  # calibrated, as training is
    reqs = [{"context": c, "ads": a} for c, a in generated_requests(pkg, 50, 100, seed)]
    return export_numpy(path, name="demo", version=f"retrain{seed}", groups=groups,
                        weights=weights, biases=biases,
                        extra={"description": f"demo seed 0 retrained ({noise:.0%} noise, seed {seed})"},
                        baseline_requests=reqs)


def stage(repo: ModelRepo, seed: int, version: str) -> Path:
    """A copy of the cached package in the repository's staging area, renamed ``version``
    (manifest and its checksum line rewritten): ready for one rename into place."""
    staged = repo.staging_dir("demo")
    shutil.copytree(cached_version(seed), staged, dirs_exist_ok=True)
    manifest = json.loads((staged / "manifest.json").read_text())
    manifest["version"] = version
    data = json.dumps(manifest, indent=2).encode() + b"\n"
    (staged / "manifest.json").write_bytes(data)
    sums = parse_checksums((staged / "checksums.md5").read_text())
    sums["manifest.json"] = hashlib.md5(data).hexdigest()
    (staged / "checksums.md5").write_text(format_checksums(sums))
    return staged


def server_env() -> dict[str, str]:
    env = {**os.environ, "CTR_ADMIN_TOKEN": ADMIN_TOKEN}
    other = os.environ.get("BENCH_SERVER_PYTHONPATH")
    if other:  # e.g. a checkout of an earlier release, for a before/after in one run
        env["PYTHONPATH"] = other
    return env


def steal_ticks(cpu: int | None) -> int:
    """Time the hypervisor ran something else while ``cpu`` wanted to run (/proc/stat, in
    USER_HZ ticks, 10 ms): machine noise no server can help, reported beside the latencies."""
    name = "cpu" if cpu is None else f"cpu{cpu}"
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            fields = line.split()
            if fields and fields[0] == name:
                return int(fields[8])
    except (OSError, IndexError, ValueError):
        pass
    return 0


class RssSampler(threading.Thread):
    """The server's RSS every 20 ms, and the steal time of its core."""

    def __init__(self, pid: int, cpu: int | None, every: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid, self.cpu, self.every = pid, cpu, every
        self.samples: list[tuple[float, int]] = []
        self.steal: list[tuple[float, int]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.every):
            try:
                now = time.perf_counter()
                self.samples.append((now, current_rss(self.pid)))
                self.steal.append((now, steal_ticks(self.cpu)))
            except OSError:
                return


def phase(url: str, port: int, repo: ModelRepo, reqs: list[bytes], rate: float, trigger: str,
          versions: list[tuple[int, str]], steady_s: float, gap_s: float, server_cpu: int | None,
          pid: int, model_bytes: int) -> dict:
    """One load level with one trigger: steady, then each version installed and made live."""
    staged = [(stage(repo, seed, v), v) for seed, v in versions]  # copied before the load starts
    os.sync()  # ... and written out, so no writeback of these copies runs under the load
    time.sleep(1.0)
    total = steady_s + len(staged) * gap_s + 1.0
    holder: dict[str, OpenLoopResult] = {}
    load = threading.Thread(target=lambda: holder.update(
        r=open_loop(HOST, port, reqs, rate=rate, seconds=total)))
    sampler = RssSampler(pid, server_cpu)
    sampler.start()
    t0 = time.perf_counter() + 0.05  # the generator's schedule starts 50 ms after it is called
    load.start()
    swaps = []
    time.sleep(steady_s)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=url, timeout=120) as client:
        for path, version in staged:
            t_install = time.perf_counter()
            repo.install("demo", path, version)
            if trigger == "reload":  # the answer comes once the version is live (or failed)
                answer = client.post("/v1/models/demo/reload", headers=headers).json()
                if answer.get("version") != version:
                    raise SystemExit(f"reload did not bring {version}: {answer}")
            while (model := client.get("/v1/models/demo").json()).get("version") != version:
                time.sleep(0.1)
                if version in (model.get("held") or {}):
                    raise SystemExit(f"the guarded swap held {version}: {model['held'][version]}")
                if time.perf_counter() - t_install > 120:
                    raise SystemExit(f"{version} never went live; see {RESULTS}/swap-server-*.log")
            t_live = time.perf_counter()
            gate = model.get("gate") or {}
            swaps.append({"version": version, "install_s": t_install - t0, "live_s": t_live - t0,
                          "seconds_to_live": round(t_live - t_install, 2),
                          "gate_seconds": round(gate.get("seconds", 0.0), 3),
                          "gate_rows": (gate.get("stats") or {}).get("rows")})
            time.sleep(max(0.0, t_install + gap_s - time.perf_counter()))
    load.join()
    sampler.halt.set()
    res = holder["r"]
    if os.environ.get("BENCH_SWAP_RAW"):  # every request, for a closer look
        raw = Path(os.environ["BENCH_SWAP_RAW"]) / f"{trigger}-{rate:.0f}.npz"
        np.savez(raw, sent_at=res.sent_at, latency=res.latency, status=res.status,
                 swaps=np.array([[s["install_s"], s["live_s"]] for s in swaps]))
    out = analyse(res, swaps, sampler.samples, sampler.steal, t0, steady_s, model_bytes)
    out.update(trigger=trigger, rate=round(rate, 1))
    return out


def in_process(repo: ModelRepo, bodies: list[bytes], rate: float, n_swaps: int, first: int,
               steady_s: float, gap_s: float, cpu: int | None, worker: bool = True) -> dict:
    """The server's own share, without network or HTTP: the registry (real loader) in this
    process, and 100-ad bodies scored from JSON bytes at ``rate`` on this thread, as the event
    loop would, on one core; latency from each scheduled start. ``worker``: loads run on the
    registry's worker at idle priority (what the service does); else each load runs on a new
    thread at normal priority, as the reload endpoint's thread-pool thread did before."""
    from scoring.lifecycle.registry import Registry
    from scoring.serving.metrics import Metrics

    saved = os.sched_getaffinity(0) if cpu is not None else None
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})  # the registry's worker, started below, inherits it
    reg = Registry(repo, poll_interval=0.5 if worker else 3600.0, metrics=Metrics())
    reg.start()
    try:
        while not reg.ready()[0]:
            time.sleep(0.05)
        staged = [(stage(repo, SEEDS[(first + k) % len(SEEDS)], f"v{first + k}"), f"v{first + k}")
                  for k in range(n_swaps)]
        os.sync()
        gc.collect()
        gc.freeze()  # as the service after a load: this process's own objects out of the GC's way
        period, sent, lat, installs = 1.0 / rate, [], [], []
        t0 = time.perf_counter()
        plan = [t0 + steady_s + k * gap_s for k in range(n_swaps)]
        end = t0 + steady_s + n_swaps * gap_s
        due, i = t0, 0
        while due < end:
            if plan and due >= plan[0]:
                plan.pop(0)
                path, version = staged[len(installs)]
                installs.append(time.perf_counter() - t0)
                repo.install("demo", path, version)
                if not worker:
                    threading.Thread(target=reg.sync, args=("demo",)).start()
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            reg.get("demo").scorer.score_json(bodies[i % len(bodies)], 2000, 256)
            sent.append(due - t0)
            lat.append(time.perf_counter() - due)
            due += period
            i += 1
    finally:
        reg.stop()
        if saved is not None:
            os.sched_setaffinity(0, saved)
    sent_a, lat_a = np.array(sent), np.array(lat)
    around = np.zeros(sent_a.size, dtype=bool)
    for t_install in installs:
        around |= (sent_a >= t_install) & (sent_a < t_install + 2.0)
    steady = ~around & (sent_a >= 1.0)
    q = {name: float(np.percentile(lat_a[m], 99)) * 1e3 for name, m in (("steady", steady), ("around", around))}
    return {"loads_on": "the idle worker" if worker else "a normal-priority thread",
            "rate": rate, "swaps": n_swaps, "p50_ms": round(float(np.median(lat_a[steady])) * 1e3, 3),
            "p99_steady_ms": round(q["steady"], 3), "p99_around_ms": round(q["around"], 3),
            "ratio": round(q["around"] / q["steady"], 2), "max_around_ms": round(float(lat_a[around].max()) * 1e3, 3)}


def run(args: argparse.Namespace) -> dict:
    steady_s, gap_s, n_swaps = (5.0, 3.5, 3) if args.quick else (10.0, 4.0, 8)
    n_swaps = args.swaps or n_swaps
    loads = [float(x) for x in args.loads.split(",")]
    triggers = [x for x in args.triggers.split(",") if x and x != "none"]
    root = RESULTS / "swap-repo"
    shutil.rmtree(root, ignore_errors=True)
    repo = ModelRepo(root)
    first = stage(repo, SEEDS[0], "v0")
    repo.install("demo", first, "v0")
    model_bytes = load_package(repo.path("demo", "v0"), verify=False, finite=False).nbytes
    _, bodies = make_bodies(repo.path("demo", "v0"))
    server_cpu, client_cpu = (0, 1) if (os.cpu_count() or 1) > 1 else (None, None)
    phases, maximum, counter = [], None, 1
    inproc = []
    for worker in ([] if args.no_in_process else [False, True, False, True]):
        inproc.append(in_process(repo, bodies, 150.0, n_swaps, counter, steady_s, gap_s,
                                 server_cpu, worker=worker))
        counter += n_swaps
        print(f"  in process, loads on {inproc[-1]['loads_on']}: p99 {inproc[-1]['p99_steady_ms']:.2f} "
              f"-> {inproc[-1]['p99_around_ms']:.2f} ms ({inproc[-1]['ratio']}x)", flush=True)
    pin(client_cpu)
    for trigger in triggers:
        port = free_port()
        poll = "0.5" if trigger == "poll" else "3600"
        proc = start([sys.executable, "-m", "scoring", "--model-repo", str(root), "--port", str(port),
                      "--poll-interval", poll, "--keep-versions", "3", "--log-level", "info"],
                     port, "/readyz", server_cpu, RESULTS / f"swap-server-{trigger}.log",
                     env=server_env())
        try:
            url = f"http://{HOST}:{port}"
            reqs = [http_request(HOST, port, "/v1/score", b) for b in bodies]
            wrk(url, "/v1/score", bodies, seconds=2, cpu=client_cpu)  # warm
            if maximum is None:
                maximum = wrk(url, "/v1/score", bodies, seconds=4 if args.quick else 6,
                              cpu=client_cpu).requests_per_s
            for share in loads:
                versions = []
                for _ in range(n_swaps):
                    versions.append((SEEDS[counter % len(SEEDS)], f"v{counter}"))
                    counter += 1
                result = phase(url, port, repo, reqs, share * maximum, trigger, versions, steady_s,
                               gap_s, server_cpu, proc.pid, model_bytes)
                result["load"] = share
                phases.append(result)
                print(f"  {trigger} at {share:.0%}: p99 {result['steady']['p99']:.2f} -> "
                      f"{result['around_swaps']['p99']:.2f} ms ({result['ratio']}x), "
                      f"non-200 {result['non_200']}", flush=True)
        finally:
            stop(proc)
    return {"cpu": cpu_model(), "python": platform.python_version(),
            "max_rps": round(maximum, 1) if maximum else None,
            "model_mb": round(model_bytes / 2**20, 1), "phases": phases, "in_process": inproc}


def analyse(res: OpenLoopResult, swaps: list[dict], rss: list[tuple[float, int]],
            steal: list[tuple[float, int]], t0: float, steady_s: float, model_bytes: int) -> dict:
    """Around a swap = 1-s windows from its install to one second after it went live; steady =
    every other 1-s window (skipping the first second). p99 pooled over each set's requests."""
    windows = np.floor(res.sent_at).astype(int)
    busy: set[int] = set()
    for s in swaps:
        busy.update(range(int(s["install_s"]), int(s["live_s"] + 1.0) + 1))
    steady_mask = (windows >= 1) & ~np.isin(windows, list(busy))
    swap_mask = np.isin(windows, list(busy))
    steady, during = res.percentiles(steady_mask), res.percentiles(swap_mask)
    # what noise alone does to such a ratio: steady windows split in two (even / odd seconds)
    even = res.percentiles(steady_mask & (windows % 2 == 0))["p99"]
    odd = res.percentiles(steady_mask & (windows % 2 == 1))["p99"]
    st_t = np.array([s - t0 for s, _ in steal])
    st_v = np.array([v for _, v in steal])
    per_window = []
    for w in sorted(set(windows.tolist())):
        mask = windows == w
        inside = st_v[(st_t >= w) & (st_t < w + 1)]
        if mask.sum() >= 20:
            per_window.append({"window_s": w, "around_swap": w in busy, "n": int(mask.sum()),
                               "p99_ms": round(float(np.percentile(res.latency[mask], 99)) * 1e3, 3),
                               "steal_ms": int(10 * (inside.max() - inside.min())) if inside.size else 0})
    med = {flag: float(np.median([x["p99_ms"] for x in per_window
                                  if x["around_swap"] == flag and x["window_s"] >= 1]))
           for flag in (False, True)}
    steal_ms = {flag: int(sum(x["steal_ms"] for x in per_window if x["around_swap"] == flag))
                for flag in (False, True)}
    times = np.array([t - t0 for t, _ in rss])
    values = np.array([v for _, v in rss], dtype=np.float64)
    steady_rss = float(np.median(values[(times >= 1.0) & (times < steady_s)]))
    peak_rss = float(values[times >= steady_s].max())
    return {
        "requests": int(res.latency.size), "non_200": res.non_200,
        "max_send_lag_ms": round(res.max_send_lag * 1e3, 3), "swaps": swaps,
        "steady": {k: round(v, 3) for k, v in steady.items()},
        "around_swaps": {k: round(v, 3) for k, v in during.items()},
        "ratio": round(during["p99"] / steady["p99"], 2),
        "noise_ratio": round(max(even, odd) / min(even, odd), 2),
        "window_median_ratio": round(med[True] / med[False], 2),
        "steal_ms": {"steady": steal_ms[False], "around_swaps": steal_ms[True]},
        "windows": per_window,
        "steady_rss_mb": round(steady_rss / 2**20, 1),
        "peak_rss_mb": round(peak_rss / 2**20, 1),
        "peak_over_steady_in_models": round((peak_rss - steady_rss) / model_bytes, 2),
    }


def report(r: dict) -> str:
    lines = [f"CPU: {r['cpu']}; maximum {r['max_rps']} req/s (wrk, 100-ad bodies, one core); "
             f"model {r['model_mb']} MB",
             "| trigger | load | req/s | requests | non-200 | install -> live (s) | p99 steady | "
             "p99 around swaps | ratio | target | noise | window-median ratio | steal steady / "
             "around | RSS steady -> peak |",
             "|---|---:|---:|---:|---:|---|---:|---:|---:|---|---:|---:|---|---|"]
    for p in r["phases"]:
        target = TARGETS.get(p["load"])
        verdict = "" if target is None else f"<= {target}x: {'met' if p['ratio'] <= target else 'MISSED'}"
        lives = ", ".join(f"{s['seconds_to_live']} (gate {s.get('gate_seconds', 0):.2f})"
                          for s in p["swaps"])
        lines.append(f"| {p['trigger']} | {p['load']:.0%} | {p['rate']} | {p['requests']} | "
                     f"{p['non_200']} | {lives} | {p['steady']['p99']:.2f} ms | "
                     f"{p['around_swaps']['p99']:.2f} ms | {p['ratio']}x | {verdict} | "
                     f"{p['noise_ratio']}x | {p['window_median_ratio']}x | "
                     f"{p['steal_ms']['steady']} / {p['steal_ms']['around_swaps']} ms | "
                     f"{p['steady_rss_mb']} -> {p['peak_rss_mb']} MB "
                     f"(+{p['peak_over_steady_in_models']}x model) |")
    if r.get("in_process"):
        lines += ["", "In process (registry + engine, no HTTP): 100-ad bodies scored from JSON at 150/s on "
                  "the core the loads run on, alternating where the loads run:",
                  "| loads run on | swaps | p50 | p99 steady | p99 around swaps | ratio | worst around |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for ip in r["in_process"]:
            lines.append(f"| {ip['loads_on']} | {ip['swaps']} | {ip['p50_ms']:.2f} ms | "
                         f"{ip['p99_steady_ms']:.2f} ms | {ip['p99_around_ms']:.2f} ms | {ip['ratio']}x | "
                         f"{ip['max_around_ms']:.2f} ms |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="three swaps per phase, short phases")
    parser.add_argument("--loads", default="0.2,0.5", help="shares of the maximum (default 0.2,0.5)")
    parser.add_argument("--triggers", default="poll,reload",
                        help="poll, reload, both, or none (only the in-process measurement)")
    parser.add_argument("--swaps", type=int, default=0, help="swaps per phase (default 8; 3 quick)")
    parser.add_argument("--no-in-process", action="store_true",
                        help="skip the in-process measurement (registry + engine without HTTP)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for seed in SEEDS:  # written once, outside the timed part
        cached_version(seed)
    return run_and_report(run, report, args, "swap")


if __name__ == "__main__":
    sys.exit(main())
