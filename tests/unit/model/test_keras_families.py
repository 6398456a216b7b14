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

from ...graph_models import FAMILY_GROUPS, family_request  # noqa: E402

GROUPS = FAMILY_GROUPS


@pytest.mark.parametrize("family", FAMILIES)
def test_keras_family_to_package_to_engine(tmp_path, family):
    spec = KerasFamilySpec(family, GROUPS, dense_dim=2, hidden=(16, 8), rank=4, wide_rows=97,
                           serving_values={"position": "1"})
    model = build_keras_family(spec, seed=1)
    engine = GraphEngine(load_package(export_keras(tmp_path / family, model, spec, name="k",
                                                   version="v1")))
    rng = np.random.default_rng(2)
    for n in (1, 9):  # ids near 2**64 too: two's complement in the int64 tensors
        ctx, ads = family_request(rng, n, huge_ids=True)
        want = model.predict(serving_tensors(spec, ctx, ads), verbose=0)
        got = engine.score_outputs(ctx, ads)
        assert set(got) == set(want)
        for name in got:
            np.testing.assert_allclose(got[name], np.asarray(want[name]).reshape(-1), atol=1e-5,
                                       err_msg=name)
