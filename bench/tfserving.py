"""The two legs compared: per-ad latency of one model through TF Serving vs the native engine.

    python -m bench.tfserving [--quick] [--batches 1,10,100] [--json PATH]

The demo-size net (512-256-256-256-128-1, 8 context + 8 ad groups; tables 16x smaller than the
demo's, which changes nothing in the MLP) is scored, for each batch size, by:

  (a) the native engine in this process (hash + gather/pool + MLP);
  (b) the TF Serving leg against the test TF Serving server (tests/fakes/tfserving.py) in its own
      processes on loopback (``--server-processes``, default 2, sharing one listening socket the
      way TF Serving's request threads share its port): one :predict request for all ads;
  (c) the same, split into 4 sub-batches sent one after another;
  (d) the same 4 sub-batches sent concurrently over pooled keep-alive connections (the seed's
      optimisation);
  (e) the client's own share of (b): hashing, tensor building and JSON encoding, no network.

The test server computes the MLP in float64 NumPy behind Python's http.server, so (b)-(d) show
the cost of the leg's shape (network, JSON, an extra process) rather than TF Serving's own speed.
The seed's figures were 4800 us per ad through TF Serving and 650 us per ad native.
"""

from __future__ import annotations

import os

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from scoring.engine import Engine  # noqa: E402
from scoring.model.demo import write_demo  # noqa: E402
from scoring.model.package import load_package  # noqa: E402
from scoring.upstream.config import parse_models_config  # noqa: E402
from scoring.upstream.payload import predict_body  # noqa: E402
from scoring.upstream.scorer import TFServingScorer  # noqa: E402

from .engine import RESULTS, SEED_JAVA_US, SEED_TFSERVING_US, request, time_round_robin  # noqa: E402

SPLIT = 4
ROOT = Path(__file__).resolve().parent.parent


def model_dir() -> Path:
    path = RESULTS / "demo-seed0-small"
    if not (path / "checksums.md5").is_file():
        write_demo(path, seed=0, bucket_shift=4)
    return path


def start_server(package_dir: Path, processes: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.tfserving", "--package",
                             str(package_dir), "--name", "demo_tf", "--processes", str(processes)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("READY "):
        stop_server(proc)
        raise SystemExit(f"the test TF Serving server did not start: {line!r}")
    return proc, line.split()[1]


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the server and the workers it forked
    proc.wait()


def scorer(url: str, n: int, parts: int, concurrent: bool) -> TFServingScorer:
    size = max(1, math.ceil(n / parts))
    cfg = parse_models_config({"models": [{
        "name": "demo_tf", "kind": "tfserving", "urls": [url], "deadline_ms": 10_000,
        "sub_batch_size": size, "max_concurrency": parts if concurrent else 1,
        "features": {"context": ["user_id", "age", "gender", "city", "hour", "weekday", "device", "query"],
                     "ad": ["ad_id", "campaign_id", "advertiser_id", "category", "brand",
                            "price_bucket", "position", "creative_type"]}}]})
    return TFServingScorer(cfg.models[0])


def run(args: argparse.Namespace) -> dict:
    path = model_dir()
    engine = Engine(load_package(path))
    proc, url = start_server(path, args.server_processes)
    rng = np.random.default_rng(0)
    budget, rounds = (0.6, 3) if args.quick else (3.0, 5)
    rows = []
    try:
        for n in args.batches:
            ctx, ads = request(rng, engine, n)
            one = scorer(url, n, 1, False)
            serial = scorer(url, n, SPLIT, False)
            conc = scorer(url, n, SPLIT, True)
            np.testing.assert_allclose(conc.score(ctx, ads).scores, engine.score(ctx, ads), atol=1e-5)

            def encode_only(s=one, ctx=ctx, ads=ads):
                predict_body(s._tensors(ctx, ads).slice(0, len(ads)), "row", None)

            fns = {"native engine": lambda: engine.score(ctx, ads),
                   "tfserving, 1 request": lambda: one.score(ctx, ads),
                   f"tfserving, {SPLIT} sub-batches in turn": lambda: serial.score(ctx, ads),
                   f"tfserving, {SPLIT} concurrent sub-batches": lambda: conc.score(ctx, ads),
                   "tfserving client encode only": encode_only}
            if n < SPLIT:
                del fns[f"tfserving, {SPLIT} sub-batches in turn"], fns[f"tfserving, {SPLIT} concurrent sub-batches"]
            us = time_round_robin(fns, n, budget, rounds)
            for s in (one, serial, conc):
                s.close()
            rows.append({"batch": n, "per_ad_us": us})
            print(f"batch {n:4d}: " + ", ".join(f"{k} {v:,.1f} us" for k, v in us.items()), flush=True)
    finally:
        stop_server(proc)
    return {"model": "demo net 512-256-256-256-128-1 (tables / 16)", "split": SPLIT,
            "server_processes": args.server_processes,
            "cores": os.cpu_count(), "seed_per_ad_us": {"tfserving": SEED_TFSERVING_US,
                                                        "custom_java": SEED_JAVA_US},
            "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tfserving", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short timings (under a minute)")
    p.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=None)
    p.add_argument("--json", type=Path, default=RESULTS / "tfserving.json")
    p.add_argument("--server-processes", type=int, default=2,
                   help="processes of the test TF Serving server (its parallelism)")
    args = p.parse_args(argv)
    if args.batches is None:
        args.batches = [1, 100] if args.quick else [1, 10, 100, 300]
    t0 = time.perf_counter()
    result = run(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.json} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
