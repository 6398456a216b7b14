"""Memory of ``ctr-serve --workers N`` on the demo model: the tables are in memory once.

    python -m bench.workers [--workers N]

Starts the service with N workers on the demo model (228 MB of tables), sends requests on new
connections until every worker has answered, and reads each worker's RSS and PSS from
/proc/<pid>/smaps, in total and for the mappings of the package's files. RSS counts every page a
worker maps; PSS divides shared pages among the processes mapping them, so the sum of PSS is
what the workers really cost together. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import sys

import httpx

from .engine import RESULTS
from .http import HOST, demo_repo, free_port, make_bodies, start, stop
from .procmem import memory, uvicorn_workers, wait_ready_everywhere


def run(n_workers: int) -> dict:
    package_dir = demo_repo(RESULTS / "http-repo")
    _, bodies = make_bodies(package_dir, n=4)
    port = free_port()
    proc = start([sys.executable, "-m", "scoring", "--model-repo", str(package_dir.parents[1]),
                  "--port", str(port), "--workers", str(n_workers), "--log-level", "warning"],
                 port, "/healthz", None, RESULTS / "workers-server.log")
    try:
        if not wait_ready_everywhere(f"http://{HOST}:{port}", 5 * n_workers, 120):
            raise SystemExit(f"workers not ready; see {RESULTS / 'workers-server.log'}")
        for i in range(20 * n_workers):
            httpx.post(f"http://{HOST}:{port}/v1/score", content=bodies[i % len(bodies)],
                       headers={"content-type": "application/json"}, timeout=30).raise_for_status()
        workers = uvicorn_workers(proc.pid)
        mems = {pid: memory(pid, package_dir) for pid in workers}
    finally:
        stop(proc)
    mb = 1 / 2**20
    return {
        "workers": n_workers,
        "per_worker": [{"pid": pid, "rss_mb": round(m.rss * mb, 1), "pss_mb": round(m.pss * mb, 1),
                        "tables_rss_mb": round(m.file_rss * mb, 1),
                        "tables_pss_mb": round(m.file_pss * mb, 1)} for pid, m in mems.items()],
        "sum_rss_mb": round(sum(m.rss for m in mems.values()) * mb, 1),
        "sum_pss_mb": round(sum(m.pss for m in mems.values()) * mb, 1),
        "sum_tables_rss_mb": round(sum(m.file_rss for m in mems.values()) * mb, 1),
        "sum_tables_pss_mb": round(sum(m.file_pss for m in mems.values()) * mb, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    r = run(args.workers)
    print("| worker | RSS MB | PSS MB | tables RSS MB | tables PSS MB |\n|---|---:|---:|---:|---:|")
    for w in r["per_worker"]:
        print(f"| {w['pid']} | {w['rss_mb']} | {w['pss_mb']} | {w['tables_rss_mb']} | {w['tables_pss_mb']} |")
    print(f"| sum | {r['sum_rss_mb']} | {r['sum_pss_mb']} | {r['sum_tables_rss_mb']} | "
          f"{r['sum_tables_pss_mb']} |")
    (RESULTS / "workers.json").write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
