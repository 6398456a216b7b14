"""The engine on compact tables (int8 row-wise, float16) and shared tables, against the float64
reference that implements the contract's dequantization on its own."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from scoring.engine import Engine
from scoring.model.package import load_package
from scoring.model.quantize import GroupArrays, convert, format2_package
from scoring.model.reference import reference_scores

from ...models import make_model, random_request

TOL = 1e-5
# widths that take every branch of the row accumulator: lanes of 16 and a scalar tail
GROUPS = dict(ctx=(("user_id", 1000, 24, "sum"), ("city", 50, 4, "mean")),
              ad=(("ad_id", 5000, 16, "sum"), ("category", 100, 40, "mean"), ("pos", 7, 8, "sum")))


@pytest.fixture(scope="module")
def float32_model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("compact") / "f32", hidden=(48, 16), **GROUPS)


@pytest.mark.parametrize("tables", ["int8", "fp16"])
def test_compact_tables_score_like_the_reference(tmp_path, float32_model, tables):
    pkg = load_package(convert(float32_model, tmp_path / tables, tables=tables))
    engine = Engine(pkg)
    rng = np.random.default_rng(7)
    for n in (1, 2, 7, 100, 250):
        ctx, ads = random_request(rng, pkg, n)
        want = reference_scores(pkg, ctx, ads)
        np.testing.assert_allclose(engine.score(ctx, ads), want, atol=TOL, rtol=0)
        fast = engine.score_json(orjson.dumps({"context": ctx, "ads": ads}), 1000, 64)
        assert fast is not None
        np.testing.assert_allclose(fast[0], want, atol=TOL, rtol=0)


def test_int8_reference_is_not_the_float32_one(tmp_path, float32_model):
    """The comparison above would pass vacuously if the reference ignored the codes: the int8
    model's scores differ from the float32 model's, and the engine follows the int8 ones."""
    base = load_package(float32_model)
    pkg = load_package(convert(float32_model, tmp_path / "q", tables="int8"))
    ctx, ads = random_request(np.random.default_rng(8), pkg, 50)
    diff = np.abs(reference_scores(pkg, ctx, ads) - reference_scores(base, ctx, ads)).max()
    assert diff > 10 * TOL
    np.testing.assert_allclose(Engine(pkg).score(ctx, ads), reference_scores(pkg, ctx, ads),
                               atol=TOL, rtol=0)


def test_groups_sharing_one_table(tmp_path):
    """Format 2: a context group and an ad group read the same (int8) table."""
    rng = np.random.default_rng(9)
    shared = rng.standard_normal((500, 16)).astype(np.float32)
    own = rng.standard_normal((300, 8)).astype(np.float32)
    groups = [GroupArrays("clicked_items", "context", "sum", "items", shared),
              GroupArrays("ad_id", "ad", "mean", "items", shared),
              GroupArrays("city", "context", "sum", "city", own)]
    weights = [rng.standard_normal((40, 32)).astype(np.float32) * 0.3,
               rng.standard_normal((32, 1)).astype(np.float32) * 0.3]
    biases = [rng.standard_normal(32).astype(np.float32) * 0.1, np.zeros(1, np.float32)]
    pkg = load_package(format2_package(tmp_path / "p", name="ctr", version="v1", groups=groups,
                                       weights=weights, biases=biases, dense_dim=0, tables="int8"))
    assert len(pkg.manifest.tables) == 2 and pkg.tables[0] is pkg.tables[1]
    engine = Engine(pkg)
    for n in (1, 9, 60):
        ctx, ads = random_request(rng, pkg, n)
        np.testing.assert_allclose(engine.score(ctx, ads), reference_scores(pkg, ctx, ads),
                                   atol=TOL, rtol=0)
