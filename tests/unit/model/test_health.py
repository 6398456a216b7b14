"""Health statistics against their definitions: moments against NumPy on all rows at once,
merged in any split; expected AUC against brute force over pairs; PSI and the log-odds
histogram against hand-computed values."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from scoring.model.health import (
    LOGIT_BINS,
    LayerMoments,
    expected_auc,
    logit_histogram,
    mean_abs_fluctuation,
    psi,
)


def test_moments_match_numpy_in_any_split():
    rng = np.random.default_rng(0)
    h = np.maximum(rng.standard_normal((5000, 37)) * rng.uniform(0.1, 30, 37) + 3, 0)
    want_mu, want_sigma = h.mean(axis=0), h.std(axis=0)  # population std
    want_z = (h == 0).mean(axis=0)
    cuts = np.sort(rng.choice(np.arange(1, 5000), size=20, replace=False))
    parts = np.split(h, cuts)
    one = LayerMoments(37)
    for part in parts:
        one.add(part)
    merged = LayerMoments(37)
    for part in parts[::-1]:  # per-worker accumulators, merged in another order
        w = LayerMoments(37)
        w.add(part)
        merged.merge(w)
    for m in (one, merged):
        assert m.n == 5000
        np.testing.assert_allclose(m.mean, want_mu, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(m.sigma, want_sigma, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(m.zero_share, want_z, rtol=0, atol=0)
        assert m.fluctuation == pytest.approx(want_sigma.mean(), rel=1e-10)
    assert mean_abs_fluctuation(h) == pytest.approx(np.abs(h - want_mu).mean(), rel=1e-12)
    with pytest.raises(ValueError, match="37 neurons"):
        one.add(np.zeros((2, 5)))


def _brute_expected_auc(p):
    num = den = 0.0
    for i, j in itertools.permutations(range(len(p)), 2):
        w = p[i] * (1 - p[j])  # i clicks, j does not
        den += w
        num += w * (1.0 if p[i] > p[j] else 0.5 if p[i] == p[j] else 0.0)
    return num / den


@pytest.mark.parametrize("seed", range(5))
def test_expected_auc_is_the_brute_force_over_pairs(seed):
    rng = np.random.default_rng(seed)
    p = rng.beta(0.5, 8, size=40)
    p[::7] = p[3]  # ties
    assert expected_auc(p) == pytest.approx(_brute_expected_auc(p), rel=1e-12)


def test_expected_auc_of_constant_scores_is_a_half():
    assert expected_auc(np.full(10, 0.03)) == pytest.approx(0.5)
    assert np.isnan(expected_auc(np.array([0.2])))


def test_psi_and_log_odds_bins():
    assert psi([50, 50], [25, 75]) == pytest.approx(-0.25 * np.log(0.5) + 0.25 * np.log(1.5))
    assert psi([1, 2, 3], [2, 4, 6]) == pytest.approx(0.0)
    hist = logit_histogram(np.array([0.5, 1e-12, 1.0 - 1e-12, 0.5]))
    assert hist.shape == (LOGIT_BINS,) and hist.sum() == 4
    assert hist[LOGIT_BINS // 2] == 2 and hist[0] == 1 and hist[-1] == 1


def test_variance_components_recover_the_two_spreads():
    """Rows of requests with a shared part (sd 2) and a per-row part (sd 1), unequal sizes: the
    one-way ANOVA estimates come back, and the expected F_l of a window grows with its requests
    as the population std of simulated windows does."""
    from scoring.model.health import expected_fluctuation, variance_components

    rng = np.random.default_rng(7)

    def rows(n_req):
        h, req = [], []
        for r in range(n_req):
            m = int(rng.integers(20, 80))
            h.append(rng.normal(0, 2, 3) + rng.normal(0, 1, (m, 3)))
            req += [r] * m
        return np.concatenate(h), np.array(req)

    h, req = rows(400)
    within, between = variance_components(h, req)
    np.testing.assert_allclose(within, 1.0, rtol=0.05)
    np.testing.assert_allclose(between, 4.0, rtol=0.15)
    for k in (10, 40):  # brute force: the mean over simulated windows of k requests (with very
        # few requests, sqrt(E[var]) overstates E[std]: windows hold a hundred or more)
        sims = [rows(k)[0].std(axis=0).mean() for _ in range(200)]
        assert expected_fluctuation(np.sqrt(within), np.sqrt(between), k) == pytest.approx(
            np.mean(sims), rel=0.06)


def test_unequal_requests_count_as_fewer():
    """A window of one 5,000-ad request and fifty 10-ad ones varies like ~1.2 equal requests:
    the expected F_l with the effective number matches simulated windows; with the plain count
    (51) it would be far too high."""
    from scoring.model.health import effective_requests, expected_fluctuation

    rng = np.random.default_rng(8)
    sizes = [5000] + [10] * 50
    sims = []
    for _ in range(300):
        h = np.concatenate([rng.normal(0, 2, 2) + rng.normal(0, 1, (m, 2)) for m in sizes])
        sims.append(h.std(axis=0).mean())
    k = effective_requests(sum(sizes), sum(m * m for m in sizes))
    assert k == pytest.approx(1.21, abs=0.01)
    want = np.mean(sims)
    assert expected_fluctuation(np.ones(2), np.full(2, 2.0), k) == pytest.approx(want, rel=0.12)
    assert expected_fluctuation(np.ones(2), np.full(2, 2.0), len(sizes)) > 1.5 * want
