"""Layered experiments in the models config: layers, an exclusive domain, a launch layer.

The design of Google's overlapping experiments (Tang et al., KDD 2010), as the seed's "layered
experiment platform" runs it:

* A **parameter** is what an arm changes for a request: ``model`` (a model of the file, or a
  pinned version of a native one: ``ctr@20261122.1``, ``ctr@next``), ``deadline_ms`` (the TF
  Serving deadline) or ``fallback`` (the native model that answers when TF Serving fails, or
  ``none``: fail instead). Every parameter has a default (``model``: the file's ``default``).
* A **layer** owns some parameters (no other layer may set them) and splits traffic by its own
  ``unit`` and ``salt``: bucket = ``xxh64(salt + unit) % 10000``; its arms own consecutive bucket
  ranges in the order listed. Layers overlap: a request is in one arm (or none) of every layer,
  and the salts make the layers independent.
* The **exclusive domain** (optional) sits on top: the units whose bucket one of its arms owns
  skip every layer, so its experiments never overlap another; its arms may set any parameter.
* The **launch layer** (``launch:``) holds launched values for everyone: experiment > launch >
  default.
* An arm's ``when`` limits who enters it: ``{"context.country": "cn"}`` or a list of values.
  A unit in an arm's buckets that fails the condition gets the layer's launch/default values.

The legacy single-layer ``experiments:`` block is one layer named ``experiments`` that owns
``model``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .reader import ConfigError, _Reader

BUCKETS = 10_000
PARAMS = ("model", "deadline_ms", "fallback")
NO_FALLBACK = "none"
UNIT_RE = re.compile(r"^(request_id|context\.[A-Za-z0-9_.-]+)$")
NEXT = "next"


@dataclass(frozen=True)
class ModelRef:
    """A model parameter: a model of the file, optionally pinned to a version (``next``: the
    newest installed version not yet promoted)."""

    name: str
    version: str | None = None

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version}"


@dataclass(frozen=True)
class LayerArm:
    name: str
    buckets: int                       # of the 10,000
    set: Mapping[str, Any]             # parameter -> value (model: ModelRef)
    when: Mapping[str, tuple] = field(default_factory=dict)  # context field -> allowed values

    @property
    def share(self) -> float:
        return self.buckets * 100.0 / BUCKETS


@dataclass(frozen=True)
class Layer:
    name: str
    unit: str                          # "request_id" or "context.<field>"
    salt: str
    arms: tuple[LayerArm, ...]
    params: tuple[str, ...]            # the parameters this layer owns

    @property
    def used(self) -> int:
        return sum(a.buckets for a in self.arms)


@dataclass(frozen=True)
class LayeredExperiments:
    """What ``POST /v1/score`` assigns: the defaults, launch values, exclusive domain, layers."""

    defaults: Mapping[str, Any]
    launch: Mapping[str, Any]
    layers: tuple[Layer, ...]
    exclusive: Layer | None = None
    version: str | None = None        # the config's own version label, when it has one
    legacy: bool = False              # from ``experiments:``: responses say "arm" as before

    def _model_values(self) -> list[ModelRef]:
        values = [self.launch.get("model"), self.defaults.get("model")]
        for layer in (*self.layers, *([self.exclusive] if self.exclusive else [])):
            values += [a.set.get("model") for a in layer.arms]
        return [v for v in values if isinstance(v, ModelRef)]

    def pins(self) -> set[ModelRef]:
        """Every pinned model version any arm or the launch layer names."""
        return {v for v in self._model_values() if v.version is not None}

    def models(self) -> set[str]:
        """The models any arm, the launch layer or the default may route to."""
        return {v.name for v in self._model_values()}


def params_json(values: Mapping[str, Any]) -> dict[str, Any]:
    """Parameter values as JSON (a model reference as its text, ``ctr@next``)."""
    return {k: str(v) if isinstance(v, ModelRef) else v for k, v in values.items()}


def parse_layers(r: _Reader, default: str | None, names: Sequence[str],
                 native: set[str]) -> LayeredExperiments | None:
    """The ``launch``, ``exclusive``, ``layers`` and ``version`` sections of the models config
    (or the legacy ``experiments`` block); None when there are none."""
    version = r.raw.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, (str, int))):
        raise ConfigError(f"{r.source}: version: expected a string or an integer, got {version!r}")
    version = None if version is None else str(version)
    has_new = any(r.has(k) for k in ("layers", "exclusive", "launch"))
    if r.has("experiments") and has_new:
        raise ConfigError(f"{r.source}: experiments: give either the single-layer 'experiments' "
                          "block or 'layers' (with 'exclusive' and 'launch'), not both")
    if not has_new and not r.has("experiments"):
        return None
    if default is None:
        raise ConfigError(f"{r.source}: default is required with experiments "
                          "(the model that takes the traffic no arm takes)")
    defaults = {"model": ModelRef(default)}
    if r.has("experiments"):
        layer = _legacy(r.sub("experiments"), names)
        return LayeredExperiments(defaults, {}, (layer,), None, version, legacy=True)
    launch = _values(r.sub("launch"), names, native) if r.has("launch") else {}
    exclusive = None
    if r.has("exclusive"):
        exclusive = _layer(r.sub("exclusive"), names, native, "exclusive")
    layers_raw = r.get("layers", list, default=[])
    layers, owner = [], {}
    for i, raw in enumerate(layers_raw):
        layer = _layer(_Reader(raw, f"layers[{i}].", r.source), names, native, None)
        if any(layer.name == x.name for x in layers) or (exclusive and layer.name == exclusive.name):
            raise ConfigError(f"{r.source}: layers[{i}].name {layer.name!r} is repeated")
        twin = next((x for x in (*([exclusive] if exclusive else []), *layers)
                     if (x.unit, x.salt) == (layer.unit, layer.salt)), None)
        if twin is not None:
            raise ConfigError(f"{r.source}: layers[{i}].salt {layer.salt!r}: layer {twin.name!r} has "
                              f"the same unit and salt, so their splits would be the same; give "
                              "each layer its own salt")
        for p in layer.params:
            if p in owner:
                raise ConfigError(f"{r.source}: layers[{i}]: parameter {p!r} is already owned by "
                                  f"layer {owner[p]!r}; a parameter belongs to one layer only")
            owner[p] = layer.name
        layers.append(layer)
    return LayeredExperiments(defaults, launch, tuple(layers), exclusive, version)


def _legacy(r: _Reader, names: Sequence[str]) -> Layer:
    r.only("key", "salt", "arms")
    unit = r.choice("key", ("context.user_id", "request_id"), default="context.user_id")
    arms, total = [], 0
    for j, a in enumerate(r.get("arms", list, required=True)):
        ar = _Reader(a, f"{r.where}arms[{j}].", r.source)
        ar.only("name", "model", "share")
        model = ar.get("model", str, required=True)
        if model not in names:
            raise ConfigError(f"{r.source}: {ar.where}model {model!r} is not a model of this file; "
                              f"models: {list(names)}")
        buckets = _share(ar)
        arm_name = ar.name("name") or model
        if arm_name == "default" or any(arm_name == x.name for x in arms):
            raise ConfigError(f"{r.source}: {ar.where}name {arm_name!r} is repeated or reserved "
                              "('default' names the arm-less share)")
        arms.append(LayerArm(arm_name, buckets, {"model": ModelRef(model)}))
        total += buckets
    _check_total(r, total)
    return Layer("experiments", unit, r.get("salt", str, default=""), tuple(arms), ("model",))


def _layer(r: _Reader, names: Sequence[str], native: set[str], fixed_name: str | None) -> Layer:
    r.only("name", "unit", "salt", "arms", "params")
    name = r.name("name", required=fixed_name is None) or fixed_name
    if name == "default":
        raise ConfigError(f"{r.source}: {r.where}name: 'default' names the arm-less share; "
                          "choose another layer name")
    unit = r.get("unit", str, default="context.user_id")
    if not UNIT_RE.match(unit):
        raise ConfigError(f"{r.source}: {r.where}unit: expected 'request_id' or "
                          f"'context.<field>', got {unit!r}")
    declared = r.get("params", list, default=[])
    for p in declared:
        if p not in PARAMS:
            raise ConfigError(f"{r.source}: {r.where}params: {p!r} is not a parameter; "
                              f"parameters: {list(PARAMS)}")
    arms, total, params = [], 0, list(declared)
    for j, a in enumerate(r.get("arms", list, required=True)):
        ar = _Reader(a, f"{r.where}arms[{j}].", r.source)
        ar.only("name", "share", "set", "when")
        arm_name = ar.name("name", required=True)
        if arm_name == "default" or any(arm_name == x.name for x in arms):
            raise ConfigError(f"{r.source}: {ar.where}name {arm_name!r} is repeated or reserved "
                              "('default' names the arm-less share)")
        values = _values(ar.sub("set"), names, native) if ar.has("set") else {}
        if not values:
            raise ConfigError(f"{r.source}: {ar.where}set: an arm sets at least one parameter "
                              f"({list(PARAMS)})")
        if declared and fixed_name is None:
            extra = sorted(set(values) - set(declared))
            if extra:
                raise ConfigError(f"{r.source}: {ar.where}set.{extra[0]}: the layer owns only "
                                  f"{declared}")
        for p in values:
            if p not in params:
                params.append(p)
        when = _when(ar.sub("when")) if ar.has("when") else {}
        buckets = _share(ar)
        arms.append(LayerArm(arm_name, buckets, values, when))
        total += buckets
    if not arms:
        raise ConfigError(f"{r.source}: {r.where}arms must list at least one arm")
    _check_total(r, total)
    return Layer(name, unit, r.get("salt", str, default=name), tuple(arms),
                 () if fixed_name is not None else tuple(params))


def _values(r: _Reader, names: Sequence[str], native: set[str]) -> dict[str, Any]:
    r.only(*PARAMS)
    out: dict[str, Any] = {}
    if r.has("model"):
        out["model"] = model_ref(r.get("model", str), f"{r.where}model", r.source, names, native)
    if r.has("deadline_ms"):
        out["deadline_ms"] = r.integer("deadline_ms", 1, 60_000)
    if r.has("fallback"):
        fallback = r.get("fallback", str)
        if fallback != NO_FALLBACK and fallback not in native:
            raise ConfigError(f"{r.source}: {r.where}fallback {fallback!r}: expected a native model "
                              f"of this file or {NO_FALLBACK!r}; native models: {sorted(native)}")
        out["fallback"] = fallback
    return out


def model_ref(text: str, where: str, source: str, names: Sequence[str], native: set[str]) -> ModelRef:
    name, at, version = text.partition("@")
    if name not in names:
        raise ConfigError(f"{source}: {where} {text!r}: {name!r} is not a model of this file; "
                          f"models: {list(names)}")
    if not at:
        return ModelRef(name)
    if name not in native:
        raise ConfigError(f"{source}: {where} {text!r}: only a native model can be pinned to a "
                          "version (a TF Serving model pins its version in its own entry)")
    if not version or "/" in version or version in (".", "..") or version.startswith("."):
        raise ConfigError(f"{source}: {where} {text!r}: expected '<model>@<version>' or "
                          "'<model>@next'")
    return ModelRef(name, version)


def _when(r: _Reader) -> dict[str, tuple]:
    out = {}
    for key, value in r.raw.items():
        if not isinstance(key, str) or not key.startswith("context.") or key == "context.":
            raise ConfigError(f"{r.source}: {r.where}{key}: expected a condition on "
                              "'context.<field>'")
        values = value if isinstance(value, list) else [value]
        if not values or any(isinstance(v, bool) or not isinstance(v, (str, int)) for v in values):
            raise ConfigError(f"{r.source}: {r.where}{key}: expected a string or integer, or a "
                              f"list of them, got {value!r}")
        out[key[len("context."):]] = tuple(values)
    return out


def _share(ar: _Reader) -> int:
    share = ar.get("share", (int, float), required=True)
    buckets = round(share * 100) if 0 < share <= 100 else 0  # (NaN and infinities fail here)
    if not 0 < share <= 100 or abs(buckets - share * 100) > 1e-6:
        raise ConfigError(f"{ar.source}: {ar.where}share: expected a percentage > 0 and <= 100 "
                          f"with at most two decimals (N.NN), got {share!r}")
    return buckets


def _check_total(r: _Reader, total: int) -> None:
    if total > BUCKETS:
        raise ConfigError(f"{r.source}: {r.where}arms: shares add up to {total / 100:.2f} %, "
                          "more than 100 %")
