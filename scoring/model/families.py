"""The seed's model families as format 2 packages: Wide & Deep, DeepFM, DCN-v2 (full and low
rank), shared-bottom multi-task (CTR + CVR) and ESMM.

:func:`family_blocks` writes each family's graph (contract section 2b) over named arrays;
:func:`write_family` writes a package from a :class:`FamilyArrays` (NumPy arrays, from any
trainer: :mod:`scoring.model.torch_families` exports PyTorch modules through it);
:func:`random_family` makes a deterministic one at demo size (``ctr-model demo --family``).

The graphs (``x`` = the concat of every group but the position, then the dense features):

* ``wdl``: ``deep = mlp(x)``, ``wide = linear_ids(wide groups)``, pCTR = sigmoid(deep + wide);
* ``deepfm``: ``deep = mlp(x)``, ``fm = fm2(@groups)`` (field level), ``first = linear_ids(every
  group)``, pCTR = sigmoid(deep + fm + first); the FM shares the deep part's embeddings;
* ``dcn``, ``dcn_lowrank``: ``cross = cross(x)`` and ``deep = mlp(x)`` in parallel, then one
  linear layer over their concat;
* ``mtl``: shared bottom ``mlp(x)``, a one-layer tower per task; pCTR adds the position's wide
  weight, pCVR ignores the position (hard parameter sharing, the seed's CTR + order rate);
* ``esmm``: two towers over the shared embeddings, pCTR (with the position), pCVR (without),
  pCTCVR = pCTR x pCVR.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .export import Group
from .writer import write_package

FAMILIES = ("wdl", "deepfm", "dcn", "dcn_lowrank", "mtl", "esmm")
POSITION = "position"
MULTI_HEAD = ("mtl", "esmm")


@dataclass
class FamilyArrays:
    """What a family's package holds. ``mlps``: block name -> [(weight [in, out], bias, act)];
    ``cross``: [(weight [d, d] or (u [d, r], v [r, d]), bias [d])]; ``wide``: [rows, 1]."""

    family: str
    groups: list[Group]
    dense_dim: int = 0
    mlps: dict[str, list[tuple[np.ndarray, np.ndarray, str]]] = field(default_factory=dict)
    cross: list[tuple[Any, np.ndarray]] = field(default_factory=list)
    wide: np.ndarray | None = None
    wide_groups: list[str] = field(default_factory=list)
    serving_values: dict[str, Any] = field(default_factory=dict)


def deep_inputs(family: str, groups: list[Group], dense_dim: int) -> list[str]:
    """The concat ``x``: every group but the position for the multi-task families (only the
    CTR head sees the position), then ``@dense``."""
    names = [g.name for g in groups if not (family in MULTI_HEAD and g.name == POSITION)]
    return names + (["@dense"] if dense_dim else [])


def family_blocks(fa: FamilyArrays) -> tuple[list[dict], list[dict], str, dict[str, np.ndarray]]:
    """(blocks, outputs, primary, arrays by file) of a family's package."""
    arrays: dict[str, np.ndarray] = {}

    def mlp(name: str, inp: str) -> dict:
        layers = []
        for i, (w, b, act) in enumerate(fa.mlps[name]):
            wf, bf = f"{name}/w{i}.npy", f"{name}/b{i}.npy"
            arrays[wf], arrays[bf] = np.asarray(w, np.float32), np.asarray(b, np.float32).reshape(-1)
            layers.append({"weight": wf, "bias": bf, "activation": act})
        return {"name": name, "op": "mlp", "input": inp, "layers": layers}

    x = {"name": "x", "op": "concat", "inputs": deep_inputs(fa.family, fa.groups, fa.dense_dim)}
    wide = {"name": "wide", "op": "linear_ids", "groups": fa.wide_groups, "table": "wide"}
    sig = "sigmoid"
    f = fa.family
    if f == "wdl":
        blocks = [x, mlp("deep", "x"), wide, {"name": "logit", "op": "add", "inputs": ["deep", "wide"]}]
        outputs = [{"name": "pctr", "from": "logit", "activation": sig}]
    elif f == "deepfm":
        blocks = [x, mlp("deep", "x"), {"name": "fm", "op": "fm2", "inputs": ["@groups"]}, wide,
                  {"name": "logit", "op": "add", "inputs": ["deep", "fm", "wide"]}]
        outputs = [{"name": "pctr", "from": "logit", "activation": sig}]
    elif f in ("dcn", "dcn_lowrank"):
        layers = []
        for i, (w, b) in enumerate(fa.cross):
            bf = f"cross/b{i}.npy"
            arrays[bf] = np.asarray(b, np.float32).reshape(-1)
            if isinstance(w, tuple):
                arrays[f"cross/u{i}.npy"], arrays[f"cross/v{i}.npy"] = (np.asarray(a, np.float32) for a in w)
                layers.append({"u": f"cross/u{i}.npy", "v": f"cross/v{i}.npy", "bias": bf})
            else:
                arrays[f"cross/w{i}.npy"] = np.asarray(w, np.float32)
                layers.append({"weight": f"cross/w{i}.npy", "bias": bf})
        blocks = [x, {"name": "cross", "op": "cross", "input": "x", "layers": layers},
                  mlp("deep", "x"), {"name": "both", "op": "concat", "inputs": ["cross", "deep"]},
                  mlp("logit", "both")]
        outputs = [{"name": "pctr", "from": "logit", "activation": sig}]
    elif f == "mtl":
        blocks = [x, mlp("bottom", "x"), mlp("ctr", "bottom"), mlp("cvr", "bottom"), wide,
                  {"name": "ctr_logit", "op": "add", "inputs": ["ctr", "wide"]}]
        outputs = [{"name": "pctr", "from": "ctr_logit", "activation": sig},
                   {"name": "pcvr", "from": "cvr", "activation": sig, "ignores": [POSITION]}]
    elif f == "esmm":
        blocks = [x, mlp("ctr", "x"), mlp("cvr", "x"), wide,
                  {"name": "ctr_logit", "op": "add", "inputs": ["ctr", "wide"]}]
        outputs = [{"name": "pctr", "from": "ctr_logit", "activation": sig},
                   {"name": "pcvr", "from": "cvr", "activation": sig, "ignores": [POSITION]},
                   {"name": "pctcvr", "product": ["pctr", "pcvr"]}]
    else:
        raise ValueError(f"family must be one of {list(FAMILIES)}, got {f!r}")
    if fa.wide is not None:
        arrays["emb/wide.npy"] = np.asarray(fa.wide, np.float32).reshape(-1, 1)
    return blocks, outputs, "pctr", arrays


def write_family(out: str | os.PathLike, fa: FamilyArrays, *, name: str, version: str,
                 extra: dict | None = None) -> Path:
    """A format 2 package of the family (validated and loaded back by ``write_package``)."""
    blocks, outputs, primary, arrays = family_blocks(fa)
    tables, groups = {}, []
    for g in fa.groups:
        file = f"emb/{g.name}.npy"
        tables[g.name] = {"file": file, "rows": int(g.table.shape[0]), "dim": int(g.table.shape[1]),
                          "dtype": "float32"}
        arrays[file] = np.asarray(g.table, np.float32)
        entry = {"name": g.name, "side": g.side, "table": g.name, "pooling": g.pooling}
        if g.name in fa.serving_values:
            entry["serving_value"] = fa.serving_values[g.name]
        groups.append(entry)
    if fa.wide is not None:
        tables["wide"] = {"file": "emb/wide.npy", "rows": int(fa.wide.shape[0]), "dim": 1,
                          "dtype": "float32"}
    manifest = {"format": "ctr-model", "format_version": 2, "name": name, "version": version,
                "tables": tables, "groups": groups, "dense_dim": fa.dense_dim, "blocks": blocks,
                "outputs": outputs, "primary": primary, "family": fa.family, **(extra or {})}
    return write_package(out, manifest, arrays)


def _he(rng: np.random.Generator, fan_in: int, fan_out: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in) * scale).astype(np.float32)


def random_family(out: str | os.PathLike, family: str, *, seed: int = 0, name: str | None = None,
                  version: str | None = None, bucket_shift: int = 0,
                  hidden: tuple[int, ...] = (256, 256, 256, 128), cross_layers: int = 3,
                  rank: int = 64, wide_rows: int = 1 << 18) -> Path:
    """The demo's groups (16 x 32 dims, position among the ad groups, served as "1") and
    net size in ``family``, deterministic from ``seed``, logits around -4 (pCTRs ~2%)."""
    from .demo import DIM, demo_groups

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {list(FAMILIES)}, got {family!r}")
    rng = np.random.default_rng(seed)
    groups = demo_groups(rng, bucket_shift=bucket_shift)
    fa = FamilyArrays(family, groups, serving_values={POSITION: "1"})
    width = len(deep_inputs(family, groups, 0)) * DIM

    def tower(sizes: list[int], last: str = "none") -> list:
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            final = i == len(sizes) - 2
            w = _he(rng, a, b, 4.0 if final and last == "none" else 1.0)
            bias = np.full(b, -4.0 if final and last == "none" else 0.01, np.float32)
            layers.append((w, bias, last if final else "relu"))
        return layers

    wide_rows = max(16, wide_rows >> bucket_shift)
    fa.wide = (rng.standard_normal((wide_rows, 1)) * 0.05).astype(np.float32)
    fa.wide_groups = [POSITION, "ad_id", "category"] if family != "deepfm" else [g.name for g in groups]
    if family in ("wdl", "deepfm"):
        fa.mlps["deep"] = tower([width, *hidden, 1])
    elif family in ("dcn", "dcn_lowrank"):
        for _ in range(cross_layers):
            w = (rng.standard_normal((width, width)) * 0.3 / np.sqrt(width)).astype(np.float32) \
                if family == "dcn" else (
                    (rng.standard_normal((width, rank)) / np.sqrt(width)).astype(np.float32),
                    (rng.standard_normal((rank, width)) * 0.3 / np.sqrt(rank)).astype(np.float32))
            fa.cross.append((w, np.zeros(width, np.float32)))
        fa.mlps["deep"] = tower([width, *hidden], last="relu")
        fa.mlps["logit"] = tower([width + hidden[-1], 1])
    elif family == "mtl":
        fa.mlps["bottom"] = tower([width, *hidden], last="relu")
        fa.mlps["ctr"] = tower([hidden[-1], 1])
        fa.mlps["cvr"] = tower([hidden[-1], 1])
    else:  # esmm
        fa.mlps["ctr"] = tower([width, *hidden, 1])
        fa.mlps["cvr"] = tower([width, *hidden, 1])
    if family in MULTI_HEAD:
        fa.wide_groups = [POSITION]
    return write_family(out, fa, name=name or f"demo-{family}".replace("_", "-"),
                        version=version or f"seed{seed}",
                        extra={"description": f"built-in demo {family} model, seed {seed}"})
