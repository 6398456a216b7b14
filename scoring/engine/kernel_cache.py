"""Compiled kernels shipped with the service image, so a new pod is ready in seconds.

A fresh container has an empty Numba cache: the first start compiles every kernel (about 45 s
on one core) before the service is ready. Code compiled for the build machine's CPU would not
load on another (Numba keys its cache by CPU name and features). So the image build compiles
the kernels once per **portable x86-64 level**, with Numba told the level's CPU name and exact
feature string (``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES``), into ``<dir>/<level>/``:

- ``x86-64-v4-bf16``: the next one plus AVX512-BF16 (the bf16 MLP's dot products): AMD Zen 4 /
  Zen 5, Intel Xeon from Cooper Lake / Sapphire Rapids on;
- ``x86-64-v4``: AVX-512 (F, BW, CD, DQ, VL), full-width vectors: Intel Xeon (Skylake-SP and
  later);
- ``x86-64-v3``: AVX2 + FMA + BMI2: every x86 server of the last ten years.

At start (``CTR_KERNEL_CACHE=<dir>``, read by ``ctr-serve`` before anything compiles) the best
level this host can run is picked, its files are copied into ``NUMBA_CACHE_DIR`` (a writable
directory; the image's copy stays read-only), and Numba is told that level, so the cached code
loads instead of compiling. A host that runs no shipped level (another architecture, an older
CPU), or an operator who set ``NUMBA_CPU_*``, gets today's behaviour: the kernels compile for
the host (:mod:`scoring.engine.codegen`). A kernel the shipped cache lacks (e.g. a model
structure the build did not warm) compiles on load, as before, and is cached for the next start.

``ctr-kernels build DIR`` writes the directory (each level in a subprocess: the CPU choice is
per process); ``ctr-kernels show [DIR]`` prints what this host would pick.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, MutableMapping, Sequence

ENV = "CTR_KERNEL_CACHE"
_V3 = ("+cmov,+cx8,+fxsr,+mmx,+sse,+sse2,+cx16,+sahf,+popcnt,+sse3,+sse4.1,+sse4.2,+ssse3,"
       "+avx,+avx2,+bmi,+bmi2,+f16c,+fma,+lzcnt,+movbe,+xsave")
# full-width vectors on AVX-512, as scoring.engine.codegen chooses for such hosts
_V4 = _V3 + ",+avx512f,+avx512bw,+avx512cd,+avx512dq,+avx512vl,+evex512,-prefer-256-bit"
# level -> (LLVM CPU name, feature string); best first
LEVELS: dict[str, tuple[str, str]] = {
    "x86-64-v4-bf16": ("x86-64-v4", _V4 + ",+avx512bf16"),  # bf16 dot products (bf16 MLPs)
    "x86-64-v4": ("x86-64-v4", _V4),
    "x86-64-v3": ("x86-64-v3", _V3),
}
_IMPLIED = {"evex512"}  # implied by avx512f; hosts do not list it
MARKER = ".ctr-kernel-level"


@dataclass(frozen=True)
class Selection:
    level: str | None     # the shipped level in use, or None (kernels compile for the host)
    reason: str
    copied: int = 0       # files copied into the cache directory


def runs(level: str, host_features: Mapping[str, bool]) -> bool:
    """Whether a host with ``host_features`` (LLVM names -> present) can run ``level``'s code."""
    need = [f[1:] for f in LEVELS[level][1].split(",") if f.startswith("+")]
    return all(host_features.get(f, False) for f in need if f not in _IMPLIED)


def host_features() -> Mapping[str, bool]:
    import llvmlite.binding as ll

    try:
        return dict(ll.get_host_cpu_features())
    except RuntimeError:  # an architecture LLVM cannot describe: no shipped level fits
        return {}


def select(shipped: str | os.PathLike, environ: MutableMapping[str, str] = os.environ,
           features: Mapping[str, bool] | None = None, *, dry_run: bool = False) -> Selection:
    """Pick the best shipped level this host runs, copy it into ``NUMBA_CACHE_DIR`` and set
    ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES`` in ``environ`` (before Numba is imported: worker
    processes inherit them). ``dry_run``: only say which level would be used."""
    if environ.get("NUMBA_CPU_NAME") or environ.get("NUMBA_CPU_FEATURES"):
        return Selection(None, "NUMBA_CPU_* set by the operator: the shipped kernels are not used")
    root = Path(shipped)
    available = [lv for lv in LEVELS if (root / lv).is_dir()]
    if not available:
        return Selection(None, f"{ENV}={root}: no compiled level there ({', '.join(LEVELS)})")
    features = host_features() if features is None else features
    level = next((lv for lv in available if runs(lv, features)), None)
    if level is None:
        return Selection(None, f"this CPU runs none of the shipped levels {available}: the "
                         "kernels compile for it")
    cache = Path(environ.get("NUMBA_CACHE_DIR") or Path(tempfile.gettempdir()) / "numba-cache")
    if dry_run:
        return Selection(level, f"shipped kernels for {level} (this CPU runs it)")
    try:
        copied = _copy(root / level, cache)
    except OSError as exc:  # no usable cache directory: compile for the host, as without them
        return Selection(None, f"cannot copy the shipped kernels into {cache} "
                         f"({exc.strerror or exc}): the kernels compile for this CPU")
    environ["NUMBA_CACHE_DIR"] = str(cache)
    environ["NUMBA_CPU_NAME"], environ["NUMBA_CPU_FEATURES"] = LEVELS[level]
    if environ is os.environ and "numba.core.config" in sys.modules:
        _retarget()  # this process imported Numba already (nothing compiled yet): tell it now
    return Selection(level, f"shipped kernels for {level} (this CPU runs it), cached in {cache}",
                     copied)


def _retarget() -> None:
    from numba.core import config
    from numba.core.registry import cpu_target

    from . import codegen

    if "_toplevel_target_context" in vars(cpu_target):
        raise RuntimeError("Numba compiled code before the shipped kernels were selected")
    config.reload_config()
    codegen._CHOICE = None
    codegen.apply()


def _copy(src: Path, dest: Path) -> int:
    """Copy the shipped files the cache lacks (a restart finds them there already)."""
    n = 0
    for path in src.rglob("*"):
        if path.is_dir() or path.name == MARKER:
            continue
        target = dest / path.relative_to(src)
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src_file:
                shutil.copyfileobj(src_file, out)
            os.replace(tmp, target)  # whole files only: another process may be reading the cache
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        n += 1
    return n


# -- building ---------------------------------------------------------------------------------


def warm_everything(workdir: Path, only: Sequence[str] = ()) -> list[str]:
    """Load and warm one small model of every structure the engine runs (the demo MLP with
    float32, float16 and int8 tables and bf16 weights, and each model family), which compiles
    and caches their kernels. Returns what was warmed."""
    from ..model.demo import write_demo
    from ..model.families import FAMILIES, random_family
    from ..model.package import load_package
    from ..model.quantize import convert
    from . import make_engine

    done = []
    demo = write_demo(workdir / "demo", version="k", bucket_shift=6, baseline_requests=0)
    make_engine(load_package(demo), warm=True)
    done.append("demo")
    if only:  # a reduced build (tests): the demo alone
        return done
    for tables, mlp in (("float16", "float32"), ("int8", "float32"), ("float32", "bf16")):
        out = workdir / f"demo-{tables}-{mlp}"
        convert(demo, out, tables=tables, mlp=mlp)
        make_engine(load_package(out), warm=True)
        done.append(out.name)
    for family in FAMILIES:
        out = random_family(workdir / family, family, bucket_shift=8, wide_rows=1 << 10)
        make_engine(load_package(out), warm=True)
        done.append(family)
    return done


def build(out: str | os.PathLike, levels: Sequence[str] = tuple(LEVELS), *,
          demo_only: bool = False) -> dict[str, float]:
    """Compile the kernels for each level into ``out/<level>/`` (one subprocess per level);
    ``demo_only``: only the demo MLP's kernels (for tests)."""
    root = Path(out)
    seconds = {}
    host = host_features()
    for level in levels:
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r}; levels: {list(LEVELS)}")
        if not runs(level, host):  # the build warms by running the kernels
            print(f"ctr-kernels: skipping {level}: this machine cannot run its code (build the "
                  "image on a CPU with AVX-512 and BF16 to ship every level)", file=sys.stderr)
            continue
        dest = root / level
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        cpu, target = LEVELS[level]
        env = {**os.environ, "NUMBA_CACHE_DIR": str(dest), "NUMBA_CPU_NAME": cpu,
               "NUMBA_CPU_FEATURES": target}
        env.pop(ENV, None)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "scoring.engine.kernel_cache", "_warm",
                        *(["--demo-only"] if demo_only else [])], env=env, check=True)
        seconds[level] = time.perf_counter() - t0
        (dest / MARKER).write_text(level + "\n")
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ctr-kernels", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="compile the kernels for portable CPU levels into DIR/<level>/")
    b.add_argument("out", metavar="DIR")
    b.add_argument("--levels", default=",".join(LEVELS),
                   help=f"comma-separated, of {list(LEVELS)} (default: all)")
    s = sub.add_parser("show", help="print the level this host would use from DIR")
    s.add_argument("dir", metavar="DIR", nargs="?", default=os.environ.get(ENV))
    w = sub.add_parser("_warm", help=argparse.SUPPRESS)
    w.add_argument("--demo-only", action="store_true")
    args = parser.parse_args(argv)
    if args.cmd == "_warm":
        with tempfile.TemporaryDirectory() as tmp:
            done = warm_everything(Path(tmp), ("demo",) if args.demo_only else ())
            print("warmed:", ", ".join(done), flush=True)
        return 0
    if args.cmd == "build":
        levels = [lv for lv in args.levels.split(",") if lv]
        try:
            seconds = build(args.out, levels)
        except (ValueError, subprocess.CalledProcessError) as exc:
            print(f"ctr-kernels: {exc}", file=sys.stderr)
            return 2
        print(json.dumps({"out": args.out, "seconds": {k: round(v, 1) for k, v in seconds.items()}}))
        return 0
    if not args.dir:
        print(f"ctr-kernels: give DIR or set {ENV}", file=sys.stderr)
        return 2
    sel = select(args.dir, dict(os.environ), None, dry_run=True)
    print(json.dumps({"level": sel.level, "reason": sel.reason,
                      "host_runs": [lv for lv in LEVELS if runs(lv, host_features())]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
