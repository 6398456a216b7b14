"""Exporters: NumPy arrays and PyTorch modules become packages the engine scores identically."""

from __future__ import annotations

import numpy as np
import pytest
import torch  # installed by the README's test command (torch==2.13.0)
from torch import nn

from scoring.engine import Engine
from scoring.engine.features import hash_string
from scoring.model.export import Group, export_numpy, export_torch
from scoring.model.manifest import PackageError
from scoring.model.package import load_package
from scoring.model.reference import reference_scores


def _torch_model(seed: int):
    torch.manual_seed(seed)
    embeddings = {
        "user_id": nn.EmbeddingBag(500, 8, mode="sum"),
        "ad_id": nn.EmbeddingBag(700, 8, mode="sum"),
        "category": nn.EmbeddingBag(30, 4, mode="mean"),
    }
    mlp = nn.Sequential(nn.Linear(8 + 8 + 4 + 2, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                        nn.Linear(16, 1), nn.Sigmoid())
    return embeddings, mlp


def _torch_forward(embeddings, mlp, ctx, ads, buckets):
    rows = []
    for ad in ads:
        parts = []
        for name, bag in embeddings.items():
            value = ctx.get(name) if name == "user_id" else ad["features"].get(name)
            values = value if isinstance(value, list) else ([] if value is None else [value])
            ids = [(hash_string(v) if isinstance(v, str) else v) % buckets[name] for v in values]
            if ids:
                parts.append(bag(torch.tensor(ids, dtype=torch.long), torch.tensor([0]))[0])
            else:
                parts.append(torch.zeros(bag.embedding_dim))
        parts.append(torch.tensor(ad["dense"], dtype=torch.float32))
        rows.append(torch.cat(parts))
    with torch.no_grad():
        return mlp(torch.stack(rows))[:, 0].numpy()


def test_torch_export_scores_like_torch(tmp_path):
    embeddings, mlp = _torch_model(0)
    path = export_torch(tmp_path / "t", embeddings, mlp, name="torchctr", version="1",
                        sides={"user_id": "context", "ad_id": "ad", "category": "ad"}, dense_dim=2)
    pkg = load_package(path)
    engine = Engine(pkg)
    rng = np.random.default_rng(0)
    ctx = {"user_id": ["u1", "u2"]}
    ads = [{"features": {"ad_id": f"a{i}", "category": [f"c{j}" for j in range(i % 4)]},
            "dense": [float(x) for x in rng.standard_normal(2)]} for i in range(25)]
    ads[3]["features"]["ad_id"] = 2**64 - 1
    buckets = {name: bag.num_embeddings for name, bag in embeddings.items()}
    want = _torch_forward(embeddings, mlp, ctx, ads, buckets)
    got = engine.score(ctx, ads)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(got, reference_scores(pkg, ctx, ads), atol=1e-5)


@pytest.mark.parametrize("tables", ["int8", "fp16"])
def test_torch_export_with_compact_tables_scores_like_torch_on_the_stored_rows(tmp_path, tables):
    """The exporter's compact option: torch, given each table as the package stores it (int8
    codes * scale + offset, or float16, read back with NumPy by the definition), agrees with the
    engine; and the package stays within the quantization error of the float32 model."""
    embeddings, mlp = _torch_model(1)
    sides = {"user_id": "context", "ad_id": "ad", "category": "ad"}
    path = export_torch(tmp_path / tables, embeddings, mlp, name="torchctr", version="1",
                        sides=sides, dense_dim=2, tables=tables)
    pkg = load_package(path)
    assert pkg.manifest.format_version == 2
    rng = np.random.default_rng(4)
    ctx = {"user_id": ["u1", "u7"]}
    ads = [{"features": {"ad_id": f"a{i}", "category": [f"c{j}" for j in range(i % 3)]},
            "dense": [float(x) for x in rng.standard_normal(2)]} for i in range(30)]
    buckets = {name: bag.num_embeddings for name, bag in embeddings.items()}
    want_f32 = _torch_forward(embeddings, mlp, ctx, ads, buckets)
    with torch.no_grad():
        for g, table, qp in zip(pkg.manifest.groups, pkg.tables, pkg.qparams):
            stored = (np.asarray(table, np.float32) if qp is None else
                      np.asarray(table, np.float32) * qp[:, :1] + qp[:, 1:])
            embeddings[g.name].weight.copy_(torch.from_numpy(stored.astype(np.float32)))
    want = _torch_forward(embeddings, mlp, ctx, ads, buckets)
    got = Engine(pkg).score(ctx, ads)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.abs(got - want_f32).max() < (5e-3 if tables == "int8" else 5e-4)


def test_torch_export_rejects_unsupported_structures(tmp_path):
    embeddings, _ = _torch_model(1)
    sides = {"user_id": "context", "ad_id": "ad", "category": "ad"}
    with pytest.raises(PackageError, match="mlp\\[1\\] is Tanh"):
        export_torch(tmp_path / "a", embeddings, nn.Sequential(nn.Linear(20, 1), nn.Tanh()),
                     name="x", version="1", sides=sides)
    with pytest.raises(PackageError, match="mode must be 'sum' or 'mean'"):
        export_torch(tmp_path / "b", {"user_id": nn.EmbeddingBag(5, 2, mode="max")},
                     nn.Sequential(nn.Linear(2, 1), nn.Sigmoid()), name="x", version="1", sides=sides)
    with pytest.raises(PackageError, match="sides has no entry for group 'user_id'"):
        export_torch(tmp_path / "c", {"user_id": nn.EmbeddingBag(5, 2)},
                     nn.Sequential(nn.Linear(2, 1), nn.Sigmoid()), name="x", version="1", sides={})
    assert not (tmp_path / "a" / "manifest.json").exists()


def test_numpy_export_validates(tmp_path):
    t = np.ones((10, 2), np.float32)
    with pytest.raises(PackageError, match="weight has 3 inputs, expected 2"):
        export_numpy(tmp_path / "n", name="n", version="1", groups=[Group("g", "ad", t)],
                     weights=[np.ones((3, 1), np.float32)], biases=[np.zeros(1, np.float32)])
    path = export_numpy(tmp_path / "ok", name="n", version="1", groups=[Group("g", "ad", t)],
                        weights=[np.ones((2, 1), np.float32)], biases=[np.zeros(1, np.float32)])
    assert load_package(path).manifest.layers[0].activation == "sigmoid"
