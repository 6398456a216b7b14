"""Compact tables: int8 row-wise and float16 embedding tables, written as format 2 packages.

Embedding tables are what outgrow memory in CTR models. ``int8_rowwise`` stores each row as int8
with its own float32 scale and offset, the scheme of FBGEMM's 8-bit row-wise embeddings (used by
DLRM / TorchRec inference), with signed codes as the contract pins it: for a row with minimum
``lo`` and maximum ``hi``,

    scale = (hi - lo) / 255,  offset = lo + 128 * scale,  q = clip(rint((x - offset) / scale), -128, 127)

and the value read back is ``q * scale + offset`` in float32, so every element is within
``scale / 2`` (plus float32 rounding) of the original: a quarter of the bytes plus 8 per row.
``float16`` halves the bytes; a value beyond float16's range is refused, naming the table.

:func:`convert` turns a float32 package (format 1 or 2) into a format 2 package with compact
tables, and :func:`compare` measures what that costs in pCTR on generated requests with the
float64 reference (:mod:`scoring.model.reference`), which implements the same dequantization.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .manifest import FORMAT_V2, PackageError
from .package import ModelPackage, load_package
from .writer import write_package

TABLE_CHOICES = {"float32": "float32", "fp16": "float16", "float16": "float16",
                 "int8": "int8_rowwise", "int8_rowwise": "int8_rowwise"}
_ROWS_PER_STEP = 1 << 18  # quantize big tables in slices: no full-size float temporaries
F16_MAX = float(np.finfo(np.float16).max)


def quantize_rowwise(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(q, qparams)`` of a float32 ``[rows, dim]`` table: int8 codes and float32 (scale, offset)."""
    table = np.asarray(table, dtype=np.float32)
    rows = table.shape[0]
    q = np.empty(table.shape, dtype=np.int8)
    qp = np.empty((rows, 2), dtype=np.float32)
    for r0 in range(0, rows, _ROWS_PER_STEP):
        x = table[r0:r0 + _ROWS_PER_STEP]
        lo = x.min(axis=1)
        hi = x.max(axis=1)
        scale = ((hi - lo) / np.float32(255.0)).astype(np.float32)
        offset = (lo + np.float32(128.0) * scale).astype(np.float32)
        safe = np.where(scale > 0, scale, np.float32(1.0))[:, None]
        codes = np.rint((x - offset[:, None]) / safe)
        q[r0:r0 + len(x)] = np.clip(codes, -128, 127).astype(np.int8)
        qp[r0:r0 + len(x), 0] = scale
        qp[r0:r0 + len(x), 1] = offset
    return q, qp


def dequantize_rowwise(q: np.ndarray, qparams: np.ndarray) -> np.ndarray:
    """The float32 values the contract defines: ``q * scale + offset``, in float32."""
    return (q.astype(np.float32) * qparams[:, :1] + qparams[:, 1:]).astype(np.float32)


def to_float16(table: np.ndarray, name: str) -> np.ndarray:
    table = np.asarray(table, dtype=np.float32)
    peak = float(np.abs(table).max()) if table.size else 0.0
    if peak > F16_MAX:
        raise PackageError(f"table {name!r}: a value of magnitude {peak:g} does not fit float16 "
                           f"(max {F16_MAX:g}); keep this table float32 or use int8")
    return table.astype(np.float16)


def table_arrays(name: str, table: np.ndarray, dtype: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The manifest entry and files of table ``name`` stored as ``dtype``."""
    rows, dim = (int(n) for n in np.shape(table))
    entry: dict[str, Any] = {"file": f"emb/{name}.npy", "rows": rows, "dim": dim, "dtype": dtype}
    if dtype == "float32":
        return entry, {entry["file"]: np.asarray(table, dtype=np.float32)}
    if dtype == "float16":
        return entry, {entry["file"]: to_float16(table, name)}
    q, qp = quantize_rowwise(table)
    entry["qparams"] = f"emb/{name}.qparams.npy"
    return entry, {entry["file"]: q, entry["qparams"]: qp}


@dataclass(frozen=True)
class GroupArrays:
    """A group to write in format 2: the table it reads (shared tables: the same name)."""

    name: str
    side: str
    pooling: str
    table_name: str
    table: np.ndarray


def format2_package(out: str | os.PathLike, *, name: str, version: str,
                    groups: Sequence[GroupArrays], weights: Sequence[np.ndarray],
                    biases: Sequence[np.ndarray], dense_dim: int, tables: str = "float32",
                    mlp: str = "float32", extra: Mapping[str, Any] | None = None,
                    unused_tables: Mapping[str, np.ndarray] | None = None) -> Path:
    """Write a format 2 package (concat -> mlp -> sigmoid) with tables stored as ``tables`` and
    the MLP at precision ``mlp`` ("bf16": weights written rounded to bfloat16 values)."""
    if mlp not in ("float32", "bf16"):
        raise PackageError(f"mlp: expected 'float32' or 'bf16', got {mlp!r}")
    dtype = TABLE_CHOICES.get(tables)
    if dtype is None:
        raise PackageError(f"tables: expected one of {sorted(TABLE_CHOICES)}, got {tables!r}")
    arrays: dict[str, np.ndarray] = {}
    tables_json: dict[str, Any] = {}
    named = [(g.table_name, g.table) for g in groups] + list((unused_tables or {}).items())
    for table_name, table in named:
        if table_name not in tables_json:
            entry, files = table_arrays(table_name, table, dtype)
            tables_json[table_name] = entry
            arrays.update(files)
    layers = []
    for i, (w, b) in enumerate(zip(weights, biases)):
        w = np.asarray(w, dtype=np.float32)
        arrays[f"mlp/w{i}.npy"] = bf16_values(w) if mlp == "bf16" else w
        arrays[f"mlp/b{i}.npy"] = np.asarray(b, dtype=np.float32).reshape(-1)
        layers.append({"weight": f"mlp/w{i}.npy", "bias": f"mlp/b{i}.npy",
                       "activation": "relu" if i < len(weights) - 1 else "none"})
    manifest = {
        "format": FORMAT_V2, "format_version": 2, "name": name, "version": version,
        "tables": tables_json,
        "groups": [{"name": g.name, "side": g.side, "table": g.table_name, "pooling": g.pooling}
                   for g in groups],
        "dense_dim": int(dense_dim),
        "blocks": [{"name": "x", "op": "concat", "inputs": ["@groups", "@dense"]},
                   {"name": "deep", "op": "mlp", "input": "x", "layers": layers,
                    **({"precision": "bf16"} if mlp == "bf16" else {})}],
        "outputs": [{"name": "pctr", "from": "deep", "activation": "sigmoid"}],
        "primary": "pctr",
    }
    manifest.update(extra or {})
    return write_package(out, manifest, arrays)


def bf16_values(w: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), as float32."""
    bits = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)


def convert(src: str | os.PathLike, out: str | os.PathLike, *, tables: str = "float32",
            mlp: str = "float32", version: str | None = None) -> Path:
    """A copy of the float32 package ``src`` with its tables stored as ``tables`` and its MLP at
    precision ``mlp``, in format 2."""
    pkg = load_package(src)
    m = pkg.manifest
    if m.graph is not None:
        raise PackageError(f"{Path(src).name}: a format 2 model graph; quantize converts MLP "
                           "packages (write a graph's tables compact with its exporter)")
    compact = sorted({t.name for t in m.tables.values() if t.dtype != "float32"})
    if compact:
        raise PackageError(f"{Path(src).name}: tables {compact} are already compact; convert "
                           "from the float32 export")
    if m.mlp_precision != "float32":
        raise PackageError(f"{Path(src).name}: the MLP is already {m.mlp_precision}; convert "
                           "from the float32 export")
    groups = [GroupArrays(g.name, g.side, g.pooling, g.table_name, t)
              for g, t in zip(m.groups, pkg.tables)]
    keep = {k: v for k, v in m.raw.items() if k not in _MODEL_FIELDS}
    unused = {name: t for name, (t, _) in pkg.table_arrays.items()
              if name not in {g.table_name for g in m.groups}}
    return format2_package(out, name=m.name, version=version or m.version, groups=groups,
                           weights=pkg.weights, biases=pkg.biases, dense_dim=m.dense_dim,
                           tables=tables, mlp=mlp, extra=keep, unused_tables=unused)


_MODEL_FIELDS = {"format", "format_version", "name", "version", "tables", "groups", "dense_dim",
                 "layers", "blocks", "outputs", "primary"}


def generated_requests(pkg: ModelPackage, n_requests: int, n_ads: int, seed: int = 0):
    """Requests like an ad server's: 1-3 string values per group over vocabularies of four times
    the table's rows (so rows are shared as in real traffic)."""
    rng = np.random.default_rng(seed)
    m = pkg.manifest

    def values(g):
        vocab = min(g.buckets * 4, 10_000_000)
        return [f"{g.name}:{int(v)}" for v in rng.integers(vocab, size=int(rng.integers(1, 4)))]

    for _ in range(n_requests):
        ctx = {g.name: values(g) for g in m.groups if g.side == "context"}
        ads = [{"features": {g.name: values(g) for g in m.groups if g.side == "ad"},
                "dense": [float(x) for x in rng.standard_normal(m.dense_dim)]}
               for _ in range(n_ads)]
        yield ctx, ads


def compare(base: ModelPackage, other: ModelPackage, *, n_requests: int = 20, n_ads: int = 100,
            seed: int = 0) -> dict[str, float]:
    """pCTR differences of ``other`` against ``base`` on generated requests (float64 reference):
    max and mean absolute error, and the share of ad pairs (within a request) whose order flips."""
    from .reference import reference_scores

    errs, flips, pairs = [], 0, 0
    for ctx, ads in generated_requests(base, n_requests, n_ads, seed):
        a = reference_scores(base, ctx, ads)
        b = reference_scores(other, ctx, ads)
        errs.append(np.abs(a - b))
        da = np.sign(a[:, None] - a[None, :])
        db = np.sign(b[:, None] - b[None, :])
        upper = np.triu(np.ones_like(da, dtype=bool), 1) & (da != 0)
        flips += int((da[upper] != db[upper]).sum())
        pairs += int(upper.sum())
    e = np.concatenate(errs)
    return {"ads": int(e.size), "max_abs_error": float(e.max()), "mean_abs_error": float(e.mean()),
            "order_flip_share": flips / max(1, pairs)}
