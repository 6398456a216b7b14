"""A plain NumPy implementation of the whole contract (hashing, pooling, MLP) in float64.

Slow and obvious on purpose: tests and benchmarks check the engine (and the TF Serving leg)
against it. It shares no code with the engine's hot path beyond the package loader.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import xxhash

from .package import ModelPackage


def value_ids(value: Any) -> list[int]:
    values = value if isinstance(value, (list, tuple)) else [value]
    ids = []
    for v in values:
        if isinstance(v, str):
            ids.append(xxhash.xxh64_intdigest(v.encode("utf-8"), seed=0))
        else:
            assert isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**64, v
            ids.append(v)
    return ids


def table_row(table: np.ndarray, qparams: np.ndarray | None, r: int) -> np.ndarray:
    """Row ``r`` as the contract defines it (section 2b): float32 and float16 rows as stored;
    an int8_rowwise row is ``q[r] * qparams[r, 0] + qparams[r, 1]``, computed in float32."""
    if qparams is None:
        return np.asarray(table[r], dtype=np.float64)
    scale, offset = np.float32(qparams[r, 0]), np.float32(qparams[r, 1])
    return np.array([np.float32(np.float32(q) * scale) + offset for q in table[r]],
                    dtype=np.float32).astype(np.float64)


def group_vector(table: np.ndarray, buckets: int, pooling: str, value: Any,
                 qparams: np.ndarray | None = None) -> np.ndarray:
    if value is None:
        return np.zeros(table.shape[1])
    ids = value_ids(value)
    if not ids:
        return np.zeros(table.shape[1])
    rows = np.array([table_row(table, qparams, i % buckets) for i in ids], dtype=np.float64)
    return rows.sum(axis=0) if pooling == "sum" else rows.mean(axis=0)


def mlp_input(package: ModelPackage, context: Mapping[str, Any] | None,
              ad: Mapping[str, Any]) -> np.ndarray:
    """The MLP input row of one ad: group vectors in manifest order, then dense features."""
    m = package.manifest
    context = context or {}
    features = ad.get("features") or {}
    parts = []
    for g, table, qp in zip(m.groups, package.tables, package.qparams):
        source = context if g.side == "context" else features
        parts.append(group_vector(table, g.buckets, g.pooling, source.get(g.name), qp))
    dense = ad.get("dense") or []
    parts.append(np.asarray(dense, dtype=np.float64).reshape(m.dense_dim))
    return np.concatenate(parts)


def bf16_round(x: np.ndarray) -> np.ndarray:
    """``x`` rounded to bfloat16 (round to nearest, ties to even) and widened back, as float64:
    keep the top 16 bits of the float32 pattern after adding 0x7FFF plus the lowest kept bit."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32).astype(np.float64)


def mlp_forward(package: ModelPackage, x: np.ndarray, hidden: list | None = None) -> np.ndarray:
    """pCTRs for MLP input rows ``x`` [n, input_dim]. With ``"precision": "bf16"`` every layer's
    input and weights are first rounded to bfloat16 (docs/model-format.md). ``hidden``, when
    given, receives each hidden layer's post-ReLU output [n, width]."""
    h = np.asarray(x, dtype=np.float64)
    bf16 = package.manifest.mlp_precision == "bf16"
    for layer, w, b in zip(package.manifest.layers, package.weights, package.biases):
        w = np.asarray(w, dtype=np.float64)
        if bf16:
            h, w = bf16_round(h), bf16_round(w)
        h = h @ w + np.asarray(b, dtype=np.float64)
        if layer.activation == "relu":
            h = np.maximum(h, 0.0)
            if hidden is not None:
                hidden.append(h)
        elif layer.activation == "sigmoid":
            h = 1.0 / (1.0 + np.exp(-h))
        else:  # pragma: no cover - the loader rejects anything else
            raise ValueError(layer.activation)
    return h[:, 0]


def reference_scores(package: ModelPackage, context: Mapping[str, Any] | None,
                     ads: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """pCTR of every ad, float64."""
    if not ads:
        return np.zeros(0)
    x = np.stack([mlp_input(package, context, ad) for ad in ads])
    return mlp_forward(package, x)
