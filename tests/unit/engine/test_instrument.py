"""The instrumented forward pass (hidden layers' outputs for model health) against the float64
reference's hidden layers, on float32, int8-table and bf16 models, and its pCTRs against the
engine's own."""

from __future__ import annotations

import numpy as np
import pytest

from scoring.engine import Engine
from scoring.engine.instrument import hidden_outputs
from scoring.model.package import load_package
from scoring.model.quantize import convert
from scoring.model.reference import mlp_forward, mlp_input

from ...models import make_model, random_request


@pytest.fixture(scope="module")
def f32_model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("inst") / "m", hidden=(40, 24, 16), dense_dim=2)


@pytest.mark.parametrize("variant", ["float32", "int8", "bf16"])
def test_hidden_outputs_match_the_reference(tmp_path, f32_model, variant):
    if variant == "float32":
        pkg = load_package(f32_model)
    else:
        pkg = load_package(convert(f32_model, tmp_path / variant,
                                   **({"tables": "int8"} if variant == "int8" else {"mlp": "bf16"})))
    engine = Engine(pkg)
    rng = np.random.default_rng(2)
    for n in (1, 9, 120):
        ctx, ads = random_request(rng, pkg, n)
        hidden, p = hidden_outputs(engine, engine.layout.encode(ctx, ads))
        want_hidden: list = []
        want_p = mlp_forward(pkg, np.stack([mlp_input(pkg, ctx, ad) for ad in ads]), want_hidden)
        assert [h.shape for h in hidden] == [(n, 40), (n, 24), (n, 16)]
        if variant == "bf16":  # rounding ties aside (tests/models.py): almost every value exact
            for h, w in zip(hidden, want_hidden):
                assert (np.abs(h - w) <= 1e-4).mean() > 0.97
            continue
        for h, w in zip(hidden, want_hidden):
            np.testing.assert_allclose(h, w, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(p, want_p, atol=1e-6)
        np.testing.assert_allclose(p, engine.score(ctx, ads), atol=1e-6)
