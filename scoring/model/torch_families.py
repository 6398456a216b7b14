"""The seed's model families as ordinary PyTorch modules, and their exporter to format 2.

:class:`FamilyNet` is what a team would write: an ``nn.EmbeddingBag`` per group (``mode="sum"``
with ``per_sample_weights`` for a weighted group, ``"mean"``, or a sum divided by the square
root of the count for ``sqrtn``), ``nn.Linear`` + ``nn.ReLU`` towers, DCN-v2 cross layers as
``nn.Linear`` (``d -> d``, or ``d -> r`` without bias then ``r -> d`` for low rank), the FM by
the square-of-sum identity, a dim-1 ``nn.EmbeddingBag`` for the wide part. Its graph is the one
:func:`scoring.model.families.family_blocks` writes; :func:`export_family_torch` writes the
package. Needs the ``torch`` extra.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .export import Group
from .families import MULTI_HEAD, POSITION, FamilyArrays, deep_inputs, write_family


def _nn():
    import torch
    from torch import nn

    return torch, nn


class FamilyNet:  # the nn.Module subclass is made at first use (torch is an optional extra)
    def __new__(cls, *args: Any, **kwargs: Any):
        return _family_net_class()(*args, **kwargs)


_CLASS = None


def _family_net_class():
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    torch, nn = _nn()

    class _FamilyNet(nn.Module):
        """``groups``: (name, side, rows, dim, pooling); ``serving_values``: group -> value."""

        def __init__(self, family: str, groups: Sequence[tuple[str, str, int, int, str]], *,
                     dense_dim: int = 0, hidden: Sequence[int] = (64, 32), cross_layers: int = 2,
                     rank: int | None = None, wide_rows: int = 1000,
                     wide_groups: Sequence[str] | None = None,
                     serving_values: Mapping[str, Any] | None = None) -> None:
            super().__init__()
            self.family = family
            self.groups = [tuple(g) for g in groups]
            self.dense_dim = dense_dim
            self.serving_values = dict(serving_values or {})
            self.bags = nn.ModuleDict({
                name: nn.EmbeddingBag(rows, dim, mode="mean" if pooling == "mean" else "sum")
                for name, _, rows, dim, pooling in self.groups})
            self.wide = nn.EmbeddingBag(wide_rows, 1, mode="sum")
            names = [g[0] for g in self.groups]
            self.wide_groups = list(wide_groups or ([POSITION] if family in MULTI_HEAD else names))
            dims = {g[0]: g[3] for g in self.groups}
            exp_groups = [Group(n, "ad", np.zeros((1, dims[n]), np.float32)) for n in names]
            width = sum(dims[n] for n in deep_inputs(family, exp_groups, 0)) + dense_dim

            def tower(sizes: Sequence[int], last_relu: bool) -> nn.Sequential:
                mods: list[nn.Module] = []
                for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
                    mods.append(nn.Linear(a, b))
                    if i < len(sizes) - 2 or last_relu:
                        mods.append(nn.ReLU())
                return nn.Sequential(*mods)

            self.towers = nn.ModuleDict()
            self.cross = nn.ModuleList()
            if family in ("wdl", "deepfm"):
                self.towers["deep"] = tower([width, *hidden, 1], False)
            elif family in ("dcn", "dcn_lowrank"):
                for _ in range(cross_layers):
                    self.cross.append(nn.Linear(width, width) if family == "dcn" else
                                      nn.Sequential(nn.Linear(width, rank or 8, bias=False),
                                                    nn.Linear(rank or 8, width)))
                self.towers["deep"] = tower([width, *hidden], True)
                self.towers["logit"] = tower([width + hidden[-1], 1], False)
            elif family == "mtl":
                self.towers["bottom"] = tower([width, *hidden], True)
                self.towers["ctr"] = tower([hidden[-1], 1], False)
                self.towers["cvr"] = tower([hidden[-1], 1], False)
            elif family == "esmm":
                self.towers["ctr"] = tower([width, *hidden, 1], False)
                self.towers["cvr"] = tower([width, *hidden, 1], False)
            else:
                raise ValueError(f"unknown family {family!r}")

        # inputs: per group, per row, a list of (row index, weight); dense [n, dense_dim]
        def field(self, name: str, rows: list[list[tuple[int, float]]]):
            _, _, _, dim, pooling = next(g for g in self.groups if g[0] == name)
            idx = [i for r in rows for i, _ in r]
            offsets = torch.tensor(np.cumsum([0] + [len(r) for r in rows[:-1]]), dtype=torch.long)
            weights = None
            if pooling == "weighted_sum":
                weights = torch.tensor([w for r in rows for _, w in r], dtype=torch.float32)
            out = self.bags[name](torch.tensor(idx, dtype=torch.long), offsets,
                                  per_sample_weights=weights)
            if pooling == "sqrtn":
                counts = torch.tensor([max(1, len(r)) for r in rows], dtype=torch.float32)
                out = out / counts.sqrt()[:, None]
            return out

        def forward(self, inputs: Mapping[str, list], wide_rows: list[list[int]], dense=None):
            """``inputs``: group -> per ad, the (table row, weight) pairs; ``wide_rows``: per
            ad, the wide table's rows of the wide groups' ids."""
            fields = {name: self.field(name, r) for name, r in inputs.items()}
            names = [g[0] for g in self.groups]
            x_names = [n for n in names if not (self.family in MULTI_HEAD and n == POSITION)]
            x = torch.cat([fields[n] for n in x_names] + ([dense] if self.dense_dim else []), dim=1)
            offsets = torch.tensor(np.cumsum([0] + [len(r) for r in wide_rows[:-1]]), dtype=torch.long)
            wide = self.wide(torch.tensor([i for r in wide_rows for i in r], dtype=torch.long), offsets)
            f = self.family
            if f == "wdl":
                return {"pctr": torch.sigmoid(self.towers["deep"](x) + wide)[:, 0]}
            if f == "deepfm":
                stack = torch.stack([fields[n] for n in names], dim=1)
                fm = 0.5 * (stack.sum(1) ** 2 - (stack ** 2).sum(1)).sum(1, keepdim=True)
                return {"pctr": torch.sigmoid(self.towers["deep"](x) + fm + wide)[:, 0]}
            if f in ("dcn", "dcn_lowrank"):
                xl = x
                for layer in self.cross:
                    xl = x * layer(xl) + xl
                both = torch.cat([xl, self.towers["deep"](x)], dim=1)
                return {"pctr": torch.sigmoid(self.towers["logit"](both))[:, 0]}
            if f == "mtl":
                bottom = self.towers["bottom"](x)
                return {"pctr": torch.sigmoid(self.towers["ctr"](bottom) + wide)[:, 0],
                        "pcvr": torch.sigmoid(self.towers["cvr"](bottom))[:, 0]}
            pctr = torch.sigmoid(self.towers["ctr"](x) + wide)[:, 0]
            pcvr = torch.sigmoid(self.towers["cvr"](x))[:, 0]
            return {"pctr": pctr, "pcvr": pcvr, "pctcvr": pctr * pcvr}

    _CLASS = _FamilyNet
    return _CLASS


def _np(t) -> np.ndarray:
    return t.detach().cpu().float().numpy()


def family_arrays(net) -> FamilyArrays:
    """The module's parameters as the family's arrays (weights transposed to [in, out])."""
    _, nn = _nn()
    groups = [Group(name, side, _np(net.bags[name].weight), pooling)
              for name, side, _, _, pooling in net.groups]
    fa = FamilyArrays(net.family, groups, dense_dim=net.dense_dim, wide=_np(net.wide.weight),
                      wide_groups=list(net.wide_groups), serving_values=dict(net.serving_values))
    for name, seq in net.towers.items():
        linears = [m for m in seq if isinstance(m, nn.Linear)]
        fa.mlps[name] = [(_np(m.weight).T, _np(m.bias), "relu" if i < len(linears) - 1 or
                          isinstance(seq[-1], nn.ReLU) else "none") for i, m in enumerate(linears)]
    for layer in net.cross:
        if isinstance(layer, nn.Linear):
            fa.cross.append((_np(layer.weight).T, _np(layer.bias)))
        else:
            u, v = layer[0], layer[1]
            fa.cross.append(((_np(u.weight).T, _np(v.weight).T), _np(v.bias)))
    return fa


def export_family_torch(out: str | os.PathLike, net, *, name: str, version: str) -> Path:
    """Write ``net`` (a :class:`FamilyNet`) as a format 2 package of its family."""
    torch, _ = _nn()
    with torch.no_grad():
        return write_family(out, family_arrays(net), name=name, version=version)
