"""``ctr-model``: write the demo package, inspect or verify a package, convert its tables to a
compact dtype (int8 row-wise, float16)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .demo import write_demo
from .families import FAMILIES, random_family
from .manifest import PackageError
from .package import load_package


def _inspect(path: str) -> dict:
    pkg = load_package(path)
    m = pkg.manifest
    out = _summary(pkg)
    if m.graph is not None:  # a model graph: its blocks with their widths, and the outputs
        out["blocks"] = [{"name": b.name, "op": b.op, "width": m.graph.widths[b.name]}
                         for b in m.graph.blocks]
        out["outputs"] = [{"name": o.name, **({"product": list(o.product)} if o.product else
                                               {"from": o.source, "activation": o.activation}),
                           **({"ignores": list(o.ignores)} if o.ignores else {})}
                          for o in m.graph.outputs]
        out["primary"] = m.graph.primary
    return out


def _summary(pkg) -> dict:
    m = pkg.manifest
    return {
        "path": str(pkg.path), "name": m.name, "version": m.version, "md5": pkg.md5,
        "format_version": m.format_version,
        "input_dim": m.input_dim, "dense_dim": m.dense_dim, "bytes": pkg.nbytes,
        "tables": {name: {"rows": t.rows, "dim": t.dim, "dtype": t.dtype, "bytes": nbytes,
                          "bytes_as_float32": t.rows * t.dim * 4}
                   for (name, nbytes), t in ((item, m.tables[item[0]])
                                             for item in pkg.table_bytes().items())},
        "groups": [{"name": g.name, "side": g.side, "buckets": g.buckets, "dim": g.dim,
                    "pooling": g.pooling, "table": g.table_name,
                    **({"serving_value": g.serving_value} if g.serving_value is not None else {})}
                   for g in m.groups],
        "layers": [{"shape": list(w.shape), "activation": layer.activation}
                   for layer, w in zip(m.layers, pkg.weights)],
    }


def _baseline(args) -> dict:
    from .baseline import (
        RESAMPLES,
        WINDOW,
        compute_baseline,
        read_requests,
        write_baseline,
    )
    from .quantize import generated_requests

    t0 = time.perf_counter()
    pkg = load_package(args.dir)
    if args.requests:
        requests = read_requests(args.requests)
    else:
        requests = [{"context": c, "ads": a}
                    for c, a in generated_requests(pkg, max(1, args.generated), 100, args.seed)]
    base = compute_baseline(pkg, requests, window=args.window or WINDOW,
                            resamples=RESAMPLES if args.resamples is None else args.resamples,
                            seed=args.seed)
    pkg = write_baseline(args.dir, base, requests=requests)
    return {"wrote": str(pkg.path / "health" / "baseline.json"), "md5": pkg.md5,
            "seconds": round(time.perf_counter() - t0, 1), "rows": base["rows"],
            "layers": [{k: v for k, v in layer.items() if k != "neurons"} for layer in base["layers"]],
            "pctr_mean": base["pctr"]["mean"], "expected_auc": base["pctr"]["expected_auc"]}


def _quantize(args) -> dict:
    from .quantize import compare, convert

    t0 = time.perf_counter()
    if args.tables == "float32" and args.mlp == "float32":
        raise PackageError("quantize: nothing to do; give --tables int8|fp16 and/or --mlp bf16")
    out_dir = Path(args.out)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise PackageError(f"quantize: {args.out} exists and is not an empty directory; give a new "
                           "one (a package is never written over another)")
    out = convert(args.src, args.out, tables=args.tables, mlp=args.mlp, version=args.version)
    base, small = load_package(args.src), load_package(out)
    before, after = base.table_bytes(), small.table_bytes()
    report = {"wrote": str(out), "seconds": round(time.perf_counter() - t0, 1),
              "tables": {k: {"bytes_before": before[k], "bytes_after": after[k],
                             "ratio": round(after[k] / before[k], 4)} for k in after},
              "table_bytes_before": sum(before.values()), "table_bytes_after": sum(after.values())}
    report["table_bytes_ratio"] = round(report["table_bytes_after"] / report["table_bytes_before"], 4)
    report["pctr_vs_float32"] = compare(base, small, n_requests=max(1, args.requests))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ctr-model", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    demo = sub.add_parser("demo", help="write the deterministic demo package")
    demo.add_argument("out", help="directory to write (created)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--version", default=None, help="version string (default: seed<N>)")
    demo.add_argument("--name", default=None, help="model name (default: demo, or demo-<family>)")
    demo.add_argument("--family", default="mlp", choices=("mlp",) + FAMILIES,
                      help="mlp: the format 1 MLP (default); wdl, deepfm, dcn, dcn_lowrank, mtl, "
                           "esmm: a format 2 model graph of the seed's families, same groups")
    demo.add_argument("--bucket-shift", type=int, default=0,
                      help="make every table 2^N times smaller (same net; for quick tests)")
    ins = sub.add_parser("inspect", help="validate a package and print what it holds (JSON)")
    ins.add_argument("dir")
    ver = sub.add_parser("verify", help="check checksums and validate; non-zero exit on failure")
    ver.add_argument("dir")
    bl = sub.add_parser("baseline", help="add the health baseline (DeepInsight statistics on "
                        "reference requests) to a package, in place; prints its summary")
    bl.add_argument("dir", help="the package (its checksums.md5 is rewritten)")
    bl.add_argument("--requests", default=None,
                    help="JSONL file of score bodies (default: --generated requests from the manifest)")
    bl.add_argument("--generated", type=int, default=200, help="generated 100-ad requests (default 200)")
    bl.add_argument("--window", type=int, default=None, help="rows per online window (default 20000)")
    bl.add_argument("--resamples", type=int, default=None, help="bootstrap windows (default 200)")
    bl.add_argument("--seed", type=int, default=0)
    qz = sub.add_parser("quantize", help="copy a float32 package with compact tables (format 2) and "
                        "print the bytes saved and the pCTR error against float32")
    qz.add_argument("src", help="the float32 package")
    qz.add_argument("out", help="directory to write (created)")
    qz.add_argument("--tables", choices=("int8", "fp16", "float32"), default="float32",
                    help="int8: int8 row-wise (scale and offset per row); fp16: float16")
    qz.add_argument("--mlp", choices=("bf16", "float32"), default="float32",
                    help="bf16: the MLP in bfloat16 with float32 sums (AVX512-BF16 where the CPU "
                         "has it)")
    qz.add_argument("--version", default=None, help="version of the new package (default: the same)")
    qz.add_argument("--requests", type=int, default=20,
                    help="generated 100-ad requests to measure the pCTR error on (default 20)")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "demo":
            t0 = time.perf_counter()
            if args.family == "mlp":
                path = write_demo(args.out, seed=args.seed, version=args.version,
                                  name=args.name or "demo", bucket_shift=args.bucket_shift)
            else:
                path = random_family(args.out, args.family, seed=args.seed, name=args.name,
                                     version=args.version, bucket_shift=args.bucket_shift)
            print(f"wrote {path} in {time.perf_counter() - t0:.1f}s")
        elif args.cmd == "inspect":
            print(json.dumps(_inspect(args.dir), indent=2))
        elif args.cmd == "baseline":
            print(json.dumps(_baseline(args), indent=2))
        elif args.cmd == "quantize":
            print(json.dumps(_quantize(args), indent=2))
        else:
            pkg = load_package(args.dir)
            print(f"OK {pkg.manifest.name} {pkg.manifest.version} md5 {pkg.md5} "
                  f"({len(pkg.checksums)} files, {pkg.nbytes} bytes of arrays)")
    except PackageError as exc:
        print(f"ctr-model {args.cmd}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
