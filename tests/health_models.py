"""Small models for the model-health tests, with variants made to fail the guarded swap."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from scoring.model.export import Group, export_numpy

HIDDEN = (32, 16)
GROUPS = [("user_id", "context", 1000, 8, 2.0), ("city", "context", 50, 4, 0.5),
          ("ad_id", "ad", 1000, 8, 0.2), ("category", "ad", 100, 4, 0.5)]

Change = Callable[[dict, list, list], None]


def arrays(seed: int = 0):
    """A model that relies on user_id (large embeddings, heavier first-layer rows) more than on
    ad_id, which has the same table shape: what a trained model looks like."""
    rng = np.random.default_rng(seed)
    tables = {n: (rng.standard_normal((b, d)) * s).astype(np.float32) for n, _, b, d, s in GROUPS}
    sides = {n: side for n, side, *_ in GROUPS}
    sizes = [24, *HIDDEN, 1]
    weights = [(rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(np.float32)
               for a, b in zip(sizes[:-1], sizes[1:])]
    weights[0][:8] *= 2.0  # the user_id rows
    biases = [np.full(b, 0.05, np.float32) for b in sizes[1:-1]] + [np.array([-3.0], np.float32)]
    return tables, sides, weights, biases


def write(out: Path, version: str, change: Change | None = None, reference=None, *,
          name: str = "ctr", seed: int = 0) -> Path:
    """The model (changed by ``change(tables, weights, biases)``), with a health baseline on
    ``reference`` requests when given."""
    tables, sides, weights, biases = arrays(seed)
    if change is not None:
        change(tables, weights, biases)
    groups = [Group(n, sides[n], t, "sum") for n, t in tables.items()]
    return export_numpy(out, name=name, version=version, groups=groups, weights=weights,
                        biases=biases, baseline_requests=reference)


def shift_last_bias(t, w, b) -> None:
    b[-1] += 2.0


def huge_weights(t, w, b) -> None:
    w[0] *= np.float32(1e30)
    w[1] *= np.float32(1e30)


def zero_layer(t, w, b) -> None:
    w[1][:] = 0
    b[1][:] = 0


def shuffle_names(t, w, b) -> None:
    t["user_id"], t["ad_id"] = t["ad_id"].copy(), t["user_id"].copy()
