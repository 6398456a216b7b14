"""Model health over HTTP against a real ``ctr-serve``: windows of sampled live traffic against
the float64 reference, the metrics, a drift alarm reaching the webhook, and the guarded swap
holding back broken versions copied in as an operator does (``cp -a``), with the admin override."""

from __future__ import annotations

import json
import shutil

import numpy as np
import orjson
import pytest

from scoring.model.package import load_package
from scoring.model.quantize import generated_requests
from scoring.model.reference import mlp_forward, mlp_input

from ..fakes.webhook import WebhookReceiver
from ..health_models import shift_last_bias, write, zero_layer
from .server import Server, wait_until


def requests_for(pkg, n, seed, drop=None):
    out = []
    for c, a in generated_requests(pkg, n, 50, seed=seed):
        if drop:
            for ad in a:
                ad["features"].pop(drop, None)
        out.append((c, a))
    return out


def send(server, reqs):
    for c, a in reqs:
        r = server.client.post("/v1/models/ctr/score", content=orjson.dumps({"context": c, "ads": a}),
                               headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text


def wait(cond, what, timeout=30.0):
    return wait_until(cond, what, timeout)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("health-models")
    pkg = load_package(write(root / "probe", "p"))
    reference = [{"context": c, "ads": a} for c, a in generated_requests(pkg, 40, 50, seed=1)]
    return {"root": root, "pkg": pkg, "reference": reference,
            "v1": write(root / "v1", "v1", None, reference),
            "v2": write(root / "v2", "v2", shift_last_bias, reference),
            "v3": write(root / "v3", "v3", zero_layer, None)}


def repo_with(tmp_path, src):
    """A repository holding ``src`` as version v1 of model ctr."""
    repo = tmp_path / "repo"
    (repo / "ctr").mkdir(parents=True)
    install(repo, src, "v1")
    return repo


def install(repo, src, version):
    """As an operator does: ``cp -a`` into a hidden directory, then one rename."""
    tmp = repo / "ctr" / f".{version}.tmp"
    shutil.copytree(src, tmp, copy_function=shutil.copy2)
    tmp.rename(repo / "ctr" / version)


def test_windows_metrics_and_a_drift_alarm(tmp_path, built):
    repo = repo_with(tmp_path, built["v1"])
    hook = WebhookReceiver()
    env = {"CTR_HEALTH_SAMPLE_RATE": "1", "CTR_HEALTH_WINDOW": "100000",
           "CTR_ALARM_WEBHOOK": hook.url, "CTR_GATE": "{}"}
    try:
        with Server(repo, tmp_path / "log", env=env).wait() as server:
            traffic = requests_for(built["pkg"], 30, seed=7)
            send(server, traffic)
            h = wait(lambda: (lambda d: d if d["windows"] and d["windows"][-1]["rows"] == 1500 else None)(
                server.client.get("/v1/models/ctr/health").json()), "1500 rows in the current window")
            assert h["model"] == "ctr" and h["version"] == "v1"
            assert h["baseline"]["rows"] == 2000 and len(h["baseline"]["layers"]) == 2
            current = h["windows"][-1]
            assert current["closed"] is False
            # independent: the float64 reference forward over the same rows
            x = np.stack([mlp_input(built["pkg"], c, ad) for c, ads in traffic for ad in ads])
            hidden: list = []
            p = mlp_forward(built["pkg"], x, hidden)
            for layer, ref in zip(current["layers"], hidden):
                assert layer["fluctuation"] == pytest.approx(ref.std(axis=0).mean(), rel=1e-4)
                assert layer["zero_share"] == pytest.approx((ref == 0).mean(), abs=1e-3)
            assert current["pctr_mean"] == pytest.approx(p.mean(), rel=1e-4)
            assert current["groups"] == {"user_id": 0.0, "city": 0.0, "ad_id": 0.0, "category": 0.0}
            assert h["sampling"]["sampled"] == 30 and h["sampling"]["dropped"] == 0
    finally:
        hook.stop()


def test_a_group_going_absent_alarms_after_three_windows(tmp_path, built):
    repo = repo_with(tmp_path, built["v1"])
    hook = WebhookReceiver()
    env = {"CTR_HEALTH_SAMPLE_RATE": "1", "CTR_HEALTH_WINDOW": "500", "CTR_ALARM_WEBHOOK": hook.url,
           "CTR_GATE": "{}"}
    try:
        with Server(repo, tmp_path / "log", env=env).wait() as server:
            for k in range(4):  # one window (10 requests x 50 ads) at a time: flushed each second
                send(server, requests_for(built["pkg"], 10, seed=20 + k, drop="category"))
                wait(lambda: len([w for w in server.client.get("/v1/models/ctr/health").json()["windows"]
                                  if w["closed"]]) > k, f"window {k + 1}")
            h = server.client.get("/v1/models/ctr/health").json()
            closed = [w for w in h["windows"] if w["closed"]]
            assert all(w["groups"]["category"] == 1.0 for w in closed)
            assert "group_absent:category" in closed[0]["out_of_band"]
            events = [e for e in hook.wait_for(1) if e["statistic"] == "group_absent:category"]
            assert len(events) == 1, hook.received  # once, at the third window in a row
            assert events[0]["event"] == "ctr_model_health" and events[0]["windows"] == 3
            assert "group_absent:category" in {a["statistic"] for a in h["alarms"]}
            metrics = server.client.get("/metrics").text
            assert 'ctr_health_alarms_total{model="ctr",statistic="group_absent:category",version="v1"} 1.0' in metrics
            assert 'ctr_health_group_absent_share{group="category",model="ctr",version="v1"} 1.0' in metrics
            assert 'ctr_health_fluctuation{layer="1",model="ctr",version="v1"}' in metrics
    finally:
        hook.stop()


def test_the_guarded_swap_holds_broken_versions_and_an_admin_can_override(tmp_path, built):
    repo = repo_with(tmp_path, built["v1"])
    env = {"CTR_HEALTH_SAMPLE_RATE": "1", "CTR_GATE": "{}"}
    with Server(repo, tmp_path / "log", env=env).wait() as server:
        send(server, requests_for(built["pkg"], 40, seed=9))  # live samples for the gate
        wait(lambda: server.client.get("/v1/models/ctr/health").json()["sampling"]["sampled"] == 40,
             "40 sampled requests")
        install(repo, built["v2"], "v2")  # last-layer bias +2
        model = wait(lambda: (lambda d: d if "v2" in d.get("held", {}) else None)(
            server.client.get("/v1/models/ctr").json()), "v2 held")
        assert model["version"] == "v1" and model["state"] == "live"
        assert "log-odds shift +2" in model["held"]["v2"]
        assert model["gate"]["result"] == "held" and model["gate"]["sources"]["live"] == 40
        assert server.client.get("/readyz").status_code == 200
        send(server, requests_for(built["pkg"], 2, seed=10))  # still served by v1
        assert 'ctr_model_held{model="ctr",version="v2"} 1.0' in server.client.get("/metrics").text

        install(repo, built["v3"], "v3")  # a zeroed layer, no baseline
        model = wait(lambda: (lambda d: d if "v3" in d.get("held", {}) else None)(
            server.client.get("/v1/models/ctr").json()), "v3 held")
        assert "layer 2: dead-neuron share 100.0%" in model["held"]["v3"] and model["version"] == "v1"

        # the override: admin only, judged again without force, served with force
        assert server.client.post("/v1/models/ctr/promote?version=v2&force=true").status_code in (401, 403)
        r = server.admin("POST", "/v1/models/ctr/promote?version=v2")
        assert r.status_code == 409 and "is held back: mean log-odds shift" in r.json()["error"]
        r = server.admin("POST", "/v1/models/ctr/promote?version=v2&force=true")
        assert r.status_code == 200, r.text
        assert r.json()["version"] == "v2" and r.json()["gate"]["result"] == "forced"
        model = server.client.get("/v1/models/ctr").json()
        assert model["version"] == "v2" and "v2" not in model["held"] and "v3" in model["held"]
        state = json.loads((repo / "ctr" / ".state.json").read_text())
        assert state["live"] == "v2" and "v2" in state["forced"]
        health = server.client.get("/v1/models/ctr/health").json()
        assert [d["result"] for d in health["gate"]][-3:] == ["held", "held", "forced"]

        # an identical copy (cp -a) of the live version passes on its own
        install(repo, repo / "ctr" / "v2", "v4")
        server.wait_for_version("ctr", "v4")
        assert server.client.get("/v1/models/ctr").json()["gate"]["result"] == "passed"


def test_health_and_promote_answer_bad_input_clearly(api_server):
    c = api_server.client
    assert c.get("/v1/models/nope/health").status_code == 404
    r = c.get("/v1/models/ctr/health", params={"version": "../etc"})
    assert r.status_code == 422 and "version" in r.json()["error"]
    assert api_server.admin("POST", "/v1/models/nope/promote?version=v1").status_code == 404
    r = api_server.admin("POST", "/v1/models/ctr/promote?version=%ff%00")
    assert r.status_code == 422 and "version" in r.json()["error"]
    r = api_server.admin("POST", "/v1/models/ctr/promote")
    assert r.status_code == 422 and "version" in r.json()["error"]
    r = api_server.admin("POST", "/v1/models/ctr/promote?version=v999")
    assert r.status_code == 409 and "not in the repository" in r.json()["error"]
    r = api_server.admin("POST", "/v1/models/ctr/promote?version=v1&force=maybe")
    assert r.status_code == 422 and "force" in r.json()["error"]
