"""The models config file (``CTR_MODELS_CONFIG``, YAML or JSON): which models serve, and how.

* ``kind: native`` models are packages in the local repository, scored by our engine. Without a
  config file every model in the repository is served this way.
* ``kind: tfserving`` models are scored by TensorFlow Serving over its REST API (the "second leg"
  for structures our engine cannot run yet), with an optional native ``fallback``.
* ``experiments`` splits ``POST /v1/score`` traffic: each arm takes a share (N.NN %) of the 10,000
  buckets of ``xxh64(key)``; the ``default`` model takes the rest.

Everything is validated up front; a mistake raises :class:`ConfigError` naming the field, e.g.
``models[1].deadline_ms: expected an integer 1..60000, got 0``. docs/models-config.md is the
user's guide to this file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

import yaml

from .layers import LayeredExperiments, parse_layers
from .reader import ConfigError, _Reader

KINDS = ("native", "tfserving")
FORMATS = ("row", "columnar")


@dataclass(frozen=True)
class NativeModel:
    """A model from the local repository, scored by the engine."""

    name: str
    kind: str = "native"


@dataclass(frozen=True)
class Features:
    """The request groups a TF Serving model takes (what our API validates before sending)."""

    context: tuple[str, ...]
    ad: tuple[str, ...]
    dense_dim: int = 0


@dataclass(frozen=True)
class InputMapping:
    """How a request becomes TF Serving input tensors.

    ``tensors`` maps a group to its tensor name (default: the group's own name); each is an int64
    id matrix ``[n_ads, max_len]`` padded with ``pad_id``. ``lengths`` is a name template for the
    int64 ``[n_ads]`` count of real ids per row (``{group}`` is replaced), or None to send none.
    ``dense`` names the float ``[n_ads, dense_dim]`` tensor. ``output`` picks the output tensor
    when the signature has several; ``outputs`` names several to answer (a multi-head model:
    the response carries each, ``output`` or the first being the scores)."""

    tensors: Mapping[str, str] = field(default_factory=dict)
    lengths: str | None = "{group}_len"
    pad_id: int = 0
    dense: str = "dense"
    output: str | None = None
    outputs: tuple[str, ...] = ()

    @property
    def primary(self) -> str | None:
        return self.output or (self.outputs[0] if self.outputs else None)

    def tensor(self, group: str) -> str:
        return self.tensors.get(group, group)

    def length_tensor(self, group: str) -> str | None:
        return self.lengths.replace("{group}", self.tensor(group)) if self.lengths else None


@dataclass(frozen=True)
class Breaker:
    failures: int = 5          # consecutive failures of one upstream that open its circuit
    cooldown_ms: int = 2000    # open for this long, then one probe request (half-open)


@dataclass(frozen=True)
class TFServingModel:
    """A model scored by TensorFlow Serving's REST predict API."""

    name: str
    urls: tuple[str, ...]
    model_name: str
    features: Features | None            # None: taken from the fallback model's manifest
    version: int | None = None
    label: str | None = None
    signature_name: str | None = None
    deadline_ms: int = 50
    max_concurrency: int = 4             # sub-requests of one request in flight at once
    sub_batch_size: int = 32             # ads per sub-request
    max_connections: int = 64            # pooled keep-alive connections per upstream host
    format: str = "row"                  # "row" (instances) or "columnar" (inputs)
    inputs: InputMapping = field(default_factory=InputMapping)
    fallback: str | None = None
    breaker: Breaker = field(default_factory=Breaker)
    kind: str = "tfserving"

    def predict_path(self) -> str:
        """``/v1/models/{m}[/versions/{v}|/labels/{l}]:predict`` (TF Serving's REST URL)."""
        return self.model_path() + ":predict"

    def model_path(self) -> str:
        path = f"/v1/models/{self.model_name}"
        if self.version is not None:
            path += f"/versions/{self.version}"
        elif self.label is not None:
            path += f"/labels/{self.label}"
        return path


@dataclass(frozen=True)
class ModelsConfig:
    models: tuple[NativeModel | TFServingModel, ...]
    default: str | None = None
    source: str = "(repository)"
    layered: LayeredExperiments | None = None  # every experiment layer (``experiments`` too)

    def get(self, name: str) -> NativeModel | TFServingModel | None:
        return next((m for m in self.models if m.name == name), None)

    @property
    def native(self) -> list[NativeModel]:
        return [m for m in self.models if isinstance(m, NativeModel)]

    @property
    def tfserving(self) -> list[TFServingModel]:
        return [m for m in self.models if isinstance(m, TFServingModel)]

    def experimental(self) -> set[str]:
        """Models that only serve an experiment arm or are TF Serving models (readiness skips
        them: an experiment's upstream must not take the service down)."""
        names = {m.name for m in self.tfserving}
        if self.layered:
            names |= self.layered.models() - {self.default}
        return names


# ----------------------------------------------------------------------------- reading


def default_config(repo_models: Iterable[str]) -> ModelsConfig:
    """No config file: every model in the repository, native."""
    return ModelsConfig(models=tuple(NativeModel(n) for n in repo_models))


def load_models_config(path: str | os.PathLike | None,
                       repo_models: Iterable[str] = ()) -> ModelsConfig:
    """Read and validate the file at ``path`` (YAML or JSON); None means no file."""
    if path is None or str(path) == "":
        return default_config(repo_models)
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"CTR_MODELS_CONFIG: cannot read {p} ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    try:
        raw = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{p}: not valid {'JSON' if p.suffix.lower() == '.json' else 'YAML'} "
                          f"({str(exc).splitlines()[0]})") from None
    return parse_models_config(raw, source=str(p))


def parse_models_config(raw: Any, source: str = "models config") -> ModelsConfig:
    """Validate an already-parsed config document."""
    r = _Reader(raw, "", source)
    r.only("models", "default", "experiments", "layers", "exclusive", "launch", "version")
    models_raw = r.get("models", list, required=True)
    if not models_raw:
        raise ConfigError(f"{source}: models must list at least one model")
    models: list[NativeModel | TFServingModel] = []
    for i, m in enumerate(models_raw):
        models.append(_model(_Reader(m, f"models[{i}].", source)))
    names = [m.name for m in models]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise ConfigError(f"{source}: models[{i}].name {n!r} is repeated; names must be unique")
    native = {m.name for m in models if isinstance(m, NativeModel)}
    for i, m in enumerate(models):
        if isinstance(m, TFServingModel):
            if m.fallback is not None and m.fallback not in native:
                raise ConfigError(f"{source}: models[{i}].fallback {m.fallback!r} must name a "
                                  f"native model of this file; native models: {sorted(native)}")
            if m.features is None and m.fallback is None:
                raise ConfigError(f"{source}: models[{i}].features is required when there is "
                                  "no fallback (the request's groups cannot be known otherwise)")
    default = r.get("default", str)
    if default is not None and default not in names:
        raise ConfigError(f"{source}: default {default!r} is not a model of this file; "
                          f"models: {names}")
    layered = parse_layers(r, default, names, native)
    return ModelsConfig(models=tuple(models), default=default, source=source, layered=layered)


def _model(r: _Reader) -> NativeModel | TFServingModel:
    kind = r.choice("kind", KINDS, default="native")
    name = r.name("name", required=True)
    if kind == "native":
        r.only("name", "kind")
        return NativeModel(name)
    r.only("name", "kind", "urls", "url", "model_name", "version", "label", "signature_name",
           "deadline_ms", "max_concurrency", "sub_batch_size", "max_connections", "format",
           "features", "inputs", "fallback", "breaker")
    if r.has("url") and r.has("urls"):
        raise ConfigError(f"{r.source}: {r.where}url and {r.where}urls: give one of them")
    urls_raw = [r.raw["url"]] if r.has("url") else r.get("urls", list, required=True)
    if not urls_raw:
        raise ConfigError(f"{r.source}: {r.where}urls must list at least one TF Serving REST URL")
    urls = tuple(_url(u, f"{r.where}urls[{j}]", r.source) for j, u in enumerate(urls_raw))
    version = r.integer("version", 0, 2**63 - 1)
    label = r.get("label", str)
    if version is not None and label is not None:
        raise ConfigError(f"{r.source}: {r.where}version and {r.where}label: give at most one")
    if label is not None:
        _path_part(label, f"{r.where}label", r.source)
    model_name = r.get("model_name", str) or name
    _path_part(model_name, f"{r.where}model_name", r.source)
    return TFServingModel(
        name=name, urls=urls, model_name=model_name, version=version, label=label,
        signature_name=r.get("signature_name", str),
        deadline_ms=r.integer("deadline_ms", 1, 60_000, default=50),
        max_concurrency=r.integer("max_concurrency", 1, 256, default=4),
        sub_batch_size=r.integer("sub_batch_size", 1, 100_000, default=32),
        max_connections=r.integer("max_connections", 1, 10_000, default=64),
        format=r.choice("format", FORMATS, default="row"),
        features=_features(r.sub("features")) if r.has("features") else None,
        inputs=_inputs(r.sub("inputs")) if r.has("inputs") else InputMapping(),
        fallback=r.name("fallback"),
        breaker=_breaker(r.sub("breaker")) if r.has("breaker") else Breaker(),
    )


def _features(r: _Reader) -> Features:
    r.only("context", "ad", "dense_dim")
    groups = {}
    for side in ("context", "ad"):
        names = r.get(side, list, default=[])
        for j, g in enumerate(names):
            if not isinstance(g, str) or not g:
                raise ConfigError(f"{r.source}: {r.where}{side}[{j}]: expected a group name, got {g!r}")
        groups[side] = tuple(names)
    both = set(groups["context"]) & set(groups["ad"])
    all_names = groups["context"] + groups["ad"]
    if both or len(set(all_names)) != len(all_names):
        dup = sorted(both) or sorted({g for g in all_names if all_names.count(g) > 1})
        raise ConfigError(f"{r.source}: {r.where}: group {dup[0]!r} is listed twice; "
                          "a group is either context or ad, once")
    dense_dim = r.integer("dense_dim", 0, 1_000_000, default=0)
    if not all_names and not dense_dim:
        raise ConfigError(f"{r.source}: {r.where}: no groups and dense_dim 0; the model has no inputs")
    return Features(groups["context"], groups["ad"], dense_dim)


def _inputs(r: _Reader) -> InputMapping:
    r.only("tensors", "lengths", "pad_id", "dense", "output", "outputs")
    tensors = r.get("tensors", dict, default={})
    for g, t in tensors.items():
        if not isinstance(t, str) or not t:
            raise ConfigError(f"{r.source}: {r.where}tensors.{g}: expected a tensor name, got {t!r}")
    lengths = r.get("lengths", str, default="{group}_len", nullable=True)
    outputs = r.get("outputs", list, default=[])
    if not all(isinstance(o, str) and o for o in outputs) or len(set(outputs)) != len(outputs):
        raise ConfigError(f"{r.source}: {r.where}outputs: expected a list of distinct output "
                          f"tensor names, got {outputs!r}")
    output = r.get("output", str)
    if output is not None and outputs and output not in outputs:
        raise ConfigError(f"{r.source}: {r.where}output {output!r} must be one of outputs {outputs}")
    return InputMapping(tensors=dict(tensors), lengths=lengths,
                        pad_id=r.integer("pad_id", -(2**63), 2**63 - 1, default=0),
                        dense=r.get("dense", str, default="dense"), output=output,
                        outputs=tuple(outputs))


def _breaker(r: _Reader) -> Breaker:
    r.only("failures", "cooldown_ms")
    return Breaker(failures=r.integer("failures", 1, 1_000_000, default=5),
                   cooldown_ms=r.integer("cooldown_ms", 1, 3_600_000, default=2000))


def _url(u: Any, where: str, source: str) -> str:
    if not isinstance(u, str):
        raise ConfigError(f"{source}: {where}: expected an http(s) URL string, got {u!r}")
    parts = urlsplit(u)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"{source}: {where}: expected a TF Serving REST base URL like "
                          f"'http://host:8501', got {u!r}")
    try:
        parts.port
    except ValueError:
        raise ConfigError(f"{source}: {where}: bad port in {u!r}") from None
    return u.rstrip("/")


def _path_part(value: str, where: str, source: str) -> None:
    if not value or any(c in value for c in "/:?#% ") or value in (".", ".."):
        raise ConfigError(f"{source}: {where}: {value!r} cannot be part of a TF Serving URL path "
                          "(no '/', ':', '?', '#', '%' or spaces)")
