"""The manifest of a model package (contract section 2): its fields, their checks, the names.

``manifest.json`` says what a package holds: the feature groups (side, buckets, dim, pooling,
table file) and the layers (weight, bias, activation). :func:`parse_manifest` checks every field
and type before any array is opened, and :class:`PackageError` names the field that is wrong.
Model names and versions become directory names, so they keep to a safe alphabet
(:func:`check_name`); file names stay inside the package (:func:`check_relative_path`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

FORMAT = "ctr-mlp"
FORMAT_VERSION = 1
FORMAT_V2 = "ctr-model"  # format 2 (contract section 2b): see ``format2``
TABLE_DTYPES = ("float32", "float16", "int8_rowwise")
MLP_PRECISIONS = ("float32", "bf16")
MANIFEST = "manifest.json"
CHECKSUMS = "checksums.md5"
SIDES = ("context", "ad")
POOLINGS = ("sum", "mean")
HIDDEN_ACTIVATIONS = ("relu",)
OUTPUT_ACTIVATION = "sigmoid"
MAX_MANIFEST_BYTES = 1 << 20  # a manifest is a few KB; anything near this is not one
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


class PackageError(ValueError):
    """A model package is malformed; the message names the file or field and what was expected."""


@dataclass(frozen=True)
class TableSpec:
    """One embedding table: ``rows`` x ``dim`` of ``dtype`` in ``file``; an ``int8_rowwise``
    table has a float32 ``[rows, 2]`` (scale, offset) file ``qparams``."""

    name: str
    file: str
    rows: int
    dim: int
    dtype: str = "float32"
    qparams: str | None = None

    def files(self) -> list[str]:
        return [self.file] + ([self.qparams] if self.qparams else [])


@dataclass(frozen=True)
class GroupSpec:
    """One feature group: an embedding table pooled into ``dim`` inputs of the MLP.

    ``table`` is the table's file, ``table_name`` its key in ``Manifest.tables`` (format 1:
    the group's own name; format 2 lets several groups share one table)."""

    name: str
    side: str
    buckets: int
    dim: int
    pooling: str
    table: str
    table_name: str = ""
    serving_value: Any = None  # format 2: the value assumed when a request does not send it


@dataclass(frozen=True)
class LayerSpec:
    """One fully connected layer: ``h = activation(h @ weight + bias)``."""

    weight: str
    bias: str
    activation: str


@dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json``; ``raw`` keeps every field, including extra ones."""

    name: str
    version: str
    groups: tuple[GroupSpec, ...]
    dense_dim: int
    layers: tuple[LayerSpec, ...]
    raw: Mapping[str, Any] = field(repr=False, compare=False)
    format_version: int = FORMAT_VERSION
    tables: Mapping[str, TableSpec] = field(default_factory=dict, compare=False)
    mlp_precision: str = "float32"  # format 2's mlp block "precision": "float32" or "bf16"
    graph: Any = None  # format 2 beyond one mlp: a scoring.model.graph.Graph (layers empty)

    @property
    def input_dim(self) -> int:
        return sum(g.dim for g in self.groups) + self.dense_dim

    def table_of(self, group: GroupSpec) -> TableSpec:
        return self.tables[group.table_name]

    def files(self) -> list[str]:
        """Every array file the manifest names, each once, in manifest order."""
        names: list[str] = []
        for table in self.tables.values():
            names += table.files()
        for layer in self.layers:
            names += [layer.weight, layer.bias]
        if self.graph is not None:
            names += self.graph.files()
        return list(dict.fromkeys(names))


# ----------------------------------------------------------------------------- names and paths


def check_relative_path(name: str, what: str = "path") -> str:
    """Return ``name`` if it is a plain relative POSIX path inside the package, else raise."""
    if not isinstance(name, str) or not name:
        raise PackageError(f"{what}: expected a non-empty relative path, got {name!r}")
    if "\\" in name or "\x00" in name:
        raise PackageError(f"{what}: {name!r} has a backslash or NUL byte; use '/' separators")
    p = PurePosixPath(name)
    if p.is_absolute() or any(part in ("..", ".", "") for part in name.split("/")):
        raise PackageError(f"{what}: {name!r} must be a relative path inside the package "
                           "(no '..', '.', empty parts or leading '/')")
    return name


def is_valid_name(name: str) -> bool:
    """A model name or version the repository can hold (see :func:`check_name`)."""
    return isinstance(name, str) and bool(_NAME_RE.match(name)) and len(name) <= 128


def check_name(name: str, what: str) -> str:
    """Model names and versions become directory names: keep them to a safe alphabet."""
    if not is_valid_name(name):
        raise PackageError(f"{what} must be 1-128 characters of letters, digits, '_', '-', '.', "
                           f"not starting with '.' or '-'; got {name!r}")
    return name



# ----------------------------------------------------------------------------- manifest


def _field(obj: Mapping[str, Any], key: str, typ: type | tuple, where: str) -> Any:
    if key not in obj:
        raise PackageError(f"{MANIFEST}: {where}{key} is missing")
    val = obj[key]
    if isinstance(val, bool) and typ is not bool or not isinstance(val, typ):
        tname = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise PackageError(f"{MANIFEST}: {where}{key} must be {tname}, got {val!r}")
    return val


def _positive_int(obj: Mapping[str, Any], key: str, where: str, minimum: int = 1) -> int:
    val = _field(obj, key, int, where)
    if val < minimum:
        raise PackageError(f"{MANIFEST}: {where}{key} must be an integer >= {minimum}, got {val}")
    return val


def _choice(obj: Mapping[str, Any], key: str, choices: tuple[str, ...], where: str) -> str:
    val = _field(obj, key, str, where)
    if val not in choices:
        raise PackageError(f"{MANIFEST}: {where}{key} must be one of {list(choices)}, got {val!r}")
    return val


def group_entries(raw: Mapping[str, Any]):
    """``(index, object, name)`` of each entry of ``groups``: an object with a unique, non-empty
    name (both format versions)."""
    seen: set[str] = set()
    for i, g in enumerate(_field(raw, "groups", list, "")):
        where = f"groups[{i}]."
        if not isinstance(g, dict):
            raise PackageError(f"{MANIFEST}: groups[{i}] must be an object, got {g!r}")
        gname = _field(g, "name", str, where)
        if not gname:
            raise PackageError(f"{MANIFEST}: {where}name must be a non-empty string")
        if gname in seen:
            raise PackageError(f"{MANIFEST}: {where}name {gname!r} is repeated; group names must be unique")
        seen.add(gname)
        yield i, g, gname


def parse_manifest(raw: Any) -> Manifest:
    """Validate the manifest's fields and types (not the arrays) and return a :class:`Manifest`."""
    if not isinstance(raw, dict):
        raise PackageError(f"{MANIFEST}: expected a JSON object, got {type(raw).__name__}")
    fmt = _field(raw, "format", str, "")
    fv = _field(raw, "format_version", int, "")
    if fmt == FORMAT_V2 and fv == 2:
        from .format2 import parse_format2
        return parse_format2(raw)
    if fmt != FORMAT:
        raise PackageError(f"{MANIFEST}: format must be {FORMAT!r} (format_version 1) or "
                           f"{FORMAT_V2!r} (format_version 2), got {fmt!r}")
    if fv != FORMAT_VERSION:
        raise PackageError(f"{MANIFEST}: format_version must be {FORMAT_VERSION} for format "
                           f"{FORMAT!r}, got {fv!r}")
    name = check_name(_field(raw, "name", str, ""), f"{MANIFEST}: name")
    version = check_name(_field(raw, "version", str, ""), f"{MANIFEST}: version")
    dense_dim = _positive_int(raw, "dense_dim", "", minimum=0) if "dense_dim" in raw else 0

    groups = []
    for i, g, gname in group_entries(raw):
        where = f"groups[{i}]."
        buckets = _positive_int(g, "buckets", where)
        if buckets >= 2**63:
            raise PackageError(f"{MANIFEST}: {where}buckets must be < 2**63, got {buckets}")
        groups.append(GroupSpec(
            name=gname,
            side=_choice(g, "side", SIDES, where),
            buckets=buckets,
            dim=_positive_int(g, "dim", where),
            pooling=_choice(g, "pooling", POOLINGS, where),
            table=check_relative_path(_field(g, "table", str, where), f"{MANIFEST}: {where}table"),
            table_name=gname,
        ))

    layers_raw = _field(raw, "layers", list, "")
    if not layers_raw:
        raise PackageError(f"{MANIFEST}: layers must list at least one layer")
    layers = []
    for i, layer in enumerate(layers_raw):
        where = f"layers[{i}]."
        if not isinstance(layer, dict):
            raise PackageError(f"{MANIFEST}: layers[{i}] must be an object, got {layer!r}")
        last = i == len(layers_raw) - 1
        allowed = (OUTPUT_ACTIVATION,) if last else HIDDEN_ACTIVATIONS
        act = _field(layer, "activation", str, where)
        if act not in allowed:
            role = "the last layer" if last else "a hidden layer"
            raise PackageError(f"{MANIFEST}: {where}activation {act!r} is not supported for {role}; "
                               f"expected one of {list(allowed)}")
        layers.append(LayerSpec(
            weight=check_relative_path(_field(layer, "weight", str, where), f"{MANIFEST}: {where}weight"),
            bias=check_relative_path(_field(layer, "bias", str, where), f"{MANIFEST}: {where}bias"),
            activation=act,
        ))
    if sum(g.dim for g in groups) + dense_dim == 0:
        raise PackageError(f"{MANIFEST}: the model has no inputs (no groups and dense_dim 0)")
    tables = {g.name: TableSpec(g.name, g.table, g.buckets, g.dim) for g in groups}
    manifest = Manifest(name=name, version=version, groups=tuple(groups), dense_dim=dense_dim,
                        layers=tuple(layers), raw=raw, tables=tables)
    files = manifest.files()
    if CHECKSUMS in files or MANIFEST in files:
        raise PackageError(f"{MANIFEST}: arrays may not be named {MANIFEST} or {CHECKSUMS}")
    return manifest


def read_small_file(path: Path, limit: int, missing: str, too_large: str,
                    error: type[PackageError] = PackageError) -> bytes:
    """The bytes of a package's small metadata file (manifest, checksums, baseline), refused
    unread beyond ``limit``; ``error(missing)`` when it is not a regular file, a symlink
    included, and ``error(too_large)`` when it is larger."""
    if path.is_symlink() or not path.is_file():
        raise error(missing)
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise error(too_large)
    return data


def read_manifest(root: str | os.PathLike) -> Manifest:
    """Read and parse ``<root>/manifest.json``; larger than 1 MiB is refused unread."""
    return parse_manifest_bytes(read_small_file(
        Path(root) / MANIFEST, MAX_MANIFEST_BYTES,
        f"{MANIFEST}: missing in {Path(root).name} (or not a regular file)",
        f"{MANIFEST}: larger than {MAX_MANIFEST_BYTES} bytes; a manifest names files and shapes "
        "and is a few KB"))


def parse_manifest_bytes(data: bytes) -> Manifest:
    """Parse the bytes of a ``manifest.json`` (JSON text, then :func:`parse_manifest`)."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise PackageError(f"{MANIFEST}: not valid JSON ({str(exc)[:200]})") from None
    return parse_manifest(raw)


