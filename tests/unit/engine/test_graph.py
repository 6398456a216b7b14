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
