"""HTTP benchmark: ``ctr-serve`` vs plain FastAPI + ONNX Runtime services on the demo model.

    python -m bench.http [--quick] [--json PATH] [--no-pydantic]

The peers (``bench/baseline_service.py``): the lean one a performance-minded team would write
(``orjson.loads`` on the body, vectorised NumPy gathers, ONNX Runtime with one thread, orjson
response), which the targets are stated against, and the same with pydantic request models as a
second line.

Each server runs on one core (``taskset -c 0``); the load generators run on the other. Requests
carry 100 ads of the demo model (8 context + 8 ad groups, 1-3 string values each), cycling
through 64 prepared bodies. For each service: the maximum throughput (wrk, closed loop, 8
connections), then latency percentiles at 25, 50 and 75 % of that maximum from the open-loop
generator (``bench/loadgen.py``: fixed schedule, latency from the scheduled start). The scores
of both services are first checked against the NumPy reference. Not part of the test suite.
"""

from __future__ import annotations

import os

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from scoring.engine.features import FeatureLayout  # noqa: E402
from scoring.lifecycle.repo import ModelRepo  # noqa: E402
from scoring.model.demo import write_demo  # noqa: E402
from scoring.model.package import load_package  # noqa: E402
from scoring.model.reference import reference_scores  # noqa: E402

from .engine import RESULTS, cpu_model, request  # noqa: E402
from .loadgen import calibrate, http_request, open_loop, pin, wrk  # noqa: E402
from .procmem import current_rss  # noqa: E402

HOST = "127.0.0.1"
N_ADS = 100
N_BODIES = 64
FRACTIONS = (0.25, 0.5, 0.75)


def demo_repo(root: Path, version: str = "seed0", seed: int = 0) -> Path:
    """A repository holding the demo model (written once, reused)."""
    repo = ModelRepo(root)
    if not (repo.path("demo", version) / "checksums.md5").is_file():
        staged = repo.staging_dir("demo")
        write_demo(staged, seed=seed, version=version)
        repo.install("demo", staged, version)
    return repo.path("demo", version)


def make_bodies(package_dir: Path, n: int = N_BODIES, n_ads: int = N_ADS,
                seed: int = 1) -> tuple[list[dict], list[bytes]]:
    pkg = load_package(package_dir, verify=False, finite=False)
    layout = SimpleNamespace(layout=FeatureLayout(pkg.manifest.groups, pkg.manifest.dense_dim))
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        ctx, ads = request(rng, layout, n_ads)
        docs.append({"request_id": f"b{i}", "context": ctx, "ads": ads})
    return docs, [json.dumps(d, separators=(",", ":")).encode() for d in docs]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start(cmd: list[str], port: int, ready: str, cpu: int | None, log: Path,
          timeout: float = 180, env: dict[str, str] | None = None) -> subprocess.Popen:
    if cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu)] + cmd
    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{cmd} exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://{HOST}:{port}{ready}", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{cmd} not ready after {timeout}s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def check_scores(port: int, docs: list[dict], package_dir: Path) -> float:
    """Largest |score - reference| over a few bodies; exits if a service is wrong."""
    pkg = load_package(package_dir, verify=False, finite=False)
    worst = 0.0
    for doc in docs[:3]:
        r = httpx.post(f"http://{HOST}:{port}/v1/score", json=doc, timeout=30)
        r.raise_for_status()
        want = reference_scores(pkg, doc["context"], doc["ads"])
        worst = max(worst, float(np.abs(np.asarray(r.json()["scores"]) - want).max()))
    if worst > 1e-4:
        raise SystemExit(f"service on port {port} disagrees with the reference by {worst}")
    return worst


def server_histogram(port: int) -> dict[float, float] | None:
    """``ctr_request_seconds`` buckets (le -> count) from /metrics; None for the baseline."""
    text = httpx.get(f"http://{HOST}:{port}/metrics", timeout=10).text if port else ""
    buckets = {}
    for line in text.splitlines():
        if line.startswith("ctr_request_seconds_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float(le)] = buckets.get(float(le), 0.0) + float(line.rsplit(" ", 1)[1])
    return buckets or None


def histogram_quantiles(before: dict[float, float], after: dict[float, float]) -> dict[str, float]:
    """p50/p90/p99 (ms, upper bucket bounds) of what the server timed between two scrapes."""
    les = sorted(after)
    counts = [after[le] - before.get(le, 0.0) for le in les]
    total = counts[-1]
    out = {}
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        le = next(le for le, c in zip(les, counts) if c >= q * total)
        out[name] = round(le * 1e3, 3)
    return out


def measure(port: int, bodies: list[bytes], *, max_seconds: float, rate_seconds: float,
            client_cpu: int | None, ours: bool) -> dict:
    url = f"http://{HOST}:{port}"
    wrk(url, "/v1/score", bodies, seconds=2, cpu=client_cpu)  # warm caches and the allocator
    peak = wrk(url, "/v1/score", bodies, seconds=max_seconds, cpu=client_cpu)
    out = {"max_rps": peak.requests_per_s, "max_ads_per_s": peak.requests_per_s * N_ADS,
           "max_latency_ms": peak.latency_ms, "max_non_2xx": peak.non_2xx + peak.errors,
           "at": {}}
    reqs = [http_request(HOST, port, "/v1/score", b) for b in bodies]
    for frac in FRACTIONS:
        rate = max(1.0, peak.requests_per_s * frac)
        before = server_histogram(port) if ours else None
        res = open_loop(HOST, port, reqs, rate=rate, seconds=rate_seconds)
        at = out["at"][f"{int(frac * 100)}%"] = {
            "rate": round(rate, 1), "achieved": round(res.achieved, 1), "non_200": res.non_200,
            "max_send_lag_ms": round(res.max_send_lag * 1e3, 3), "connections": res.connections,
            **{k: round(v, 3) for k, v in res.percentiles().items()}}
        if before is not None:  # the server's own timing of the same requests (no network)
            at["server_side_ms"] = histogram_quantiles(before, server_histogram(port))
    return out


def run(args: argparse.Namespace) -> dict:
    quick = args.quick
    max_s, rate_s = (3, 3) if quick else (10, 10)
    package_dir = demo_repo(RESULTS / "http-repo")
    docs, bodies = make_bodies(package_dir)
    server_cpu, client_cpu = (0, 1) if (os.cpu_count() or 1) > 1 else (None, None)
    logs = RESULTS
    result: dict = {"n_ads": N_ADS, "body_bytes": int(np.mean([len(b) for b in bodies])),
                    "quick": quick, "cpus": os.cpu_count()}

    port = free_port()
    ours = start([sys.executable, "-m", "scoring", "--model-repo", str(package_dir.parents[1]),
                  "--port", str(port), "--log-level", "warning"], port, "/readyz", server_cpu,
                 logs / "http-ours.log")
    try:
        pin(client_cpu)
        result["ours_max_abs_error"] = check_scores(port, docs, package_dir)
        result["generator_floor_ms"] = {k: round(v, 3) for k, v in calibrate(HOST, port).items()}
        result["ours"] = measure(port, bodies, max_seconds=max_s, rate_seconds=rate_s,
                                 client_cpu=client_cpu, ours=True)
        result["ours"]["rss_mb"] = current_rss(ours.pid) >> 20
    finally:
        stop(ours)

    if args.granian:
        result["granian"] = granian_max(package_dir, bodies, max_s, server_cpu, client_cpu)
    for key, decode in (("baseline", "lean"), ("baseline_pydantic", "pydantic")):
        if decode == "pydantic" and args.no_pydantic:
            continue
        port = free_port()
        base = start([sys.executable, "-m", "bench.baseline_service", "--package", str(package_dir),
                      "--port", str(port), "--decode", decode], port, "/healthz", server_cpu,
                     logs / f"http-{key}.log")
        try:
            result[f"{key}_max_abs_error"] = check_scores(port, docs, package_dir)
            result[key] = measure(port, bodies, max_seconds=max_s, rate_seconds=rate_s,
                                  client_cpu=client_cpu, ours=False)
            result[key]["rss_mb"] = current_rss(base.pid) >> 20
        finally:
            stop(base)
    o, b = result["ours"], result["baseline"]
    result["ratios"] = {
        "throughput": round(o["max_rps"] / b["max_rps"], 2),
        **{f"p99_at_{k}": round(b["at"][k]["p99"] / o["at"][k]["p99"], 2) for k in o["at"]},
    }
    if "baseline_pydantic" in result:
        result["ratios"]["throughput_vs_pydantic"] = round(
            o["max_rps"] / result["baseline_pydantic"]["max_rps"], 2)
    result["targets"] = targets(result)
    result["cpu"] = cpu_model()
    return result


def granian_max(package_dir: Path, bodies: list[bytes], seconds: float, server_cpu, client_cpu) -> dict:
    """The same app under granian's ASGI server (Rust HTTP, uvloop): the alternative that keeps
    the ASGI interface. Maximum throughput only (wrk)."""
    if shutil.which("granian") is None:
        raise SystemExit("--granian: pip install granian")
    port = free_port()
    env = dict(os.environ, CTR_MODEL_REPO=str(package_dir.parents[1]), CTR_LOG_LEVEL="warning")
    proc = start(["granian", "--interface", "asgi", "--factory", "--loop", "uvloop", "--no-ws",
                  "--port", str(port), "scoring.serving.wiring:app_factory"], port, "/readyz",
                 server_cpu, RESULTS / "http-granian.log", env=env)
    try:
        url = f"http://{HOST}:{port}"
        wrk(url, "/v1/score", bodies, seconds=2, cpu=client_cpu)
        peak = wrk(url, "/v1/score", bodies, seconds=seconds, cpu=client_cpu)
        return {"max_rps": peak.requests_per_s, "max_latency_ms": peak.latency_ms}
    finally:
        stop(proc)


def targets(r: dict) -> dict:
    """Issue #9's HTTP targets, one core, 100-ad bodies, same run."""
    o = r["ours"]
    p99 = o["at"]["50%"]["p99"]
    rows = [(r["ratios"]["throughput"] >= 3.0,
             f">= 3x the lean baseline's max throughput (moonshot 5x): {r['ratios']['throughput']}x"),
            (o["max_rps"] >= 1400, f">= 1,400 requests/s: {o['max_rps']:.0f}"),
            (p99 <= 2.0, f"p99 <= 2 ms at 50% of the maximum: {p99:.2f} ms")]
    return {"all_met": all(m for m, _ in rows),
            "lines": [f"{text}: {'met' if met else 'MISSED'}" for met, text in rows]}


def report(r: dict) -> str:
    lines = [f"CPU: {r['cpu']}", f"100-ad requests ({r['body_bytes']} bytes), server on 1 core, generator on another; "
             f"open-loop generator floor (GET /healthz): p50 {r['generator_floor_ms'].get('p50', 0):.3f} ms, "
             f"p99 {r['generator_floor_ms'].get('p99', 0):.3f} ms", "",
             "| service | max req/s | max ads/s | load | rate | p50 ms | p90 ms | p99 ms | p99.9 ms | non-200 |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    labels = {"ours": "ctr-serve", "baseline": "FastAPI + ONNX Runtime, lean (orjson)",
              "baseline_pydantic": "FastAPI + ONNX Runtime, pydantic models"}
    for name in (n for n in labels if n in r):
        s = r[name]
        label = labels[name]
        for i, (frac, a) in enumerate(s["at"].items()):
            head = (f"| {label} | {s['max_rps']:.0f} | {s['max_ads_per_s']:.0f} |" if i == 0
                    else "| | | |")
            lines.append(f"{head} {frac} | {a['achieved']:.0f} | {a['p50']:.2f} | {a['p90']:.2f} | "
                         f"{a['p99']:.2f} | {a['p99.9']:.2f} | {a['non_200']} |")
    lines += ["", "ctr-serve's own timing (ctr_request_seconds, body read to response built; "
              "bucket upper bounds): " + "; ".join(
                  f"{k}: p50 {a['server_side_ms']['p50']} / p90 {a['server_side_ms']['p90']} / "
                  f"p99 {a['server_side_ms']['p99']} ms" for k, a in r["ours"]["at"].items())]
    lines += ["", f"ratios (ours / lean baseline): throughput {r['ratios']['throughput']}x; p99 "
              + ", ".join(f"{k.removeprefix('p99_at_')}: {v}x lower" for k, v in r["ratios"].items()
                          if k.startswith("p99"))]
    if "granian" in r:
        lines.append(f"ctr-serve's app under granian (ASGI): max {r['granian']['max_rps']:.0f} req/s "
                     f"against {r['ours']['max_rps']:.0f} under uvicorn + httptools")
    if "throughput_vs_pydantic" in r["ratios"]:
        lines.append(f"throughput vs the pydantic baseline: {r['ratios']['throughput_vs_pydantic']}x")
    lines += [""] + r["targets"]["lines"]
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    """Max throughput per service, and p50/p99 against offered load."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"ours": "ctr-serve", "baseline": "FastAPI+ORT lean",
              "baseline_pydantic": "FastAPI+ORT pydantic"}
    names = [n for n in labels if n in r]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    ax1.bar([labels[n] for n in names], [r[n]["max_rps"] for n in names],
            color=["tab:blue", "tab:orange", "tab:gray"][:len(names)])
    ax1.axhline(1400, color="black", linestyle=":", label="target 1,400 req/s")
    ax1.set_ylabel("max requests/s (100 ads, one core)")
    ax1.legend(fontsize=8)
    for n in names:
        at = r[n]["at"]
        rates = [a["achieved"] for a in at.values()]
        for q, style in (("p50", "--"), ("p99", "-")):
            ax2.plot(rates, [a[q] for a in at.values()], style, marker="o", label=f"{labels[n]} {q}")
    ax2.axhline(2.0, color="black", linestyle=":", label="p99 target at 50%: 2 ms")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("offered load (requests/s, open loop)")
    ax2.set_ylabel("latency (ms)")
    ax2.legend(fontsize=7)
    fig.suptitle(f"bench.http on {r.get('cpu', '?')}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3-s phases (under a minute)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--no-pydantic", action="store_true", help="skip the pydantic baseline")
    parser.add_argument("--granian", action="store_true",
                        help="also the maximum of ctr-serve's app under granian (pip install granian)")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    return run_and_report(run, report, args, "http", plot_fn=plot)


def run_and_report(run_fn, report_fn, args: argparse.Namespace, name: str, plot_fn=None) -> int:
    """Time ``run_fn(args)``, print ``report_fn`` of its result and write it as JSON."""
    t0 = time.perf_counter()
    result = run_fn(args)
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    print(report_fn(result))
    path = args.json or RESULTS / (f"{name}-quick.json" if args.quick else f"{name}.json")
    path.write_text(json.dumps(result, indent=2))
    print(f"(wall time {result['wall_seconds']} s) figures: {path}")
    if plot_fn is not None:
        png = path.with_suffix(".png")
        plot_fn(result, png)
        print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
