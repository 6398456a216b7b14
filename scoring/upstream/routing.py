"""The buckets of the experiment split (:mod:`scoring.upstream.assign` uses them per layer).

A request's unit (``context.user_id``, ``request_id``, any ``context.<field>``) is hashed with
xxh64 (seed 0, over the UTF-8 bytes of ``salt + unit``) into one of 10,000 buckets. The same unit
always lands in the same bucket, so a user stays in one arm for as long as the config stands;
another salt gives another, independent split.
"""

from __future__ import annotations

from typing import Any, Mapping

from xxhash import xxh64_intdigest

from .layers import BUCKETS


def bucket_of(key: str, salt: str = "") -> int:
    """The bucket (0..9999) of a key: ``xxh64((salt + key).encode("utf-8")) % 10000``."""
    return xxh64_intdigest((salt + key).encode("utf-8", "surrogatepass")) % BUCKETS


def unit_value(unit: str, request_id: Any, context: Mapping[str, Any] | None) -> str | None:
    """The split unit of a request as text: ``request_id`` or a ``context.<field>`` that is a
    string or an integer (as decimal text); None when absent or of another type."""
    if unit == "request_id":
        value = request_id
    else:
        value = context.get(unit[len("context."):]) if isinstance(context, Mapping) else None
    if type(value) is str:
        return value
    if type(value) is int:
        return str(value)
    return None
