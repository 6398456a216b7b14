"""Small format 2 model graphs for tests, written through the real writer: every op, pooling
and output kind, with arrays drawn from a seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scoring.model.writer import write_package


def mixed_graph(out: Path, *, seed: int = 0, dense_dim: int = 2, dim: int = 4) -> Path:
    """Groups with every pooling (a weighted group sharing the ad table, a sqrtn one, a position
    with a serving value), and blocks of every op: a concat feeding an mlp and a low-rank cross,
    an FM, a wide part, an add; outputs pctr, pcvr (ignoring the position) and their product."""
    rng = np.random.default_rng(seed)
    f32 = np.float32

    def arr(*shape, scale=0.5):
        return (rng.standard_normal(shape) * scale).astype(f32)

    tables = {"user": (300, dim), "ad": (400, dim), "cat": (50, dim), "pos": (8, dim), "wide": (97, 1)}
    groups = [
        {"name": "user_id", "side": "context", "table": "user", "pooling": "sum"},
        {"name": "clicked", "side": "context", "table": "ad", "pooling": "weighted_sum"},
        {"name": "recent_cats", "side": "context", "table": "cat", "pooling": "sqrtn"},
        {"name": "ad_id", "side": "ad", "table": "ad", "pooling": "mean"},
        {"name": "category", "side": "ad", "table": "cat", "pooling": "sum"},
        {"name": "position", "side": "ad", "table": "pos", "pooling": "sum", "serving_value": "1"},
    ]
    width = len(groups) * dim + dense_dim
    arrays = {f"emb/{k}.npy": arr(*shape) for k, shape in tables.items()}
    blocks = [
        {"name": "x", "op": "concat", "inputs": ["@groups", "@dense"] if dense_dim else ["@groups"]},
        {"name": "deep", "op": "mlp", "input": "x", "layers": [
            {"weight": "d/w0.npy", "bias": "d/b0.npy", "activation": "relu"},
            {"weight": "d/w1.npy", "bias": "d/b1.npy", "activation": "relu"},
            {"weight": "d/w2.npy", "bias": "d/b2.npy", "activation": "none"}]},
        {"name": "cross", "op": "cross", "input": "x", "layers": [
            {"u": "c/u0.npy", "v": "c/v0.npy", "bias": "c/b0.npy"},
            {"weight": "c/w1.npy", "bias": "c/b1.npy"}]},
        {"name": "cross_out", "op": "mlp", "input": "cross", "layers": [
            {"weight": "co/w.npy", "bias": "co/b.npy", "activation": "none"}]},
        {"name": "fm", "op": "fm2", "inputs": ["@groups"]},
        {"name": "wide", "op": "linear_ids", "groups": ["position", "ad_id", "user_id"], "table": "wide"},
        {"name": "logit", "op": "add", "inputs": ["deep", "cross_out", "fm", "wide"]},
        {"name": "cvr_x", "op": "concat", "inputs": ["user_id", "clicked", "ad_id"]},
        {"name": "cvr", "op": "mlp", "input": "cvr_x", "layers": [
            {"weight": "v/w0.npy", "bias": "v/b0.npy", "activation": "relu"},
            {"weight": "v/w1.npy", "bias": "v/b1.npy", "activation": "none"}]},
    ]
    sizes = {"d": [width, 24, 17, 1], "v": [3 * dim, 19, 1]}
    for prefix, s in sizes.items():
        for i, (a, b) in enumerate(zip(s[:-1], s[1:])):
            arrays[f"{prefix}/w{i}.npy"] = arr(a, b, scale=1.0 / np.sqrt(a))
            arrays[f"{prefix}/b{i}.npy"] = arr(b, scale=0.1)
    arrays.update({"c/u0.npy": arr(width, 3, scale=0.3), "c/v0.npy": arr(3, width, scale=0.3),
                   "c/b0.npy": arr(width, scale=0.1), "c/w1.npy": arr(width, width, scale=0.1),
                   "c/b1.npy": arr(width, scale=0.1), "co/w.npy": arr(width, 1, scale=0.2),
                   "co/b.npy": arr(1, scale=0.1)})
    manifest = {
        "format": "ctr-model", "format_version": 2, "name": "mixed", "version": "v1",
        "tables": {k: {"file": f"emb/{k}.npy", "rows": s[0], "dim": s[1], "dtype": "float32"}
                   for k, s in tables.items()},
        "groups": groups, "dense_dim": dense_dim, "blocks": blocks,
        "outputs": [{"name": "pctr", "from": "logit", "activation": "sigmoid"},
                    {"name": "pcvr", "from": "cvr", "activation": "sigmoid", "ignores": ["position"]},
                    {"name": "pctcvr", "product": ["pctr", "pcvr"]}],
        "primary": "pctr"}
    return write_package(out, manifest, arrays)


def mixed_request(rng: np.random.Generator, n: int, dense_dim: int = 2) -> tuple[dict, list]:
    ctx = {"user_id": f"u{rng.integers(40)}",
           "clicked": {"ids": [f"a{rng.integers(99)}" for _ in range(3)],
                       "weights": [float(w) for w in rng.uniform(0, 2, 3)]},
           "recent_cats": [f"k{rng.integers(20)}" for _ in range(rng.integers(0, 4))]}
    ads = []
    for i in range(n):
        feats = {"ad_id": [f"a{rng.integers(99)}"] * (1 + i % 2), "category": f"k{rng.integers(20)}"}
        if i % 3:
            feats["position"] = str(1 + i % 5)
        ad = {"features": feats}
        if dense_dim:
            ad["dense"] = [float(x) for x in rng.standard_normal(dense_dim)]
        ads.append(ad)
    return ctx, ads


# the groups the exporter tests build their family modules with (torch and Keras alike)
FAMILY_GROUPS = [("user_id", "context", 200, 8, "sum"), ("clicked", "context", 300, 8, "weighted_sum"),
                 ("recent", "context", 40, 8, "sqrtn"), ("ad_id", "ad", 300, 8, "mean"),
                 ("category", "ad", 50, 8, "sum"), ("position", "ad", 10, 8, "sum")]


def family_request(rng: np.random.Generator, n: int, *, huge_ids: bool = False) -> tuple[dict, list]:
    """A request for FAMILY_GROUPS: a weighted context group, some ads without a position, two
    dense values (float32-exact); ``huge_ids`` adds ids near 2**64."""
    ctx = {"user_id": f"u{rng.integers(30)}",
           "clicked": {"ids": [f"a{rng.integers(50)}" for _ in range(3)],
                       "weights": [float(w) for w in rng.uniform(0, 2, 3)]},
           "recent": [f"k{rng.integers(9)}" for _ in range(int(rng.integers(0, 4)))]}
    ads = []
    for i in range(n):
        ad_ids = [f"a{rng.integers(50)}", 2**64 - 1 - i] if huge_ids else [f"a{rng.integers(50)}"] * (1 + i % 2)
        feats = {"ad_id": ad_ids, "category": f"k{rng.integers(9)}"}
        if i % 3:
            feats["position"] = str(1 + i % 5)
        ads.append({"features": feats, "dense": [float(np.float32(v)) for v in rng.standard_normal(2)]})
    return ctx, ads
