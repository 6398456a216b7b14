"""Windows of live rows against their definitions: moments, the expected AUC and the histogram
recomputed from all rows at once (brute force over pairs for the AUC), merged across parts and
across two stores sharing a directory (two worker processes); summaries against hand formulas;
alarm streaks."""

from __future__ import annotations

import numpy as np
import pytest

from scoring.model.health import LOGIT_BINS, LOGIT_RANGE
from scoring.monitor.alarms import Rules, update_streaks
from scoring.monitor.store import WindowStore
from scoring.monitor.window import Window, band_for, summarize

WIDTHS = (7, 3)
GROUPS = ("a", "b", "c")


def rows(rng, n):
    hidden = [np.maximum(rng.standard_normal((n, w)) * rng.uniform(0.5, 3, w) + 0.3, 0) for w in WIDTHS]
    logit = rng.standard_normal(n) * 1.5 - 3
    absent = rng.integers(0, n + 1, len(GROUPS)).astype(float)
    return hidden, logit, absent


def brute_auc(p):
    """Expected AUC over pairs of different rows, from the definition (O(n^2))."""
    p = np.asarray(p, float)
    q = 1 - p
    num = den = 0.0
    for i in range(p.size):
        for j in range(p.size):
            if i == j:
                continue
            w = p[i] * q[j]  # i clicks, j does not
            den += w
            num += w * (1.0 if p[i] > p[j] else 0.5 if p[i] == p[j] else 0.0)
    return num / den


def test_window_matches_all_rows_at_once_in_any_split():
    rng = np.random.default_rng(0)
    parts = [rows(rng, int(n)) for n in rng.integers(1, 60, 12)]
    a, b = Window(WIDTHS, GROUPS), Window(WIDTHS, GROUPS)
    for i, (h, z, ab) in enumerate(parts):
        (a if i % 2 else b).add(h, z, ab, now=100.0 + i)
    a.merge(Window.from_json(b.to_json()))  # through the file format, as between workers
    hs = [np.concatenate([p[0][k] for p in parts]) for k in range(len(WIDTHS))]
    z = np.concatenate([p[1] for p in parts])
    p = 1 / (1 + np.exp(-z))
    assert a.rows == z.size and a.requests == len(parts)
    for m, h in zip(a.layers, hs):
        np.testing.assert_allclose(m.mean, h.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(m.sigma, h.std(axis=0), rtol=1e-9)
        np.testing.assert_allclose(m.zero_share, (h == 0).mean(axis=0))
    edges = np.linspace(*LOGIT_RANGE, LOGIT_BINS + 1)
    np.testing.assert_array_equal(a.histogram(), np.histogram(np.clip(z, *LOGIT_RANGE), edges)[0])
    assert a.pctr_mean() == pytest.approx(p.mean(), rel=1e-12)
    assert a.expected_auc() == pytest.approx(brute_auc(p), abs=2e-3)
    np.testing.assert_allclose(a.absent, sum(x[2] for x in parts))
    assert (a.started, a.ended) == (100.0, 111.0)


def test_non_finite_rows_are_counted_and_kept_out():
    w = Window(WIDTHS, GROUPS)
    rng = np.random.default_rng(1)
    h, z, ab = rows(rng, 10)
    z[3] = np.nan
    z[7] = np.inf
    w.add(h, z, ab, now=1.0)
    assert (w.rows, w.nonfinite) == (8, 2)
    keep = np.isfinite(z)
    np.testing.assert_allclose(w.layers[0].mean, h[0][keep].mean(axis=0))


def test_summary_against_hand_formulas():
    rng = np.random.default_rng(2)
    h, z, ab = rows(rng, 500)
    w = Window(WIDTHS, GROUPS)
    w.add(h, z, ab, now=1.0)
    base_h = [x * 0.9 + 0.05 for x in rows(rng, 400)[0]]
    hist = np.histogram(np.clip(rng.standard_normal(400) - 3.5, *LOGIT_RANGE),
                        np.linspace(*LOGIT_RANGE, LOGIT_BINS + 1))[0].astype(float)
    baseline = {"window": 1000, "rows": 400,
                "layers": [{"fluctuation": x.std(axis=0).mean(), "zero_share": (x == 0).mean(),
                            "band": [x.std(axis=0).mean() * 0.98, x.std(axis=0).mean() * 1.03],
                            "neurons": {"mean": x.mean(axis=0).tolist(), "sigma": x.std(axis=0).tolist(),
                                        "zero_share": (x == 0).mean(axis=0).tolist()}} for x in base_h],
                "pctr": {"histogram": hist.tolist(), "expected_auc": 0.7},
                "groups": {"a": 0.0, "b": 0.5, "c": 1.0}}
    s = summarize(w, baseline)
    for layer, x, bx in zip(s["layers"], h, base_h):
        assert layer["fluctuation"] == pytest.approx(x.std(axis=0).mean(), rel=1e-9)
        assert layer["fluctuation_ratio"] == pytest.approx(x.std(axis=0).mean() / bx.std(axis=0).mean(), rel=1e-9)
        d = np.sqrt(np.mean(((x.mean(axis=0) - bx.mean(axis=0)) / bx.std(axis=0)) ** 2))
        assert layer["mean_shift"] == pytest.approx(d, rel=1e-9)
        assert layer["zero_share"] == pytest.approx((x == 0).mean(), rel=1e-12)
        # band: widened around F by sqrt(window/rows + window/ref_rows) = sqrt(2 + 2.5)
        f, s_ = bx.std(axis=0).mean(), np.sqrt(1000 / 500 + 1000 / 400)
        assert layer["band"] == pytest.approx([f - 0.02 * f * s_, f + 0.03 * f * s_], rel=1e-9)
    e = np.maximum(hist / hist.sum(), 1e-4)
    live = np.histogram(np.clip(z, *LOGIT_RANGE), np.linspace(*LOGIT_RANGE, LOGIT_BINS + 1))[0]
    a = np.maximum(live / live.sum(), 1e-4)
    assert s["pctr_psi"] == pytest.approx(((a - e) * np.log(a / e)).sum(), rel=1e-9)
    assert s["groups"] == pytest.approx({g: x / 500 for g, x in zip(GROUPS, ab)})


def test_band_is_never_narrowed():
    layer = {"fluctuation": 1.0, "band": [0.9, 1.2]}
    assert band_for(layer, 10**9, 100) == pytest.approx([0.9, 1.2])
    assert band_for(layer, 25, 100) == pytest.approx([0.8, 1.4])  # sqrt(100/25) = 2


@pytest.mark.parametrize("shared", [False, True])
def test_store_closes_windows_of_n_rows_merged_across_workers(tmp_path, shared):
    """Two stores on one directory stand for two worker processes; each window closes once it
    holds >= N rows, whichever worker's parts filled it, with statistics of exactly its rows."""
    rng = np.random.default_rng(3)
    n = 300
    stores = ([WindowStore(n, tmp_path / "h"), WindowStore(n, tmp_path / "h")] if shared
              else [WindowStore(n)] * 2)
    pending: list = []
    closed_rows = []

    def close(state, w):
        closed_rows.append((w, [np.concatenate(x) for x in zip(*pending)]))
        return {"rows": w.rows, "fl": [m.fluctuation for m in w.layers]}

    for i in range(20):
        h, z, ab = rows(rng, int(rng.integers(20, 90)))
        part = Window(WIDTHS, GROUPS)
        part.add(h, z, ab, now=float(i))
        pending.append(h)
        before = len(closed_rows)
        stores[i % 2].add("m", "v1", part, close)
        if len(closed_rows) > before:
            pending = []
    assert len(closed_rows) >= 3
    for w, hs in closed_rows:
        assert w.rows >= n and w.rows == hs[0].shape[0]
        for m, h in zip(w.layers, hs):
            np.testing.assert_allclose(m.sigma, h.std(axis=0), rtol=1e-9)
    state = stores[1].read("m", "v1")
    assert [x["index"] for x in state["windows"]] == list(range(1, len(closed_rows) + 1))
    assert stores[0].versions("m") == ["v1"]


def test_a_torn_store_file_starts_over(tmp_path):
    store = WindowStore(10, tmp_path)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "v1.json").write_bytes(b'{"current": {"rows": 3')
    assert store.read("m", "v1")["windows"] == []
    part = Window(WIDTHS, GROUPS)
    h, z, ab = rows(np.random.default_rng(4), 5)
    part.add(h, z, ab, now=1.0)
    store.add("m", "v1", part, lambda s, w: {})
    assert store.read("m", "v1")["current"]["rows"] == 5


def test_alarm_fires_once_after_three_windows_in_a_row():
    streaks: dict = {}
    seq = [{"x"}, {"x", "y"}, {"x"}, {"x"}, set(), {"x"}, {"x"}, {"x"}]
    fired = [update_streaks(streaks, dict.fromkeys(v, 1), 3) for v in seq]
    assert fired == [[], [], ["x"], [], [], [], [], ["x"]]


def test_rules_name_what_is_out_of_band():
    s = {"layers": [{"layer": 1, "fluctuation": 2.0, "band": [0.5, 1.5], "zero_share": 0.5,
                     "zero_share_base": 0.3, "mean_shift": 0.2},
                    {"layer": 2, "fluctuation": 1.0, "band": [0.5, 1.5], "zero_share": 0.3,
                     "zero_share_base": 0.3, "mean_shift": 3.0}],
         "pctr_psi": 0.5, "expected_auc": 0.6, "expected_auc_base": 0.7,
         "groups": {"a": 0.9, "b": 0.1}, "groups_base": {"a": 0.1, "b": 0.1}, "nonfinite": 0}
    assert set(Rules().violations(s)) == {"fluctuation:layer1", "zero_share:layer1",
                                          "mean_shift:layer2", "pctr_psi", "expected_auc",
                                          "group_absent:a"}
