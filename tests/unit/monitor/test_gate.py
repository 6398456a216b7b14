"""The guarded swap on packages made to fail, and its statistics recomputed independently: the
float64 NumPy reference forward (``scoring.model.reference``, written from the textbook
definition, not the engine) and ``scipy.stats.ks_2samp``."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from scipy.stats import ks_2samp

from scoring.engine import Engine
from scoring.model.package import load_package
from scoring.model.quantize import generated_requests
from scoring.model.reference import mlp_forward, mlp_input
from scoring.monitor.gate import GateConfig, evaluate

from ...health_models import (
    huge_weights,
    shift_last_bias,
    shuffle_names,
    write,
    zero_layer,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    pkg = load_package(write(root / "probe", "p"))
    reference = [{"context": c, "ads": a} for c, a in generated_requests(pkg, 40, 50, seed=1)]
    traffic = [(c, a) for c, a in generated_requests(pkg, 120, 50, seed=7)]
    live_dir = write(root / "v1", "v1", None, reference)
    live = Engine(load_package(live_dir))
    samples = [live.layout.encode(c, a) for c, a in traffic]
    return dict(root=root, reference=reference, traffic=traffic, live=live, live_dir=live_dir,
                samples=samples)


def variant(world, name, change, baseline=True):
    return Engine(load_package(write(world["root"] / name, name, change,
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
    cand = variant(world, "bias", shift_last_bias)
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
    cand = variant(world, "huge", huge_weights, baseline=False)  # finite on disk: the loader takes it
    assert all(np.isfinite(np.asarray(x)).all() for x in cand.package.weights)
    d = judge(world, cand)
    assert not d.passed and any("not a finite number" in r for r in d.reasons), d.reasons
    # independent: in float64 the second layer's outputs exceed what float32 can hold
    hidden, _ = reference_outputs(cand.package, world["traffic"][:5])
    assert np.abs(hidden[1]).max() > np.finfo(np.float32).max


def test_a_zeroed_layer_is_held(world):
    d = judge(world, variant(world, "zeroed", zero_layer, baseline=False))
    assert not d.passed
    assert any("layer 2: dead-neuron share 100.0%" in r for r in d.reasons), d.reasons


def test_a_version_trained_on_shuffled_feature_names_is_held(world):
    """Same shapes, user_id and ad_id swapped: each name's table holds the other's embeddings.
    Its own baseline (computed by the exporter on the same reference requests) is consistent
    with it; the comparison with the live version on live traffic is what catches it."""
    d = judge(world, variant(world, "shuffled", shuffle_names))
    assert not d.passed, d.stats
    assert any("KS distance" in r or "log-odds shift" in r for r in d.reasons), d.reasons


def test_without_samples_the_reference_requests_fill_in(world):
    copy = Engine(load_package(world["live_dir"]))
    d = evaluate(copy, None, [], GateConfig(), version="v1")
    assert d.passed, d.reasons
    assert d.sources["reference"] == 40 and d.stats["band_rows"] == 2000
    assert "logit_shift" not in d.stats  # nothing to compare with


def test_a_package_without_baseline_or_requests_gets_generated_requests(world):
    d = evaluate(variant(world, "plain", None, baseline=False), world["live"], [],
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


def test_a_damaged_reference_requests_file_falls_back_to_generated_requests(world, tmp_path):
    """Raw-byte damage to health/requests.jsonl as it could arrive (checksums rewritten, so the
    package loads): the gate names it in its notes and still judges, on generated requests."""
    from scoring.model.baseline import REQUESTS
    from scoring.model.checksums import format_checksums, md5_file, package_files

    rng = np.random.default_rng(11)
    good = (world["live_dir"] / REQUESTS).read_bytes()
    damages = [good[: len(good) // 2], b"\xff\xfe" + good[2:], b"[" * 100_000, b'{"ads": 1}\n',
               bytes(rng.integers(0, 256, 4000, dtype=np.uint8)), b'{"context": {"user_id": 1e400}, "ads": [{}]}\n']
    for i, data in enumerate(damages):
        pkg_dir = shutil.copytree(world["live_dir"], tmp_path / f"d{i}", copy_function=shutil.copy2)
        (pkg_dir / REQUESTS).write_bytes(data)
        (pkg_dir / "checksums.md5").write_text(format_checksums(
            {name: md5_file(pkg_dir / name) for name in package_files(pkg_dir)}))
        d = evaluate(Engine(load_package(pkg_dir)), None, [], GateConfig(), version="v1")
        assert d.stats["rows"] >= GateConfig().min_rows, (i, d.notes)
        assert d.sources["generated"] > 0 or d.sources["reference"] > 0, i
        if d.sources["generated"]:
            assert d.notes, i  # why the reference requests were not used
