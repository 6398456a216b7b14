"""Keras 3 / TensorFlow models of every family -> package -> graph engine, against Keras' own
``predict()`` on the tensors TF Serving would get (int64 ids in two's complement)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from scoring.engine.graph import GraphEngine  # noqa: E402
from scoring.model.families import FAMILIES  # noqa: E402
from scoring.model.keras_families import (  # noqa: E402
    KerasFamilySpec,
    build_keras_family,
    export_keras,
    serving_tensors,
)
from scoring.model.package import load_package  # noqa: E402

GROUPS = [("user_id", "context", 200, 8, "sum"), ("clicked", "context", 300, 8, "weighted_sum"),
          ("recent", "context", 40, 8, "sqrtn"), ("ad_id", "ad", 300, 8, "mean"),
          ("category", "ad", 50, 8, "sum"), ("position", "ad", 10, 8, "sum")]


def _request(rng, n):
    ctx = {"user_id": f"u{rng.integers(30)}",
           "clicked": {"ids": [f"a{rng.integers(50)}" for _ in range(3)],
                       "weights": [float(w) for w in rng.uniform(0, 2, 3)]},
           "recent": [f"k{rng.integers(9)}" for _ in range(int(rng.integers(0, 4)))]}
    ads = []
    for i in range(n):
        feats = {"ad_id": [f"a{rng.integers(50)}", 2**64 - 1 - i], "category": f"k{rng.integers(9)}"}
        if i % 3:
            feats["position"] = str(1 + i % 5)
        ads.append({"features": feats, "dense": [float(np.float32(v)) for v in rng.standard_normal(2)]})
    return ctx, ads


@pytest.mark.parametrize("family", FAMILIES)
def test_keras_family_to_package_to_engine(tmp_path, family):
    spec = KerasFamilySpec(family, GROUPS, dense_dim=2, hidden=(16, 8), rank=4, wide_rows=97,
                           serving_values={"position": "1"})
    model = build_keras_family(spec, seed=1)
    engine = GraphEngine(load_package(export_keras(tmp_path / family, model, spec, name="k",
                                                   version="v1")))
    rng = np.random.default_rng(2)
    for n in (1, 9):  # ids near 2**64 too: two's complement in the int64 tensors
        ctx, ads = _request(rng, n)
        want = model.predict(serving_tensors(spec, ctx, ads), verbose=0)
        got = engine.score_outputs(ctx, ads)
        assert set(got) == set(want)
        for name in got:
            np.testing.assert_allclose(got[name], np.asarray(want[name]).reshape(-1), atol=1e-5,
                                       err_msg=name)
