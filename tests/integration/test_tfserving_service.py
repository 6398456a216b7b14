"""TF Serving models and the experiment split through a real ``ctr-serve`` and a test TF Serving."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
import yaml

from scoring.model.package import load_package
from scoring.model.reference import reference_scores
from scoring.upstream.assign import Assigner
from scoring.upstream.config import parse_models_config

from ..fakes.tfserving import FakeTFServing
from ..models import random_request
from .server import Server, free_port, install_model

TOL = 2e-5  # the native engine is float32


def models_config(tf_url: str, dead_url: str) -> dict:
    features = {"context": ["user_id", "city"], "ad": ["ad_id", "category"], "dense_dim": 3}
    return {
        "models": [
            {"name": "ctr"},
            {"name": "deep", "kind": "tfserving", "urls": [tf_url], "model_name": "ctr_tf",
             "deadline_ms": 300, "sub_batch_size": 8, "fallback": "ctr"},
            {"name": "down", "kind": "tfserving", "urls": [dead_url], "features": features,
             "deadline_ms": 200, "breaker": {"failures": 1000}},
        ],
        "default": "ctr",
        "experiments": {"key": "context.user_id", "arms": [{"name": "deep-20", "model": "deep",
                                                            "share": 20}]},
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfs")
    repo = root / "repo"
    install_model(repo, "v1", seed=3, dense_dim=3)
    package = load_package(repo / "ctr" / "v1")
    fake = FakeTFServing("ctr_tf", {1: package}).start()
    config = models_config(fake.url, f"http://127.0.0.1:{free_port()}")
    (root / "models.yaml").write_text(yaml.safe_dump(config))
    server = Server(repo, root / "server.log", args=["--models-config", str(root / "models.yaml")],
                    env={"CTR_HEALTH_SAMPLE_RATE": "1"})
    try:
        yield server.wait(), fake, package, config
    finally:
        server.stop()
        fake.stop()


def request_of(package, n_ads, seed, user=None):
    ctx, ads = random_request(np.random.default_rng(seed), package, n_ads)
    for ad in ads:
        ad["dense"] = [float(np.float32(v)) for v in ad["dense"]]
    if user is not None:
        ctx["user_id"] = user
    return ctx, ads


def test_ready_without_waiting_on_upstreams(stack):
    server, *_ = stack
    r = server.client.get("/readyz")
    assert r.status_code == 200 and r.json()["models"] == {"ctr": "v1", "deep": "latest", "down": "latest"}


def test_named_tfserving_model_scores_like_the_reference(stack):
    server, fake, package, _ = stack
    ctx, ads = request_of(package, 21, seed=1)
    before = fake.stats.predicts
    r = server.client.post("/v1/models/deep/score", json={"request_id": 7, "context": ctx, "ads": ads})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model"], body["version"], body["request_id"]) == ("deep", "latest", 7)
    assert "fallback_for" not in body
    np.testing.assert_allclose(body["scores"], reference_scores(package, ctx, ads), rtol=1e-9, atol=0)
    assert fake.stats.predicts - before == 3  # 21 ads in sub-batches of 8


def test_unknown_group_is_422_and_dead_upstream_is_502(stack):
    server, fake, package, _ = stack
    ctx, ads = request_of(package, 2, seed=2)
    ads[1]["features"]["colour"] = "red"
    r = server.client.post("/v1/models/deep/score", json={"context": ctx, "ads": ads})
    assert r.status_code == 422 and "ads[1].features.colour" in r.json()["error"]
    r = server.client.post("/v1/models/down/score", json={"context": ctx, "ads": ads[:1]})
    assert r.status_code == 502, r.text
    assert "TF Serving model 'down'" in r.json()["error"] and "ConnectError" in r.json()["error"]


def test_model_status_shows_the_upstreams(stack):
    server, fake, *_ = stack
    deep = server.client.get("/v1/models/deep").json()
    assert deep["kind"] == "tfserving" and deep["state"] == "live" and deep["fallback"] == "ctr"
    upstream = deep["upstreams"][0]
    assert upstream["url"] == fake.url and upstream["breaker"] == "closed"
    assert upstream["model_version_status"] == [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]
    down = server.client.get("/v1/models/down").json()
    assert down["state"] == "unavailable" and down["upstreams"][0]["reachable"] is False
    kinds = {m["name"]: m["kind"] for m in server.client.get("/v1/models").json()["models"]}
    assert kinds == {"ctr": "native", "deep": "tfserving", "down": "tfserving"}


def test_default_endpoint_follows_the_experiment_split(stack):
    server, fake, package, config = stack
    split = Assigner(parse_models_config(config).layered)
    arms = Counter()
    for i in range(150):
        user = f"user-{i}"
        ctx, ads = request_of(package, 3, seed=100 + i, user=user)
        body = server.client.post("/v1/score", json={"context": ctx, "ads": ads}).json()
        a = split.assign(None, ctx)
        assert (body["arm"], body["model"]) == (a.arms["experiments"], str(a.params["model"])), body
        np.testing.assert_allclose(body["scores"], reference_scores(package, ctx, ads), atol=TOL, rtol=0)
        arms[body["arm"]] += 1
        if i % 10 == 0:  # sticky: the same user again, another request id
            again = server.client.post("/v1/score", json={"request_id": f"x{i}", "context": ctx,
                                                          "ads": ads}).json()
            assert again["arm"] == body["arm"]
    assert 15 <= arms["deep-20"] <= 50 and arms["deep-20"] + arms["default"] == 150
    metrics = server.client.get("/metrics").text
    assert 'ctr_arm_requests_total{arm="deep-20",model="deep",status="200"}' in metrics
    assert 'ctr_arm_scored_ads_total{arm="default"}' in metrics
    assert 'ctr_arm_pctr_sum_total{arm="deep-20"}' in metrics
    assert f'ctr_upstream_requests_total{{model="deep",outcome="ok",upstream="{fake.url}"}}' in metrics
    assert f'ctr_upstream_breaker_state{{model="deep",upstream="{fake.url}"}} 0.0' in metrics
    # model health follows the native arm's model (every request sampled here)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the monitor hands its rows over every second
        health = server.client.get("/v1/models/ctr/health").json()
        if health["windows"]:
            break
        time.sleep(0.05)
    assert health["sampling"]["sampled"] >= arms["default"] and health["windows"][-1]["rows"] > 0
    r = server.client.get("/v1/models/deep/health")
    assert r.status_code == 422 and "native models" in r.json()["error"]


def test_slow_upstream_falls_back_to_the_native_model(stack):
    server, fake, package, _ = stack
    ctx, ads = request_of(package, 5, seed=3)
    fake.faults.delay = 1.0
    try:
        r = server.client.post("/v1/models/deep/score", json={"context": ctx, "ads": ads})
    finally:
        fake.faults.delay = 0.0
    body = r.json()
    assert r.status_code == 200 and (body["model"], body["version"]) == ("ctr", "v1")
    assert body["fallback_for"] == "deep" and "300 ms deadline" in body["fallback_reason"]
    np.testing.assert_allclose(body["scores"], reference_scores(package, ctx, ads), atol=TOL, rtol=0)
    metrics = server.client.get("/metrics").text
    assert 'ctr_upstream_fallbacks_total{fallback="ctr",model="deep",reason="timeout"} 1.0' in metrics


def test_invalid_models_config_stops_ctr_serve_with_the_field_named(tmp_path):
    (tmp_path / "bad.yaml").write_text("models:\n  - {name: deep, kind: tfserving, urls: [x]}\n")
    proc = subprocess.run([sys.executable, "-m", "scoring", "--model-repo", str(tmp_path / "repo"),
                           "--models-config", str(tmp_path / "bad.yaml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "invalid models config" in proc.stderr and "models[0].urls[0]" in proc.stderr
