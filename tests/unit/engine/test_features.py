"""Feature hashing exactly as contract section 1 says."""

from __future__ import annotations

import numpy as np
import pytest
import xxhash

from scoring.engine.features import FeatureLayout, feature_id, hash_string
from scoring.errors import InvalidRequest
from scoring.model.manifest import GroupSpec


def _layout():
    groups = [GroupSpec("user_id", "context", 100, 4, "sum", "u.npy"),
              GroupSpec("ad_id", "ad", 100, 4, "sum", "a.npy"),
              GroupSpec("category", "ad", 10, 2, "mean", "c.npy")]
    return FeatureLayout(groups, dense_dim=1)


def test_string_ids_are_xxh64_seed0_of_utf8():
    for s in ["", "a1", "hotpot", "北京", "emoji 🚀", "x" * 1000]:
        assert hash_string(s) == xxhash.xxh64_intdigest(s.encode("utf-8"), seed=0)
    # a known value, so a change of hash function or seed cannot go unnoticed
    assert hash_string("a1") == xxhash.xxh64(b"a1", seed=0).intdigest()


def test_integer_ids_pass_through_over_the_full_range():
    for v in (0, 1, 2**63 - 1, 2**63, 2**64 - 1):
        assert feature_id(v, "f") == v
    for v in (-1, 2**64, 2**70):
        with pytest.raises(InvalidRequest, match="0 <= id < 2\\*\\*64"):
            feature_id(v, "f")


def test_encoding_is_run_length_per_row_and_slot():
    lay = _layout()
    b = lay.encode({"user_id": ["u1", "u2"]},
                   [{"features": {"category": ["c1", "c2", "c3"], "ad_id": 2**64 - 1}, "dense": [0.5]},
                    {"features": {}, "dense": [1]},
                    {"features": {"ad_id": "a"}, "dense": [2.0]}])
    assert b.ctx_ids.tolist() == [hash_string("u1"), hash_string("u2")]
    assert b.ctx_keys.tolist() == [0] and b.ctx_lens.tolist() == [2]
    assert b.ad_ids.dtype == np.uint64
    assert b.ad_ids.tolist() == [hash_string("c1"), hash_string("c2"), hash_string("c3"), 2**64 - 1,
                                 hash_string("a")]
    # keys = row * n_ad_slots + slot (ad_id slot 0, category slot 1), in request order per ad
    assert b.ad_keys.tolist() == [1, 0, 4]
    assert b.ad_lens.tolist() == [3, 1, 1]
    assert b.dense.dtype == np.float32 and b.dense.tolist() == [[0.5], [1.0], [2.0]]
    assert b.n_ads == 3


def test_memoised_ids_equal_fresh_hashes():
    lay = _layout()
    first = lay.encode({}, [{"features": {"ad_id": ["m1", "m2"]}, "dense": [0]}]).ad_ids.tolist()
    again = lay.encode({}, [{"features": {"ad_id": ["m1", "m2"]}, "dense": [0]}]).ad_ids.tolist()
    assert first == again == [hash_string("m1"), hash_string("m2")]


def test_ints_and_bools_are_not_confused():
    lay = _layout()
    with pytest.raises(InvalidRequest, match="ads\\[0\\].features.ad_id\\[0\\]: expected a string or an integer id, got a boolean"):
        lay.encode({}, [{"features": {"ad_id": [True]}, "dense": [0]}])
    with pytest.raises(InvalidRequest, match="ads\\[0\\].dense\\[0\\]: expected a number, got a boolean"):
        lay.encode({}, [{"features": {}, "dense": [False]}])


def test_compiled_xxh64_matches_the_xxhash_package_on_every_branch():
    from scoring.engine.features import hash_values
    rng = np.random.default_rng(0)
    alphabet = list("abcxyz0189_-:/") + ["é", "北", "🚀"]
    strings = ["", "a", "北京"] + ["".join(rng.choice(alphabet, size=n)) for n in range(1, 140)]
    got = hash_values(strings)
    assert got.tolist() == [xxhash.xxh64_intdigest(s.encode("utf-8")) for s in strings]


def test_strings_with_nul_bytes_and_mixed_lists_hash_one_by_one():
    from scoring.engine.features import hash_values
    values = ["a\x00b", "plain", 7, 2**64 - 1, "\x00", ""]
    want = [xxhash.xxh64_intdigest(b"a\x00b"), hash_string("plain"), 7, 2**64 - 1,
            xxhash.xxh64_intdigest(b"\x00"), hash_string("")]
    assert hash_values(values).tolist() == want
    assert hash_values([1, 2, 3]).tolist() == [1, 2, 3]
    assert hash_values([]).tolist() == []
