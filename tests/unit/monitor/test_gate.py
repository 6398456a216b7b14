"""The guarded swap on packages made to fail, and its statistics recomputed independently: the
float64 NumPy reference forward (``scoring.model.reference``, written from the textbook
definition, not the engine) and ``scipy.stats.ks_2samp``."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from scipy.stats import ks_2samp

from scoring.engine import Engine
from scoring.model.export import Group, export_numpy
from scoring.model.package import load_package
from scoring.model.quantize import generated_requests
from scoring.model.reference import mlp_forward, mlp_input
from scoring.monitor.gate import GateConfig, evaluate

HIDDEN = (32, 16)


def arrays(seed=0):
    """A model that relies on user_id (large embeddings, heavier first-layer rows) more than on
    ad_id, which has the same table shape: what a trained model looks like."""
    rng = np.random.default_rng(seed)
    spec = [("user_id", "context", 1000, 8, 2.0), ("city", "context", 50, 4, 0.5),
            ("ad_id", "ad", 1000, 8, 0.2), ("category", "ad", 100, 4, 0.5)]
    tables = {n: (rng.standard_normal((b, d)) * s).astype(np.float32) for n, _, b, d, s in spec}
    sides = {n: side for n, side, *_ in spec}
    sizes = [24, *HIDDEN, 1]
    weights = [(rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(np.float32)
               for a, b in zip(sizes[:-1], sizes[1:])]
    weights[0][:8] *= 2.0  # the user_id rows
    biases = [np.full(b, 0.05, np.float32) for b in sizes[1:-1]] + [np.array([-3.0], np.float32)]
    return tables, sides, weights, biases


def write(out, version, tables, sides, weights, biases, reference):
    groups = [Group(n, sides[n], t, "sum") for n, t in tables.items()]
    return export_numpy(out, name="ctr", version=version, groups=groups, weights=weights,
                        biases=biases, baseline_requests=reference)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    tables, sides, weights, biases = arrays()
    probe = write(root / "probe", "p", tables, sides, weights, biases, None)
    pkg = load_package(probe)
    reference = [{"context": c, "ads": a} for c, a in generated_requests(pkg, 40, 50, seed=1)]
    traffic = [(c, a) for c, a in generated_requests(pkg, 120, 50, seed=7)]
    live_dir = write(root / "v1", "v1", tables, sides, weights, biases, reference)
    live = Engine(load_package(live_dir))
    samples = [live.layout.encode(c, a) for c, a in traffic]
    return dict(root=root, arrays=(tables, sides, weights, biases), reference=reference,
                traffic=traffic, live=live, live_dir=live_dir, samples=samples)


def variant(world, name, change, baseline=True):
    tables, sides, weights, biases = (x.copy() for x in world["arrays"])
    tables = {k: v.copy() for k, v in tables.items()}
    weights = [w.copy() for w in weights]
    biases = [b.copy() for b in biases]
    change(tables, weights, biases)
    return Engine(load_package(write(world["root"] / name, name, tables, sides, weights, biases,
                                     world["reference"] if baseline else None)))


def judge(world, cand):
    return evaluate(cand, world["live"], world["samples"], GateConfig(), version="v2",
                    live_version="v1")


def reference_outputs(pkg, traffic):
    x = np.stack([mlp_input(pkg, c, ad) for c, ads in traffic for ad in ads])
    hidden: list = []
    p = mlp_forward(pkg, x, hidden)
    return hidden, p


def test_an_identical_copy_passes(world):
    copy = shutil.copytree(world["live_dir"], world["root"] / "copy", copy_function=shutil.copy2)
    d = judge(world, Engine(load_package(copy)))
    assert d.passed, d.reasons
    assert d.stats["logit_shift"] == 0.0 and d.stats["ks"] == 0.0
    assert d.sources == {"live": 120, "reference": 0, "generated": 0}


def test_a_shifted_last_bias_is_held_and_its_statistics_are_exact(world):
    def shift(t, w, b):
        b[-1] += 2.0
    cand = variant(world, "bias", shift)
    d = judge(world, cand)
    assert not d.passed and any("log-odds shift +2" in r for r in d.reasons), d.reasons
    # independent: float64 reference on the same rows, scipy's KS
    h_l, p_l = reference_outputs(world["live"].package, world["traffic"])
    h_c, p_c = reference_outputs(cand.package, world["traffic"])
    logit = lambda p: np.log(p) - np.log1p(-p)  # noqa: E731
    assert d.stats["logit_shift"] == pytest.approx(np.mean(logit(p_c) - logit(p_l)), abs=1e-4)
    assert d.stats["ks"] == pytest.approx(ks_2samp(p_c, p_l).statistic, abs=2e-3)
    assert d.stats["ks"] > 0.1 and any("KS distance" in r for r in d.reasons)
    for layer, h in zip(d.stats["layers"], h_c):
        assert layer["fluctuation"] == pytest.approx(h.std(axis=0).mean(), rel=1e-4)
        assert layer["zero_share"] == pytest.approx((h == 0).mean(), abs=1e-3)


def test_huge_weights_that_overflow_at_run_time_are_held(world):
    def huge(t, w, b):
        w[0] *= np.float32(1e30)
        w[1] *= np.float32(1e30)
    cand = variant(world, "huge", huge, baseline=False)  # finite on disk: the loader takes it
    assert all(np.isfinite(np.asarray(x)).all() for x in cand.package.weights)
    d = judge(world, cand)
    assert not d.passed and any("not a finite number" in r for r in d.reasons), d.reasons
    # independent: in float64 the second layer's outputs exceed what float32 can hold
    hidden, _ = reference_outputs(cand.package, world["traffic"][:5])
    assert np.abs(hidden[1]).max() > np.finfo(np.float32).max


def test_a_zeroed_layer_is_held(world):
    def zero(t, w, b):
        w[1][:] = 0
        b[1][:] = 0
    d = judge(world, variant(world, "zeroed", zero, baseline=False))
    assert not d.passed
    assert any("layer 2: dead-neuron share 100.0%" in r for r in d.reasons), d.reasons


def test_a_version_trained_on_shuffled_feature_names_is_held(world):
    """Same shapes, user_id and ad_id swapped: each name's table holds the other's embeddings.
    Its own baseline (computed by the exporter on the same reference requests) is consistent
    with it; the comparison with the live version on live traffic is what catches it."""
    def shuffle(t, w, b):
        t["user_id"], t["ad_id"] = t["ad_id"].copy(), t["user_id"].copy()
    d = judge(world, variant(world, "shuffled", shuffle))
    assert not d.passed, d.stats
    assert any("KS distance" in r or "log-odds shift" in r for r in d.reasons), d.reasons


def test_without_samples_the_reference_requests_fill_in(world):
    copy = Engine(load_package(world["live_dir"]))
    d = evaluate(copy, None, [], GateConfig(), version="v1")
    assert d.passed, d.reasons
    assert d.sources["reference"] == 40 and d.stats["band_rows"] == 2000
    assert "logit_shift" not in d.stats  # nothing to compare with


def test_a_package_without_baseline_or_requests_gets_generated_requests(world):
    d = evaluate(variant(world, "plain", lambda t, w, b: None, baseline=False), world["live"], [],
                 GateConfig(), version="v3", live_version="v1")
    assert d.passed, d.reasons
    assert d.sources["generated"] > 0 and d.stats["rows"] >= GateConfig().min_rows
    assert d.stats["logit_shift"] == pytest.approx(0.0, abs=1e-6)


def test_limits_are_configurable_and_checked():
    assert GateConfig.from_mapping({"logit_shift": 3, "band": False}).logit_shift == 3.0
    with pytest.raises(ValueError, match=r"CTR_GATE.ks: expected a non-negative number"):
        GateConfig.from_mapping({"ks": "high"})
    with pytest.raises(ValueError, match=r"CTR_GATE.kss: unknown setting"):
        GateConfig.from_mapping({"kss": 0.1})
    with pytest.raises(ValueError, match=r"enabled: expected a boolean"):
        GateConfig.from_mapping({"enabled": 1})
