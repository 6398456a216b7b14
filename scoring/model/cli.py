"""``ctr-model``: write the demo package, inspect or verify a package."""

from __future__ import annotations

import argparse
import json
import sys
import time

from .demo import write_demo
from .manifest import PackageError
from .package import load_package


def _inspect(path: str) -> dict:
    pkg = load_package(path)
    m = pkg.manifest
    return {
        "path": str(pkg.path), "name": m.name, "version": m.version, "md5": pkg.md5,
        "input_dim": m.input_dim, "dense_dim": m.dense_dim, "bytes": pkg.nbytes,
        "groups": [{"name": g.name, "side": g.side, "buckets": g.buckets, "dim": g.dim,
                    "pooling": g.pooling} for g in m.groups],
        "layers": [{"shape": list(w.shape), "activation": layer.activation}
                   for layer, w in zip(m.layers, pkg.weights)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ctr-model", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    demo = sub.add_parser("demo", help="write the deterministic demo package")
    demo.add_argument("out", help="directory to write (created)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--version", default=None, help="version string (default: seed<N>)")
    demo.add_argument("--name", default="demo")
    demo.add_argument("--bucket-shift", type=int, default=0,
                      help="make every table 2^N times smaller (same net; for quick tests)")
    ins = sub.add_parser("inspect", help="validate a package and print what it holds (JSON)")
    ins.add_argument("dir")
    ver = sub.add_parser("verify", help="check checksums and validate; non-zero exit on failure")
    ver.add_argument("dir")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "demo":
            t0 = time.perf_counter()
            path = write_demo(args.out, seed=args.seed, version=args.version, name=args.name,
                              bucket_shift=args.bucket_shift)
            print(f"wrote {path} in {time.perf_counter() - t0:.1f}s")
        elif args.cmd == "inspect":
            print(json.dumps(_inspect(args.dir), indent=2))
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
