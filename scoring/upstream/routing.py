"""The experiment split for ``POST /v1/score``: which model scores a request.

A request's key (``context.user_id``, or ``request_id``) is hashed with xxh64 (seed 0, over the
UTF-8 bytes of ``salt + key``) into one of 10,000 buckets. Arms own consecutive bucket ranges from
bucket 0 (an arm with share 5.25 % owns 525 buckets); the default model owns the rest. The same
key always lands in the same bucket, so a user stays in one arm for as long as the config stands.
A request without the key goes to the default model. A later second layer is another
:class:`Router` with another salt, so its buckets are independent of this one's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from xxhash import xxh64_intdigest

from .config import BUCKETS, Experiments

DEFAULT_ARM = "default"


@dataclass(frozen=True)
class Route:
    model: str
    arm: str           # the arm's name, or "default"
    bucket: int | None  # None when the request carried no key


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


class Router:
    """Maps a request to a model: the experiment arm that owns its bucket, or the default."""

    def __init__(self, default: str, experiments: Experiments | None = None) -> None:
        self.default = default
        self.key = experiments.key if experiments else "context.user_id"
        self.salt = experiments.salt if experiments else ""
        self.arms = experiments.arms if experiments else ()
        # bucket -> arm index, precomputed: one list lookup per request
        self._owner: list[int] = [-1] * BUCKETS
        start = 0
        for i, arm in enumerate(self.arms):
            for b in range(start, start + arm.buckets):
                self._owner[b] = i
            start += arm.buckets

    @property
    def arm_names(self) -> list[str]:
        return [DEFAULT_ARM] + [a.name for a in self.arms]

    def route(self, request_id: Any = None, context: Mapping[str, Any] | None = None) -> Route:
        if not self.arms:
            return Route(self.default, DEFAULT_ARM, None)
        key = unit_value(self.key, request_id, context)
        if key is None:
            return Route(self.default, DEFAULT_ARM, None)
        b = bucket_of(key, self.salt)
        i = self._owner[b]
        if i < 0:
            return Route(self.default, DEFAULT_ARM, b)
        arm = self.arms[i]
        return Route(arm.model, arm.name, b)
