"""Reading a model package: validate everything, then map the arrays read-only.

:func:`load_package` checks the manifest, every md5 of ``checksums.md5``, every array's dtype,
shape and chaining, and NaN/Inf, before anything can use the model; a bad package is rejected
whole with one :class:`~scoring.model.manifest.PackageError` naming the file or field, and is
never half-usable. Arrays are memory-mapped read-only, so large embedding tables cost no copy and
are shared between worker processes through the page cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .checksums import read_checksums, verify_checksums
from .manifest import (
    CHECKSUMS,
    MANIFEST,
    Manifest,
    PackageError,
    read_manifest,
    read_small_file,
)

FLOAT32_LE = np.dtype("<f4")
TABLE_NUMPY_DTYPES = {"float32": FLOAT32_LE, "float16": np.dtype("<f2"), "int8_rowwise": np.dtype("i1")}
_FINITE_CHUNK_BYTES = 4 << 20


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
    # per group, like ``tables``: the int8_rowwise table's [rows, 2] (scale, offset), else None
    qparams: list[np.ndarray | None] = field(default_factory=list)
    # every table of the manifest by name (also one no group reads): (array, qparams or None)
    table_arrays: dict[str, tuple[np.ndarray, np.ndarray | None]] = field(default_factory=dict)
    baseline: dict | None = None  # health/baseline.json when the package has one (model.baseline)
    # a model graph's arrays (mlp, cross), by file name (scoring.model.graph)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.qparams:
            self.qparams = [None] * len(self.tables)
        if not self.table_arrays:
            self.table_arrays = {g.table_name: (t, q) for g, t, q in
                                 zip(self.manifest.groups, self.tables, self.qparams)}

    def table_bytes(self) -> dict[str, int]:
        """Bytes of each table (with its qparams), by table name; a shared table counts once."""
        return {name: t.nbytes + (q.nbytes if q is not None else 0)
                for name, (t, q) in self.table_arrays.items()}

    @property
    def nbytes(self) -> int:
        return (sum(self.table_bytes().values()) + sum(a.nbytes for a in self.weights + self.biases)
                + sum(a.nbytes for a in self.arrays.values()))


# ----------------------------------------------------------------------------- arrays


def _open_array(root: Path, name: str, shape: tuple[int, ...], what: str,
                dtype: np.dtype = FLOAT32_LE, dtype_name: str = "little-endian float32") -> np.ndarray:
    path = root / name
    if path.is_symlink() or not path.is_file():
        raise PackageError(f"{name}: missing ({what})")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # truncated, not .npy, object arrays, ...
        raise PackageError(f"{name}: cannot be read as a .npy array ({exc})") from None
    if arr.dtype != dtype:
        raise PackageError(f"{name}: dtype must be {dtype_name} ({dtype.str!r}), got {arr.dtype.str!r}")
    if arr.shape != shape:
        raise PackageError(f"{name}: shape must be {list(shape)} ({what}), got {list(arr.shape)}")
    if not arr.flags.c_contiguous:
        raise PackageError(f"{name}: must be stored in C order (fortran_order False)")
    return np.asarray(arr)  # a plain read-only ndarray view of the map: no copy


def check_finite(arr: np.ndarray, name: str) -> None:
    """Raise if ``arr`` holds NaN or Inf. Scans 4 MB at a time into one reused mask: a 2 GB table
    needs no 2 GB temporary, and each step is short (NumPy releases the GIL inside it), so a
    thread serving requests beside a load is not held up."""
    flat = arr.reshape(-1)
    step = max(1, _FINITE_CHUNK_BYTES // max(1, arr.itemsize))
    mask = np.empty(min(step, flat.size), dtype=np.bool_)
    for start in range(0, flat.size, step):
        block = flat[start:start + step]
        ok = mask[:block.size]
        np.isfinite(block, out=ok)
        if not ok.all():
            bad = start + int(np.flatnonzero(~ok)[0])
            idx = np.unravel_index(bad, arr.shape)
            raise PackageError(f"{name}: holds a non-finite value ({flat[bad]}) at index "
                               f"{list(map(int, idx))}; weights must be finite")


_F32_MAX = float(np.finfo(np.float32).max)


def check_qparams(q: np.ndarray, name: str) -> None:
    """Raise if an int8 row-wise table's (scale, offset) could give a value beyond float32 for
    some code (|scale| * 128 + |offset|, in float64), or hold NaN/Inf: such a package would load
    and then fail every request that reads the row."""
    step = max(1, _FINITE_CHUNK_BYTES // 8)
    for start in range(0, q.shape[0], step):
        block = np.asarray(q[start:start + step], dtype=np.float64)
        reach = np.abs(block[:, 0]) * 128.0 + np.abs(block[:, 1])
        bad = ~(reach <= _F32_MAX)  # NaN too
        if bad.any():
            row = start + int(np.flatnonzero(bad)[0])
            raise PackageError(f"{name}: row {row} has scale {q[row, 0]} and offset {q[row, 1]}; "
                               "q * scale + offset must stay a finite float32 for every int8 q")


def load_package(root: str | os.PathLike, *, verify: bool = True, finite: bool = True) -> ModelPackage:
    """Validate a package directory and map its arrays read-only.

    ``verify`` checks ``checksums.md5`` (md5 of every file); ``finite`` scans every array for
    NaN/Inf. Both default on: a model must never go live unchecked.
    """
    root = Path(root)
    if not root.is_dir():
        raise PackageError(f"{root.name}: not a directory")
    # the checksums first: an unfinished copy (a truncated manifest among others) is a
    # ChecksumError, which says "the files are not all there yet", not "the export is bad"
    listed, sums = read_checksums(root)
    if verify:
        verify_checksums(root)
    manifest = read_manifest(root)
    for name in manifest.files():
        if name not in sums:
            raise PackageError(f"{name}: named in {MANIFEST} but missing from the package "
                               f"(not listed in {CHECKSUMS})")

    opened: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for t in manifest.tables.values():
        what = (f"groups '{t.name}' table [buckets, dim]" if manifest.format_version == 1
                else f"table '{t.name}' [rows, dim], {t.dtype}")
        arr = _open_array(root, t.file, (t.rows, t.dim), what, TABLE_NUMPY_DTYPES[t.dtype],
                          "int8" if t.dtype == "int8_rowwise" else f"little-endian {t.dtype}")
        q = None if t.qparams is None else _open_array(
            root, t.qparams, (t.rows, 2), f"table '{t.name}' qparams [rows, 2] (scale, offset)")
        opened[t.name] = (arr, q)
    tables = [opened[g.table_name][0] for g in manifest.groups]
    qparams = [opened[g.table_name][1] for g in manifest.groups]
    if manifest.graph is not None:
        return _load_graph(root, manifest, opened, tables, qparams, listed, sums, finite)
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
        named = [(t.file, arr) for t, (arr, _) in ((manifest.tables[k], v) for k, v in opened.items())
                 if arr.dtype.kind == "f"]
        named += [(t.qparams, q) for t, (_, q) in ((manifest.tables[k], v) for k, v in opened.items())
                  if q is not None]
        for layer, w, b in zip(manifest.layers, weights, biases):
            named += [(layer.weight, w), (layer.bias, b)]
        for name, arr in named:
            check_finite(arr, name)
        for t, (_, q) in ((manifest.tables[k], v) for k, v in opened.items()):
            if q is not None:
                check_qparams(q, t.qparams)
    baseline = _read_baseline(root, sums, [w.shape[1] for w in weights[:-1]])
    return ModelPackage(path=root, manifest=manifest, tables=tables, weights=weights,
                        biases=biases, checksums=sums, md5=hashlib.md5(listed).hexdigest(),
                        qparams=qparams, table_arrays=opened, baseline=baseline)


MAX_BASELINE_BYTES = 32 << 20


def _load_graph(root: Path, manifest, opened, tables, qparams, listed: bytes, sums, finite: bool):
    """A model graph's package: its arrays' shapes checked against the graph, then mapped."""
    from .graph import resolve

    def shape_of(name: str) -> tuple[int, ...]:
        path = root / name
        if path.is_symlink() or not path.is_file():
            raise PackageError(f"{name}: missing (named by a block of {MANIFEST})")
        try:
            return tuple(_npy_shape(path))
        except Exception as exc:
            raise PackageError(f"{name}: cannot be read as a .npy array ({exc})") from None

    graph = resolve(manifest.graph, {g.name: g.dim for g in manifest.groups}, manifest.dense_dim,
                    shape_of, lambda text: PackageError(f"{MANIFEST}: {text}"))
    manifest = replace(manifest, graph=graph)
    arrays = {name: _open_array(root, name, shape_of(name), "a block's array")
              for name in manifest.graph.files()}
    if finite:
        for t, (arr, q) in ((manifest.tables[k], v) for k, v in opened.items()):
            if arr.dtype.kind == "f":
                check_finite(arr, t.file)
            if q is not None:
                check_finite(q, t.qparams)
                check_qparams(q, t.qparams)
        for name, arr in arrays.items():
            check_finite(arr, name)
    return ModelPackage(path=root, manifest=manifest, tables=tables, weights=[], biases=[],
                        checksums=sums, md5=hashlib.md5(listed).hexdigest(), qparams=qparams,
                        table_arrays=opened, baseline=None, arrays=arrays)


def _read_baseline(root: Path, sums: dict[str, str], widths: list[int]) -> dict | None:
    """The optional health baseline (``scoring.model.baseline``), validated; None without one."""
    from .baseline import BASELINE, check_baseline

    if BASELINE not in sums:
        return None
    data = read_small_file(root / BASELINE, MAX_BASELINE_BYTES,
                           f"{BASELINE}: listed in {CHECKSUMS} but missing",
                           f"{BASELINE}: larger than {MAX_BASELINE_BYTES} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise PackageError(f"{BASELINE}: not valid JSON ({str(exc)[:200]})") from None
    return check_baseline(doc, widths)


def _npy_shape(path: Path) -> tuple[int, ...]:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, _ = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, _ = np.lib.format.read_array_header_2_0(f)
    return tuple(shape)


