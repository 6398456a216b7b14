"""The rate limit holds over a multi-megabyte download."""

from __future__ import annotations

from scoring.sync.syncer import INSTALLED

RATE = 2 << 20  # 2 MiB/s


def test_observed_rate_within_15_percent_of_the_limit(cluster, make_syncer):
    # One 40000 x 16 float32 table: a 2.5 MB file, about 2.6 MB in all.
    cluster.publish("v1", seed=1, ctx=(("user_id", 40_000, 16, "sum"),), ad=(("ad_id", 100, 4, "sum"),))
    (gw,) = cluster.httpfs(1)
    syncer = make_syncer(cluster.url("httpfs", [gw]), rate_limit=RATE)
    result = syncer.cycle()
    assert result.status == INSTALLED, result.message
    assert result.bytes > 2_500_000
    observed = result.bytes / result.download_seconds
    assert 0.85 * RATE <= observed <= 1.15 * RATE, f"{observed / (1 << 20):.3f} MiB/s"
