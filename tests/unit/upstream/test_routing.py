"""The single-layer experiment split (``experiments:``): xxh64 buckets, shares, stickiness."""

from __future__ import annotations

from collections import Counter

import pytest
from xxhash import xxh64_intdigest

from scoring.upstream.assign import DEFAULT, Assigner
from scoring.upstream.config import parse_models_config
from scoring.upstream.routing import bucket_of

N_KEYS = 100_000


def split(*arms: tuple[str, float], key: str = "context.user_id", salt: str = "") -> Assigner:
    doc = {"models": [{"name": "ctr"}] + [{"name": n} for n, _ in arms], "default": "ctr",
           "experiments": {"key": key, "salt": salt,
                           "arms": [{"name": n, "model": n, "share": s} for n, s in arms]}}
    return Assigner(parse_models_config(doc).layered)


def arm(a: Assigner, request_id=None, context=None) -> str:
    return a.assign(request_id, context).arms["experiments"]


def test_bucket_is_xxh64_of_the_key_mod_10000():
    assert bucket_of("u42") == xxh64_intdigest(b"u42", seed=0) % 10_000
    assert bucket_of("u42", salt="L1:") == xxh64_intdigest(b"L1:u42", seed=0) % 10_000
    assert bucket_of("ключ") == xxh64_intdigest("ключ".encode(), seed=0) % 10_000


@pytest.mark.parametrize("shares", [[("deep", 5.0)], [("deep", 12.34), ("rnn", 0.5)],
                                    [("a", 33.33), ("b", 33.33), ("c", 33.34)]])
def test_split_matches_the_configured_shares_over_100k_users(shares):
    a = split(*shares)
    counts = Counter(arm(a, None, {"user_id": f"user-{i}"}) for i in range(N_KEYS))
    for name, share in shares:
        assert abs(counts[name] / N_KEYS * 100 - share) <= 0.5, (name, counts)
    default_share = 100 - sum(s for _, s in shares)
    assert abs(counts[DEFAULT] / N_KEYS * 100 - default_share) <= 0.5
    assert sum(counts.values()) == N_KEYS


def test_a_user_stays_in_one_arm_and_gets_its_model():
    a1, a2 = split(("deep", 10.0)), split(("deep", 10.0))
    for i in range(2000):
        ctx = {"user_id": f"user-{i}", "city": "bj"}
        got = {(arm(a1, f"req-{i}-{k}", ctx), str(a1.assign(f"req-{i}-{k}", ctx).params["model"]))
               for k in range(3)} | {(arm(a2, "other", ctx), str(a2.assign("other", ctx).params["model"]))}
        assert len(got) == 1  # same arm and model whatever the request id
        ((name, model),) = got
        assert model == ("deep" if name == "deep" else "ctr")


def test_request_id_key_integer_ids_and_missing_keys():
    a = split(("deep", 50.0), key="request_id")
    assert a.assign("r-1", {}).owners["experiments"] == ("deep" if bucket_of("r-1") < 5000 else DEFAULT)
    assert arm(a, None, {"user_id": "u"}) == DEFAULT and a.assign(None, {"user_id": "u"}).owners == {}
    by_user = split(("deep", 50.0))
    assert arm(by_user, None, {"user_id": 1234}) == ("deep" if bucket_of("1234") < 5000 else DEFAULT)
    assert str(by_user.assign("r-1", {}).params["model"]) == "ctr"
    assert by_user.assign("r-1", None).owners == {}
    assert arm(by_user, "r-1", {"user_id": ["u1"]}) == DEFAULT


def test_arms_own_consecutive_ranges_and_salt_reshuffles():
    a = split(("a", 1.0), ("b", 2.0))
    seen: dict[str, set] = {}
    for i in range(20_000):
        key = f"u{i}"
        seen.setdefault(arm(a, None, {"user_id": key}), set()).add(bucket_of(key))
    assert max(seen["a"]) < 100 <= min(seen["b"]) and max(seen["b"]) < 300 <= min(seen[DEFAULT])
    moved = sum(bucket_of(f"u{i}") != bucket_of(f"u{i}", "layer2:") for i in range(1000))
    assert moved > 990
