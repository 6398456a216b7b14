"""The fleet simulation (bench/fleet.py) that docs/fleet.md quotes, checked against the
arithmetic it must agree with."""

from __future__ import annotations

import pytest

from bench.fleet import GB, Fleet, simulate


@pytest.mark.parametrize("pods", [10, 100, 1000])
def test_polls_and_bytes_follow_the_arithmetic(pods):
    f = Fleet(pods=pods)
    nodes = -(-pods // f.pods_per_node)
    pod, node, cache = (simulate(f, m) for m in ("pod", "node", "cache"))
    assert pod["namenode_polls_per_s"] == pytest.approx(pods / 60, abs=0.01)
    assert node["namenode_polls_per_s"] == cache["namenode_polls_per_s"] == pytest.approx(nodes / 60, abs=0.01)
    assert pod["hdfs_bytes_per_rollout"] == pods * f.size
    assert node["hdfs_bytes_per_rollout"] == pytest.approx(nodes * f.size, rel=0.02)
    assert cache["hdfs_bytes_per_rollout"] == pytest.approx(min(nodes, f.caches) * f.size, rel=0.02)


def test_times_respect_the_bounds():
    # one syncer: its phase (< interval) + size / rate limit + load, and never less than that
    alone = simulate(Fleet(pods=1, pods_per_node=1), "pod")
    assert 2 * GB / 100e6 + 10 <= alone["all_s"] <= 60 + 2 * GB / 100e6 + 10 + 0.5
    # a thousand pods each pulling 2 GB through 2.5 GB/s of HDFS egress: at least 800 s
    many = simulate(Fleet(pods=1000), "pod")
    assert many["all_s"] >= 1000 * 2 * GB / 2.5e9
    node, cache = simulate(Fleet(pods=1000), "node"), simulate(Fleet(pods=1000), "cache")
    assert cache["p99_s"] <= node["p99_s"] < many["p99_s"]
