"""PyTorch modules of every family -> package -> graph engine, within 1e-5 of torch's own
forward pass (the exporter test); the identity torch computes the FM by is checked against the
pair sum in the float64 reference's tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scoring.engine.features import hash_string
from scoring.engine.graph import GraphEngine
from scoring.model.families import FAMILIES
from scoring.model.package import load_package
from scoring.model.torch_families import FamilyNet, export_family_torch

from ...graph_models import FAMILY_GROUPS, family_request

GROUPS = FAMILY_GROUPS
WIDE_ROWS = 97


def _torch_inputs(net, ctx, ads):
    """Per group and ad the (row, weight) pairs, hashing as the contract says; the position's
    serving value where an ad does not send it; the wide rows of the wide groups' ids."""
    inputs, wide = {}, [[] for _ in ads]
    for name, side, rows, _, pooling in GROUPS:
        per_ad = []
        for a, ad in enumerate(ads):
            value = ctx.get(name) if side == "context" else ad["features"].get(name)
            if value is None and name in net.serving_values:
                value = net.serving_values[name]
            if isinstance(value, dict):
                pairs = [(hash_string(i), w) for i, w in zip(value["ids"], value["weights"])]
            else:
                values = value if isinstance(value, list) else ([] if value is None else [value])
                pairs = [(hash_string(v), 1.0) for v in values]
            per_ad.append([(h % rows, w) for h, w in pairs])
            if name in net.wide_groups:
                wide[a] += [h % WIDE_ROWS for h, _ in pairs]
        inputs[name] = per_ad
    dense = torch.tensor([ad["dense"] for ad in ads], dtype=torch.float32)
    return inputs, wide, dense


@pytest.mark.parametrize("family", FAMILIES)
def test_torch_family_to_package_to_engine(tmp_path, family):
    torch.manual_seed(0)
    net = FamilyNet(family, GROUPS, dense_dim=2, hidden=(24, 16), cross_layers=2, rank=4,
                    wide_rows=WIDE_ROWS, serving_values={"position": "1"})
    with torch.no_grad():
        for bag in net.bags.values():
            bag.weight.mul_(0.5)
    path = export_family_torch(tmp_path / family, net, name="t", version="v1")
    engine = GraphEngine(load_package(path))
    rng = np.random.default_rng(1)
    for n in (1, 6, 110):
        ctx, ads = family_request(rng, n)
        with torch.no_grad():
            want = {k: v.numpy() for k, v in net(*_torch_inputs(net, ctx, ads)).items()}
        got = engine.score_outputs(ctx, ads)
        assert set(got) == set(want)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], atol=1e-5, rtol=1e-5, err_msg=name)
