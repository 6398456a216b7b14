"""Explain benchmark: the exact attributions' cost per ad against the score path, one thread.

    python -m bench.explain [--quick] [--json PATH]

On the demo-size net (512-256-256-256-128-1, 8 context + 8 ad groups) it times, round-robin so
machine noise hits every contender alike, per ad at batch 1, 10 and 100:

  (a) score:   ``Engine.score_encoded`` (pooling + MLP from hashed ids: the score path's compute)
  (b) explain: ``Explainer.explain_encoded`` (pooling + forward keeping every layer + backward
               through the ReLU masks + per-group sums)
  (c) explain + JSON: (b) plus building and encoding the answer, as the endpoint does
  (d) from dicts: ``Engine.score`` and ``Engine.explain`` (hashing included)
  (e) a peer: torch autograd (1 thread) on the same net given the pooled input, forward and
      ``d logit / d x`` for the batch: what a team would write without a backward kernel

Target (issue #11): explain <= 3x the score path's time per ad, (b) / (a) at every batch.
"""

from __future__ import annotations

import os

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import orjson  # noqa: E402

from scoring.engine import Engine, instrument  # noqa: E402
from scoring.engine.config import CODEGEN  # noqa: E402
from scoring.model.package import load_package  # noqa: E402

from .engine import RESULTS, cpu_model, demo_model, request, time_round_robin  # noqa: E402

BATCHES = (1, 10, 100)
TARGET = 3.0


def torch_peer(engine: Engine, batch):
    """Forward and input gradient with torch autograd on the engine's own weights."""
    import torch

    torch.set_num_threads(1)
    w_ctx = torch.from_numpy(np.ascontiguousarray(engine.w_ctx))
    w_ad = torch.from_numpy(np.ascontiguousarray(engine.w_ad))
    b0 = torch.from_numpy(engine.b0)
    rest = [(torch.from_numpy(engine.params[wo:wo + k * n].reshape(k, n).copy()),
             torch.from_numpy(engine.params[bo:bo + n].copy()))
            for wo, k, n, bo, _ in engine.layers.tolist()]
    x_ctx, x_ad = instrument.pooled_inputs(engine, batch)
    xc = torch.from_numpy(x_ctx.copy())
    xa = torch.from_numpy(x_ad.copy())

    def run():
        c = xc.clone().requires_grad_(True)
        a = xa.clone().requires_grad_(True)
        h = torch.relu(a @ w_ad + (c @ w_ctx + b0))
        for i, (w, b) in enumerate(rest):
            h = h @ w + b
            if i < len(rest) - 1:
                h = torch.relu(h)
        g_a, g_c = torch.autograd.grad(h.sum(), (a, c), retain_graph=False)
        return g_a, g_c
    return run


def run(args: argparse.Namespace) -> dict:
    engine = Engine(load_package(demo_model(None)))
    rng = np.random.default_rng(0)
    rows = []
    budget = 1.0 if args.quick else 4.0
    rounds = 5 if args.quick else 9
    for n in BATCHES:
        ctx, ads = request(rng, engine, n)
        batch = engine.layout.encode(ctx, ads)
        ex = engine.explainer
        fns = {
            "score": lambda: engine.score_encoded(batch),
            "explain": lambda: ex.explain_encoded(batch),
            "explain_json": lambda: orjson.dumps({"ads": ex.explain_encoded(batch).to_json()}),
            "score_dicts": lambda: engine.score(ctx, ads),
            "explain_dicts": lambda: engine.explain(ctx, ads),
            "torch_autograd": torch_peer(engine, batch),
        }
        t = time_round_robin(fns, n, budget, rounds)
        t["batch"] = n
        t["ratio"] = t["explain"] / t["score"]
        t["ratio_json"] = t["explain_json"] / t["score"]
        t["ratio_dicts"] = t["explain_dicts"] / t["score_dicts"]
        t["vs_torch"] = t["explain"] / t["torch_autograd"]
        rows.append(t)
        print(f"{n:>6} {t['score']:>8.2f} {t['explain']:>8.2f} {t['explain_json']:>9.2f} "
              f"{t['score_dicts']:>8.2f} {t['explain_dicts']:>9.2f} {t['torch_autograd']:>8.2f} | "
              f"{t['ratio']:>6.2f} {t['ratio_json']:>6.2f} {t['ratio_dicts']:>6.2f} "
              f"{t['vs_torch']:>6.2f}", flush=True)
    worst = max(rows, key=lambda r: r["ratio"])
    met = worst["ratio"] <= TARGET
    line = (f"explain <= {TARGET:g}x the score path per ad at every batch: worst {worst['ratio']:.2f}x "
            f"at batch {worst['batch']}: {'met' if met else 'MISSED'}")
    print(line)
    return {"cpu": cpu_model(), "codegen": CODEGEN.describe(), "rows": rows, "target": line,
            "met": met}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.explain", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short timings (about 30 s)")
    p.add_argument("--json", type=Path, default=RESULTS / "explain.json")
    args = p.parse_args(argv)
    print(f"CPU: {cpu_model()}; code generation: {CODEGEN.describe()}", flush=True)
    print(f"{'batch':>6} {'score':>8} {'explain':>8} {'+json':>9} {'score()':>8} {'explain()':>9} "
          f"{'torch':>8} | {'x':>6} {'x+json':>6} {'x dict':>6} {'/torch':>6}   (us per ad)",
          flush=True)
    result = run(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
