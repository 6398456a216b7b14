"""Writers of model packages: from NumPy arrays, from a PyTorch model, and the built-in demo.

Every writer ends in :func:`scoring.model.writer.write_package`, which validates the manifest, writes
little-endian float32 ``.npy`` files and ``checksums.md5``, and loads the result back with full
validation, so what these return is a package the engine accepts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .manifest import FORMAT, FORMAT_VERSION, PackageError
from .writer import write_package


@dataclass(frozen=True)
class Group:
    """A feature group to export: its embedding table is ``[buckets, dim]``."""

    name: str
    side: str
    table: np.ndarray
    pooling: str = "sum"


def export_numpy(out: str | os.PathLike, *, name: str, version: str, groups: Sequence[Group],
                 weights: Sequence[np.ndarray], biases: Sequence[np.ndarray],
                 dense_dim: int = 0, activations: Sequence[str] | None = None,
                 extra: Mapping[str, Any] | None = None, tables: str = "float32",
                 baseline_requests: Sequence[Mapping[str, Any]] | None = None) -> Path:
    """Write a package from arrays. Weights are ``[in, out]``; hidden layers default to ReLU and
    the last to sigmoid. ``extra`` adds optional manifest fields (e.g. training metadata).
    ``tables="int8"`` or ``"fp16"`` stores the embedding tables compact (int8 row-wise or
    float16), which makes a format 2 package (:mod:`scoring.model.quantize`).
    ``baseline_requests`` (score bodies) adds the health baseline computed on them
    (:mod:`scoring.model.baseline`)."""
    path = _export_numpy(out, name=name, version=version, groups=groups, weights=weights,
                         biases=biases, dense_dim=dense_dim, activations=activations, extra=extra,
                         tables=tables)
    if baseline_requests is not None:
        from .baseline import compute_baseline, write_baseline
        from .package import load_package
        write_baseline(path, compute_baseline(load_package(path), baseline_requests),
                       requests=baseline_requests)
    return path


def _export_numpy(out, *, name, version, groups, weights, biases, dense_dim, activations, extra,
                  tables) -> Path:
    if len(weights) != len(biases):
        raise PackageError(f"export: {len(weights)} weights but {len(biases)} biases")
    if activations is None:
        activations = ["relu"] * (len(weights) - 1) + ["sigmoid"]
    if tables != "float32":
        if list(activations) != ["relu"] * (len(weights) - 1) + ["sigmoid"]:
            raise PackageError("export: compact tables need ReLU hidden layers and a sigmoid last layer")
        from .quantize import GroupArrays, format2_package
        for g in groups:
            if np.ndim(g.table) != 2:
                raise PackageError(f"export: group {g.name!r} table must be 2-D [buckets, dim], "
                                   f"got shape {list(np.shape(g.table))}")
        return format2_package(out, name=name, version=version, groups=[
            GroupArrays(g.name, g.side, g.pooling, g.name, np.asarray(g.table)) for g in groups],
            weights=weights, biases=biases, dense_dim=dense_dim, tables=tables, extra=extra)
    arrays: dict[str, np.ndarray] = {}
    groups_json = []
    for g in groups:
        table = np.asarray(g.table)
        if table.ndim != 2:
            raise PackageError(f"export: group {g.name!r} table must be 2-D [buckets, dim], "
                               f"got shape {list(table.shape)}")
        path = f"emb/{g.name}.npy"
        arrays[path] = table
        groups_json.append({"name": g.name, "side": g.side, "buckets": int(table.shape[0]),
                            "dim": int(table.shape[1]), "pooling": g.pooling, "table": path})
    layers_json = []
    for i, (w, b, act) in enumerate(zip(weights, biases, activations)):
        arrays[f"mlp/w{i}.npy"] = np.asarray(w)
        arrays[f"mlp/b{i}.npy"] = np.asarray(b).reshape(-1)
        layers_json.append({"weight": f"mlp/w{i}.npy", "bias": f"mlp/b{i}.npy", "activation": act})
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": name,
                "version": version, "groups": groups_json, "dense_dim": int(dense_dim),
                "layers": layers_json}
    manifest.update(extra or {})
    return write_package(out, manifest, arrays)


def export_torch(out: str | os.PathLike, embeddings: Mapping[str, Any], mlp: Any, *, name: str,
                 version: str, sides: Mapping[str, str], dense_dim: int = 0,
                 tables: str = "float32",
                 baseline_requests: Sequence[Mapping[str, Any]] | None = None) -> Path:
    """Write a package from a PyTorch model built as per-group ``nn.EmbeddingBag`` (mode
    ``sum``/``mean``; ``embeddings`` in MLP input order) and an ``nn.Sequential`` of
    ``Linear``/``ReLU`` ending in ``Linear(., 1)``, ``Sigmoid``. ``sides`` maps each group to
    ``"context"`` or ``"ad"``. ``tables``, ``baseline_requests``: as for :func:`export_numpy`."""
    import torch
    from torch import nn

    groups = []
    for gname, bag in embeddings.items():
        if not isinstance(bag, nn.EmbeddingBag):
            raise PackageError(f"export_torch: embeddings[{gname!r}] must be nn.EmbeddingBag, "
                               f"got {type(bag).__name__}")
        if bag.mode not in ("sum", "mean"):
            raise PackageError(f"export_torch: embeddings[{gname!r}] mode must be 'sum' or 'mean', "
                               f"got {bag.mode!r}")
        if gname not in sides:
            raise PackageError(f"export_torch: sides has no entry for group {gname!r}")
        groups.append(Group(gname, sides[gname], _numpy(bag.weight), bag.mode))

    weights, biases, activations = [], [], []
    modules = list(mlp)
    for i, mod in enumerate(modules):
        if isinstance(mod, nn.Linear):
            weights.append(_numpy(mod.weight).T)
            biases.append(_numpy(mod.bias) if mod.bias is not None
                          else np.zeros(mod.out_features, np.float32))
            activations.append(None)
        elif isinstance(mod, (nn.ReLU, nn.Sigmoid)) and activations and activations[-1] is None:
            activations[-1] = "relu" if isinstance(mod, nn.ReLU) else "sigmoid"
        else:
            raise PackageError(f"export_torch: mlp[{i}] is {type(mod).__name__}; expected Linear "
                               "layers each followed by ReLU (hidden) or Sigmoid (last)")
    if None in activations:
        i = activations.index(None)
        raise PackageError(f"export_torch: Linear layer {i} has no activation after it")
    with torch.no_grad():
        return export_numpy(out, name=name, version=version, groups=groups, weights=weights,
                            biases=biases, dense_dim=dense_dim, activations=activations,
                            tables=tables, baseline_requests=baseline_requests)


def _numpy(t: Any) -> np.ndarray:
    import torch

    return t.detach().cpu().to(dtype=torch.float32).numpy()
