"""The synthetic world's files, and the trainer's packages scoring as its torch model does."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from scoring.insight import synth
from scoring.insight.synth import AD_GROUPS, CONTEXT_GROUPS, generate, read_jsonl

SMALL = {"requests_per_day": 150}  # ~6.7k train rows: a second for synth + two epochs


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "ci"
    generate(out, size="ci", seed=3)
    return out


def _day(body: dict) -> int:
    prefix, _ = body["request_id"].split("-", 1)
    assert prefix.startswith("d"), body["request_id"]
    return int(prefix[1:])


def test_lines_are_score_bodies_with_clicks(world_dir):
    for split in ("train", "test"):
        bodies = read_jsonl(world_dir / f"{split}.jsonl")
        assert bodies
        for body in bodies:
            assert set(body) == {"request_id", "context", "ads", "clicks"}
            assert isinstance(body["request_id"], str)
            assert list(body["context"]) == list(CONTEXT_GROUPS)
            assert all(isinstance(v, str) for v in body["context"].values())
            assert 5 <= len(body["ads"]) <= 10
            for ad in body["ads"]:
                assert set(ad) == {"id", "features"}
                assert list(ad["features"]) == list(AD_GROUPS)
                assert all(isinstance(v, str) for v in ad["features"].values())
                assert ad["id"] == ad["features"]["ad_id"]
            assert len({ad["id"] for ad in body["ads"]}) == len(body["ads"])  # distinct ads
            assert len(body["clicks"]) == len(body["ads"])
            assert set(body["clicks"]) <= {0, 1}
    clicks = [c for b in read_jsonl(world_dir / "train.jsonl") for c in b["clicks"]]
    assert 0.03 <= np.mean(clicks) <= 0.10


def test_split_by_day_recorded_in_world_json(world_dir):
    world = json.loads((world_dir / "world.json").read_text())
    days = {s: set(world["splits"][s]["days"]) for s in ("train", "test")}
    assert days["train"] and days["test"] and not days["train"] & days["test"]
    assert max(days["train"]) < min(days["test"])
    assert days["train"] | days["test"] == set(range(1, world["parameters"]["days"] + 1))
    for split in ("train", "test"):
        bodies = read_jsonl(world_dir / world["splits"][split]["file"])
        assert {_day(b) for b in bodies} == days[split]
        summary = world["summary"][split]
        assert summary["rows"] == sum(len(b["ads"]) for b in bodies)
        assert summary["clicks"] == sum(sum(b["clicks"]) for b in bodies)
    # the teacher is written down: its weights have the shapes the docstring names
    teacher = world["teacher"]
    k = world["parameters"]["latent_dim"]
    assert np.shape(teacher["w1"]) == (k * len(teacher["inputs"]), world["parameters"]["teacher_hidden"])
    assert 0.6 < world["summary"]["test"]["teacher_auc"] < 0.95


def test_users_are_zipf_like(world_dir):
    bodies = read_jsonl(world_dir / "train.jsonl")
    rows = Counter()
    requests = Counter()
    for b in bodies:
        rows[b["context"]["user_id"]] += len(b["ads"])
        requests[b["context"]["user_id"]] += 1
    per_user = sorted(rows.values(), reverse=True)
    top = max(1, len(per_user) // 100)
    assert sum(per_user[:top]) / sum(per_user) > 0.15  # the top 1% of users: a large share
    assert np.median(list(requests.values())) <= 1  # while most users come once
    # user attributes are fixed per user
    attrs = {}
    for b in bodies:
        ctx = b["context"]
        a = (ctx["age"], ctx["gender"], ctx["city"], ctx["device"])
        assert attrs.setdefault(ctx["user_id"], a) == a


def test_same_seed_same_files(tmp_path):
    a = generate(tmp_path / "a", size="ci", seed=7, **SMALL)
    b = generate(tmp_path / "b", size="ci", seed=7, **SMALL)
    c = generate(tmp_path / "c", size="ci", seed=8, **SMALL)
    assert a == b
    for name in ("train.jsonl", "test.jsonl", "world.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "train.jsonl").read_bytes() != (tmp_path / "c" / "train.jsonl").read_bytes()
    assert a != c


def test_unknown_world_parameter_is_named(tmp_path):
    with pytest.raises(ValueError, match="n_user"):
        generate(tmp_path, size="ci", n_user=5)
    with pytest.raises(ValueError, match="size"):
        synth.world_params("huge")


def test_auc_matches_pair_counting():
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.2
    s = np.round(rng.random(300), 1)  # many ties
    pos, neg = s[y], s[~y]
    want = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
        pos.size * neg.size)
    assert synth.auc(y, s) == pytest.approx(want, abs=1e-12)


@pytest.mark.torch
def test_exported_packages_score_like_the_torch_model(tmp_path):
    import torch

    from scoring.engine.scorer import Engine
    from scoring.insight import train as trainer
    from scoring.model.package import load_package

    data, repo = tmp_path / "data", tmp_path / "repo"
    generate(data, size="ci", seed=1, **SMALL)
    world = synth.read_world(data)
    bodies = read_jsonl(data / "test.jsonl")[:12]
    rows = trainer.encode(bodies, trainer.buckets_for(world))
    want = {}

    def on_epoch(net, row):  # the oracle: the torch model itself, at each epoch's end
        with torch.no_grad():
            want[row["version"]] = net(torch.from_numpy(rows.ids)).numpy().copy()

    history = trainer.train(data, repo, name="ins", epochs=2, seed=0, on_epoch=on_epoch)
    assert [h["version"] for h in history] == ["epoch-01", "epoch-02"]
    for h in history:
        assert 0.0 < h["train_loss"] and 0.0 <= h["test_auc"] <= 1.0
    model_dir = repo / "ins"
    assert sorted(p.name for p in model_dir.iterdir()) == ["epoch-01", "epoch-02", "training.json"]
    record = json.loads((model_dir / "training.json").read_text())
    assert record["epochs"] == history
    assert record["train_user_rows"] <= record["train_users"] <= record["groups"][0]["buckets"]
    assert [g["name"] for g in record["groups"]] == list(CONTEXT_GROUPS + AD_GROUPS)

    for version, expected in want.items():
        pkg = load_package(model_dir / version)
        assert pkg.manifest.version == version and pkg.manifest.name == "ins"
        engine = Engine(pkg)
        got = np.concatenate([engine.score(b["context"], b["ads"]) for b in bodies])
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert not np.allclose(want["epoch-01"], want["epoch-02"])  # the versions differ

    # a rerun replaces the versions in place (each one renamed in whole)
    trainer.train(data, repo, name="ins", epochs=1, seed=5)
    assert sorted(p.name for p in model_dir.iterdir()) == ["epoch-01", "epoch-02", "training.json"]
    net = trainer.load_net(model_dir / "epoch-01")
    with torch.no_grad():
        again = net(torch.from_numpy(rows.ids)).numpy()
    assert not np.allclose(again, want["epoch-01"])
    engine = Engine(load_package(model_dir / "epoch-01"))
    got = np.concatenate([engine.score(b["context"], b["ads"]) for b in bodies])
    np.testing.assert_allclose(got, again, rtol=0, atol=1e-5)
