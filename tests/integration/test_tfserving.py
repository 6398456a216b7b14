"""The TF Serving leg against a test server that speaks TF Serving's REST API on loopback."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from scoring.errors import InvalidRequest, NotReady, UpstreamError, UpstreamTimeout
from scoring.model.reference import reference_scores
from scoring.upstream.config import parse_models_config
from scoring.upstream.scorer import TFServingScorer

from ..fakes.tfserving import FakeTFServing
from ..models import random_request
from .server import free_port

FEATURES = {"context": ["user_id", "city"], "ad": ["ad_id", "category"], "dense_dim": 3}


@pytest.fixture
def fake(small_package):
    with FakeTFServing("ctr_tf", {1: small_package, 2: small_package},
                       labels={"stable": 1}) as server:
        yield server


def scorer(urls, fallback=None, **over) -> TFServingScorer:
    spec = {"name": "deep", "kind": "tfserving", "urls": urls, "model_name": "ctr_tf",
            "features": FEATURES, "deadline_ms": 1000, "sub_batch_size": 8, **over}
    models = [spec]
    if fallback is not None:
        spec["fallback"] = fallback.name
        models.append({"name": fallback.name})
    cfg = parse_models_config({"models": models}).get("deep")
    return TFServingScorer(cfg, (lambda: fallback) if fallback is not None else None)


@pytest.fixture
def make(request):
    made = []

    def build(*args, **kwargs):
        s = scorer(*args, **kwargs)
        made.append(s)
        return s
    yield build
    for s in made:
        s.close()


def request_of(package, n_ads, seed=0):
    ctx, ads = random_request(np.random.default_rng(seed), package, n_ads)
    for ad in ads:  # float32-exact dense values: the signature's DT_FLOAT loses nothing
        ad["dense"] = [float(np.float32(v)) for v in ad["dense"]]
    return ctx, ads


@pytest.mark.parametrize("fmt,n_ads,over", [("row", 1, {}), ("row", 37, {}),
                                             ("columnar", 37, {}), ("row", 20, {"version": 2}),
                                             ("row", 20, {"label": "stable"})])
def test_scores_via_tf_serving_equal_the_reference(fake, make, small_package, fmt, n_ads, over):
    s = make([fake.url], format=fmt, **over)
    ctx, ads = request_of(small_package, n_ads, seed=n_ads)
    ads[0]["features"]["ad_id"] = 2**64 - 3          # sent as a negative int64
    got = s.score(ctx, ads)
    np.testing.assert_allclose(got.scores, reference_scores(small_package, ctx, ads), rtol=1e-12, atol=0)
    assert (got.model, got.fallback_for) == ("deep", None)
    assert got.version == str(over.get("version", over.get("label", "latest")))
    assert fake.stats.predicts == -(-n_ads // 8) and fake.stats.rows == n_ads


def test_bad_request_fields_are_422_before_anything_is_sent(fake, make, small_package):
    s = make([fake.url])
    with pytest.raises(InvalidRequest, match=r"ads\[1\]\.features\.color: unknown ad group"):
        s.score({}, [{"features": {}, "dense": [1, 2, 3]}, {"features": {"color": "red"}, "dense": [1, 2, 3]}])
    assert fake.stats.predicts == 0
    assert s.score({}, []).scores.shape == (0,)


def test_sub_batches_run_concurrently_over_kept_alive_connections(fake, make, small_package):
    fake.faults.delay = 0.1
    ctx, ads = request_of(small_package, 32)
    s = make([fake.url], sub_batch_size=8, max_concurrency=4)
    s.score(ctx, ads)
    assert fake.stats.predicts == 4 and fake.stats.max_in_flight == 4
    assert fake.stats.overlap() > 0.05                  # the server saw them at the same time
    for _ in range(3):
        s.score(ctx, ads)
    assert fake.stats.connections == 4                   # the pool reused its connections

    fake.stats.intervals.clear()
    fake.stats.max_in_flight = 0
    serial = make([fake.url], sub_batch_size=8, max_concurrency=1)
    t0 = time.perf_counter()
    serial.score(ctx, ads)
    assert fake.stats.max_in_flight == 1 and fake.stats.overlap() == 0.0
    assert time.perf_counter() - t0 >= 0.4


def test_timeout_without_fallback_is_504_within_the_deadline(fake, make, small_package):
    fake.faults.delay = 1.0
    s = make([fake.url], deadline_ms=150)
    t0 = time.perf_counter()
    with pytest.raises(UpstreamTimeout) as err:
        s.score(*request_of(small_package, 20))
    assert time.perf_counter() - t0 < 0.5
    assert err.value.status_code == 504
    assert "TF Serving model 'deep' (ctr_tf)" in err.value.message and "150 ms" in err.value.message


def test_timeout_with_fallback_scores_natively_and_says_so(fake, make, small_package, small_engine):
    fake.faults.delay = 1.0
    s = make([fake.url], fallback=small_engine, deadline_ms=100)
    ctx, ads = request_of(small_package, 20)
    got = s.score(ctx, ads)
    assert (got.model, got.version, got.fallback_for) == ("ctr", "v1", "deep")
    assert "deadline" in got.fallback_reason
    np.testing.assert_array_equal(got.scores, small_engine.score(ctx, ads))
    assert s.fallbacks == 1


@pytest.mark.parametrize("fault,message", [
    ({"fail": 503}, "answered 503: Servable not available"),
    ({"malformed": True}, "bad predict response: malformed JSON"),
    ({"wrong_shape": True}, "expected 8 predictions (one per ad), got 9"),
])
def test_upstream_errors_are_502_or_fall_back(fake, make, small_package, small_engine, fault, message):
    for key, value in fault.items():
        setattr(fake.faults, key, value)
    ctx, ads = request_of(small_package, 8)
    with pytest.raises(UpstreamError) as err:
        make([fake.url]).score(ctx, ads)
    assert err.value.status_code == 502 and not isinstance(err.value, UpstreamTimeout)
    assert message in err.value.message
    got = make([fake.url], fallback=small_engine).score(ctx, ads)
    assert got.model == "ctr" and message in got.fallback_reason


def test_connection_refused_is_502(make, small_package):
    with pytest.raises(UpstreamError, match="ConnectError"):
        make([f"http://127.0.0.1:{free_port()}"]).score(*request_of(small_package, 4))


def test_signature_mismatch_is_not_retried_nor_held_against_the_host(fake, make, small_package):
    s = make([fake.url], inputs={"tensors": {"ad_id": "item_id"}}, breaker={"failures": 1})
    with pytest.raises(UpstreamError, match="answered 400: input tensor alias not found in signature: item_id"):
        s.score(*request_of(small_package, 4))
    assert fake.stats.predicts == 1 and s.client.upstreams[0].breaker.state == "closed"


def test_failed_sub_batch_is_retried_on_another_host(small_package, make):
    with FakeTFServing("ctr_tf", {1: small_package}) as bad, \
            FakeTFServing("ctr_tf", {1: small_package}) as good:
        bad.faults.fail = 503
        s = make([bad.url, good.url], breaker={"failures": 3, "cooldown_ms": 60_000})
        ctx, ads = request_of(small_package, 40)
        want = reference_scores(small_package, ctx, ads)
        for _ in range(4):
            np.testing.assert_allclose(s.score(ctx, ads).scores, want, rtol=1e-12)
        assert bad.stats.predicts == 3                  # then its circuit opened
        assert s.client.upstreams[0].breaker.state == "open"
        assert good.stats.predicts == 4 * 5


def test_breaker_opens_fails_fast_and_recovers(fake, make, small_package):
    s = make([fake.url], breaker={"failures": 2, "cooldown_ms": 300})
    ctx, ads = request_of(small_package, 4)
    fake.faults.fail = 503
    for _ in range(2):  # each request: one attempt + one retry on the only host
        with pytest.raises(UpstreamError):
            s.score(ctx, ads)
    assert fake.stats.predicts == 2 and s.client.upstreams[0].breaker.state == "open"
    t0 = time.perf_counter()
    with pytest.raises(UpstreamError, match="circuit open for all 1 upstream"):
        s.score(ctx, ads)
    assert time.perf_counter() - t0 < 0.2 and fake.stats.predicts == 2  # nothing was sent
    fake.faults.fail = None
    time.sleep(0.35)
    assert s.client.upstreams[0].breaker.state == "half_open"
    np.testing.assert_allclose(s.score(ctx, ads).scores, reference_scores(small_package, ctx, ads), rtol=1e-12)
    assert s.client.upstreams[0].breaker.state == "closed"


def test_status_shows_each_upstream(fake, make):
    dead = f"http://127.0.0.1:{free_port()}"
    st = make([fake.url, dead]).status(timeout=1.0)
    assert st["kind"] == "tfserving" and st["state"] == "available"
    up, down = st["upstreams"]
    assert up["reachable"] and [v["version"] for v in up["model_version_status"]] == ["2", "1"]
    assert up["model_version_status"][0]["state"] == "AVAILABLE" and up["breaker"] == "closed"
    assert not down["reachable"] and "ConnectError" in down["error"]
    missing = make([fake.url], model_name="nope").status()
    assert missing["state"] == "unavailable"
    assert missing["upstreams"][0]["error"] == "Could not find any versions of model nope"


def call(url, body=None):
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_test_server_speaks_tf_servings_rest_api(fake):
    base = fake.url + "/v1/models/ctr_tf"
    assert call(base + "/versions/1") == (200, {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})
    status, meta = call(base + "/labels/stable/metadata")
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert status == 200 and meta["model_spec"]["version"] == "1"
    assert sig["inputs"]["ad_id"]["dtype"] == "DT_INT64" and sig["inputs"]["dense"]["dtype"] == "DT_FLOAT"
    assert call(fake.url + "/v1/models/half:predict", b'{"instances": [1.0]}') == \
        (404, {"error": "Servable not found for request: Latest(half)"})
    assert call(base + "/versions/9:predict", b"{}")[0] == 404
    assert call(base + ":predict", b"{oops")[0] == 400
    assert call(base + ":predict", b"{}") == (400, {"error": "Missing 'inputs' or 'instances' key"})
    assert call(base + ":predict", b'{"instances": [], "inputs": {}}')[0] == 400
    assert call(base + ":predict", b'{"signature_name": "x", "inputs": {}}') == \
        (400, {"error": 'Serving signature name: "x" not found in signature def'})
    ragged = {"instances": [{"ad_id": [1, 2]}, {"ad_id": [3]}]}
    code, body = call(base + ":predict", json.dumps(ragged).encode())
    assert code == 400 and "error" in body
    fake.faults.fail = 503
    assert call(base + ":predict", b"{}")[0] == 503


def test_features_from_the_fallback_and_a_fallback_still_loading(fake, small_package, small_engine):
    spec = {"name": "deep", "kind": "tfserving", "urls": [fake.url], "model_name": "ctr_tf",
            "fallback": "ctr", "deadline_ms": 500}
    cfg = parse_models_config({"models": [{"name": "ctr"}, spec]}).get("deep")
    def still_loading():
        raise NotReady("model 'ctr' is not loaded yet")

    loaded = TFServingScorer(cfg, lambda: small_engine)
    loading = TFServingScorer(cfg, still_loading)
    try:
        ctx, ads = request_of(small_package, 9)
        got = loaded.score(ctx, ads)  # the groups come from the fallback's manifest
        assert loaded.features.context == ("user_id", "city") and loaded.features.ad == ("ad_id", "category")
        np.testing.assert_allclose(got.scores, reference_scores(small_package, ctx, ads), rtol=1e-12)
        with pytest.raises(NotReady, match="not loaded yet"):
            loading.score(ctx, ads)
        loading._features, loading._layout = loaded.features, loaded._layout
        fake.faults.fail = 503
        with pytest.raises(UpstreamError) as err:
            loading.score(ctx, ads)
        assert err.value.status_code == 502
        assert "answered 503" in err.value.message and "fallback unavailable: model 'ctr' is not loaded yet" in err.value.message
    finally:
        loaded.close()
        loading.close()


@pytest.mark.parametrize("fmt", ["row", "columnar"])
def test_a_multi_head_model_answers_every_output_and_falls_back_to_its_native_twin(tmp_path, make, fmt):
    """ESMM served by the TF Serving double (the float64 graph reference behind its REST API):
    the outputs named in ``inputs.outputs`` come back by name, the first as the scores; when
    TF Serving fails, the native graph engine of the same package answers the same outputs."""
    from scoring.engine.graph import GraphEngine
    from scoring.model.families import random_family
    from scoring.model.package import load_package
    from scoring.model.reference_graph import graph_outputs

    pkg = load_package(random_family(tmp_path / "esmm", "esmm", bucket_shift=10, hidden=(16, 8)))
    features = {"context": [g.name for g in pkg.manifest.groups if g.side == "context"],
                "ad": [g.name for g in pkg.manifest.groups if g.side == "ad"]}
    native = GraphEngine(pkg)
    ctx = {"user_id": "u1", "city": ["bj", "sh"]}
    ads = [{"features": {"ad_id": f"a{i}", "position": str(1 + i % 3)}} for i in range(11)]
    want = graph_outputs(pkg, ctx, ads)
    with FakeTFServing("esmm_tf", {1: pkg}) as server:
        s = make([server.url], native, model_name="esmm_tf", features=features, format=fmt,
                 inputs={"outputs": ["pctr", "pcvr", "pctcvr"]})
        got = s.score(ctx, ads)
        assert set(got.outputs) == {"pctr", "pcvr", "pctcvr"} and got.fallback_for is None
        for name in want:
            np.testing.assert_allclose(got.outputs[name], want[name], atol=1e-6)
        np.testing.assert_array_equal(got.scores, got.outputs["pctr"])
        server.faults.fail = 500
        fell = s.score(ctx, ads)
    assert fell.fallback_for == "deep" and set(fell.outputs) == set(want)
    for name in want:
        np.testing.assert_allclose(fell.outputs[name], want[name], atol=1e-6)


def test_tensorflow_itself_serves_the_keras_savedmodel_the_service_scores_natively(tmp_path, make):
    """The TF Serving double runs a real SavedModel exported from a Keras ESMM with TensorFlow:
    the service's int64 id tensors (two's complement of the contract's uint64 ids) reach
    TensorFlow's ``id % rows`` (bitcast back to uint64) exactly as the native engine hashes, so
    the two legs answer the same outputs; so does Keras' own predict()."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from scoring.engine.graph import GraphEngine
    from scoring.model.keras_families import (
        KerasFamilySpec,
        build_keras_family,
        export_keras,
        serving_tensors,
    )
    from scoring.model.package import load_package

    groups = [("user_id", "context", 200, 8, "sum"), ("city", "context", 30, 8, "mean"),
              ("ad_id", "ad", 300, 8, "sum"), ("position", "ad", 10, 8, "sum")]
    spec = KerasFamilySpec("esmm", groups, hidden=(16, 8), wide_rows=97,
                           serving_values={"position": "1"})
    model = build_keras_family(spec, seed=3)
    saved = tmp_path / "savedmodel"
    model.export(str(saved), format="tf_saved_model", verbose=False)
    native = GraphEngine(load_package(export_keras(tmp_path / "pkg", model, spec, name="esmm",
                                                   version="v1")))
    ctx = {"user_id": ["u1", 2**64 - 1], "city": "bj"}
    ads = [{"features": {"ad_id": [f"a{i}", 2**63 + i], **({"position": str(i)} if i % 2 else {})}}
           for i in range(13)]
    features = {"context": ["user_id", "city"], "ad": ["ad_id", "position"]}
    with FakeTFServing("esmm_tf", {1: str(saved)}) as server:
        s = make([server.url], model_name="esmm_tf", features=features,
                 inputs={"outputs": ["pctr", "pcvr", "pctcvr"]})
        got = s.score(ctx, ads)
    mine = native.score_outputs(ctx, ads)
    keras_out = model.predict(serving_tensors(spec, ctx, ads), verbose=0)
    for name in ("pctr", "pcvr", "pctcvr"):
        np.testing.assert_allclose(got.outputs[name], mine[name], atol=1e-6, err_msg=name)
        np.testing.assert_allclose(np.asarray(keras_out[name]).reshape(-1), mine[name], atol=1e-6)
