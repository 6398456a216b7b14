"""Feature hashing (contract section 1): request values -> flat id arrays for the kernels.

A string becomes ``xxh64(utf-8 bytes, seed=0)``; an integer is an id the client already hashed
(0 <= id < 2**64). One request becomes, per side, three flat arrays: ``ids`` (uint64, every value),
and run-length ``keys``/``lens``: entry ``e`` says ``lens[e]`` consecutive ids belong to
``keys[e] = row * n_slots + slot``. The kernels add table row ``id % buckets`` into that row's
slot, so nothing is sorted or grouped here. Context groups are encoded once per request (row 0).

The happy path is one Python pass that only collects values (no per-value call, no string
formatting), then one ``str.join`` + ``encode`` of every string of the request and one compiled
call that hashes them all (:mod:`scoring.engine.xxh64`). Integer ids and mixed lists take a slower,
still vectorised path. Only when something is wrong does a second pass find the first bad value
and name it, e.g. ``ads[3].features.category[1]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from xxhash import xxh64_intdigest

from ..errors import InvalidRequest
from ..model.manifest import GroupSpec
from .xxh64 import hash_joined

MAX_ID = 2**64 - 1
DENSE_LIMIT = 1e15  # |dense value|: far from float32 overflow through any sane layer


def hash_string(value: str) -> int:
    """The 64-bit id of a string feature value: xxh64 of its UTF-8 bytes, seed 0."""
    return xxh64_intdigest(value.encode("utf-8"))


class _BadValue(Exception):
    """Raised inside the fast path; the slow path then names the bad field."""


def hash_values(values: list[Any]) -> np.ndarray:
    """The uint64 ids of a flat list of feature values (strings and/or integer ids).

    Raises ``_BadValue`` (or TypeError/OverflowError) when a value is neither; the caller then
    explains which one."""
    n = len(values)
    out = np.empty(n, dtype=np.uint64)
    if n == 0:
        return out
    try:
        joined = "\x00".join(values).encode("utf-8")
    except (TypeError, UnicodeEncodeError):
        return _hash_mixed(values, out)
    if hash_joined(np.frombuffer(joined, dtype=np.uint8), out) != n:
        return _hash_mixed(values, out)  # a string held a NUL byte
    return out


def _hash_mixed(values: list[Any], out: np.ndarray) -> np.ndarray:
    """Integer ids, mixed lists, strings with NUL bytes: still one compiled call for strings."""
    is_str = np.fromiter((type(v) is str for v in values), dtype=np.bool_, count=len(values))
    strs = [v for v in values if type(v) is str]
    ints = [v for v in values if type(v) is not str]
    for v in ints:
        if type(v) is not int:
            raise _BadValue
    if ints and (min(ints) < 0 or max(ints) > MAX_ID):
        raise _BadValue
    out[~is_str] = np.array(ints, dtype=np.uint64)
    if strs:
        hashed = np.empty(len(strs), dtype=np.uint64)
        try:
            joined = "\x00".join(strs).encode("utf-8")
        except UnicodeEncodeError:
            raise _BadValue from None
        if hash_joined(np.frombuffer(joined, dtype=np.uint8), hashed) != len(strs):
            hashed = np.array([xxh64_intdigest(v.encode("utf-8")) for v in strs], dtype=np.uint64)
        out[is_str] = hashed
    return out


def feature_id(value: Any, where: str) -> int:
    """The id of one feature value (str or int); raise :class:`InvalidRequest` naming ``where``."""
    t = type(value)
    if t is str:
        try:
            return xxh64_intdigest(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidRequest(f"{where}: string is not valid UTF-8 (lone surrogate)") from None
    if t is int:
        if 0 <= value <= MAX_ID:
            return value
        raise InvalidRequest(f"{where}: integer id must be 0 <= id < 2**64, got {value}")
    raise InvalidRequest(f"{where}: expected a string or an integer id, got {describe_value(value)}")


def describe_value(value: Any) -> str:
    """What a JSON value is, for an error message: ``null``, ``a float (1.5)``, ``a list``..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, float):
        return f"a float ({value!r})"
    if isinstance(value, int):
        return f"an integer out of range ({value if abs(value) < 10**30 else 'more than 30 digits'})"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


NO_WEIGHTS = np.ones(0, dtype=np.float32)  # no weighted group: the kernels never read it


@dataclass
class EncodedBatch:
    """One request, hashed: what the engine's kernels take."""

    ctx_ids: np.ndarray   # uint64, every context value
    ctx_keys: np.ndarray  # int64, slot of each run of context values
    ctx_lens: np.ndarray  # int64, length of each run
    ad_ids: np.ndarray    # uint64, every ad value
    ad_keys: np.ndarray   # int64, row * n_ad_slots + slot, non-decreasing in row
    ad_lens: np.ndarray   # int64
    dense: np.ndarray     # float32 [n_ads, dense_dim]
    n_ads: int
    ctx_wts: np.ndarray = None  # type: ignore[assignment]  # float32 per context value (weighted groups)
    ad_wts: np.ndarray = None   # type: ignore[assignment]  # float32 per ad value

    def __post_init__(self) -> None:
        if self.ctx_wts is None:
            self.ctx_wts = NO_WEIGHTS
        if self.ad_wts is None:
            self.ad_wts = NO_WEIGHTS


def _collect(values: list[Any], keys: list[int], lens: list[int], groups: Any,
             slots: dict[str, int], base: int) -> None:
    """Append the values of one mapping of group -> value(s) (the hot loop: nothing it can avoid).

    An unknown group makes ``base + None`` raise TypeError; values are checked when hashed."""
    add = values.append
    extend = values.extend
    add_len = lens.append
    slot_of = slots.get
    for name, value in groups.items():
        if type(value) is list:
            extend(value)
            add_len(len(value))
        else:
            add(value)
            add_len(1)
        keys.append(base + slot_of(name))


class FeatureLayout:
    """Where each group of a model sits: its side and its slot among that side's groups."""

    def __init__(self, groups: Sequence[GroupSpec], dense_dim: int) -> None:
        self.groups = tuple(groups)
        self.dense_dim = dense_dim
        self.ctx_groups = tuple(g for g in groups if g.side == "context")
        self.ad_groups = tuple(g for g in groups if g.side == "ad")
        self.ctx_slot = {g.name: i for i, g in enumerate(self.ctx_groups)}
        self.ad_slot = {g.name: i for i, g in enumerate(self.ad_groups)}
        # format 2 weighted_sum groups take {"ids": [...], "weights": [...]}
        self.weighted = frozenset(g.name for g in groups if g.pooling == "weighted_sum")
        self.scan_tables = self._scan_tables()

    def _scan_tables(self) -> tuple[np.ndarray, ...]:
        """Group names for ``jsonscan``: UTF-8 bytes, offsets, xxh64s, slot and side (0 context,
        1 ad) of each group."""
        raw = [g.name.encode("utf-8") for g in self.groups]
        names = np.frombuffer(b"".join(raw), dtype=np.uint8).copy() if raw else np.zeros(1, np.uint8)
        offsets = np.concatenate([[0], np.cumsum([len(r) for r in raw])]).astype(np.int64)
        hashes = np.array([xxh64_intdigest(r) for r in raw], dtype=np.uint64)
        slots = np.array([self.ctx_slot.get(g.name, self.ad_slot.get(g.name, 0)) for g in self.groups],
                         dtype=np.int64)
        sides = np.array([0 if g.side == "context" else 1 for g in self.groups], dtype=np.int64)
        return names, offsets, hashes, slots, sides

    def encode(self, context: Mapping[str, Any] | None, ads: Sequence[Any]) -> EncodedBatch:
        """Hash one request; raise :class:`InvalidRequest` naming the first bad field."""
        try:
            if self.weighted:
                return self._encode_weighted(context, ads)
            return self._encode(context, ads)
        except (_BadValue, OverflowError, TypeError, AttributeError, ValueError):
            self._explain(context, ads)
            raise InvalidRequest("request: invalid feature values") from None

    def _encode(self, context: Mapping[str, Any] | None, ads: Sequence[Any]) -> EncodedBatch:
        values: list[Any] = []
        c_keys: list[int] = []
        c_lens: list[int] = []
        if context:
            _collect(values, c_keys, c_lens, context, self.ctx_slot, 0)
        n_ctx = len(values)
        keys: list[int] = []
        lens: list[int] = []
        slots = self.ad_slot
        n_slots = len(self.ad_groups)
        dense_dim = self.dense_dim
        dense_rows: list[Any] = []
        for row, ad in enumerate(ads):
            if type(ad) is dict:
                features = ad.get("features")
                dense = ad.get("dense")
            else:
                features = ad.features
                dense = ad.dense
            if features:
                _collect(values, keys, lens, features, slots, row * n_slots)
            if dense_dim:
                if type(dense) is not list or len(dense) != dense_dim:
                    raise _BadValue
                dense_rows.append(dense)
            elif dense:
                raise _BadValue
        n_ads = len(ads)
        if dense_dim:
            for row in dense_rows:
                for v in row:
                    t = type(v)
                    if (t is not float and t is not int) or not -DENSE_LIMIT <= v <= DENSE_LIMIT:
                        raise _BadValue
            dense_arr = np.array(dense_rows, dtype=np.float32).reshape(n_ads, dense_dim)
        else:
            dense_arr = np.zeros((n_ads, 0), dtype=np.float32)
        ids = hash_values(values)
        i64 = np.int64
        return EncodedBatch(
            ids[:n_ctx], np.array(c_keys, dtype=i64), np.array(c_lens, dtype=i64),
            ids[n_ctx:], np.array(keys, dtype=i64), np.array(lens, dtype=i64),
            dense_arr, n_ads)

    def _encode_weighted(self, context: Mapping[str, Any] | None, ads: Sequence[Any]) -> EncodedBatch:
        """A model with weighted_sum groups: values and one weight per value (1 for the others)."""
        values: list[Any] = []
        weights: list[float] = []
        c_keys: list[int] = []
        c_lens: list[int] = []
        if context:
            self._collect_weighted(values, weights, c_keys, c_lens, context, self.ctx_slot, 0)
        n_ctx = len(values)
        keys: list[int] = []
        lens: list[int] = []
        n_slots = len(self.ad_groups)
        for row, ad in enumerate(ads):
            features = ad.get("features") if type(ad) is dict else ad.features
            if features:
                self._collect_weighted(values, weights, keys, lens, features, self.ad_slot,
                                       row * n_slots)
        plain = self._encode(None, [_dense_only(ad) for ad in ads])  # dense rows, checked
        ids = hash_values(values)
        w = np.array(weights, dtype=np.float32)
        i64 = np.int64
        return EncodedBatch(ids[:n_ctx], np.array(c_keys, dtype=i64), np.array(c_lens, dtype=i64),
                            ids[n_ctx:], np.array(keys, dtype=i64), np.array(lens, dtype=i64),
                            plain.dense, len(ads), w[:n_ctx], w[n_ctx:])

    def _collect_weighted(self, values, weights, keys, lens, groups, slots, base) -> None:
        for name, value in groups.items():
            if name in self.weighted and _is_weighted(value):
                ids, ws = _weighted_parts(value)
                if type(ids) is not list or type(ws) is not list or len(ids) != len(ws) \
                        or not all(_finite_weight(x) for x in ws):
                    raise _BadValue
                values.extend(ids)
                weights.extend(float(x) for x in ws)
                lens.append(len(ids))
            elif _is_weighted(value):
                raise _BadValue  # weights for a group that does not pool by weight
            elif type(value) is list:
                values.extend(value)
                weights.extend([1.0] * len(value))
                lens.append(len(value))
            else:
                values.append(value)
                weights.append(1.0)
                lens.append(1)
            keys.append(base + slots.get(name))  # an unknown group: TypeError, then named

    # -- the slow pass: find and name the first bad field ---------------------------------

    def _explain(self, context: Any, ads: Any) -> None:
        if context is not None and not isinstance(context, Mapping):
            raise InvalidRequest(f"context: expected an object of group -> value(s), "
                                 f"got {describe_value(context)}")
        for name, value in (context or {}).items():
            if name not in self.ctx_slot:
                raise InvalidRequest(self._unknown(name, "context", "context"))
            self._check_group_value(name, value, f"context.{name}")
        if not isinstance(ads, Sequence) or isinstance(ads, (str, bytes)):
            raise InvalidRequest(f"ads: expected a list of ads, got {describe_value(ads)}")
        for row, ad in enumerate(ads):
            if isinstance(ad, Mapping):
                features, dense = ad.get("features"), ad.get("dense")
            elif hasattr(ad, "features"):
                features, dense = ad.features, getattr(ad, "dense", None)
            else:
                raise InvalidRequest(f"ads[{row}]: expected an object with 'features', "
                                     f"got {describe_value(ad)}")
            where = f"ads[{row}].features"
            if features is not None and not isinstance(features, Mapping):
                raise InvalidRequest(f"{where}: expected an object of group -> value(s), "
                                     f"got {describe_value(features)}")
            for name, value in (features or {}).items():
                if name not in self.ad_slot:
                    raise InvalidRequest(self._unknown(name, "ad", where))
                self._check_group_value(name, value, f"{where}.{name}")
            self._check_dense(dense, row)

    def _check_group_value(self, name: str, value: Any, where: str) -> None:
        if not _is_weighted(value) or name not in self.weighted:
            try:
                _check_value(value, where)
            except InvalidRequest as exc:
                if self.weighted and _is_weighted(value):  # a model that has weighted groups
                    raise InvalidRequest(f"{exc.message} ({{\"ids\", \"weights\"}} is for its "
                                         f"weighted_sum groups; '{name}' pools by "
                                         f"{self._pooling(name)})") from None
                raise
            return
        try:
            ids, ws = _weighted_parts(value)
        except _BadValue:
            raise InvalidRequest(f"{where}: expected {{\"ids\": [...], \"weights\": [...]}}, got "
                                 f"the keys {sorted(map(str, value))}") from None
        if type(ids) is not list or type(ws) is not list:
            raise InvalidRequest(f"{where}: expected {{\"ids\": [...], \"weights\": [...]}}, two lists")
        for i, v in enumerate(ids):
            feature_id(v, f"{where}.ids[{i}]")
        if len(ws) != len(ids):
            raise InvalidRequest(f"{where}.weights: expected {len(ids)} numbers (one per id), "
                                 f"got {len(ws)}")
        for i, x in enumerate(ws):
            if not _finite_weight(x):
                raise InvalidRequest(f"{where}.weights[{i}]: expected a finite number with "
                                     f"|value| <= {DENSE_LIMIT:g}, got {describe_value(x)}")

    def _pooling(self, name: str) -> str:
        return next(g.pooling for g in self.groups if g.name == name)

    def _check_dense(self, dense: Any, row: int) -> None:
        dim = self.dense_dim
        if not dim:
            if dense:
                raise InvalidRequest(f"ads[{row}].dense: this model takes no dense features "
                                     f"(dense_dim 0), got {describe_value(dense)}")
            return
        if type(dense) is not list or len(dense) != dim:
            got = ("nothing (field missing)" if dense is None else
                   f"{len(dense)} values" if type(dense) is list else describe_value(dense))
            raise InvalidRequest(f"ads[{row}].dense: expected a list of {dim} finite numbers, "
                                 f"got {got}")
        for i, v in enumerate(dense):
            t = type(v)
            if t is not float and t is not int:
                raise InvalidRequest(f"ads[{row}].dense[{i}]: expected a number, got {describe_value(v)}")
            if not -DENSE_LIMIT <= v <= DENSE_LIMIT:
                raise InvalidRequest(f"ads[{row}].dense[{i}]: expected a finite number with "
                                     f"|value| <= {DENSE_LIMIT:g}, got {v!r}")

    def _unknown(self, name: str, side: str, where: str) -> str:
        if side == "context" and name in self.ad_slot:
            return f"{where}.{name}: '{name}' is an ad group; send it in each ad's features"
        if side == "ad" and name in self.ctx_slot:
            return f"{where}.{name}: '{name}' is a context group; send it once in the request's context"
        known = sorted(self.ctx_slot if side == "context" else self.ad_slot)
        return f"{where}.{name}: unknown {side} group '{name}'; this model's {side} groups are {known}"


def _is_weighted(value: Any) -> bool:
    return isinstance(value, Mapping) or (hasattr(value, "ids") and hasattr(value, "weights"))


def _weighted_parts(value: Any) -> tuple[Any, Any]:
    if isinstance(value, Mapping):
        if set(value) != {"ids", "weights"}:
            raise _BadValue
        return value["ids"], value["weights"]
    return value.ids, value.weights


def _finite_weight(x: Any) -> bool:
    return type(x) in (float, int) and -DENSE_LIMIT <= x <= DENSE_LIMIT


def _dense_only(ad: Any) -> dict:
    return {"dense": ad.get("dense") if type(ad) is dict else ad.dense}


def _check_value(value: Any, where: str) -> None:
    if type(value) is list:
        for i, v in enumerate(value):
            feature_id(v, f"{where}[{i}]")
    elif type(value) in (str, int):
        feature_id(value, where)
    else:
        raise InvalidRequest(f"{where}: expected a string, an integer id or a list of them, "
                             f"got {describe_value(value)}")
