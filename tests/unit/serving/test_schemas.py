"""Decoding score bodies: what passes, and errors that name the field with the right status."""

from __future__ import annotations

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
])
def test_errors_name_the_field(body, error, message):
    with pytest.raises(error) as exc:
        decoder.decode(body)
    assert type(exc.value) is error and message in exc.value.message


def test_openapi_components_describe_the_bodies():
    comps = openapi_components(3)
    assert set(comps) == {"ScoreRequest", "Ad", "ScoreResponse", "ErrorBody"}
    ctx = comps["ScoreRequest"]["properties"]["context"]["anyOf"][0]
    value_types = ctx["additionalProperties"]["anyOf"]
    assert {"type": "string"} in value_types and {"type": "integer"} in value_types
    assert any(v.get("maxItems") == 3 for v in value_types)
    assert comps["Ad"]["properties"]["dense"]["anyOf"][0] == {"type": "array", "items": {"type": "number"}}
