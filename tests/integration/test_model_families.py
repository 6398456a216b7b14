"""Model families on a real server: ``ctr-model demo --family`` then ``ctr-serve``, as a
newcomer would; multi-head answers, weighted groups, the float64 reference over HTTP, and
hostile bodies at a graph model."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest

from scoring.model.package import load_package
from scoring.model.reference_graph import graph_outputs

from ..graph_models import mixed_graph, mixed_request
from .server import Server


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    repo = root / "repo"
    for family in ("esmm", "dcn_lowrank"):
        name = f"demo-{family}".replace("_", "-")
        out = subprocess.run([sys.executable, "-m", "scoring.model.cli", "demo",
                              str(repo / name / "seed0"), "--family", family, "--bucket-shift", "8"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
    mixed_graph(repo / "mixed" / "v1")
    with Server(repo, root / "log", args=["--default-model", "demo-esmm"]) as server:
        yield server.wait(), repo


def test_multi_head_answers_every_output(served):
    server, repo = served
    pkg = load_package(repo / "demo-esmm" / "seed0")
    body = {"request_id": 7, "context": {"user_id": "u1", "city": "bj"},
            "ads": [{"features": {"ad_id": "a1", "position": "2"}}, {"features": {"ad_id": "a2"}}]}
    for path in ("/v1/models/demo-esmm/score", "/v1/score"):
        r = server.client.post(path, json=body)
        assert r.status_code == 200, r.text
        doc = r.json()
        assert set(doc["outputs"]) == {"pctr", "pcvr", "pctcvr"} and doc["request_id"] == 7
        want = graph_outputs(pkg, body["context"], body["ads"])
        for name, values in doc["outputs"].items():
            np.testing.assert_allclose(values, want[name], atol=1e-6, rtol=1e-5)
        assert doc["scores"] == doc["outputs"]["pctr"]
    model = server.client.get("/v1/models/demo-esmm").json()
    assert model["outputs"] == ["pctr", "pcvr", "pctcvr"] and model["family"] == "esmm"
    r = server.client.post("/v1/models/demo-dcn-lowrank/score", json=body)
    assert r.status_code == 200 and "outputs" not in r.json()


def test_weighted_groups_and_every_op_over_http(served):
    server, repo = served
    pkg = load_package(repo / "mixed" / "v1")
    ctx, ads = mixed_request(np.random.default_rng(2), 30)
    r = server.client.post("/v1/models/mixed/score", json={"context": ctx, "ads": ads})
    assert r.status_code == 200, r.text
    want = graph_outputs(pkg, ctx, ads)
    for name, values in r.json()["outputs"].items():
        np.testing.assert_allclose(values, want[name], atol=2e-6, rtol=2e-5, err_msg=name)
    bad = {**ctx, "clicked": {"ids": ["a"], "weights": [1.0, 2.0]}}
    r = server.client.post("/v1/models/mixed/score", json={"context": bad, "ads": ads})
    assert r.status_code == 422 and "context.clicked.weights: expected 1" in r.json()["error"]
    r = server.client.post("/v1/models/mixed/score", json={"context": {**ctx, "user_id": {"ids": ["a"], "weights": [1]}}, "ads": ads})
    assert r.status_code == 422 and "weighted_sum" in r.json()["error"]
    r = server.admin("POST", "/v1/models/mixed/explain")
    assert r.status_code in (400, 422)


def test_hostile_bodies_at_a_graph_model_never_5xx(served):
    from .test_fuzz import BROKEN_STRINGS, EXTREME_NUMBERS, mutate

    server, _ = served
    ctx, ads = mixed_request(np.random.default_rng(5), 8)
    base = json.dumps({"context": ctx, "ads": ads}).encode()
    rng = random.Random("graph")
    seen = {}
    extra = [b'{"context":{"clicked":{"ids":[1e400],"weights":[1]}},"ads":[]}',
             b'{"context":{"clicked":{"ids":["a"],"weights":[NaN]}},"ads":[]}',
             b'{"context":{"clicked":{"ids":"a","weights":1}},"ads":[]}',
             b'{"context":{"clicked":{"ids":[],"weights":[],"x":1}},"ads":[]}',
             b'{"context":{"clicked":{}},"ads":[]}'] + [
        b'{"context":{"clicked":{"ids":[' + n + b'],"weights":[' + n + b']}},"ads":[]}'
        for n in EXTREME_NUMBERS[:8]] + [
        b'{"context":{"clicked":{"ids":[' + s + b'],"weights":[1]}},"ads":[]}' for s in BROKEN_STRINGS[:6]]
    for body in extra + [mutate(base, rng) for _ in range(400)]:
        r = server.client.post("/v1/models/mixed/score", content=body,
                               headers={"content-type": "application/json"})
        assert r.status_code < 500, (body[:300], r.text, server.log())
        assert isinstance(r.json().get("error", r.json().get("scores")), (str, list))
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
    assert seen.get(200, 0) > 20 and seen.get(422, 0) + seen.get(400, 0) > 100, seen
    log = server.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]


def test_an_experiment_arm_on_a_multi_head_model_answers_its_outputs(served, tmp_path):
    import yaml

    _, repo = served
    config = {"models": [{"name": "demo-esmm"}, {"name": "demo-dcn-lowrank"}],
              "default": "demo-dcn-lowrank",
              "experiments": {"key": "context.user_id",
                              "arms": [{"name": "esmm-50", "model": "demo-esmm", "share": 50}]}}
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(config))
    with Server(repo, tmp_path / "log", args=["--models-config", str(tmp_path / "models.yaml")]) as s:
        s.wait()
        arms = {}
        for u in range(40):
            body = {"context": {"user_id": f"u{u}"}, "ads": [{"features": {"ad_id": "a1"}}]}
            doc = s.client.post("/v1/score", json=body).json()
            arm = doc.get("arm", "default")
            arms[arm] = arms.get(arm, 0) + 1
            if doc["model"] == "demo-esmm":
                assert arm == "esmm-50" and set(doc["outputs"]) == {"pctr", "pcvr", "pctcvr"}
                assert doc["scores"] == doc["outputs"]["pctr"]
            else:
                assert "outputs" not in doc
        assert arms.get("esmm-50", 0) >= 5 and sum(arms.values()) - arms.get("esmm-50", 0) >= 5, arms
