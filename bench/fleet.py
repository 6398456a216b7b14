"""Model sync for a fleet: what a new version costs the NameNode and the network, and how long
it takes to reach 99% of pods, per sync mode (a simulation; docs/fleet.md quotes its output).

    python -m bench.fleet [--quick] [--json PATH]

Modes:

* ``pod``: every pod runs its own ``ctr-sync`` (sidecar), polling ``checksums.md5`` on the
  NameNode every ``interval`` seconds (uniform jitter: each pod's phase is random) and
  downloading a new version itself;
* ``node``: one ``ctr-sync`` DaemonSet pod per node writes a hostPath repository that every
  serving pod on the node reads;
* ``cache``: node-level sync, the nodes reading through a tier of caching proxies (nginx in
  front of HttpFS): a version leaves HDFS once per cache.

A poll is a small metadata read; a download streams the package at ``--rate-limit`` per
syncer at most, all concurrent downloads from one source sharing its egress (HDFS: the
DataNodes' aggregate; a cache: its NIC). A pod serves the version once its repository has it
and it has loaded it (``--load`` seconds: validate, map, warm; the kernels come from the
on-disk cache). Time is simulated in 0.25 s steps; the figures are deterministic (seeded).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

GB = 1e9


@dataclass
class Fleet:
    pods: int
    pods_per_node: int = 8
    caches: int = 4
    interval: float = 60.0          # seconds between polls
    size: float = 2 * GB            # bytes of one version
    rate_limit: float = 100e6       # bytes/s per syncer (ctr-sync --rate-limit 100M)
    hdfs_egress: float = 2.5e9      # bytes/s the DataNodes serve in all (20 Gbit/s)
    cache_egress: float = 1.25e9    # bytes/s per cache (10 Gbit/s NIC)
    load: float = 10.0              # seconds from files present to serving (warm cache)


def simulate(fleet: Fleet, mode: str, seed: int = 0, dt: float = 0.25) -> dict:
    """One rollout in ``mode``: polls per second on the NameNode, bytes read from HDFS, and
    the seconds until 50% / 99% / 100% of pods serve the new version."""
    rng = np.random.default_rng(seed)
    nodes = -(-fleet.pods // fleet.pods_per_node)
    syncers = fleet.pods if mode == "pod" else nodes
    # which source each syncer downloads from: HDFS (-1) or a cache
    source = np.full(syncers, -1) if mode != "cache" else np.arange(syncers) % fleet.caches
    phase = rng.uniform(0, fleet.interval, syncers)  # first poll after the version lands
    remaining = np.full(syncers, fleet.size)
    started = np.zeros(syncers, bool)
    done_at = np.full(syncers, np.inf)
    # caches: each fetches from HDFS on its first miss, then serves its syncers
    cache_remaining = np.full(fleet.caches, fleet.size)
    cache_started = np.zeros(fleet.caches, bool)
    cache_done = np.full(fleet.caches, np.inf)
    hdfs_bytes = 0.0
    t = 0.0
    while np.isinf(done_at).any() and t < 24 * 3600:
        started |= phase <= t
        active = started & np.isinf(done_at)
        if mode == "cache":
            cache_started[np.unique(source[active])] = True
            fetching = cache_started & np.isinf(cache_done)
            if fetching.any():
                share = min(fleet.rate_limit, fleet.hdfs_egress / fetching.sum())
                cache_remaining[fetching] -= share * dt
                hdfs_bytes += share * dt * fetching.sum()
                cache_done[fetching & (cache_remaining <= 0)] = t + dt
            # a syncer streams from its cache only once the cache has the version (nginx
            # proxy_cache_lock: one upstream fetch, the others wait for it)
            active &= ~np.isinf(cache_done[source])
            for c in range(fleet.caches):
                mine = active & (source == c)
                if mine.any():
                    share = min(fleet.rate_limit, fleet.cache_egress / mine.sum())
                    remaining[mine] -= share * dt
        elif active.any():
            share = min(fleet.rate_limit, fleet.hdfs_egress / active.sum())
            remaining[active] -= share * dt
            hdfs_bytes += share * dt * active.sum()
        done_at[active & (remaining <= 0)] = t + dt
        t += dt
    per_pod = np.repeat(done_at, 1 if mode == "pod" else fleet.pods_per_node)[:fleet.pods] + fleet.load
    return {"mode": mode, "pods": fleet.pods, "syncers": int(syncers),
            "namenode_polls_per_s": round(syncers / fleet.interval, 2),
            "hdfs_bytes_per_rollout": hdfs_bytes if mode != "pod" else float(syncers * fleet.size),
            "p50_s": round(float(np.percentile(per_pod, 50)), 1),
            "p99_s": round(float(np.percentile(per_pod, 99)), 1),
            "all_s": round(float(per_pod.max()), 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="10 and 100 pods only")
    p.add_argument("--json", type=Path, default=Path(__file__).resolve().parent / "results" / "fleet.json")
    args = p.parse_args(argv)
    sizes = (10, 100) if args.quick else (10, 100, 1000, 5000)
    rows = []
    print(f"{'pods':>6} {'mode':>6} {'syncers':>8} {'polls/s':>8} {'HDFS GB/rollout':>16} "
          f"{'p50 s':>7} {'p99 s':>7} {'all s':>7}", flush=True)
    for n in sizes:
        for mode in ("pod", "node", "cache"):
            r = simulate(Fleet(pods=n), mode)
            rows.append(r)
            print(f"{n:>6} {mode:>6} {r['syncers']:>8} {r['namenode_polls_per_s']:>8} "
                  f"{r['hdfs_bytes_per_rollout'] / GB:>16.0f} {r['p50_s']:>7} {r['p99_s']:>7} "
                  f"{r['all_s']:>7}", flush=True)
    print("assumptions:", json.dumps({k: v for k, v in asdict(Fleet(pods=0)).items() if k != "pods"}))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rows": rows, "fleet": asdict(Fleet(pods=0))}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
