"""Layered experiments over HTTP with the real service: a version canary (``ctr@next``) from
install to promote and abort, arms echoed and sticky across workers and restarts, the models
config reloaded live (and a bad one refused), and the sample-ratio alarm on an arm that fails."""

from __future__ import annotations

import os

import httpx
import yaml
from xxhash import xxh64_intdigest

from .server import ADMIN_TOKEN, Server, free_port, install_model, wait_until

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
USERS = [f"user-{i}" for i in range(60)]
FEATURES = {"context": ["user_id", "city"], "ad": ["ad_id", "category"]}


def config(dead_url: str, version: str = "1", canary_share: float = 30) -> dict:
    return {
        "version": version,
        "models": [{"name": "ctr"},
                   {"name": "down", "kind": "tfserving", "urls": [dead_url], "features": FEATURES,
                    "deadline_ms": 200}],
        "default": "ctr",
        "layers": [
            {"name": "canary", "unit": "context.user_id", "salt": "canary-1",
             "arms": [{"name": "next", "share": canary_share, "set": {"model": "ctr@next"}}]},
            {"name": "budget", "unit": "request_id", "salt": "b",
             "arms": [{"name": "d40", "share": 50, "set": {"deadline_ms": 40}}]},
        ],
    }


def configmap_write(directory, text: str, stamp: str):
    """Update a file the way the kubelet updates a ConfigMap volume: a new timestamped
    directory, then the ``..data`` symlink swapped by one rename (the file itself is a symlink
    through ``..data``)."""
    new = directory / f"..{stamp}"
    new.mkdir()
    (new / "models.yaml").write_text(text)
    tmp = directory / "..data_tmp"
    tmp.symlink_to(new.name)
    os.replace(tmp, directory / "..data")
    link = directory / "models.yaml"
    if not link.is_symlink():
        link.symlink_to("..data/models.yaml")
    return link


def in_canary(user: str, share: float = 30) -> bool:  # the split's definition, written out again
    return xxh64_intdigest(f"canary-1{user}".encode(), seed=0) % 10_000 < share * 100


def score(url: str, user: str, rid: str = "r") -> dict:
    body = {"request_id": rid, "context": {"user_id": user, "city": "bj"},
            "ads": [{"features": {"ad_id": "a1", "category": ["c1"]}}]}
    r = httpx.post(f"{url}/v1/score", json=body, timeout=30)  # a new connection: any worker
    assert r.status_code == 200, r.text
    return r.json()


def versions_seen(url: str, rounds: int = 2) -> dict[str, set]:
    seen: dict[str, set] = {u: set() for u in USERS}
    for _ in range(rounds):
        for u in USERS:
            seen[u].add(score(url, u)["version"])
    return seen


def test_version_canary_promote_abort_reload_and_stickiness(tmp_path):
    repo = tmp_path / "repo"
    install_model(repo, "v1", seed=1)
    mount = tmp_path / "etc-ctr"  # as a ConfigMap volume holds models.yaml
    mount.mkdir()
    dead = f"http://127.0.0.1:{free_port()}"
    cfg_path = configmap_write(mount, yaml.safe_dump(config(dead)), "1")
    args = ["--models-config", str(cfg_path), "--workers", "2"]
    assert 8 <= sum(in_canary(u) for u in USERS) <= 30

    with Server(repo, tmp_path / "a.log", args=args, env={"CTR_HEALTH_SAMPLE_RATE": "1"}) as server:
        server.wait()
        first = {}
        for u in USERS:
            for k in range(3):  # new connections: both workers answer
                doc = score(server.url, u, f"req-{u}-{k}")
                assert doc["version"] == "v1"
                assert doc["arms"]["canary"] == ("next" if in_canary(u) else "default"), doc
                budget = xxh64_intdigest(f"breq-{u}-{k}".encode(), seed=0) % 10_000 < 5000
                assert doc["arms"]["budget"] == ("d40" if budget else "default"), doc
                first.setdefault(u, doc["arms"]["canary"])
                assert doc["arms"]["canary"] == first[u]

        # a new version: only the canary's users get it; the live version stays
        install_model(repo, "v2", seed=2)
        wait_until(lambda: all(v == ({"v2"} if in_canary(u) else {"v1"})
                               for u, v in versions_seen(server.url).items()),
                   "the canary arm serves v2, the rest v1", timeout=60, log=server.log)
        assert server.client.get("/v1/models/ctr").json()["version"] == "v1"
        pins = server.client.get("/v1/experiments").json()["pins"]
        assert pins == [{"pin": "ctr@next", "version": "v2", "serving": "v2", "error": None}]
        metrics = server.client.get("/metrics").text
        assert 'ctr_experiment_requests_total{arm="next",layer="canary"}' in metrics
        # model health watches the canary version on its arm's own traffic
        health = wait_until(lambda: (h := server.client.get("/v1/models/ctr/health?version=v2").json())
                            ["windows"] and h, "health windows of the canary version", log=server.log)
        assert health["version"] == "v2" and health["windows"][-1]["rows"] > 0, health
        assert 'ctr_arm_requests_total{arm="canary/next",model="ctr",status="200"}' in metrics

        # promote: everyone on v2
        r = server.admin("POST", "/v1/models/ctr/promote?version=v2")
        assert r.status_code == 200, r.text
        wait_until(lambda: all(v == {"v2"} for v in versions_seen(server.url).values()),
                   "every user on v2 after the promote", timeout=60, log=server.log)

        # the next version goes to the canary, and an abort takes it away again
        install_model(repo, "v3", seed=3)
        wait_until(lambda: all(v == ({"v3"} if in_canary(u) else {"v2"})
                               for u, v in versions_seen(server.url).items()),
                   "the canary arm serves v3", timeout=60, log=server.log)
        r = server.admin("POST", "/v1/models/ctr/abort?version=v3")
        assert r.status_code == 200, r.text
        assert server.admin("POST", "/v1/models/ctr/abort?version=v2").status_code == 409  # live
        wait_until(lambda: all(v == {"v2"} for v in versions_seen(server.url).values()),
                   "every user back on v2 after the abort", timeout=60, log=server.log)

        # the config reloads itself: version 2 puts everyone in the canary layer's arm
        configmap_write(mount, yaml.safe_dump(config(dead, version="2", canary_share=100)), "2")

        def reloaded() -> bool:
            docs = [httpx.get(f"{server.url}/v1/experiments", timeout=10).json() for _ in range(6)]
            return all(d["version"] == "2" for d in docs)
        wait_until(reloaded, "both workers on config version 2", timeout=30, log=server.log)
        assert all(score(server.url, u)["arms"]["canary"] == "next" for u in USERS[:20])
        # a bad file is refused: the version in force stays, the outcome is counted
        bad = config(dead, version="3")
        bad["layers"][0]["arms"][0]["share"] = 200
        configmap_write(mount, yaml.safe_dump(bad), "3")
        wait_until(lambda: 'ctr_models_config_reloads_total{outcome="invalid"} 2.0'
                   in server.client.get("/metrics").text, "both workers refuse the bad file",
                   timeout=30, log=server.log)
        assert server.client.get("/v1/experiments").json()["version"] == "2"
        assert "share: expected a percentage" in server.log()

    # restarts: the same users land in the same arms
    configmap_write(mount, yaml.safe_dump(config(dead)), "4")
    with Server(repo, tmp_path / "b.log", args=args) as server:
        server.wait()
        assert {u: score(server.url, u)["arms"]["canary"] for u in USERS} == first


def bucket(salt: str, key: str) -> int:
    return xxh64_intdigest(f"{salt}{key}".encode(), seed=0) % 10_000


def test_fallback_parameter_and_the_sample_ratio_alarm_when_an_arm_fails(tmp_path):
    """Layer "leg" sends 20 % of requests to a TF Serving model that is down and has no
    fallback of its own; layer "rescue" gives half of all requests the fallback ``ctr``. A
    request in both is answered by the fallback, one in "leg" only fails; "leg" loses requests
    of its arm and "rescue" of its default arm: both sample-ratio checks go into alarm."""
    repo = tmp_path / "repo"
    install_model(repo, "v1", seed=1)
    cfg = config(f"http://127.0.0.1:{free_port()}")
    cfg["layers"] = [{"name": "leg", "unit": "request_id", "salt": "s",
                      "arms": [{"name": "tfs", "share": 20, "set": {"model": "down"}}]},
                     {"name": "rescue", "unit": "request_id", "salt": "r",
                      "arms": [{"name": "fb", "share": 50, "set": {"fallback": "ctr"}}]}]
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(cfg))
    with Server(repo, tmp_path / "s.log", args=["--models-config", str(tmp_path / "models.yaml")]) as server:
        server.wait()
        body = {"context": {"user_id": "u", "city": "bj"}, "ads": [{"features": {"ad_id": "a"}}]}
        failed = 0
        for i in range(1300):
            rid = f"q{i}"
            in_tfs, in_fb = bucket("s", rid) < 2000, bucket("r", rid) < 5000
            r = server.client.post("/v1/score", json={**body, "request_id": rid})
            if in_tfs and not in_fb:  # TF Serving is down and this request has no fallback
                assert r.status_code in (502, 504), r.text
                failed += 1
                continue
            doc = r.json()
            assert r.status_code == 200 and doc["model"] == "ctr", doc
            assert doc["arms"] == {"leg": "tfs" if in_tfs else "default",
                                   "rescue": "fb" if in_fb else "default"}, doc
            assert (doc.get("fallback_for") == "down") == in_tfs, doc
        assert 80 < failed < 180, failed
        doc = server.client.get("/v1/experiments").json()
        srm = {layer["name"]: layer["srm"] for layer in doc["layers"]}
        assert srm["leg"]["alarm"] is True and srm["leg"]["p_value"] < 1e-10, srm
        # the failed requests were all in "rescue"'s default arm: that layer is skewed too
        assert srm["rescue"]["alarm"] is True and \
            srm["rescue"]["observed"]["default"] < srm["rescue"]["observed"]["fb"], srm
        metrics = server.client.get("/metrics").text
        assert 'ctr_experiment_srm_alarms_total{layer="leg"} 1.0' in metrics
        assert 'ctr_arm_fallbacks_total{arm="rescue/fb"}' in metrics
        assert "sample ratio mismatch" in server.log()
