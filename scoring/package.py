"""The model package format (contract section 2): read, validate and write.

A package is a directory with ``manifest.json``, ``checksums.md5`` and the float32 ``.npy``
arrays the manifest names. :func:`load_package` checks everything before anything can use the
model, so a bad package is rejected whole with one :class:`PackageError` naming the file or field;
it is never half-usable. Arrays are memory-mapped read-only so large embedding tables cost no
copy and are shared between worker processes through the page cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

import numpy as np

FORMAT = "ctr-mlp"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CHECKSUMS = "checksums.md5"
SIDES = ("context", "ad")
POOLINGS = ("sum", "mean")
HIDDEN_ACTIVATIONS = ("relu",)
OUTPUT_ACTIVATION = "sigmoid"
FLOAT32_LE = np.dtype("<f4")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_MD5_LINE = re.compile(r"^([0-9a-fA-F]{32}) [ *](.+)$")
_FINITE_CHUNK_BYTES = 64 << 20


class PackageError(ValueError):
    """A model package is malformed; the message names the file or field and what was expected."""


@dataclass(frozen=True)
class GroupSpec:
    """One feature group: an embedding table pooled into ``dim`` inputs of the MLP."""

    name: str
    side: str
    buckets: int
    dim: int
    pooling: str
    table: str


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

    @property
    def input_dim(self) -> int:
        return sum(g.dim for g in self.groups) + self.dense_dim

    def files(self) -> list[str]:
        """Every array file the manifest names, in manifest order."""
        names = [g.table for g in self.groups]
        for layer in self.layers:
            names += [layer.weight, layer.bias]
        return names


@dataclass
class ModelPackage:
    """A validated package with its arrays memory-mapped read-only."""

    path: Path
    manifest: Manifest
    tables: list[np.ndarray]
    weights: list[np.ndarray]
    biases: list[np.ndarray]
    checksums: dict[str, str]
    md5: str  # md5 of checksums.md5: one identity for the whole package

    @property
    def nbytes(self) -> int:
        arrays = self.tables + self.weights + self.biases
        return sum(a.nbytes for a in arrays)


# ----------------------------------------------------------------------------- paths, checksums


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


def md5_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def parse_checksums(text: str, source: str = CHECKSUMS) -> dict[str, str]:
    """Parse md5sum output (``<32 hex>  <relative path>`` per line) into {path: md5}."""
    sums: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _MD5_LINE.match(line.rstrip("\r"))
        if not m:
            raise PackageError(f"{source} line {lineno}: expected '<32 hex md5>  <relative path>', "
                               f"got {line[:80]!r}")
        digest, name = m.group(1).lower(), m.group(2)
        check_relative_path(name, f"{source} line {lineno}")
        if name in (CHECKSUMS,):
            raise PackageError(f"{source} line {lineno}: {CHECKSUMS} must not list itself")
        if name in sums:
            raise PackageError(f"{source} line {lineno}: {name!r} is listed twice")
        sums[name] = digest
    if not sums:
        raise PackageError(f"{source}: no entries; expected one line per package file")
    return sums


def format_checksums(sums: Mapping[str, str]) -> str:
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items()))


def package_files(root: Path) -> list[str]:
    """Every regular file below ``root`` except checksums.md5, as relative POSIX paths."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            full = Path(dirpath) / fn
            rel = full.relative_to(root).as_posix()
            if rel != CHECKSUMS:
                out.append(rel)
    return out


def verify_checksums(root: str | os.PathLike) -> dict[str, str]:
    """Check ``checksums.md5`` against every file of the package; return {path: md5}."""
    root = Path(root)
    cpath = root / CHECKSUMS
    if not cpath.is_file():
        raise PackageError(f"{CHECKSUMS}: missing in {root}")
    sums = parse_checksums(cpath.read_text(encoding="utf-8", errors="replace"))
    for name, digest in sums.items():
        fpath = root / name
        if fpath.is_symlink() or not fpath.is_file():
            raise PackageError(f"{name}: listed in {CHECKSUMS} but missing (or not a regular file)")
        actual = md5_file(fpath)
        if actual != digest:
            raise PackageError(f"{name}: md5 mismatch, {CHECKSUMS} says {digest}, file has {actual}")
    unlisted = [f for f in package_files(root) if f not in sums]
    if unlisted:
        raise PackageError(f"{unlisted[0]}: present in the package but not listed in {CHECKSUMS}")
    return sums


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


def check_name(name: str, what: str) -> str:
    """Model names and versions become directory names: keep them to a safe alphabet."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or len(name) > 128:
        raise PackageError(f"{what} must be 1-128 characters of letters, digits, '_', '-', '.', "
                           f"not starting with '.' or '-'; got {name!r}")
    return name


def parse_manifest(raw: Any) -> Manifest:
    """Validate the manifest's fields and types (not the arrays) and return a :class:`Manifest`."""
    if not isinstance(raw, dict):
        raise PackageError(f"{MANIFEST}: expected a JSON object, got {type(raw).__name__}")
    fmt = _field(raw, "format", str, "")
    if fmt != FORMAT:
        raise PackageError(f"{MANIFEST}: format must be {FORMAT!r}, got {fmt!r}")
    fv = _field(raw, "format_version", int, "")
    if fv != FORMAT_VERSION:
        raise PackageError(f"{MANIFEST}: format_version must be {FORMAT_VERSION}, got {fv!r}")
    name = check_name(_field(raw, "name", str, ""), f"{MANIFEST}: name")
    version = check_name(_field(raw, "version", str, ""), f"{MANIFEST}: version")
    dense_dim = _positive_int(raw, "dense_dim", "", minimum=0) if "dense_dim" in raw else 0

    groups_raw = _field(raw, "groups", list, "")
    groups = []
    seen: set[str] = set()
    for i, g in enumerate(groups_raw):
        where = f"groups[{i}]."
        if not isinstance(g, dict):
            raise PackageError(f"{MANIFEST}: groups[{i}] must be an object, got {g!r}")
        gname = _field(g, "name", str, where)
        if not gname:
            raise PackageError(f"{MANIFEST}: {where}name must be a non-empty string")
        if gname in seen:
            raise PackageError(f"{MANIFEST}: {where}name {gname!r} is repeated; group names must be unique")
        seen.add(gname)
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
    manifest = Manifest(name=name, version=version, groups=tuple(groups), dense_dim=dense_dim,
                        layers=tuple(layers), raw=raw)
    files = manifest.files()
    if CHECKSUMS in files or MANIFEST in files:
        raise PackageError(f"{MANIFEST}: arrays may not be named {MANIFEST} or {CHECKSUMS}")
    return manifest


def read_manifest(root: str | os.PathLike) -> Manifest:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise PackageError(f"{MANIFEST}: missing in {root}")
    try:
        raw = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise PackageError(f"{MANIFEST}: not valid JSON ({exc})") from None
    return parse_manifest(raw)


# ----------------------------------------------------------------------------- arrays


def _open_array(root: Path, name: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    path = root / name
    if path.is_symlink() or not path.is_file():
        raise PackageError(f"{name}: missing ({what})")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # truncated, not .npy, object arrays, ...
        raise PackageError(f"{name}: cannot be read as a .npy array ({exc})") from None
    if arr.dtype != FLOAT32_LE:
        raise PackageError(f"{name}: dtype must be little-endian float32 ('<f4'), got {arr.dtype.str!r}")
    if arr.shape != shape:
        raise PackageError(f"{name}: shape must be {list(shape)} ({what}), got {list(arr.shape)}")
    if not arr.flags.c_contiguous:
        raise PackageError(f"{name}: must be stored in C order (fortran_order False)")
    return np.asarray(arr)  # a plain read-only ndarray view of the map: no copy


def check_finite(arr: np.ndarray, name: str) -> None:
    """Raise if ``arr`` holds NaN or Inf; scans in chunks so a 2 GB table needs no 2 GB temp."""
    flat = arr.reshape(-1)
    step = max(1, _FINITE_CHUNK_BYTES // max(1, arr.itemsize))
    for start in range(0, flat.size, step):
        block = flat[start:start + step]
        if not np.isfinite(block).all():
            bad = start + int(np.flatnonzero(~np.isfinite(block))[0])
            idx = np.unravel_index(bad, arr.shape)
            raise PackageError(f"{name}: holds a non-finite value ({flat[bad]}) at index "
                               f"{list(map(int, idx))}; weights must be finite")


def load_package(root: str | os.PathLike, *, verify: bool = True, finite: bool = True) -> ModelPackage:
    """Validate a package directory and map its arrays read-only.

    ``verify`` checks ``checksums.md5`` (md5 of every file); ``finite`` scans every array for
    NaN/Inf. Both default on: a model must never go live unchecked.
    """
    root = Path(root)
    if not root.is_dir():
        raise PackageError(f"{root}: not a directory")
    manifest = read_manifest(root)
    cpath = root / CHECKSUMS
    if verify:
        sums = verify_checksums(root)
    else:
        if not cpath.is_file():
            raise PackageError(f"{CHECKSUMS}: missing in {root}")
        sums = parse_checksums(cpath.read_text(encoding="utf-8", errors="replace"))
    for name in manifest.files():
        if name not in sums:
            raise PackageError(f"{name}: named in {MANIFEST} but missing from the package "
                               f"(not listed in {CHECKSUMS})")

    tables = [_open_array(root, g.table, (g.buckets, g.dim), f"groups '{g.name}' table [buckets, dim]")
              for g in manifest.groups]
    weights, biases = [], []
    fan_in = manifest.input_dim
    for i, layer in enumerate(manifest.layers):
        wpath = root / layer.weight
        if not wpath.is_file():
            raise PackageError(f"{layer.weight}: missing (layers[{i}] weight)")
        try:
            header_shape = _npy_shape(wpath)
        except Exception as exc:
            raise PackageError(f"{layer.weight}: cannot be read as a .npy array ({exc})") from None
        if len(header_shape) != 2:
            raise PackageError(f"{layer.weight}: layers[{i}] weight must be 2-D [in, out], "
                               f"got shape {list(header_shape)}")
        fan_out = header_shape[1]
        if header_shape[0] != fan_in:
            expected = ("sum of group dims + dense_dim" if i == 0 else f"layers[{i - 1}] out")
            raise PackageError(f"{layer.weight}: layers[{i}] weight has {header_shape[0]} inputs, "
                               f"expected {fan_in} ({expected})")
        if fan_out < 1:
            raise PackageError(f"{layer.weight}: layers[{i}] weight must have at least one output")
        weights.append(_open_array(root, layer.weight, (fan_in, fan_out), f"layers[{i}] weight [in, out]"))
        biases.append(_open_array(root, layer.bias, (fan_out,), f"layers[{i}] bias [out]"))
        fan_in = fan_out
    if fan_in != 1:
        raise PackageError(f"{manifest.layers[-1].weight}: the last layer must have 1 output "
                           f"(the pCTR), got {fan_in}")
    if finite:
        named = [(g.table, t) for g, t in zip(manifest.groups, tables)]
        for layer, w, b in zip(manifest.layers, weights, biases):
            named += [(layer.weight, w), (layer.bias, b)]
        for name, arr in named:
            check_finite(arr, name)
    return ModelPackage(path=root, manifest=manifest, tables=tables, weights=weights,
                        biases=biases, checksums=sums, md5=md5_file(cpath))


def _npy_shape(path: Path) -> tuple[int, ...]:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, _ = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, _ = np.lib.format.read_array_header_2_0(f)
    return tuple(shape)


# ----------------------------------------------------------------------------- writing


def write_package(out: str | os.PathLike, manifest: Mapping[str, Any],
                  arrays: Mapping[str, np.ndarray]) -> Path:
    """Write a package: every array as little-endian float32 .npy, the manifest, checksums.md5.

    The manifest is validated first and every file it names must be in ``arrays``. The result is
    loaded back with full validation, so a package this returns is one the engine accepts.
    """
    out = Path(out)
    parsed = parse_manifest(dict(manifest))
    missing = [n for n in parsed.files() if n not in arrays]
    if missing:
        raise PackageError(f"{missing[0]}: named in the manifest but no array was given for it")
    out.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        check_relative_path(name, "array name")
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.ascontiguousarray(arr, dtype=FLOAT32_LE), allow_pickle=False)
    (out / MANIFEST).write_text(json.dumps(dict(manifest), indent=2) + "\n", encoding="utf-8")
    sums = {name: md5_file(out / name) for name in package_files(out)}
    (out / CHECKSUMS).write_text(format_checksums(sums), encoding="utf-8")
    load_package(out)
    return out
