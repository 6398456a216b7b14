"""The compiled engine against the float64 NumPy reference of the contract."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from scoring.engine import Engine
from scoring.errors import InvalidRequest
from scoring.model.export import Group, export_numpy
from scoring.model.package import load_package
from scoring.model.reference import mlp_forward, mlp_input, reference_scores
from scoring.model.writer import write_package

from ...models import make_model, random_request

TOL = 1e-5


@pytest.mark.parametrize("n_ads", [1, 2, 7, 8, 14, 100, 1000])
def test_engine_matches_reference(small_engine, small_package, n_ads):
    rng = np.random.default_rng(n_ads)
    ctx, ads = random_request(rng, small_package, n_ads)
    got = small_engine.score(ctx, ads)
    want = reference_scores(small_package, ctx, ads)
    assert got.shape == (n_ads,)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


@pytest.mark.parametrize("small_batch,chunk", [(0, 6), (1000, 96), (2, 12), (3, 7)])
def test_both_kernel_forms_and_chunking_agree(small_package, small_batch, chunk):
    engine = Engine(small_package, small_batch=small_batch, chunk=chunk)
    rng = np.random.default_rng(7)
    for n_ads in (1, 5, 6, 13, 40):
        ctx, ads = random_request(rng, small_package, n_ads)
        np.testing.assert_allclose(engine.score(ctx, ads), reference_scores(small_package, ctx, ads),
                                   atol=TOL, rtol=0)


def test_pooling_sum_mean_absent_and_empty(small_engine, small_package):
    ctx = {"user_id": ["u1", "u2", "u3"], "city": ["bj", "sh"]}
    ads = [
        {"features": {"ad_id": "a1", "category": ["c1", "c2", "c3"]}, "dense": [0.1, 0.2, 0.3]},
        {"features": {}, "dense": [0.0, 0.0, 0.0]},                        # all ad groups absent
        {"features": {"ad_id": [], "category": []}, "dense": [1.0, -1, 2]},  # empty lists
        {"features": {"category": "c9"}, "dense": [5, 5, 5]},
    ]
    np.testing.assert_allclose(small_engine.score(ctx, ads), reference_scores(small_package, ctx, ads),
                               atol=TOL, rtol=0)
    # an empty context is the same as a context with every group absent
    np.testing.assert_allclose(small_engine.score({}, ads), small_engine.score(None, ads), atol=0)
    np.testing.assert_allclose(small_engine.score({}, ads), reference_scores(small_package, {}, ads),
                               atol=TOL, rtol=0)


def test_mean_pooling_is_mean_and_sum_is_sum(small_package):
    """Repeating a value changes a sum-pooled group but not a mean-pooled one."""
    engine = Engine(small_package)
    base = {"features": {"ad_id": "x", "category": "c"}, "dense": [0, 0, 0]}
    twice_mean = {"features": {"ad_id": "x", "category": ["c", "c"]}, "dense": [0, 0, 0]}
    twice_sum = {"features": {"ad_id": ["x", "x"], "category": "c"}, "dense": [0, 0, 0]}
    s = engine.score({"user_id": "u"}, [base, twice_mean, twice_sum])
    assert s[0] == pytest.approx(s[1], abs=1e-7)
    assert abs(s[0] - s[2]) > 1e-6


def test_integer_ids_and_string_hashing(small_engine, small_package):
    from xxhash import xxh64_intdigest
    ctx = {"user_id": 2**64 - 1, "city": [0, 2**63, "bj"]}
    ads = [{"features": {"ad_id": xxh64_intdigest(b"a1"), "category": 12345678901234567890},
            "dense": [0, 0, 0]},
           {"features": {"ad_id": "a1", "category": 12345678901234567890}, "dense": [0, 0, 0]}]
    got = small_engine.score(ctx, ads)
    np.testing.assert_allclose(got, reference_scores(small_package, ctx, ads), atol=TOL, rtol=0)
    assert got[0] == got[1]  # a pre-hashed id equals the string it was hashed from


def test_inputs_that_zero_whole_layers(tmp_path):
    """Non-negative inputs, negative first-layer weights and a -100 bias make every first-layer
    ReLU output zero, so every ad gets the same pCTR, fixed by the later layers' biases alone;
    both kernel forms must handle a layer with nothing left after pruning."""
    path = make_model(tmp_path / "m", hidden=(16, 8))
    pkg = load_package(path)
    arrays = {}
    for layer, w, b in zip(pkg.manifest.layers, pkg.weights, pkg.biases):
        arrays[layer.weight] = np.array(w)
        arrays[layer.bias] = np.array(b)
    first = pkg.manifest.layers[0]
    arrays[first.weight] = -np.abs(arrays[first.weight])
    arrays[first.bias] = np.full_like(arrays[first.bias], -100.0)
    for g, t in zip(pkg.manifest.groups, pkg.tables):
        arrays[g.table] = np.abs(np.array(t))
    zpath = write_package(tmp_path / "z", dict(pkg.manifest.raw), arrays)
    zpkg = load_package(zpath)
    rng = np.random.default_rng(3)
    for small_batch in (0, 1000):
        engine = Engine(zpkg, small_batch=small_batch)
        ctx, ads = random_request(rng, zpkg, 9, drop=0.0)
        got = engine.score(ctx, ads)
        last_bias = float(zpkg.biases[-1][0])
        # the second hidden layer sees zeros only: its output is relu(b1); the pCTR is fixed
        h1 = np.maximum(0, np.array(zpkg.biases[1], dtype=np.float64))
        expected = 1 / (1 + np.exp(-(h1 @ np.array(zpkg.weights[2], dtype=np.float64) + last_bias)))
        np.testing.assert_allclose(got, np.full(9, expected[0]), atol=TOL)
        np.testing.assert_allclose(got, reference_scores(zpkg, ctx, ads), atol=TOL)


def test_empty_batch(small_engine):
    out = small_engine.score({"user_id": "u"}, [])
    assert out.shape == (0,)


def test_mlp_only_matches_reference(small_engine, small_package):
    rng = np.random.default_rng(11)
    n = 23
    x = rng.standard_normal((n, small_package.manifest.input_dim)).astype(np.float32)
    x[:, small_engine.ctx_input_columns] = x[0, small_engine.ctx_input_columns]  # one context
    got = small_engine.mlp(x[0, small_engine.ctx_input_columns], x[:, small_engine.ad_input_columns])
    np.testing.assert_allclose(got, mlp_forward(small_package, x), atol=TOL, rtol=0)


def test_concurrent_scoring_is_thread_safe(small_engine, small_package):
    rng = np.random.default_rng(5)
    requests = [random_request(rng, small_package, int(rng.integers(1, 60))) for _ in range(16)]
    expected = [reference_scores(small_package, c, a) for c, a in requests]
    errors = []

    def worker(offset):
        for i in range(40):
            k = (i + offset) % len(requests)
            got = small_engine.score(*requests[k])
            if np.abs(got - expected[k]).max() > TOL:
                errors.append(k)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.parametrize("ctx,ads,message", [
    ({"nope": "x"}, [], "context.nope: unknown context group 'nope'"),
    ({"ad_id": "x"}, [], "context.ad_id: 'ad_id' is an ad group"),
    ({}, [{"features": {"user_id": "u"}, "dense": [0, 0, 0]}], "ads[0].features.user_id: 'user_id' is a context group"),
    ({}, [{"features": {"zzz": 1}, "dense": [0, 0, 0]}], "ads[0].features.zzz: unknown ad group"),
    ({"user_id": -1}, [], "context.user_id: integer id must be 0 <= id < 2**64, got -1"),
    ({"user_id": 2**64}, [], "context.user_id: integer id must be 0 <= id < 2**64"),
    ({"city": ["a", 1.5]}, [], "context.city[1]: expected a string or an integer id, got a float"),
    ({"city": True}, [], "context.city: expected a string, an integer id or a list of them, got a boolean"),
    ({"city": None}, [], "context.city: expected a string, an integer id or a list of them, got null"),
    ({"city": {"a": 1}}, [], "context.city: expected a string, an integer id or a list of them"),
    ({"city": "\ud800"}, [], "context.city: string is not valid UTF-8"),
    ({}, [{"features": {}, "dense": [0, "x", 0]}], "ads[0].dense[1]: expected a number"),
    ({}, [{"features": {}, "dense": [0, float("nan"), 0]}], "ads[0].dense[1]: expected a finite"),
    ({}, [{"features": {}, "dense": [0, 0, 3.4e38]}], "ads[0].dense[2]: expected a finite number with |value| <= 1e+15"),
    ({}, [{"features": {}, "dense": [0, -1.0000001e15, 0]}], "ads[0].dense[1]: expected a finite number with |value| <= 1e+15"),
    ({}, [{"features": {}, "dense": [0, 0]}], "ads[0].dense: expected a list of 3 finite numbers, got 2 values"),
    ({}, [{"features": {}}], "ads[0].dense: expected a list of 3 finite numbers, got nothing"),
    ({}, [{"features": {}, "dense": [0, 0, 0]}, {"features": [1]}], "ads[1].features: expected an object"),
    ({}, [5], "ads[0]: expected an object with 'features'"),
])
def test_bad_requests_name_the_field(small_engine, ctx, ads, message):
    with pytest.raises(InvalidRequest) as err:
        small_engine.score(ctx, ads)
    assert message in str(err.value)
    assert err.value.status_code == 422


@pytest.mark.parametrize("hidden", [(300, 100, 17), (16, 15), (64, 48, 33)])
def test_layer_widths_that_do_not_fill_vectors(tmp_path, hidden):
    """Column blocks of 256/128/64/32/16 neurons and the scalar leftovers, in both forms."""
    pkg = load_package(make_model(tmp_path / "w", hidden=hidden, dense_dim=2, seed=len(hidden)))
    rng = np.random.default_rng(1)
    for small_batch in (0, 1000):
        engine = Engine(pkg, small_batch=small_batch, chunk=12)
        for n_ads in (1, 3, 7, 8, 20, 29):
            ctx, ads = random_request(rng, pkg, n_ads)
            np.testing.assert_allclose(engine.score(ctx, ads), reference_scores(pkg, ctx, ads),
                                       atol=TOL, rtol=0)


@pytest.mark.parametrize("ctx,ad,dense_dim", [
    ((), (("ad_id", 100, 8, "sum"),), 0),                 # no context groups
    ((("user_id", 100, 8, "sum"),), (), 3),               # no ad groups: dense features only
    ((("user_id", 100, 8, "mean"),), (), 0),              # every ad scores the same
])
def test_models_with_an_empty_side(tmp_path, ctx, ad, dense_dim):
    pkg = load_package(make_model(tmp_path / "e", ctx=ctx, ad=ad, dense_dim=dense_dim))
    engine = Engine(pkg)
    rng = np.random.default_rng(2)
    c, ads = random_request(rng, pkg, 9)
    np.testing.assert_allclose(engine.score(c, ads), reference_scores(pkg, c, ads), atol=TOL, rtol=0)
    if not dense_dim:
        import orjson
        got = engine.score_json(orjson.dumps({"context": c, "ads": ads}), 100, 10)
        assert got is not None
        np.testing.assert_array_equal(got[0], engine.score(c, ads))


def _float32_forward(pkg, ctx, ads) -> np.ndarray:
    """The MLP in float32 NumPy, NaN-preserving ReLU: what float32 arithmetic makes of the net."""
    h = np.stack([mlp_input(pkg, ctx, ad) for ad in ads]).astype(np.float32)
    for layer, w, b in zip(pkg.manifest.layers, pkg.weights, pkg.biases):
        h = h @ np.asarray(w, np.float32) + np.asarray(b, np.float32)
        h = np.where(h <= 0, np.float32(0), h) if layer.activation == "relu" else 1 / (1 + np.exp(-h))
    return h[:, 0]


@pytest.mark.parametrize("small_batch", [0, 1000])
def test_an_overflow_inside_the_net_is_refused_not_scored(tmp_path, small_batch):
    """Dense rows of layer 1 near 1e25 and dense values at the 1e15 bound overflow float32 in
    layer 1 (+-inf), and the next layer adds infinities of both signs (NaN). The engine must not
    answer a number for that ad: it names the first such ad (422); other ads score as before."""
    base = load_package(make_model(tmp_path / "base", dense_dim=3, seed=4, hidden=(16, 16)))
    weights = [np.array(w) for w in base.weights]
    weights[0][-3:, :] *= np.float32(1e25)  # the dense rows are the last ones of the input
    groups = [Group(g.name, g.side, np.array(tab), g.pooling)
              for g, tab in zip(base.manifest.groups, base.tables)]
    pkg = load_package(export_numpy(tmp_path / "huge", name="ctr", version="v1", groups=groups,
                                    weights=weights, biases=[np.array(b) for b in base.biases],
                                    dense_dim=3))
    engine = Engine(pkg, small_batch=small_batch, chunk=12)
    fine = {"features": {"ad_id": "a", "category": ["x", "y"]}, "dense": [0, 0, 0]}
    wild = {"features": {"ad_id": "b"}, "dense": [1e15, -1e15, 1e15]}
    ctx = {"user_id": "u1"}
    with np.errstate(over="ignore", invalid="ignore"):
        f32 = _float32_forward(pkg, ctx, [fine, wild])
    assert np.isfinite(f32[0]) and np.isnan(f32[1])  # the oracle: float32 makes a NaN of it
    for ads, bad in (([fine] * 7 + [wild], 7), ([wild, fine], 0)):
        with pytest.raises(InvalidRequest, match=rf"ads\[{bad}\]: the model's output is not a number"):
            engine.score(ctx, ads)
    np.testing.assert_allclose(engine.score(ctx, [fine] * 3),
                               reference_scores(pkg, ctx, [fine] * 3), atol=TOL, rtol=0)
