"""The model graph (format 2 blocks and outputs) in float64 NumPy, from the textbook definitions.

One ad at a time, every op as the contract writes it and not as the engine computes it: the FM
term as the sum over pairs of different fields of their dot products (not the square-of-sum
identity), the cross layer as ``x0 * (x @ W + b) + x`` with ``W = u @ v`` formed explicitly,
the wide part as a loop over ids. Tests compare the engine with it.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .package import ModelPackage
from .reference import table_row, value_ids


def group_value(g, context: Mapping[str, Any], ad: Mapping[str, Any], ignored: set[str]) -> Any:
    """What the request says for group ``g``: its serving value when it sends nothing (the
    group absent, or an empty list), None when the output being computed ignores the group."""
    if g.name in ignored:
        return None
    source = context if g.side == "context" else (ad.get("features") or {})
    value = source.get(g.name)
    if _is_empty(value) and g.serving_value is not None:
        return g.serving_value
    return value


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, dict):
        return not value.get("ids")
    return isinstance(value, list) and not value


def ids_and_weights(value: Any) -> tuple[list[int], list[float]]:
    """The ids of a group's value and their weights (1 unless sent as {"ids", "weights"})."""
    if isinstance(value, dict):
        return value_ids(value["ids"]), [float(w) for w in value["weights"]]
    ids = value_ids(value)
    return ids, [1.0] * len(ids)


def pooled(pkg: ModelPackage, g, table, qp, value: Any) -> np.ndarray:
    """A group's vector: sum, mean, sqrtn (sum / sqrt(count)) or weighted_sum of its rows."""
    dim = table.shape[1]
    if value is None:
        return np.zeros(dim)
    ids, weights = ids_and_weights(value)
    if not ids:
        return np.zeros(dim)
    total = np.zeros(dim)
    for i, w in zip(ids, weights):
        total += w * table_row(table, qp, i % g.buckets)
    if g.pooling == "mean":
        return total / len(ids)
    if g.pooling == "sqrtn":
        return total / np.sqrt(len(ids))
    return total


def graph_outputs(pkg: ModelPackage, context: Mapping[str, Any] | None,
                  ads: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Every output of the graph for every ad, float64."""
    graph = pkg.manifest.graph
    out: dict[str, list[float]] = {o.name: [] for o in graph.outputs}
    for ad in ads:
        for o in graph.outputs:
            out[o.name].append(_output(pkg, o, context or {}, ad))
    return {k: np.array(v, dtype=np.float64) for k, v in out.items()}


def _output(pkg: ModelPackage, o, context, ad) -> float:
    graph = pkg.manifest.graph
    if o.product:
        by = {x.name: x for x in graph.outputs}
        a, b = (_output(pkg, by[n], context, ad) for n in o.product)
        return a * b
    values = _evaluate(pkg, context, ad, set(o.ignores))
    z = float(values[o.source][0])
    return 1.0 / (1.0 + np.exp(-z)) if o.activation == "sigmoid" else z


def _evaluate(pkg: ModelPackage, context, ad, ignored: set[str]) -> dict[str, np.ndarray]:
    m = pkg.manifest
    fields = {g.name: pooled(pkg, g, t, q, group_value(g, context, ad, ignored))
              for g, t, q in zip(m.groups, pkg.tables, pkg.qparams)}
    dense = np.asarray(ad.get("dense") or [], dtype=np.float64).reshape(m.dense_dim)
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in pkg.arrays.items()}
    values: dict[str, np.ndarray] = {}

    def read(r) -> np.ndarray:
        kind, name = r
        return dense if kind == "dense" else fields[name] if kind == "group" else values[name]

    for b in m.graph.blocks:
        if b.op == "concat":
            values[b.name] = np.concatenate([read(r) for r in b.inputs])
        elif b.op == "add":
            values[b.name] = np.sum([read(r) for r in b.inputs], axis=0)
        elif b.op == "mlp":
            h = read(b.inputs[0])
            for layer in b.layers:
                h = h @ arrays[layer.weight] + arrays[layer.bias]
                if layer.activation == "relu":
                    h = np.maximum(h, 0.0)
            values[b.name] = h
        elif b.op == "cross":
            x0 = read(b.inputs[0])
            x = x0
            for layer in b.layers:
                w = arrays[layer.weight] if layer.weight else arrays[layer.u] @ arrays[layer.v]
                x = x0 * (x @ w + arrays[layer.bias]) + x
            values[b.name] = x
        elif b.op == "fm2":
            vs = [fields[g] for g in b.groups]
            total = 0.0
            for i in range(len(vs)):
                for j in range(i + 1, len(vs)):
                    total += float(vs[i] @ vs[j])
            values[b.name] = np.array([total])
        else:  # linear_ids
            table = np.asarray(pkg.table_arrays[b.table][0], dtype=np.float64)
            total = 0.0
            for gname in b.groups:
                g = next(x for x in m.groups if x.name == gname)
                value = group_value(g, context, ad, ignored)
                if value is None:
                    continue
                ids, _ = ids_and_weights(value)
                for i in ids:
                    total += float(table[i % table.shape[0], 0])
            values[b.name] = np.array([total])
    return values
