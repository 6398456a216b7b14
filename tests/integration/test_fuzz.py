"""Random bodies at the score endpoints of a real server: never a 5xx, always JSON."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .server import Server, install_model

GROUPS = ["user_id", "city", "ad_id", "category", "nope", ""]
json_scalars = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)
feature_values = (st.text(max_size=6) | st.integers(min_value=-5, max_value=2**64 + 5)
                  | st.lists(st.text(max_size=4) | st.integers(min_value=-3, max_value=2**64)
                             | json_scalars, max_size=12)
                  | json_values)
groups = st.dictionaries(st.sampled_from(GROUPS) | st.text(max_size=5), feature_values, max_size=5)
ads = st.fixed_dictionaries({}, optional={
    "id": st.text(max_size=4) | st.integers(),
    "features": groups | json_values,
    "dense": st.lists(st.floats(allow_nan=False) | st.integers(min_value=-2**70, max_value=2**70)
                      | json_scalars, max_size=4) | json_values,
})
good_value = st.text(max_size=6) | st.integers(min_value=0, max_value=2**64 - 1) | st.lists(
    st.text(max_size=4) | st.integers(min_value=0, max_value=2**64 - 1), max_size=10)
good_ad = st.fixed_dictionaries({
    "features": st.fixed_dictionaries({}, optional={"ad_id": good_value, "category": good_value}),
    "dense": st.lists(st.floats(min_value=-1e30, max_value=1e30), min_size=1, max_size=3)})
near_valid = st.fixed_dictionaries({"ads": st.lists(good_ad, max_size=5)}, optional={
    "context": st.fixed_dictionaries({}, optional={"user_id": good_value, "city": good_value}),
    "request_id": st.text(max_size=5)})
bodies = near_valid | st.fixed_dictionaries({}, optional={
    "request_id": json_scalars,
    "context": groups | json_values,
    "ads": st.lists(ads | json_values, max_size=6) | json_values,
}) | json_values


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    install_model(root / "repo", "v1", seed=1, dense_dim=2)
    server = Server(root / "repo", root / "server.log", args=["--max-values-per-group", "10"])
    try:
        yield server.wait()
    finally:
        server.stop()


def _check(server: Server, path: str, content: bytes) -> None:
    r = server.client.post(path, content=content, headers={"content-type": "application/json"})
    assert r.status_code < 500, (content[:300], r.text, server.log())
    body = r.json()
    if r.status_code == 200:
        assert isinstance(body["scores"], list) and body["version"] == "v1"
        assert all(0.0 <= s <= 1.0 for s in body["scores"])
    else:
        assert r.status_code in (400, 413, 422) and isinstance(body["error"], str), body


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=bodies, named=st.booleans())
def test_random_bodies_never_5xx(fuzz_server, body, named):
    path = "/v1/models/ctr/score" if named else "/v1/score"
    _check(fuzz_server, path, json.dumps(body).encode())


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=64) | st.text(max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass")))
def test_random_bytes_never_5xx(fuzz_server, raw):
    _check(fuzz_server, "/v1/score", raw)
