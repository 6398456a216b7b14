"""``POST /v1/models/{name}/explain`` on a real server: the contract's answer, checked against a
float64 NumPy oracle; admin auth unless CTR_EXPLAIN_PUBLIC; limits and bad input answered clearly."""

from __future__ import annotations

import numpy as np
import pytest

from ..explain_oracle import explain_f64
from ..models import random_request
from .server import ADMIN_TOKEN, Server, install_model

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.mark.parametrize("model", ["ctr", "plain"])
def test_explain_answers_the_contract_shape_with_exact_values(api_server, ctr_package,
                                                               plain_package, model):
    pkg = ctr_package if model == "ctr" else plain_package
    rng = np.random.default_rng(3)
    ctx, ads = random_request(rng, pkg, 12)
    body = {"request_id": "r-9", "context": ctx, "ads": ads}
    r = api_server.client.post(f"/v1/models/{model}/explain", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["model"] == model and doc["request_id"] == "r-9" and len(doc["ads"]) == 12
    scores = api_server.client.post(f"/v1/models/{model}/score", json=body).json()["scores"]
    for ad, got, score in zip(ads, doc["ads"], scores):
        want = explain_f64(pkg, ctx, ad)
        assert list(got["groups"]) == [g.name for g in pkg.manifest.groups]
        assert got["pctr"] == pytest.approx(score, abs=1e-6)
        assert got["logit"] == pytest.approx(want["logit"], abs=1e-4)
        for name, (contribution, influence) in want["groups"].items():
            assert got["groups"][name]["contribution"] == pytest.approx(contribution, abs=1e-4)
            assert got["groups"][name]["influence"] == pytest.approx(influence, abs=1e-6, rel=1e-4)
        assert got["bias"] == pytest.approx(want["bias"], abs=1e-4)
        total = sum(g["contribution"] for g in got["groups"].values()) + got["remainder"]
        assert total == pytest.approx(got["logit"], abs=1e-5)
        if want["dense"] is not None:
            assert got["dense"]["contribution"] == pytest.approx(want["dense"], abs=1e-4)
        else:
            assert "dense" not in got


def test_explain_needs_the_admin_token_and_names_bad_input(api_server):
    c = api_server.client
    body = {"context": {"user_id": "u1"}, "ads": [{"features": {"ad_id": "a"}}]}
    r = c.post("/v1/models/plain/explain", json=body)
    assert r.status_code == 401 and "Bearer" in r.json()["error"]
    r = c.post("/v1/models/plain/explain", json=body, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    r = c.post("/v1/models/nope/explain", json=body, headers=AUTH)
    assert r.status_code == 404 and "nope" in r.json()["error"]
    many = {"ads": [{"features": {"ad_id": "a"}}] * 51}   # the server's --max-ads is 50
    r = c.post("/v1/models/plain/explain", json=many, headers=AUTH)
    assert r.status_code == 413 and "ads" in r.json()["error"]
    r = c.post("/v1/models/plain/explain", json={"ads": [{"features": {"bogus": 1}}]}, headers=AUTH)
    assert r.status_code == 422 and "bogus" in r.json()["error"]
    r = c.post("/v1/models/ctr/explain", json={"ads": [{"features": {}}]}, headers=AUTH)
    assert r.status_code == 422 and "dense" in r.json()["error"]
    r = c.post("/v1/models/plain/explain", content=b'{"ads":[', headers=AUTH)
    assert r.status_code == 400
    r = c.post("/v1/models/plain/explain", content=b'{"ads":[]}',
               headers={**AUTH, "content-type": "text/plain"})
    assert r.status_code == 415
    r = c.post("/v1/models/plain/explain", content=b" " * 300_000, headers=AUTH)  # --max-body-bytes
    assert r.status_code == 413
    r = c.get("/v1/models/plain/explain")
    assert r.status_code == 405
    metrics = c.get("/metrics").text
    for status in ("401", "404", "413", "415", "422", "400"):
        assert f'status="{status}"' in metrics.split("ctr_explain_requests_total", 1)[1], status
    assert 'ctr_explain_requests_total{model="plain",status="413"}' in metrics
    assert 'ctr_explain_requests_total{model="plain",status="401"}' in metrics
    assert 'model="nope"' not in metrics  # unknown names do not become label values


def test_explain_public_serves_without_a_token_and_caps_at_100_ads(tmp_path):
    install_model(tmp_path / "repo", "v1", seed=3)
    with Server(tmp_path / "repo", tmp_path / "log", env={"CTR_EXPLAIN_PUBLIC": "true"}) as server:
        server.wait()
        ad = {"features": {"ad_id": "a", "category": ["x"]}}
        r = server.client.post("/v1/models/ctr/explain", json={"ads": [ad] * 100})
        assert r.status_code == 200 and len(r.json()["ads"]) == 100
        r = server.client.post("/v1/models/ctr/explain", json={"ads": [ad] * 101})
        assert r.status_code == 413 and "100" in r.json()["error"]
        assert server.client.post("/v1/models/ctr/score", json={"ads": [ad] * 101}).status_code == 200
        spec = server.client.get("/openapi.json").json()
        assert "post" in spec["paths"]["/v1/models/{name}/explain"]
