"""Layered experiments: config validation, independence across layers (chi-square over 100k
keys, scipy as the oracle), exclusivity, shares, precedence, conditions, the SRM statistic."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest
from scipy import stats
from xxhash import xxh64_intdigest

from scoring.upstream.assign import Assigner
from scoring.upstream.config import ConfigError, parse_models_config
from scoring.upstream.layers import ModelRef
from scoring.upstream.srm import chi2_sf, srm_test

N_KEYS = 100_000
MODELS = [{"name": "ctr"}, {"name": "ctr2"}, {"name": "deep", "kind": "tfserving",
                                               "url": "http://tfs:8501", "fallback": "ctr"}]


def config(**extra):
    return parse_models_config({"models": MODELS, "default": "ctr", **extra}).layered


def two_layers() -> dict:
    return {"layers": [
        {"name": "ranking", "salt": "a", "arms": [
            {"name": "r1", "share": 20, "set": {"model": "ctr2"}},
            {"name": "r2", "share": 30, "set": {"model": "deep"}}]},
        {"name": "budget", "salt": "b", "arms": [
            {"name": "d40", "share": 25, "set": {"deadline_ms": 40}},
            {"name": "d80", "share": 25, "set": {"deadline_ms": 80}}]}]}


def bucket(salt: str, key: str) -> int:  # the contract's definition, written out again
    return xxh64_intdigest((salt + key).encode("utf-8"), seed=0) % 10_000


def assignments(cfg, n=N_KEYS, context=None):
    a = Assigner(cfg)
    return [a.assign(None, {"user_id": f"user-{i}", **(context or {})}) for i in range(n)]


def test_layers_are_independent_chi_square_over_100k_keys():
    rows = assignments(config(**two_layers()))
    table = Counter((r.arms["ranking"], r.arms["budget"]) for r in rows)
    ranking, budget = ["default", "r1", "r2"], ["default", "d40", "d80"]
    observed = np.array([[table[(x, y)] for y in budget] for x in ranking])
    p = stats.chi2_contingency(observed).pvalue
    assert p > 1e-3, (p, observed)
    # the same test sees dependence when two layers share a salt (which the config refuses;
    # built by hand here): it can fail
    cfg = config(**two_layers())
    twin = dataclasses.replace(cfg, layers=(cfg.layers[0], dataclasses.replace(cfg.layers[1], salt="a")))
    rows = assignments(twin, n=20_000)
    table = Counter((r.arms["ranking"], r.arms["budget"]) for r in rows)
    observed = np.array([[table[(x, y)] for y in budget] for x in ranking])
    assert stats.chi2_contingency(observed).pvalue < 1e-10


def test_shares_are_accurate_and_arms_exclusive_within_a_layer():
    cfg = config(**two_layers())
    rows = assignments(cfg)
    for layer, shares in (("ranking", {"r1": 0.2, "r2": 0.3, "default": 0.5}),
                          ("budget", {"d40": 0.25, "d80": 0.25, "default": 0.5})):
        counts = Counter(r.arms[layer] for r in rows)
        assert sum(counts.values()) == N_KEYS  # every key in exactly one arm of the layer
        for arm, share in shares.items():
            sigma = (share * (1 - share) / N_KEYS) ** 0.5
            assert abs(counts[arm] / N_KEYS - share) < 4 * sigma, (layer, arm, counts)
    # the arm is the one whose consecutive range holds the bucket, by the definition
    ranges = {"r1": range(0, 2000), "r2": range(2000, 5000)}
    for i, r in enumerate(rows[:5000]):
        b = bucket("a", f"user-{i}")
        expected = next((arm for arm, rng in ranges.items() if b in rng), "default")
        assert r.arms["ranking"] == expected


def test_parameters_follow_precedence_experiment_launch_default():
    cfg = config(launch={"model": "ctr2", "deadline_ms": 70}, **two_layers())
    for r in assignments(cfg, n=3000):
        model = {"r1": ModelRef("ctr2"), "r2": ModelRef("deep")}.get(r.arms["ranking"], ModelRef("ctr2"))
        deadline = {"d40": 40, "d80": 80}.get(r.arms["budget"], 70)
        assert r.params == {"model": model, "deadline_ms": deadline}, r
    plain = config(**two_layers())
    r = Assigner(plain).assign(None, {})  # no unit: every layer's default, the file's default
    assert r.params == {"model": ModelRef("ctr")} and r.arms == {"ranking": "default", "budget": "default"}


def test_exclusive_domain_never_overlaps_a_layer():
    cfg = config(exclusive={"salt": "x", "arms": [{"name": "big-change", "share": 10,
                                                   "set": {"model": "deep", "deadline_ms": 200}}]},
                 **two_layers())
    rows = assignments(cfg, n=20_000)
    inside = [r for r in rows if "exclusive" in r.arms]
    assert abs(len(inside) / 20_000 - 0.10) < 0.01
    for r in inside:
        assert set(r.arms) == {"exclusive"} and r.params == {"model": ModelRef("deep"), "deadline_ms": 200}
    for r in rows:
        if "exclusive" not in r.arms:
            assert set(r.arms) == {"ranking", "budget"}
    for i, r in enumerate(rows[:3000]):
        assert ("exclusive" in r.arms) == (bucket("x", f"user-{i}") < 1000)


def test_conditions_limit_who_enters_an_arm():
    cfg = config(layers=[{"name": "geo", "salt": "g", "arms": [
        {"name": "cn-only", "share": 50, "set": {"model": "ctr2"}, "when": {"context.country": ["cn", "hk"]}}]}])
    cn = assignments(cfg, n=4000, context={"country": "cn"})
    us = assignments(cfg, n=4000, context={"country": "us"})
    assert 1700 < sum(r.arms["geo"] == "cn-only" for r in cn) < 2300
    assert all(r.arms["geo"] == "default" and r.params["model"] == ModelRef("ctr") for r in us)
    # the bucket owner is counted for the sample-ratio check whatever the condition says
    assert sum(r.owners["geo"] == "cn-only" for r in us) == sum(r.arms["geo"] == "cn-only" for r in cn)


def test_request_id_and_context_field_units():
    cfg = config(layers=[{"name": "per-request", "unit": "request_id", "salt": "q",
                          "arms": [{"name": "a", "share": 50, "set": {"deadline_ms": 10}}]},
                         {"name": "per-city", "unit": "context.city", "salt": "c",
                          "arms": [{"name": "b", "share": 50, "set": {"model": "ctr2"}}]}])
    a = Assigner(cfg)
    for i in range(500):
        r = a.assign(f"req-{i}", {"city": "bj"})
        assert (r.arms["per-request"] == "a") == (bucket("q", f"req-{i}") < 5000)
        assert (r.arms["per-city"] == "b") == (bucket("c", "bj") < 5000)
    assert a.assign(7, {"city": 12}).arms["per-request"] == ("a" if bucket("q", "7") < 5000 else "default")


@pytest.mark.parametrize("extra, message", [
    ({"layers": [{"name": "l1", "arms": [{"name": "a", "share": 5, "set": {"model": "ctr2"}}]},
                 {"name": "l2", "arms": [{"name": "b", "share": 5, "set": {"model": "deep"}}]}]},
     "layers[1]: parameter 'model' is already owned by layer 'l1'"),
    ({"layers": [{"name": "l", "arms": [{"name": "a", "share": 5, "set": {"temperature": 1}}]}]},
     "layers[0].arms[0].set.temperature: unknown field"),
    ({"layers": [{"name": "l", "unit": "user", "arms": [{"name": "a", "share": 5, "set": {"model": "ctr2"}}]}]},
     "layers[0].unit: expected 'request_id' or 'context.<field>'"),
    ({"layers": [{"name": "l", "arms": [{"name": "a", "share": 60, "set": {"model": "ctr2"}},
                                        {"name": "b", "share": 50, "set": {"model": "deep"}}]}]},
     "shares add up to 110.00 %"),
    ({"layers": [{"name": "l", "arms": [{"name": "a", "share": 5, "set": {"model": "deep@3"}}]}]},
     "only a native model can be pinned"),
    ({"layers": [{"name": "l", "arms": [{"name": "a", "share": 5, "set": {"model": "nope@next"}}]}]},
     "'nope' is not a model of this file"),
    ({"layers": [{"name": "l", "arms": [{"name": "a", "share": 5, "set": {"model": "ctr2"},
                                         "when": {"country": "cn"}}]}]},
     "expected a condition on 'context.<field>'"),
    ({"layers": [{"name": "l", "arms": [{"name": "default", "share": 5, "set": {"model": "ctr2"}}]}]},
     "reserved"),
    ({"layers": [], "experiments": {"arms": [{"model": "deep", "share": 5}]}},
     "not both"),
    ({"launch": {"deadline_ms": 0}}, "launch.deadline_ms: expected an integer 1..60000"),
    ({"launch": {"fallback": "deep"}}, "launch.fallback 'deep': expected a native model of this file or 'none'"),
])
def test_bad_layer_configs_name_the_field(extra, message):
    with pytest.raises(ConfigError) as err:
        config(**extra)
    assert message in str(err.value)


def test_chi2_survival_matches_scipy():
    for dof in (1, 2, 3, 5, 10, 40):
        for x in (0.01, 0.5, 1.0, 3.0, 7.5, 20.0, 60.0, 150.0):
            assert chi2_sf(x, dof) == pytest.approx(stats.chi2.sf(x, dof), rel=1e-9, abs=1e-300)


def test_srm_alarm_on_a_skewed_arm_only():
    shares = {"default": 0.9, "canary": 0.1}
    rng = np.random.default_rng(3)
    fair = Counter(rng.choice(["default", "canary"], size=20_000, p=[0.9, 0.1]))
    ok = srm_test(fair, shares)
    assert not ok.alarm and ok.p_value > 1e-3
    skewed = {"default": 18_000 + 200, "canary": 2_000 - 200}  # the canary lost 10 % of its requests
    bad = srm_test(skewed, shares)
    obs = np.array([skewed["default"], skewed["canary"]])
    expected = obs.sum() * np.array([0.9, 0.1])
    assert bad.alarm and bad.p_value == pytest.approx(stats.chisquare(obs, expected).pvalue, rel=1e-6)
    assert not srm_test({"default": 90, "canary": 0}, shares).alarm  # too few to tell


def test_requests_without_the_unit_are_left_out_of_the_split_check():
    from prometheus_client import CollectorRegistry

    from scoring.upstream.experiments import _Experiments
    from scoring.upstream.metrics import LegMetrics

    cfg = config(exclusive={"salt": "x", "arms": [{"name": "e", "share": 10, "set": {"model": "ctr2"}}]},
                 layers=[{"name": "all", "salt": "a", "arms": [  # every bucket has an arm
                     {"name": "h1", "share": 50, "set": {"model": "ctr2"}},
                     {"name": "h2", "share": 50, "set": {"model": "deep"}}]}])
    a = Assigner(cfg)
    assert a.assign("r", {}).owners == {}  # no user_id: in no arm, not counted
    st = _Experiments(cfg, LegMetrics(CollectorRegistry(), (0.1,)), "test")
    for i in range(6000):
        st.count(a.assign(None, {"user_id": f"u{i}"} if i % 10 else {}))  # 10 % without the unit
    checks = st.check()
    assert not checks["all"].alarm and not checks["exclusive"].alarm, checks
    assert checks["all"].requests + checks["exclusive"].observed["e"] == 5400


@pytest.mark.parametrize("share", [float("inf"), float("nan"), -float("inf")])
def test_non_finite_shares_are_config_errors(share):
    with pytest.raises(ConfigError, match="share: expected a percentage"):
        config(layers=[{"name": "l", "arms": [{"name": "a", "share": share, "set": {"model": "ctr2"}}]}])


def test_twin_layers_and_a_legacy_default_arm_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="same unit and salt"):
        config(layers=[{"name": "l1", "salt": "s", "arms": [{"name": "a", "share": 5, "set": {"model": "ctr2"}}]},
                       {"name": "l2", "salt": "s", "arms": [{"name": "b", "share": 5, "set": {"deadline_ms": 9}}]}])
    with pytest.raises(ConfigError, match="reserved"):
        config(experiments={"arms": [{"name": "default", "model": "deep", "share": 5}]})
    from scoring.upstream.config import load_models_config

    bad = tmp_path / "models.yaml"
    bad.write_bytes(b"models:\n  - name: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_models_config(bad)
