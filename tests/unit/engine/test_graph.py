"""The graph engine (format 2 model families) against the float64 reference written from the
textbook definitions (``scoring.model.reference_graph``: FM by its pair sum, cross layers with
``W = u @ v`` formed, the wide part as a loop over ids)."""

from __future__ import annotations

import numpy as np
import pytest

from scoring.engine.graph import GraphEngine
from scoring.model.families import FAMILIES, random_family
from scoring.model.package import load_package
from scoring.model.reference_graph import graph_outputs


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    path = random_family(tmp_path_factory.mktemp(request.param) / "p", request.param,
                         bucket_shift=8, hidden=(48, 32, 16), cross_layers=2, rank=8)
    pkg = load_package(path)
    return pkg, GraphEngine(pkg)


def _request(rng, n, *, position_every=2):
    ctx = {"user_id": f"u{rng.integers(50)}", "age": str(rng.integers(5)),
           "city": [f"c{rng.integers(9)}" for _ in range(rng.integers(0, 3))]}
    ads = []
    for i in range(n):
        feats = {"ad_id": f"a{rng.integers(300)}", "category": [f"k{rng.integers(20)}"] * (i % 3)}
        if i % position_every:
            feats["position"] = str(1 + i % 6)
        ads.append({"features": feats})
    return ctx, ads


@pytest.mark.parametrize("n", [1, 2, 7, 96, 130])
def test_every_output_matches_the_float64_reference(family, n):
    pkg, engine = family
    rng = np.random.default_rng(n)
    ctx, ads = _request(rng, n)
    want = graph_outputs(pkg, ctx, ads)
    got = engine.score_outputs(ctx, ads)
    assert set(got) == set(want) == {o.name for o in pkg.manifest.graph.outputs}
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-6, rtol=1e-5, err_msg=name)
    np.testing.assert_array_equal(engine.score(ctx, ads), got[pkg.manifest.graph.primary])


def test_a_request_of_a_ads_equals_a_one_ad_requests(family):
    pkg, engine = family
    ctx, ads = _request(np.random.default_rng(3), 20)
    together = engine.score_outputs(ctx, ads)
    for i, ad in enumerate(ads):
        alone = engine.score_outputs(ctx, [ad])
        for name in together:
            assert alone[name][0] == pytest.approx(float(together[name][i]), abs=2e-7)


@pytest.mark.parametrize("dense_dim", [0, 2])
def test_every_op_pooling_and_output_kind(tmp_path, dense_dim):
    """Weighted, sqrtn, mean and sum pooling, a table shared by two groups, a serving value, a
    low-rank and a full cross layer, FM and wide parts split by side, an add, a product, and an
    output that ignores the position although its blocks read it (its own instances)."""
    import json

    from scoring.model.writer import write_package

    from ...graph_models import mixed_graph, mixed_request

    base = mixed_graph(tmp_path / "m", dense_dim=dense_dim)
    manifest = json.loads((base / "manifest.json").read_text())
    manifest["outputs"].append({"name": "pctr_unplaced", "from": "logit", "activation": "none",
                                "ignores": ["position"]})
    arrays = {p.relative_to(base).as_posix(): np.load(p) for p in base.rglob("*.npy")}
    pkg = load_package(write_package(tmp_path / "m2", manifest, arrays))
    engine = GraphEngine(pkg)
    rng = np.random.default_rng(dense_dim)
    for n in (1, 3, 97, 200):
        ctx, ads = mixed_request(rng, n, dense_dim)
        want = graph_outputs(pkg, ctx, ads)
        got = engine.score_outputs(ctx, ads)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], atol=2e-6, rtol=2e-5, err_msg=name)
    # the position is ignored: the same answer whatever position the ad says
    ctx, ads = mixed_request(rng, 4, dense_dim)
    moved = [{**ad, "features": {**ad["features"], "position": "5"}} for ad in ads]
    a, b = engine.score_outputs(ctx, ads), engine.score_outputs(ctx, moved)
    np.testing.assert_array_equal(a["pctr_unplaced"], b["pctr_unplaced"])
    np.testing.assert_array_equal(a["pcvr"], b["pcvr"])
    assert not np.array_equal(a["pctr"], b["pctr"])


def test_weighted_values_are_checked_and_named(tmp_path):
    from scoring.errors import InvalidRequest

    from ...graph_models import mixed_graph, mixed_request

    pkg = load_package(mixed_graph(tmp_path / "m"))
    engine = GraphEngine(pkg)
    ctx, ads = mixed_request(np.random.default_rng(0), 2)
    bad = [({**ctx, "clicked": {"ids": ["a", "b"], "weights": [1.0]}}, "context.clicked.weights: expected 2"),
           ({**ctx, "clicked": {"ids": ["a"], "weights": [float("inf")]}}, r"context.clicked.weights\[0\]"),
           ({**ctx, "clicked": {"ids": ["a"]}}, "context.clicked: expected"),
           ({**ctx, "user_id": {"ids": ["a"], "weights": [1.0]}}, "context.user_id: .* weighted_sum"),
           ({**ctx, "clicked": {"ids": [1.5], "weights": [1.0]}}, r"context.clicked.ids\[0\]")]
    for c, message in bad:
        with pytest.raises(InvalidRequest, match=message):
            engine.score(c, ads)
    # a weighted group sent as plain ids pools them with weight 1
    plain = {**ctx, "clicked": ["a1", "a2"]}
    ones = {**ctx, "clicked": {"ids": ["a1", "a2"], "weights": [1.0, 1.0]}}
    np.testing.assert_array_equal(engine.score(plain, ads), engine.score(ones, ads))


def test_models_with_no_context_or_no_ad_groups(tmp_path):
    from scoring.model.writer import write_package

    rng = np.random.default_rng(4)
    for sides in (("ad", "ad"), ("context", "context")):
        manifest = {
            "format": "ctr-model", "format_version": 2, "name": "m", "version": "v1",
            "tables": {"t": {"file": "t.npy", "rows": 30, "dim": 4}},
            "groups": [{"name": "a", "side": sides[0], "table": "t", "pooling": "sum"},
                       {"name": "b", "side": sides[1], "table": "t", "pooling": "mean"}],
            "dense_dim": 1,
            "blocks": [{"name": "x", "op": "concat", "inputs": ["@groups", "@dense"]},
                       {"name": "fm", "op": "fm2", "inputs": ["@groups"]},
                       {"name": "deep", "op": "mlp", "input": "x", "layers": [
                           {"weight": "w0.npy", "bias": "b0.npy", "activation": "relu"},
                           {"weight": "w1.npy", "bias": "b1.npy", "activation": "none"}]},
                       {"name": "logit", "op": "add", "inputs": ["deep", "fm"]}],
            "outputs": [{"name": "pctr", "from": "logit", "activation": "sigmoid"}]}
        arrays = {"t.npy": rng.standard_normal((30, 4)).astype(np.float32),
                  "w0.npy": rng.standard_normal((9, 8)).astype(np.float32),
                  "b0.npy": rng.standard_normal(8).astype(np.float32),
                  "w1.npy": rng.standard_normal((8, 1)).astype(np.float32),
                  "b1.npy": rng.standard_normal(1).astype(np.float32)}
        pkg = load_package(write_package(tmp_path / sides[0], manifest, arrays))
        engine = GraphEngine(pkg)
        side_ctx = {"a": "x", "b": ["y", "z"]} if sides[0] == "context" else {}
        feats = {"a": "x", "b": ["y", "z"]} if sides[0] == "ad" else {}
        ads = [{"features": feats, "dense": [float(i)]} for i in range(5)]
        np.testing.assert_allclose(engine.score(side_ctx, ads),
                                   graph_outputs(pkg, side_ctx, ads)["pctr"], atol=1e-6)


def test_an_empty_list_is_sent_nothing_and_takes_the_serving_value(tmp_path):
    """Contract section 1 treats an absent group and an empty list alike; a group with a
    serving value takes it in both cases (the engine and the reference agree)."""
    from ...graph_models import mixed_graph, mixed_request

    pkg = load_package(mixed_graph(tmp_path / "m"))
    engine = GraphEngine(pkg)
    ctx, ads = mixed_request(np.random.default_rng(1), 1)
    base = {k: v for k, v in ads[0]["features"].items() if k != "position"}
    variants = [{"features": dict(base), "dense": ads[0]["dense"]},
                {"features": {**base, "position": []}, "dense": ads[0]["dense"]},
                {"features": {**base, "position": "1"}, "dense": ads[0]["dense"]}]
    got = engine.score_outputs(ctx, variants)
    want = graph_outputs(pkg, ctx, variants)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-6)
        assert got[name][0] == got[name][1] == got[name][2]
    plain = {**ctx, "clicked": ["a1", "a2"]}  # a weighted group sent as plain ids: weight 1
    np.testing.assert_allclose(engine.score(plain, variants),
                               graph_outputs(pkg, plain, variants)["pctr"], atol=1e-6)


def test_the_mlp_engine_and_the_offline_tools_refuse_a_graph_with_a_clear_error(tmp_path):
    from scoring.engine import Engine, make_engine
    from scoring.model.baseline import compute_baseline
    from scoring.model.manifest import PackageError
    from scoring.model.quantize import convert

    from ...graph_models import mixed_graph

    path = mixed_graph(tmp_path / "m")
    pkg = load_package(path)
    assert isinstance(make_engine(pkg), GraphEngine)
    with pytest.raises(PackageError, match="a format 2 model graph"):
        Engine(pkg)
    with pytest.raises(PackageError, match="a format 2 model graph"):
        compute_baseline(pkg, [{"context": {}, "ads": []}])
    with pytest.raises(PackageError, match="a format 2 model graph"):
        convert(path, tmp_path / "q", tables="int8")


def test_a_last_relu_layer_makes_a_graph_not_an_error(tmp_path):
    """Routing: only the MLP engine's exact shape goes to it; a concat + mlp whose last layer
    is ReLU (valid in the contract) is a model graph."""
    from scoring.model.writer import write_package

    rng = np.random.default_rng(0)
    manifest = {"format": "ctr-model", "format_version": 2, "name": "m", "version": "v1",
                "tables": {"t": {"file": "t.npy", "rows": 20, "dim": 3}},
                "groups": [{"name": "a", "side": "context", "table": "t", "pooling": "sum"},
                           {"name": "b", "side": "ad", "table": "t", "pooling": "sum"}],
                "dense_dim": 0,
                "blocks": [{"name": "x", "op": "concat", "inputs": ["@groups"]},
                           {"name": "deep", "op": "mlp", "input": "x", "layers": [
                               {"weight": "w0.npy", "bias": "b0.npy", "activation": "relu"},
                               {"weight": "w1.npy", "bias": "b1.npy", "activation": "relu"}]}],
                "outputs": [{"name": "pctr", "from": "deep", "activation": "sigmoid"}]}
    arrays = {"t.npy": rng.standard_normal((20, 3)).astype(np.float32),
              "w0.npy": rng.standard_normal((6, 5)).astype(np.float32),
              "b0.npy": rng.standard_normal(5).astype(np.float32),
              "w1.npy": rng.standard_normal((5, 1)).astype(np.float32),
              "b1.npy": rng.standard_normal(1).astype(np.float32)}
    pkg = load_package(write_package(tmp_path / "p", manifest, arrays))
    assert pkg.manifest.graph is not None
    ads = [{"features": {"b": f"v{i}"}} for i in range(9)]
    np.testing.assert_allclose(GraphEngine(pkg).score({"a": "u"}, ads),
                               graph_outputs(pkg, {"a": "u"}, ads)["pctr"], atol=1e-6)


def test_the_body_scanner_serves_single_head_graphs_and_hands_multi_head_ones_back(family):
    import orjson

    pkg, engine = family
    ctx, ads = _request(np.random.default_rng(8), 12)
    body = orjson.dumps({"request_id": "r", "context": ctx, "ads": ads})
    got = engine.score_json(body, 100, 16)
    if len(pkg.manifest.graph.outputs) > 1:
        assert got is None  # the caller decodes it and answers every output
    else:
        scores, rid = got
        assert rid == "r"
        np.testing.assert_array_equal(scores, engine.score(ctx, ads))
        weighted = orjson.dumps({"context": {**ctx, "user_id": {"ids": ["u"], "weights": [1]}}, "ads": ads})
        assert engine.score_json(weighted, 100, 16) is None  # an object value: the ordinary path
