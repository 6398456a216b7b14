"""Exact attributions (``Engine.explain``) against independent oracles: torch autograd on the
exported twin, float64 central differences on the package's arrays, and the completeness
identity (contributions + remainder = logit)."""

from __future__ import annotations

import numpy as np
import pytest
import torch  # installed by the README's test command (torch==2.13.0)
from torch import nn

from scoring.engine import Engine
from scoring.engine.features import hash_string
from scoring.engine.scorer import NonFiniteOutput
from scoring.errors import InvalidRequest
from scoring.model.export import export_numpy, export_torch
from scoring.model.package import load_package
from scoring.model.reference import mlp_input

from ...models import make_model, random_request

SIDES = {"user_id": "context", "ad_id": "ad", "city": "context", "category": "ad"}


def _torch_model(seed: int, dense_dim: int = 2):
    torch.manual_seed(seed)
    embeddings = {
        "user_id": nn.EmbeddingBag(300, 8, mode="sum"),
        "ad_id": nn.EmbeddingBag(400, 8, mode="sum"),
        "city": nn.EmbeddingBag(20, 4, mode="mean"),
        "category": nn.EmbeddingBag(30, 4, mode="mean"),
    }
    for bag in embeddings.values():
        nn.init.normal_(bag.weight, std=0.7)
    width = 8 + 8 + 4 + 4 + dense_dim
    mlp = nn.Sequential(nn.Linear(width, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(),
                        nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(),
                        nn.Linear(16, 1), nn.Sigmoid())
    return embeddings, mlp


def _torch_inputs(embeddings, ctx, ads, dense_dim):
    """The MLP input of every ad, pooled by the torch bags from the contract's hashing."""
    rows = []
    for ad in ads:
        parts = []
        for name, bag in embeddings.items():
            value = (ctx if SIDES[name] == "context" else ad["features"]).get(name)
            values = value if isinstance(value, list) else ([] if value is None else [value])
            ids = [(hash_string(v) if isinstance(v, str) else v) % bag.num_embeddings
                   for v in values]
            parts.append(bag(torch.tensor(ids, dtype=torch.long), torch.tensor([0]))[0] if ids
                         else torch.zeros(bag.embedding_dim))
        if dense_dim:
            parts.append(torch.tensor(ad["dense"], dtype=torch.float32))
        rows.append(torch.cat(parts))
    return torch.stack(rows).detach()


def _request(rng, n, dense_dim=2):
    ctx = {"user_id": [f"u{rng.integers(50)}", f"u{rng.integers(50)}"], "city": f"c{rng.integers(9)}"}
    ads = [{"features": {"ad_id": f"a{rng.integers(99)}",
                         "category": [f"k{rng.integers(20)}" for _ in range(i % 3)]},
            "dense": [float(v) for v in rng.standard_normal(dense_dim)]} for i in range(n)]
    return ctx, ads


@pytest.mark.parametrize("n_ads", [1, 7, 150])  # one-ad form, tiles, more than one chunk
def test_gradients_match_torch_autograd(tmp_path, n_ads):
    embeddings, mlp = _torch_model(0)
    path = export_torch(tmp_path / "t", embeddings, mlp, name="t", version="1",
                        sides=SIDES, dense_dim=2)
    engine = Engine(load_package(path))
    ctx, ads = _request(np.random.default_rng(n_ads), n_ads)

    x = _torch_inputs(embeddings, ctx, ads, 2).requires_grad_(True)
    logit = mlp[:-1](x)[:, 0]
    (g_logit,) = torch.autograd.grad(logit.sum(), x)
    x2 = x.detach().clone().requires_grad_(True)
    p = mlp(x2)[:, 0]
    (g_p,) = torch.autograd.grad(p.sum(), x2)

    got = engine.explain(ctx, ads)
    assert got.groups == list(embeddings)
    np.testing.assert_allclose(got.logit, logit.detach().numpy(), atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(got.pctr, p.detach().numpy(), atol=1e-6)
    xs, gl, gp = x.detach().numpy(), g_logit.numpy(), g_p.numpy()
    col = 0
    for i, (name, bag) in enumerate(embeddings.items()):
        sl = slice(col, col + bag.embedding_dim)
        col += bag.embedding_dim
        np.testing.assert_allclose(got.contribution[:, i], (xs[:, sl] * gl[:, sl]).sum(1),
                                   atol=2e-5, rtol=1e-4, err_msg=name)
        np.testing.assert_allclose(got.influence[:, i], np.linalg.norm(gp[:, sl], axis=1),
                                   atol=1e-7, rtol=1e-4, err_msg=name)
    np.testing.assert_allclose(got.dense_contribution, (xs[:, col:] * gl[:, col:]).sum(1),
                               atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(got.dense_influence, np.linalg.norm(gp[:, col:], axis=1),
                               atol=1e-7, rtol=1e-4)
    # the engine's score path gives the same pCTRs
    np.testing.assert_allclose(engine.score(ctx, ads), got.pctr, atol=1e-6)


def _f64_logit(weights, biases, x):
    """The textbook forward pass in float64: ReLU hidden layers, the output layer's logit."""
    h = x
    pre = []
    for w, b in zip(weights[:-1], biases[:-1]):
        z = h @ w + b
        pre.append(z)
        h = np.maximum(z, 0.0)
    return (h @ weights[-1] + biases[-1])[..., 0], pre


def test_gradients_match_float64_central_differences(tmp_path):
    """d logit / d x by central differences on a float64 forward pass over the package's arrays,
    for ads whose ReLU inputs are all far from zero (the function is linear around them)."""
    pkg = load_package(make_model(tmp_path / "m", hidden=(40, 24, 16, 8), dense_dim=3, seed=4))
    engine = Engine(pkg)
    weights = [np.asarray(w, np.float64) for w in pkg.weights]
    biases = [np.asarray(b, np.float64) for b in pkg.biases]
    rng = np.random.default_rng(5)
    ctx, ads = random_request(rng, pkg, 60)
    got = engine.explain(ctx, ads)
    h = 1e-4
    checked = 0
    for a, ad in enumerate(ads):
        x = mlp_input(pkg, ctx, ad)
        logit, pre = _f64_logit(weights, biases, x)
        margin = min(np.abs(z).min() for z in pre)
        if margin < 1e-2:  # a ReLU within reach of the step: not differentiable there
            continue
        grad = np.empty_like(x)
        for k in range(x.size):
            e = np.zeros_like(x)
            e[k] = h
            grad[k] = (_f64_logit(weights, biases, x + e)[0] - _f64_logit(weights, biases, x - e)[0]) / (2 * h)
        p = 1 / (1 + np.exp(-logit))
        col = 0
        for i, g in enumerate(pkg.manifest.groups):
            sl = slice(col, col + g.dim)
            col += g.dim
            assert got.contribution[a, i] == pytest.approx((x[sl] * grad[sl]).sum(), abs=1e-4, rel=1e-4)
            assert got.influence[a, i] == pytest.approx(p * (1 - p) * np.linalg.norm(grad[sl]),
                                                        abs=1e-7, rel=1e-4)
        assert got.dense_contribution[a] == pytest.approx((x[col:] * grad[col:]).sum(), abs=1e-4,
                                                          rel=1e-4)
        assert got.logit[a] == pytest.approx(logit, abs=1e-4)
        checked += 1
    assert checked >= 10, f"only {checked} ads had every ReLU input away from zero"


@pytest.mark.parametrize("kind", ["plain", "dense", "bf16", "int8", "no_context", "no_ad", "zeroed"])
def test_completeness_contributions_plus_remainder_is_the_logit(tmp_path, kind):
    """sum of contributions + remainder = logit to 1e-5, the remainder being computed from the
    biases through the masks (not as the difference) plus the dense features' contribution."""
    rng = np.random.default_rng(7)
    kwargs = {"hidden": (64, 32, 32, 16)}
    if kind == "dense":
        kwargs["dense_dim"] = 4
    if kind == "no_context":
        kwargs["ctx"] = ()
    if kind == "no_ad":
        kwargs.update(ad=(), dense_dim=2)
    path = make_model(tmp_path / kind, **kwargs)
    if kind in ("bf16", "int8", "zeroed"):
        pkg = load_package(path)
        groups = _groups_of(pkg)
        weights = [np.asarray(w) for w in pkg.weights]
        biases = [np.asarray(b) for b in pkg.biases]
        if kind == "zeroed":  # a dead second layer: every gradient is zero, the logit is the bias path
            weights[1] = np.zeros_like(weights[1])
            biases[1] = -np.abs(biases[1])
        extra = {"mlp_precision": "bf16"} if kind == "bf16" else None
        path = export_numpy(tmp_path / (kind + "2"), name="ctr", version="v2", groups=groups,
                            weights=weights, biases=biases, extra=extra,
                            tables="int8" if kind == "int8" else "float32")
    pkg = load_package(path)
    engine = Engine(pkg)
    for n in (1, 5, 130):
        ctx, ads = random_request(rng, pkg, n)
        got = engine.explain(ctx, ads)
        total = got.contribution.sum(axis=1) + got.remainder
        np.testing.assert_allclose(total, got.logit, atol=1e-5, rtol=0)
        assert np.all(got.influence >= 0)
        if kind == "zeroed":
            assert np.all(got.contribution == 0) and np.all(got.influence == 0)
        score = engine.score(ctx, ads)
        tol = 2e-2 if kind == "bf16" else 1e-6  # bf16: activations rounded on the score path only
        np.testing.assert_allclose(got.pctr, score, atol=tol, rtol=0)


def _groups_of(pkg):
    from scoring.model.export import Group

    return [Group(g.name, g.side, np.asarray(t), g.pooling)
            for g, t in zip(pkg.manifest.groups, pkg.tables)]


def test_json_answer_has_the_contract_shape(tmp_path):
    pkg = load_package(make_model(tmp_path / "m", dense_dim=2))
    engine = Engine(pkg)
    ctx, ads = random_request(np.random.default_rng(1), pkg, 3)
    got = engine.explain(ctx, ads)
    doc = got.to_json()
    assert len(doc) == 3
    for a, ad in enumerate(doc):
        assert set(ad) >= {"pctr", "logit", "remainder", "groups"}
        assert list(ad["groups"]) == [g.name for g in pkg.manifest.groups]
        s = sum(g["contribution"] for g in ad["groups"].values()) + ad["remainder"]
        assert s == pytest.approx(ad["logit"], abs=1e-5)
        assert ad["remainder"] == pytest.approx(ad["bias"] + ad["dense"]["contribution"], abs=1e-12)


def test_bad_requests_and_overflow(tmp_path):
    """A bad field is named; an ad the net overflows on is named, not explained (as scoring)."""
    base = load_package(make_model(tmp_path / "base", dense_dim=3, seed=4, hidden=(16, 16)))
    weights = [np.array(w) for w in base.weights]
    weights[0][-3:, :] *= np.float32(1e25)  # the dense rows are the last ones of the input
    pkg = load_package(export_numpy(tmp_path / "huge", name="ctr", version="v1",
                                    groups=_groups_of(base), weights=weights,
                                    biases=[np.array(b) for b in base.biases], dense_dim=3))
    engine = Engine(pkg)
    fine = {"features": {"ad_id": "a"}, "dense": [0, 0, 0]}
    wild = {"features": {"ad_id": "b"}, "dense": [1e15, -1e15, 1e15]}
    with pytest.raises(InvalidRequest, match="nope"):
        engine.explain({"nope": "x"}, [fine])
    with pytest.raises(InvalidRequest, match="dense"):
        engine.explain({}, [{"features": {}}])
    with pytest.raises(NonFiniteOutput, match=r"ads\[1\]: the model's output is not a number"):
        engine.explain({}, [fine, wild, fine])
    assert np.isfinite(engine.explain({}, [fine, fine]).logit).all()
    assert engine.explain({}, []).logit.shape == (0,)


@pytest.mark.parametrize("hidden,dense_dim", [((), 0), ((), 2), ((16,), 0), ((5,), 1),
                                              ((37, 19, 5), 2), ((33, 17), 3)])
def test_odd_shapes_match_the_float64_chain_rule(tmp_path, hidden, dense_dim):
    """No hidden layer (logistic regression), one, and widths that fill no 16-lane vector,
    against the chain rule written out in float64 (tests/explain_oracle.py)."""
    from ...explain_oracle import explain_f64

    pkg = load_package(make_model(tmp_path / "m", hidden=hidden, dense_dim=dense_dim, seed=9))
    engine = Engine(pkg)
    rng = np.random.default_rng(11)
    for n in (1, 7, 150):
        ctx, ads = random_request(rng, pkg, n)
        got = engine.explain(ctx, ads)
        np.testing.assert_allclose(got.pctr, engine.score(ctx, ads), atol=1e-6)
        for a in range(0, n, 13):
            want = explain_f64(pkg, ctx, ads[a])
            assert got.logit[a] == pytest.approx(want["logit"], abs=1e-4)
            assert got.bias[a] == pytest.approx(want["bias"], abs=1e-4)
            for i, g in enumerate(pkg.manifest.groups):
                c, infl = want["groups"][g.name]
                assert got.contribution[a, i] == pytest.approx(c, abs=1e-4)
                assert got.influence[a, i] == pytest.approx(infl, abs=1e-6, rel=1e-4)
            if dense_dim:
                assert got.dense_contribution[a] == pytest.approx(want["dense"], abs=1e-4)
        total = got.contribution.sum(axis=1) + got.remainder
        np.testing.assert_allclose(total, got.logit, atol=1e-5, rtol=0)
