"""End to end: ``ctr-serve`` with in-process sync from a test HttpFS gateway."""

from __future__ import annotations

import time

from scoring.lifecycle.repo import ModelRepo

from .server import Server

INTERVAL = 1.0
SCORE = {"context": {"user_id": "u1", "city": "bj"},
         "ads": [{"id": "a1", "features": {"ad_id": "a1", "category": "food"}}]}


def served_version(server: Server) -> str | None:
    r = server.client.post("/v1/models/ctr/score", json=SCORE)
    return r.json().get("version") if r.status_code == 200 else None


def test_new_version_on_httpfs_is_served_within_the_poll_interval(cluster, tmp_path):
    cluster.publish("v1", seed=1)
    gws = cluster.httpfs(2)
    # CTR_POLL_INTERVAL 30: the registry's own repository poll is too slow to explain a fast swap
    env = {"CTR_SYNC_SOURCE": cluster.url("httpfs", gws), "CTR_SYNC_INTERVAL": str(INTERVAL),
           "CTR_SYNC_RATE_LIMIT": "0", "CTR_SYNC_RETRIES": "1", "CTR_POLL_INTERVAL": "30"}
    server = Server(tmp_path / "repo", tmp_path / "server.log", env=env)
    try:
        server.wait(timeout=90)
        assert served_version(server) == "v1"
        assert ModelRepo(tmp_path / "repo").models() == ["ctr"]  # a sync source, so no demo model

        cluster.publish("v2", seed=2)
        t0 = time.monotonic()
        while served_version(server) != "v2":
            assert time.monotonic() - t0 < INTERVAL * 1.1 + 5, f"v2 not served in time:\n{server.log()}"
            time.sleep(0.05)

        # The reload endpoint syncs first: v3 is served when the call returns.
        cluster.publish("v3", seed=3)
        r = server.admin("POST", "/v1/models/ctr/reload")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["version"] == "v3"
        assert body["sync"]["version"] == "v3" and body["sync"]["status"] in ("installed", "unchanged")
        assert served_version(server) == "v3"

        # A corrupted export never goes live; v3 keeps serving; the failure shows in /metrics.
        for gw in gws:
            gw.faults.corrupt.add("mlp/w1.npy")
        cluster.publish("v4", seed=4)
        r = server.admin("POST", "/v1/models/ctr/reload")
        assert r.status_code == 200 and r.json()["sync"]["status"] == "failed"
        assert "md5 mismatch" in r.json()["sync"]["message"]
        assert served_version(server) == "v3"
        metrics = server.client.get("/metrics").text
        assert 'ctr_sync_cycles_total{model="ctr",result="failed"}' in metrics
        assert 'ctr_sync_consecutive_failures{model="ctr"}' in metrics
    finally:
        server.stop()


def test_bad_sync_settings_stop_ctr_serve_with_the_variable_named(tmp_path):
    server = Server(tmp_path / "repo", tmp_path / "server.log", args=["--no-demo"],
                    env={"CTR_SYNC_SOURCE": "hdfs://nn1:8020/models/ctr"})
    try:
        server.proc.wait(60)
        assert server.proc.returncode == 2
        assert "CTR_SYNC_SOURCE" in server.log() and "unsupported scheme 'hdfs'" in server.log()
    finally:
        server.stop()
