"""The built-in demo model: the seed's net size, deterministic from a seed.

16 groups x 32 dims = 512 inputs (8 context groups, 8 ad groups), hidden 256-256-256-128, one
sigmoid output; 2^16-2^18 buckets per group (about 226 MB of tables). Weights are scaled so the
pCTRs look like ad traffic (log-odds with mean -4 and a standard deviation of 1.1-1.6: median
pCTR about 2%, 1st-99th percentile about 0.1% to 30%) and roughly half the hidden units are active.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .export import Group, export_numpy

CONTEXT_GROUPS = {"user_id": 18, "age": 16, "gender": 16, "city": 17, "hour": 16,
                  "weekday": 16, "device": 16, "query": 17}
AD_GROUPS = {"ad_id": 18, "campaign_id": 17, "advertiser_id": 17, "category": 16, "brand": 17,
             "price_bucket": 16, "position": 16, "creative_type": 16}
DIM = 32
HIDDEN = (256, 256, 256, 128)
DEMO_NAME = "demo"


def demo_groups(rng: np.random.Generator, dim: int = DIM, bucket_shift: int = 0) -> list[Group]:
    groups = []
    for side, spec in (("context", CONTEXT_GROUPS), ("ad", AD_GROUPS)):
        for gname, log2 in spec.items():
            buckets = 1 << max(1, log2 - bucket_shift)
            table = rng.standard_normal((buckets, dim), dtype=np.float32)
            table *= np.float32(0.05)
            pooling = "mean" if gname in ("category", "query") else "sum"
            groups.append(Group(gname, side, table, pooling))
    return groups


LOGIT_SCALE = 20.0  # the output layer's weights: log-odds spread like ad traffic's (std ~1)


def mlp_weights(rng: np.random.Generator, sizes: list[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """He-initialised layers; the output layer scaled so the log-odds spread with a standard
    deviation above 1, as in ad traffic (a net this deep on small embeddings would otherwise
    score every ad within 1.5-2%); :func:`center_output` then sets its bias."""
    weights, biases = [], []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        scale = np.float32(np.sqrt(2.0 / fan_in) * (LOGIT_SCALE if last else 1.0))
        w = rng.standard_normal((fan_in, fan_out), dtype=np.float32) * scale
        weights.append(w)
        biases.append(np.full(fan_out, 0.0 if last else 0.01, dtype=np.float32))
    return weights, biases


MEAN_LOGIT = -4.0  # the demo's mean log-odds: pCTRs around 2%


def center_output(groups: list[Group], weights: list[np.ndarray], biases: list[np.ndarray],
                  rng: np.random.Generator, rows: int = 4000) -> None:
    """Set the output bias so the mean log-odds is ``MEAN_LOGIT`` on inputs like the generated
    requests' (1-3 values per group, each a uniformly drawn row: what hashing does)."""
    parts = []
    for g in groups:
        k = rng.integers(1, 4, size=rows)
        picks = rng.integers(0, g.table.shape[0], size=(rows, 3))
        vecs = g.table[picks].astype(np.float64) * (np.arange(3)[None, :, None] < k[:, None, None])
        pooled = vecs.sum(axis=1)
        parts.append(pooled / k[:, None] if g.pooling == "mean" else pooled)
    h = np.concatenate(parts, axis=1)
    for w, b in zip(weights[:-1], biases[:-1]):
        h = np.maximum(h @ w.astype(np.float64) + b, 0.0)
    z = h @ weights[-1].astype(np.float64)
    biases[-1][:] = np.float32(MEAN_LOGIT - z.mean())


BASELINE_REQUESTS = 50  # generated 100-ad requests for the demo's health baseline (~1 s)


def write_demo(out: str | os.PathLike, *, seed: int = 0, version: str | None = None,
               name: str = DEMO_NAME, bucket_shift: int = 0,
               baseline_requests: int = BASELINE_REQUESTS) -> Path:
    """Write the demo package to ``out``. ``bucket_shift`` > 0 makes every table 2^shift times
    smaller (same net, for quick tests). Its health baseline is computed on
    ``baseline_requests`` generated requests (0: none)."""
    rng = np.random.default_rng(seed)
    groups = demo_groups(rng, bucket_shift=bucket_shift)
    sizes = [len(groups) * DIM, *HIDDEN, 1]
    weights, biases = mlp_weights(rng, sizes)
    center_output(groups, weights, biases, rng)
    path = export_numpy(out, name=name, version=version or f"seed{seed}", groups=groups,
                        weights=weights, biases=biases,
                        extra={"description": f"built-in demo model, seed {seed}"})
    if baseline_requests:
        from .baseline import compute_baseline, write_baseline
        from .package import load_package
        from .quantize import generated_requests
        pkg = load_package(path)
        reqs = [{"context": c, "ads": a}
                for c, a in generated_requests(pkg, baseline_requests, 100, seed)]
        write_baseline(path, compute_baseline(pkg, reqs, seed=seed), requests=reqs)
    return path
