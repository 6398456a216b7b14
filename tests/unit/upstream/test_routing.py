"""The experiment split: xxh64 buckets, shares, stickiness."""

from __future__ import annotations

from collections import Counter

import pytest
from xxhash import xxh64_intdigest

from scoring.upstream.config import Arm, Experiments
from scoring.upstream.routing import DEFAULT_ARM, Router, bucket_of

N_KEYS = 100_000


def router(*arms: tuple[str, float], key: str = "context.user_id", salt: str = "") -> Router:
    return Router("ctr", Experiments(key=key, salt=salt,
                                     arms=tuple(Arm(n, n, round(s * 100)) for n, s in arms)))


def test_bucket_is_xxh64_of_the_key_mod_10000():
    assert bucket_of("u42") == xxh64_intdigest(b"u42", seed=0) % 10_000
    assert bucket_of("u42", salt="L1:") == xxh64_intdigest(b"L1:u42", seed=0) % 10_000
    assert bucket_of("ключ") == xxh64_intdigest("ключ".encode(), seed=0) % 10_000


@pytest.mark.parametrize("shares", [[("deep", 5.0)], [("deep", 12.34), ("rnn", 0.5)],
                                    [("a", 33.33), ("b", 33.33), ("c", 33.34)]])
def test_split_matches_the_configured_shares_over_100k_users(shares):
    r = router(*shares)
    counts = Counter(r.route(None, {"user_id": f"user-{i}"}).arm for i in range(N_KEYS))
    for name, share in shares:
        assert abs(counts[name] / N_KEYS * 100 - share) <= 0.5, (name, counts)
    default_share = 100 - sum(s for _, s in shares)
    assert abs(counts[DEFAULT_ARM] / N_KEYS * 100 - default_share) <= 0.5
    assert sum(counts.values()) == N_KEYS


def test_a_user_stays_in_one_arm():
    r1, r2 = router(("deep", 10.0)), router(("deep", 10.0))
    for i in range(2000):
        ctx = {"user_id": f"user-{i}", "city": "bj"}
        routes = {r1.route(f"req-{i}-{k}", ctx) for k in range(3)} | {r2.route("other", ctx)}
        assert len(routes) == 1  # same model, arm and bucket whatever the request id


def test_request_id_key_integer_ids_and_missing_keys():
    r = router(("deep", 50.0), key="request_id")
    assert r.route("r-1", {}).bucket == bucket_of("r-1")
    assert r.route(None, {"user_id": "u"}) .arm == DEFAULT_ARM
    by_user = router(("deep", 50.0))
    assert by_user.route(None, {"user_id": 1234}).bucket == bucket_of("1234")
    assert by_user.route("r-1", {}).model == "ctr"
    assert by_user.route("r-1", None).bucket is None
    assert by_user.route("r-1", {"user_id": ["u1"]}).arm == DEFAULT_ARM


def test_arms_own_consecutive_ranges_and_salt_reshuffles():
    r = router(("a", 1.0), ("b", 2.0))
    seen = {}
    for i in range(20_000):
        route = r.route(None, {"user_id": f"u{i}"})
        seen.setdefault(route.arm, set()).add(route.bucket)
    assert max(seen["a"]) < 100 <= min(seen["b"]) and max(seen["b"]) < 300 <= min(seen[DEFAULT_ARM])
    salted = router(("a", 1.0), ("b", 2.0), salt="layer2:")
    moved = sum(r.route(None, {"user_id": f"u{i}"}).bucket != salted.route(None, {"user_id": f"u{i}"}).bucket
                for i in range(1000))
    assert moved > 990


def test_without_experiments_everything_goes_to_the_default():
    r = Router("ctr")
    assert r.route("x", {"user_id": "u"}).model == "ctr" and r.arm_names == [DEFAULT_ARM]
