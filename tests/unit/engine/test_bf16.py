"""The MLP at bf16 precision: inputs and weights rounded to bfloat16, float32 sums; on
AVX512-BF16 tiles where the CPU has them and on float32 kernels otherwise. Checked against the
float64 reference (which rounds on its own) and the rounding against torch's bfloat16."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scoring.engine import Engine, kernels
from scoring.engine.codegen import target_has
from scoring.model.package import load_package
from scoring.model.quantize import convert
from scoring.model.reference import bf16_round, reference_scores

from ...models import assert_bf16_close, make_model, random_request

TOL = 1e-5


def test_reference_rounding_is_torchs_bfloat16():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(10_000).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 10_000),
                        np.array([0.0, -0.0, 1.0, 3.4e38, -3.4e38, 1e-40, np.inf, -np.inf], np.float32)])
    want = torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()
    np.testing.assert_array_equal(bf16_round(x).astype(np.float32), want)


@pytest.fixture(scope="module")
def bf16_package(tmp_path_factory):
    root = tmp_path_factory.mktemp("bf16")
    src = make_model(root / "f32", hidden=(80, 48, 16), dense_dim=3,
                     ctx=(("user_id", 1000, 16, "sum"), ("city", 50, 7, "mean")),
                     ad=(("ad_id", 5000, 16, "sum"), ("category", 100, 8, "mean")))  # odd width
    return load_package(src), load_package(convert(src, root / "bf16", mlp="bf16"))


@pytest.mark.parametrize("prec", ["native-if-available", "portable"])
def test_bf16_engine_matches_the_reference(bf16_package, prec):
    base, pkg = bf16_package
    assert pkg.manifest.mlp_precision == "bf16"
    engine = Engine(pkg)
    want_prec = kernels.PREC_BF16_NATIVE if target_has("avx512bf16") else kernels.PREC_BF16
    assert engine.prec == want_prec
    if prec == "portable":
        engine.prec = kernels.PREC_BF16  # the float32 kernels on bf16 values
    rng = np.random.default_rng(1)
    worst_vs_f32 = 0.0
    got, want = [], []
    for n in (1, 2, 5, 7, 8, 13, 14, 100, 200):
        ctx, ads = random_request(rng, pkg, n)
        want.append(reference_scores(pkg, ctx, ads))
        got.append(engine.score(ctx, ads))
        worst_vs_f32 = max(worst_vs_f32, float(np.abs(want[-1] - reference_scores(base, ctx, ads)).max()))
    assert_bf16_close(np.concatenate(got), np.concatenate(want))
    assert worst_vs_f32 > 10 * TOL  # bf16 is not float32: the comparison above is not vacuous


def test_bf16_mlp_entry_does_not_touch_the_callers_arrays(bf16_package):
    _, pkg = bf16_package
    engine = Engine(pkg)
    rng = np.random.default_rng(2)
    x_ctx = rng.standard_normal(engine.ctx_width).astype(np.float32)
    x_ad = rng.standard_normal((9, engine.ad_width)).astype(np.float32)
    before = (x_ctx.copy(), x_ad.copy())
    engine.mlp(x_ctx, x_ad)
    np.testing.assert_array_equal(x_ctx, before[0])
    np.testing.assert_array_equal(x_ad, before[1])
