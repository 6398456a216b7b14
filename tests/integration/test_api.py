"""The HTTP contract (section 3) against a real server: scores, errors, models, ops endpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scoring.model.reference import reference_scores

from ..models import random_request
from .server import ADMIN_TOKEN

TOL = 2e-5


@pytest.mark.parametrize("n_ads", [1, 7, 50])
@pytest.mark.parametrize("path", ["/v1/models/ctr/score", "/v1/score"])
def test_scores_match_the_reference(api_server, ctr_package, path, n_ads):
    rng = np.random.default_rng(n_ads)
    ctx, ads = random_request(rng, ctr_package, n_ads)
    r = api_server.client.post(path, json={"request_id": f"r-{n_ads}", "context": ctx, "ads": ads})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["model"] == "ctr" and body["version"] == "v1" and body["request_id"] == f"r-{n_ads}"
    np.testing.assert_allclose(body["scores"], reference_scores(ctr_package, ctx, ads), atol=TOL, rtol=0)


def test_named_model_without_dense_features(api_server, plain_package):
    ctx, ads = random_request(np.random.default_rng(5), plain_package, 9)
    body = api_server.client.post("/v1/models/plain/score", json={"context": ctx, "ads": ads}).json()
    assert (body["model"], body["version"], body["request_id"]) == ("plain", "p1", None)
    np.testing.assert_allclose(body["scores"], reference_scores(plain_package, ctx, ads), atol=TOL, rtol=0)


def test_contract_example_shapes_and_integer_ids(api_server, plain_package):
    req = {"request_id": "r-1", "context": {"user_id": "u42", "city": "bj"},
           "ads": [{"id": "a1", "features": {"ad_id": "a1", "category": ["hotpot", "bbq"]}},
                   {"id": "a2", "features": {"ad_id": 1234567890123}},
                   {"id": 3, "features": {"ad_id": 2**64 - 1, "category": []}}]}
    body = api_server.client.post("/v1/models/plain/score", json=req).json()
    assert body["request_id"] == "r-1" and len(body["scores"]) == 3
    np.testing.assert_allclose(body["scores"], reference_scores(plain_package, req["context"], req["ads"]),
                               atol=TOL, rtol=0)
    assert all(0.0 < s < 1.0 for s in body["scores"])


def test_empty_ads_answer_empty_scores(api_server):
    r = api_server.client.post("/v1/score", json={"ads": []})
    assert r.status_code == 200
    assert r.json() == {"model": "ctr", "version": "v1", "scores": [], "request_id": None}


def _ad(**features):
    return {"features": features, "dense": [0.1, 0.2]}


BAD = [
    # (what, path, body (object or raw bytes), headers, status, text the error must contain)
    ("not JSON", "/v1/score", b'{"ads": [', {}, 400, "body: not valid JSON"),
    ("empty body", "/v1/score", b"", {}, 400, "body: empty"),
    ("wrong content type", "/v1/score", b'{"ads": []}', {"content-type": "text/plain"}, 415,
     "Content-Type"),
    ("missing ads", "/v1/score", {"context": {}}, {}, 422, "ads: required field is missing"),
    ("ads not a list", "/v1/score", {"ads": {"a": 1}}, {}, 422, "ads:"),
    ("body not an object", "/v1/score", [1, 2], {}, 422, "body:"),
    ("ad not an object", "/v1/score", {"ads": [_ad(), 3]}, {}, 422, "ads[1]"),
    ("context not an object", "/v1/score", {"context": [1], "ads": []}, {}, 422, "context"),
    ("unknown context group", "/v1/score", {"context": {"nope": "x"}, "ads": [_ad()]}, {}, 422,
     "context.nope: unknown context group"),
    ("ad group in the context", "/v1/score", {"context": {"ad_id": "x"}, "ads": [_ad()]}, {}, 422,
     "context.ad_id"),
    ("unknown ad group", "/v1/score", {"ads": [_ad(), _ad(nope=1)]}, {}, 422, "ads[1].features.nope"),
    ("float feature value", "/v1/score", {"ads": [_ad(ad_id=1.5)]}, {}, 422, "ads[0].features.ad_id"),
    ("boolean in a list", "/v1/score", {"ads": [_ad(category=["a", True])]}, {}, 422,
     "ads[0].features.category[1]"),
    ("object feature value", "/v1/score", {"context": {"city": {"a": 1}}, "ads": []}, {}, 422,
     "context.city"),
    ("id out of range", "/v1/score", {"ads": [_ad(ad_id=2**64)]}, {}, 422, "ads[0].features.ad_id"),
    ("negative id", "/v1/score", {"ads": [_ad(category=[1, -1])]}, {}, 422,
     "ads[0].features.category[1]"),
    ("dense missing", "/v1/score", {"ads": [{"features": {}}]}, {}, 422, "ads[0].dense"),
    ("dense wrong length", "/v1/score", {"ads": [_ad(), {"dense": [1.0]}]}, {}, 422, "ads[1].dense"),
    ("dense not finite float32", "/v1/score", {"ads": [{"dense": [0.5, 1e39]}]}, {}, 422,
     "ads[0].dense[1]"),
    ("dense overflow", "/v1/score", b'{"ads": [{"dense": [0.5, 1e400]}]}', {}, 422, "ads[0].dense[1]"),
    ("dense string", "/v1/score", {"ads": [{"dense": [0.5, "x"]}]}, {}, 422, "ads[0].dense[1]"),
    ("dense on a model without", "/v1/models/plain/score", {"ads": [{"dense": [1.0]}]}, {}, 422,
     "ads[0].dense"),
    ("too many ads", "/v1/score", {"ads": [_ad()] * 51}, {}, 413, "CTR_MAX_ADS"),
    ("too many values", "/v1/score", {"ads": [_ad(category=list(range(9)))]}, {}, 413,
     "ads[0].features.category"),
    ("too many context values", "/v1/score", {"context": {"city": ["c"] * 9}, "ads": []}, {}, 413,
     "context.city"),
    ("body too large", "/v1/score", {"ads": [], "pad": "x" * 300_000}, {}, 413, "CTR_MAX_BODY_BYTES"),
    ("unknown model", "/v1/models/nope/score", {"ads": []}, {}, 404, "'nope'"),
    ("bad model name", "/v1/models/..%2f/score", {"ads": []}, {}, 404, ""),
    ("unknown endpoint", "/v2/score", {"ads": []}, {}, 404, "/v2/score"),
]


@pytest.mark.parametrize("what,path,body,headers,status,text", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_name_the_field(api_server, what, path, body, headers, status, text):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json", **headers}
    r = api_server.client.post(path, content=content, headers=headers)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert isinstance(error, str) and text in error


def test_body_too_large_is_refused_by_its_declared_length(api_server):
    r = api_server.client.post("/v1/score", content=b"x" * 200_001,
                               headers={"content-type": "application/json"})
    assert r.status_code == 413 and "200001 bytes" in r.json()["error"]


def test_wrong_method(api_server):
    r = api_server.client.get("/v1/score")
    assert r.status_code == 405 and "GET /v1/score" in r.json()["error"]


def test_models_list_and_one(api_server):
    body = api_server.client.get("/v1/models").json()
    by_name = {m["name"]: m for m in body["models"]}
    assert set(by_name) == {"ctr", "plain"}
    for m in by_name.values():
        assert m["kind"] == "native" and m["state"] == "live" and len(m["md5"]) == 32
        assert m["loaded_at"].endswith("Z")
    assert by_name["ctr"]["version"] == "v1"
    one = api_server.client.get("/v1/models/plain").json()
    assert one["version"] == "p1" and one["versions"] == ["p1"]
    r = api_server.client.get("/v1/models/nope")
    assert r.status_code == 404 and "'nope'" in r.json()["error"]


@pytest.mark.parametrize("header,status,text", [
    (None, 401, "Bearer"),
    ("Basic dXNlcjpwYXNz", 401, "Bearer"),
    ("Bearer wrong-token", 401, "wrong admin token"),
    (f"Bearer {ADMIN_TOKEN}x", 401, "wrong admin token"),
])
@pytest.mark.parametrize("action", ["reload", "rollback"])
def test_admin_endpoints_need_the_token(api_server, action, header, status, text):
    headers = {"Authorization": header} if header else {}
    r = api_server.client.post(f"/v1/models/ctr/{action}", headers=headers)
    assert r.status_code == status and text in r.json()["error"]
    assert r.headers.get("www-authenticate") == "Bearer"


def test_admin_reload_with_the_token(api_server):
    r = api_server.admin("POST", "/v1/models/ctr/reload")
    assert r.status_code == 200, r.text
    assert r.json()["version"] == "v1" and r.json()["changed"] is False
    r = api_server.admin("POST", "/v1/models/ctr/rollback")
    assert r.status_code == 409 and "no previous version" in r.json()["error"]
    r = api_server.admin("POST", "/v1/models/nope/reload")
    assert r.status_code == 404


def test_health_ready_metrics(api_server):
    assert api_server.client.get("/healthz").json() == {"status": "ok"}
    ready = api_server.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["models"] == {"ctr": "v1", "plain": "p1"}
    api_server.client.post("/v1/score", json={"ads": [_ad()]})
    api_server.client.post("/v1/models/nope/score", json={"ads": []})
    text = api_server.client.get("/metrics").text
    assert 'ctr_requests_total{model="ctr",status="200",version="v1"}' in text
    assert 'ctr_requests_total{model="-",status="404",version="-"}' in text
    assert 'ctr_request_seconds_bucket{le="5e-05",model="ctr"}' in text
    assert 'ctr_request_ads_bucket' in text and "ctr_requests_in_flight" in text
    assert 'ctr_model_live{kind="native",md5=' in text
    assert 'ctr_model_loads_total{model="ctr",result="ok"} 1.0' in text


def test_openapi_describes_the_score_body(api_server):
    doc = api_server.client.get("/openapi.json").json()
    body = doc["paths"]["/v1/score"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/ScoreRequest"}
    schemas = doc["components"]["schemas"]
    assert schemas["ScoreRequest"]["required"] == ["ads"]
    assert set(schemas["Ad"]["properties"]) == {"id", "features", "dense"}
    assert "ScoreResponse" in schemas and "ErrorBody" in schemas
    assert set(doc["paths"]) >= {"/v1/models/{name}/score", "/v1/models", "/v1/models/{name}",
                                 "/v1/models/{name}/reload", "/v1/models/{name}/rollback",
                                 "/healthz", "/readyz", "/metrics"}
    assert "swagger-ui" in api_server.client.get("/docs").text


@pytest.mark.parametrize("name", ["%24bad", ".hidden", "-x", "a%20b", "x" * 200])
def test_odd_model_names_are_404_everywhere(api_server, name):
    assert api_server.client.get(f"/v1/models/{name}").status_code == 404
    assert api_server.client.post(f"/v1/models/{name}/score", json={"ads": []}).status_code == 404
    for action in ("reload", "rollback"):
        r = api_server.admin("POST", f"/v1/models/{name}/{action}")
        assert r.status_code == 404 and r.json()["error"]
