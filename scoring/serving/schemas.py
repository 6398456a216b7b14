"""The score request and response bodies: fast validating decode, errors that name the field.

Bodies are decoded by msgspec straight into Structs (one C pass: JSON syntax, shape and types).
Feature values are then hashed and checked against the model by :mod:`scoring.engine.features`, which
names bad values itself. When msgspec rejects a body, its message is rewritten to name the field
the way the rest of the service does (``ads[3].features.category``); msgspec cannot name a
mapping's key, so for those a slow second pass over the plain JSON finds it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Annotated, Any, Union

import msgspec
import orjson

from ..engine.features import DENSE_LIMIT, describe_value
from ..errors import InvalidRequest, MalformedRequest, PayloadTooLarge

ScalarValue = Union[str, int]
REQUEST_ID_RANGE = (-(2**63), 2**64 - 1)  # integers a JSON encoder writes back (int64 or uint64)

_VALUE_DOC = ("A feature value: a string (hashed with xxh64, seed 0) or an integer id the client "
              "already hashed (0 <= id < 2**64), or a list of them (pooled by sum or mean).")


@lru_cache(maxsize=8)
def request_types(max_values: int) -> tuple[type, type]:
    """``(ScoreRequest, Ad)`` Struct types whose feature lists hold at most ``max_values``."""
    weighted = msgspec.defstruct("Weighted", [
        ("ids", Annotated[list[ScalarValue], msgspec.Meta(max_length=max_values)]),
        ("weights", Annotated[list[float], msgspec.Meta(max_length=max_values)]),
    ], forbid_unknown_fields=True)
    value = Annotated[
        Union[str, int, Annotated[list[ScalarValue], msgspec.Meta(max_length=max_values)], weighted],
        msgspec.Meta(description=_VALUE_DOC + " A weighted_sum group of a format 2 model takes "
                     "{\"ids\": [...], \"weights\": [...]} (same lengths).")]
    groups = Annotated[dict[str, value], msgspec.Meta(
        description="Feature group name -> value(s). Unknown group names are rejected (422).")]
    ad = msgspec.defstruct("Ad", [
        ("id", Annotated[Union[str, int, None], msgspec.Meta(
            description="The caller's id of the ad; not used for scoring.")], None),
        ("features", Annotated[Union[groups, None], msgspec.Meta(
            description="The ad's groups (side 'ad' in the manifest). Absent groups are zero vectors.",
            examples=[{"ad_id": "a1", "category": ["hotpot", "bbq"]}])], None),
        ("dense", Annotated[Union[list[float], None], msgspec.Meta(
            description=f"Exactly dense_dim finite numbers, each |value| <= {DENSE_LIMIT:g}, when "
                        "the model has dense features.")], None),
    ], kw_only=True, omit_defaults=True)
    request = msgspec.defstruct("ScoreRequest", [
        ("ads", Annotated[list[ad], msgspec.Meta(
            description="Candidate ads; scores[i] belongs to ads[i]. May be empty.")]),
        ("context", Annotated[Union[groups, None], msgspec.Meta(
            description="Request-wide groups (side 'context'): user, query, time, ...",
            examples=[{"user_id": "u42", "city": "bj", "hour": "14"}])], None),
        ("request_id", Annotated[Union[str, int, None], msgspec.Meta(
            description="Optional; echoed back in the response.")], None),
    ], kw_only=True, omit_defaults=True)
    return request, ad


class ScoreResponse(msgspec.Struct):
    """What a score request answers."""

    model: Annotated[str, msgspec.Meta(description="The model that scored the request.")]
    version: Annotated[str, msgspec.Meta(description="The exact version that scored every ad.")]
    scores: Annotated[list[float], msgspec.Meta(description="pCTR of ads[i], in [0, 1] (a "
                                                "multi-head model: its primary output).")]
    request_id: Union[str, int, None] = None
    outputs: Annotated[Union[dict[str, list[float]], None], msgspec.Meta(
        description="A multi-head model (format 2 graph): every output by name, e.g. pctr, pcvr, "
                    "pctcvr; absent for single-head models.")] = None


class ErrorBody(msgspec.Struct):
    """Every error answer."""

    error: Annotated[str, msgspec.Meta(description="What was wrong, naming the field.")]


class ScoreDecoder:
    """Decode score bodies for one limit of values per group."""

    def __init__(self, max_values: int) -> None:
        self.max_values = max_values
        self.request_type, _ = request_types(max_values)
        self._decode = msgspec.json.Decoder(self.request_type).decode

    def decode(self, body: bytes) -> Any:
        """The request Struct; a :class:`~scoring.errors.ScoringError` naming the field for
        anything else (400 not JSON or not UTF-8, 422 wrong shape or number, 413 too many
        values). Nothing a body can hold makes this raise another exception."""
        try:
            request = self._decode(body)
        except msgspec.ValidationError as exc:
            raise self._explain(body, str(exc)) from None
        except msgspec.DecodeError as exc:
            if not body.strip():
                raise MalformedRequest("body: empty; expected a JSON object with 'ads'") from None
            raise MalformedRequest(f"body: not valid JSON ({exc})") from None
        except (ValueError, RecursionError, OverflowError, MemoryError) as exc:  # belt and braces
            raise MalformedRequest(f"body: cannot be decoded ({type(exc).__name__})") from None
        rid = request.request_id
        if type(rid) is int and not REQUEST_ID_RANGE[0] <= rid <= REQUEST_ID_RANGE[1]:
            raise InvalidRequest(f"request_id: number out of range; expected {_expected('request_id')}")
        return request

    def _explain(self, body: bytes, message: str) -> Exception:
        what, _, where = message.partition(" - at `")
        where = where.rstrip("`")
        path = where[2:] if where.startswith("$.") else ("body" if where in ("", "$") else where)
        if "[...]" in where:  # msgspec cannot name a mapping key: find it in the plain JSON
            found = locate_bad_value(body, self.max_values)
            if found is not None:
                return found
            path = path.replace("[...]", ".<group>")
        if what.startswith("Object missing required field"):
            field = what.split("`")[1]
            path = field if path == "body" else f"{path}.{field}"
            return InvalidRequest(f"{path}: required field is missing")
        if "of length <=" in what:
            return PayloadTooLarge(f"{path}: more than {self.max_values} values in one group "
                                   f"(CTR_MAX_VALUES_PER_GROUP)")
        if what in ("Number out of range", "Integer value out of range"):
            return InvalidRequest(f"{path}: number out of range; expected {_expected(path)}")
        what = what.replace("`", "'")
        return InvalidRequest(f"{path}: {what[0].lower()}{what[1:]}")


def _expected(path: str) -> str:
    """What a number at ``path`` should have been."""
    if path.rstrip("]").endswith("dense[") or ".dense[" in path:
        return f"a finite number with |value| <= {DENSE_LIMIT:g}"
    if path == "request_id":
        return "a string, or an integer from -2**63 to 2**64 - 1"
    return "a string or an integer id (0 <= id < 2**64)"


def locate_bad_value(body: bytes, max_values: int) -> Exception | None:
    """The first feature value of a JSON body that is not a string, an integer id or a list of
    them (or lists too many values), as an error naming it; None if there is none or the body
    cannot be read back. A second, tolerant parse: 1e400 is a float, an integer of any length is
    read, and nothing but ``None`` comes out of a body the stdlib cannot parse."""
    try:
        doc = json.loads(body, parse_int=_tolerant_int, parse_constant=float)
    except (ValueError, RecursionError, MemoryError):
        return None
    if not isinstance(doc, dict):
        return None
    places = [("context", doc.get("context"))]
    ads = doc.get("ads")
    if isinstance(ads, list):
        places += [(f"ads[{i}].features", ad.get("features"))
                   for i, ad in enumerate(ads) if isinstance(ad, dict)]
    for where, groups in places:
        if not isinstance(groups, dict):
            continue
        for name, value in groups.items():
            field = f"{where}.{name}"
            if isinstance(value, list):
                if len(value) > max_values:
                    return PayloadTooLarge(f"{field}: {len(value)} values, more than {max_values} "
                                           f"in one group (CTR_MAX_VALUES_PER_GROUP)")
                for j, v in enumerate(value):
                    if not _is_id(v):
                        return InvalidRequest(f"{field}[{j}]: expected a string or an integer id "
                                              f"(0 <= id < 2**64), got {_kind(v)}")
            elif not _is_id(value):
                return InvalidRequest(f"{field}: expected a string, an integer id (0 <= id < 2**64) "
                                      f"or a list of them, got {_kind(value)}")
    return None


class _HugeInt(int):
    """An integer literal too long for ``int()`` (over 4,300 digits)."""


def _tolerant_int(text: str) -> int:
    return int(text) if len(text) <= 4000 else _HugeInt(-1 if text.startswith("-") else 1)


def _is_id(v: Any) -> bool:
    if isinstance(v, str):
        return True
    return type(v) is int and 0 <= v < 2**64


def _kind(v: Any) -> str:
    if isinstance(v, _HugeInt):
        return "an integer of more than 4,000 digits"
    return describe_value(v)


def error_json(message: str) -> bytes:
    """The body of every error answer."""
    return orjson.dumps({"error": message})


def openapi_components(max_values: int) -> dict[str, Any]:
    """JSON Schemas of the score bodies, for the OpenAPI document's ``components.schemas``."""
    request, _ = request_types(max_values)
    _, components = msgspec.json.schema_components(
        [request, ScoreResponse, ErrorBody], ref_template="#/components/schemas/{name}")
    return components
