"""Which arm of every layer a request is in, and the parameters that follow (scoring/upstream/layers.py).

Per layer a bucket -> arm table is built once; a request costs one xxh64 per layer with a unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .layers import BUCKETS, Layer, LayerArm, LayeredExperiments
from .routing import bucket_of, unit_value

DEFAULT = "default"


@dataclass(frozen=True)
class Assignment:
    params: dict[str, Any]       # parameter -> value (model: a ModelRef)
    arms: dict[str, str]         # layer -> the arm the request entered ("default": none)
    owners: dict[str, str]       # layer -> the arm owning the request's bucket (conditions aside;
                                 # the sample-ratio check counts these); only the layers whose
                                 # unit the request has


class _Split:
    """One layer (or the exclusive domain): bucket -> arm, and the arms' conditions."""

    def __init__(self, layer: Layer) -> None:
        self.layer = layer
        self.owner: list[LayerArm | None] = [None] * BUCKETS
        start = 0
        for arm in layer.arms:
            for b in range(start, start + arm.buckets):
                self.owner[b] = arm
            start += arm.buckets

    def bucket_of(self, request_id: Any, context: Mapping[str, Any] | None) -> int | None:
        """The request's bucket in this layer; None without the layer's unit."""
        key = unit_value(self.layer.unit, request_id, context)
        return None if key is None else bucket_of(key, self.layer.salt)


def _enters(arm: LayerArm, context: Mapping[str, Any] | None) -> bool:
    if not arm.when:
        return True
    if not isinstance(context, Mapping):
        return False
    for field, allowed in arm.when.items():
        value = context.get(field)
        if type(value) not in (str, int) or value not in allowed:
            return False
    return True


class Assigner:
    """Maps a request to its arms and parameters: exclusive domain first (its units skip every
    layer), then each layer; experiment > launch > default."""

    def __init__(self, config: LayeredExperiments) -> None:
        self.config = config
        self.base = {**config.defaults, **config.launch}
        self.exclusive = _Split(config.exclusive) if config.exclusive else None
        self.splits = [_Split(layer) for layer in config.layers]

    def assign(self, request_id: Any, context: Mapping[str, Any] | None) -> Assignment:
        params = dict(self.base)
        arms: dict[str, str] = {}
        owners: dict[str, str] = {}  # only where the request has the unit: the split is of those
        if self.exclusive is not None:
            b = self.exclusive.bucket_of(request_id, context)
            arm = self.exclusive.owner[b] if b is not None else None
            name = self.exclusive.layer.name
            if b is not None:
                owners[name] = arm.name if arm is not None else DEFAULT
            if arm is not None:  # in the exclusive domain: no layer sees this unit
                if _enters(arm, context):
                    params.update(arm.set)
                    arms[name] = arm.name
                else:
                    arms[name] = DEFAULT
                return Assignment(params, arms, owners)
        for split in self.splits:
            b = split.bucket_of(request_id, context)
            arm = split.owner[b] if b is not None else None
            name = split.layer.name
            if b is not None:
                owners[name] = arm.name if arm is not None else DEFAULT
            if arm is not None and _enters(arm, context):
                params.update(arm.set)
                arms[name] = arm.name
            else:
                arms[name] = DEFAULT
        return Assignment(params, arms, owners)
