"""The compiled body scanner either scores exactly as the ordinary decode path or steps aside."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scoring.engine import Engine
from scoring.errors import ScoringError
from scoring.model.package import load_package

from ...models import make_model, random_request

MAX_ADS, MAX_VALUES = 50, 8


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    return Engine(load_package(make_model(tmp_path_factory.mktemp("scan") / "m", dense_dim=0)))


def ordinary(engine: Engine, body: bytes):
    """The reference path: a JSON decoder, then the engine's ordinary encoding."""
    doc = json.loads(body)
    return engine.score(doc.get("context"), doc["ads"]), doc.get("request_id")


@pytest.mark.parametrize("seed", range(12))
def test_random_requests_score_identically(engine, seed):
    rng = np.random.default_rng(seed)
    ctx, ads = random_request(rng, engine.package, int(rng.integers(0, 40)), max_values=4)
    rid = [None, "r-1", 12345, "北京-7"][seed % 4]
    doc = {"ads": ads, "context": ctx} if seed % 3 else {"request_id": rid, "context": ctx, "ads": ads}
    if seed % 3:
        doc["request_id"] = rid
    for body in (orjson.dumps(doc), json.dumps(doc, indent=1, ensure_ascii=False).encode(),
                 json.dumps(doc, separators=(" ,", " : ")).encode()):
        got = engine.score_json(body, MAX_ADS, MAX_VALUES)
        if b"\\" in body:  # escaped non-ASCII text is left to the ordinary decoder
            assert got is None
            continue
        assert got is not None, body[:200]
        want_scores, want_rid = ordinary(engine, body)
        np.testing.assert_array_equal(got[0], want_scores)
        assert got[1] == want_rid


def test_non_ascii_strings_hash_as_utf8(engine):
    ads = [{"features": {"ad_id": "火锅-1", "category": ["烧烤", "café", "🚀"]}}]
    body = json.dumps({"context": {"city": "北京"}, "ads": ads}, ensure_ascii=False).encode()
    got = engine.score_json(body, MAX_ADS, MAX_VALUES)
    assert got is not None
    np.testing.assert_array_equal(got[0], ordinary(engine, body)[0])


@pytest.mark.parametrize("body", [
    b'{"ads": [{"features": {"ad_id": "a\\u00e9"}}]}',            # escape: decoded elsewhere
    b'{"ads": [{"features": {"ad_id": "a"}, "dense": [1.5]}]}',    # dense values
    b'{"ads": [{"features": {"nope": "a"}}]}',                     # unknown group
    b'{"ads": [{"features": {"user_id": "a"}}]}',                  # context group among ad groups
    b'{"ads": [{"features": {"ad_id": "a", "ad_id": "b"}}]}',      # repeated group
    b'{"ads": [{"features": {"ad_id": -1}}]}',
    b'{"ads": [{"features": {"ad_id": 1.0}}]}',
    b'{"ads": [{"features": {"ad_id": 1e3}}]}',
    b'{"ads": [{"features": {"ad_id": 18446744073709551616}}]}',   # 2**64
    b'{"ads": [{"features": {"ad_id": 007}}]}',
    b'{"ads": [{"features": {"ad_id": true}}]}',
    b'{"ads": [{"features": {"ad_id": null}}]}',
    b'{"ads": [{"features": {"ad_id": [["a"]]}}]}',
    b'{"ads": [{"features": {"ad_id": "a"}, "extra": 1}]}',
    b'{"context": {}}',                                            # no ads
    b'{"ads": [], "ads": []}',
    b'{"ads": [], "other": 1}',
    b'{"ads": []} trailing',
    b'{"ads": [1]}',
    b'["ads"]',
    b'{"ads": [{"features": {"ad_id": "\xff"}}]}',                  # invalid UTF-8
    b'{"ads": [{"features": {"ad_id": "\xc0\xaf"}}]}',              # overlong
    b'{"ads": [{"features": {"ad_id": "\xed\xa0\x80"}}]}',          # UTF-16 surrogate
    b'{"ads": [{"features": {"ad_id": "a\tb"}}]}',                  # raw control character
    b'{"ads": [{"features": {"ad_id": ["a", "b", "c", "d", "e", "f", "g", "h", "i"]}}]}',  # > 8 values
    b'{"ads": [' + b",".join([b'{"features": {}}'] * (MAX_ADS + 1)) + b"]}",               # > 50 ads
    b'{"ads": [{"features": {"ad_id": "a"}]}',                     # truncated
    b'',
])
def test_anything_unusual_steps_aside(engine, body):
    assert engine.score_json(body, MAX_ADS, MAX_VALUES) is None


def test_valid_edge_shapes(engine):
    for body in (b'{"ads": []}', b' { "ads" : [ ] , "context" : null } ',
                 b'{"ads": [{}, {"features": null, "dense": null, "id": null}, {"dense": []}]}',
                 b'{"ads": [{"id": "x", "features": {"ad_id": [], "category": ""}}], "request_id": null}',
                 b'{"ads": [{"features": {"ad_id": 18446744073709551615, "category": [0, "0"]}}]}'):
        got = engine.score_json(body, MAX_ADS, MAX_VALUES)
        assert got is not None, body
        want_scores, want_rid = ordinary(engine, body)
        np.testing.assert_array_equal(got[0], want_scores)
        assert got[1] == want_rid


_value = st.one_of(st.text(max_size=6), st.integers(-3, 2**64 + 3), st.booleans(), st.none(),
                   st.floats(allow_nan=False, allow_infinity=False))
_groups = st.dictionaries(st.sampled_from(["user_id", "city", "ad_id", "category", "zz"]),
                          st.one_of(_value, st.lists(_value, max_size=4)), max_size=4)
_ad = st.one_of(st.fixed_dictionaries({}, optional={"features": st.one_of(_groups, st.none()),
                                                    "id": st.one_of(st.text(max_size=3), st.integers()),
                                                    "dense": st.lists(st.floats(-1, 1), max_size=1)}),
                st.integers())
_body = st.fixed_dictionaries({}, optional={"ads": st.lists(_ad, max_size=5), "context": _groups,
                                            "request_id": st.one_of(st.text(max_size=4), st.integers())})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_body, ascii_only=st.booleans())
def test_fuzzed_bodies_agree_with_the_ordinary_path(engine, doc, ascii_only):
    body = json.dumps(doc, ensure_ascii=ascii_only).encode()
    got = engine.score_json(body, MAX_ADS, MAX_VALUES)
    try:
        want = ordinary(engine, body)
    except (ScoringError, KeyError, TypeError, AttributeError):
        assert got is None  # whatever the ordinary path rejects, the scanner never scores
        return
    if got is not None:
        np.testing.assert_array_equal(got[0], want[0])
        assert got[1] == want[1]
