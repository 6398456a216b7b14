"""Decoding score bodies: what passes, and errors that name the field with the right status."""

from __future__ import annotations

import orjson
import pytest

from scoring.errors import InvalidRequest, MalformedRequest, PayloadTooLarge
from scoring.serving.schemas import ScoreDecoder, openapi_components

decoder = ScoreDecoder(max_values=3)


def test_a_valid_body_decodes_to_structs():
    req = decoder.decode(b'{"request_id": 7, "context": {"u": "x", "c": [1, "y"]},'
                         b' "ads": [{"id": "a", "features": {"g": 18446744073709551615},'
                         b' "dense": [1, 2.5]}, {}]}')
    assert req.request_id == 7 and req.context == {"u": "x", "c": [1, "y"]}
    assert req.ads[0].features == {"g": 2**64 - 1} and req.ads[0].dense == [1.0, 2.5]
    assert req.ads[1].features is None and req.ads[1].dense is None


@pytest.mark.parametrize("body,error,message", [
    (b"", MalformedRequest, "body: empty"),
    (b"{", MalformedRequest, "body: not valid JSON"),
    (b'"x"', InvalidRequest, "body: expected 'object', got 'str'"),
    (b"{}", InvalidRequest, "ads: required field is missing"),
    (b'{"ads": 1}', InvalidRequest, "ads: expected 'array', got 'int'"),
    (b'{"ads": [{"features": []}]}', InvalidRequest, "ads[0].features: expected 'object | null'"),
    (b'{"ads": [], "context": {"a": 1.5}}', InvalidRequest, "context.a: expected a string"),
    (b'{"ads": [{}, {"features": {"b": [1, null]}}]}', InvalidRequest, "ads[1].features.b[1]: "),
    (b'{"ads": [{"features": {"b": [1, 2, 3, 4]}}]}', PayloadTooLarge, "ads[0].features.b: 4 values"),
    (b'{"ads": [], "context": {"b": ["1", "2", "3", "4"]}}', PayloadTooLarge, "context.b"),
    (b'{"ads": [{"dense": [1e999]}]}', InvalidRequest, "ads[0].dense[0]: number out of range"),
    (b'{"ads": [{"dense": [false]}]}', InvalidRequest, "ads[0].dense[0]: expected 'float'"),
    (b'{"ads": [{"id": [1]}]}', InvalidRequest, "ads[0].id"),
    (b'{"ads": [], "request_id": {}}', InvalidRequest, "request_id"),
    # numbers no decoder can hold, in every place a number can be
    (b'{"ads": [], "context": {"u": 1e400}}', InvalidRequest,
     "context.u: expected a string, an integer id (0 <= id < 2**64) or a list of them, got a float (inf)"),
    (b'{"ads": [{"features": {"g": ["a", -1e400]}}]}', InvalidRequest,
     "ads[0].features.g[1]: expected a string or an integer id (0 <= id < 2**64), got a float (-inf)"),
    (b'{"ads": [{"features": {"g": ' + b"9" * 5000 + b'}}]}', InvalidRequest,
     "ads[0].features.g: expected a string, an integer id (0 <= id < 2**64) or a list of them, got an integer of more than 4,000 digits"),
    (b'{"ads": [{"features": {"g": [' * 3000 + b"]" * 3000 + b"}}]}", InvalidRequest, "ads[0].features.<group>"),
    (b'{"ads": [], "request_id": 1e400}', InvalidRequest,
     "request_id: number out of range; expected a string, or an integer from -2**63 to 2**64 - 1"),
    (b'{"ads": [], "request_id": 18446744073709551616}', InvalidRequest, "request_id: number out of range"),
    (b'{"ads": [], "request_id": -9223372036854775809}', InvalidRequest, "request_id: number out of range"),
    (b'{"ads": [{"dense": [1, -1e400]}]}', InvalidRequest,
     "ads[0].dense[1]: number out of range; expected a finite number with |value| <= 1e+15"),
    (b'{"ads": [{"features": {"g": "\xff"}}]}', MalformedRequest, "body: not valid JSON"),
    (b'{"ads": [], "request_id": "\xed\xa0\x80"}', MalformedRequest, "body: not valid JSON"),
])
def test_errors_name_the_field(body, error, message):
    with pytest.raises(error) as exc:
        decoder.decode(body)
    assert type(exc.value) is error and message in exc.value.message


def test_request_ids_a_json_encoder_can_write_back_are_kept():
    for rid in (-(2**63), 2**64 - 1, 0, "r-1"):
        assert decoder.decode(b'{"ads": [], "request_id": %s}' % orjson.dumps(rid)).request_id == rid


def test_openapi_components_describe_the_bodies():
    comps = openapi_components(3)
    assert set(comps) == {"ScoreRequest", "Ad", "ScoreResponse", "ErrorBody", "Weighted"}
    assert set(comps["Weighted"]["properties"]) == {"ids", "weights"}
    ctx = comps["ScoreRequest"]["properties"]["context"]["anyOf"][0]
    value_types = ctx["additionalProperties"]["anyOf"]
    assert {"type": "string"} in value_types and {"type": "integer"} in value_types
    assert any(v.get("maxItems") == 3 for v in value_types)
    assert comps["Ad"]["properties"]["dense"]["anyOf"][0] == {"type": "array", "items": {"type": "number"}}
