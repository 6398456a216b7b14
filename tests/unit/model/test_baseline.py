"""The health baseline in a package: its statistics against an independent forward (torch) and
NumPy, the absent shares against a count, the file's place in the package (checksums, identity,
validation), the command, and the sync of a package that carries one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scoring.model.baseline import (
    BASELINE,
    compute_baseline,
    read_requests,
    write_baseline,
)
from scoring.model.checksums import (
    ChecksumError,
    format_checksums,
    md5_file,
    package_files,
)
from scoring.model.cli import main as model_cli
from scoring.model.health import expected_auc, logit_histogram
from scoring.model.manifest import PackageError
from scoring.model.package import load_package
from scoring.model.reference import mlp_input
from scoring.sync import SyncConfig
from scoring.sync.syncer import INSTALLED, Syncer

from ...models import make_model, random_request


@pytest.fixture
def model(tmp_path):
    return make_model(tmp_path / "m", hidden=(24, 12), dense_dim=2)


def _requests(pkg, n, seed=0):
    rng = np.random.default_rng(seed)
    return [dict(zip(("context", "ads"), random_request(rng, pkg, int(rng.integers(1, 30)))))
            for _ in range(n)]


def test_statistics_match_an_independent_forward(model):
    pkg = load_package(model)
    reqs = _requests(pkg, 60)
    base = compute_baseline(pkg, reqs, window=500, resamples=50, seed=1)
    x = torch.tensor(np.stack([mlp_input(pkg, r["context"], ad) for r in reqs for ad in r["ads"]]),
                     dtype=torch.float64)
    hidden = []
    with torch.no_grad():
        h = x
        for w, b in zip(pkg.weights[:-1], pkg.biases[:-1]):
            h = torch.relu(h @ torch.tensor(np.asarray(w), dtype=torch.float64)
                           + torch.tensor(np.asarray(b), dtype=torch.float64))
            hidden.append(h.numpy())
        logit = h @ torch.tensor(np.asarray(pkg.weights[-1]), dtype=torch.float64) + float(pkg.biases[-1][0])
        p = torch.sigmoid(logit)[:, 0].numpy()
    assert base["rows"] == len(x) and base["requests"] == 60
    for layer, h in zip(base["layers"], hidden):
        n = layer["neurons"]
        np.testing.assert_allclose(n["mean"], h.mean(axis=0), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(n["sigma"], h.std(axis=0), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(n["zero_share"], (h == 0).mean(axis=0), atol=0)
        assert layer["fluctuation"] == pytest.approx(h.std(axis=0).mean(), rel=1e-9)
        assert layer["fluctuation_mad"] == pytest.approx(np.abs(h - h.mean(axis=0)).mean(), rel=1e-9)
        lo, hi = layer["band"]
        assert lo < hi and lo <= layer["fluctuation"] * 1.1 and hi >= layer["fluctuation"] * 0.9
    assert base["pctr"]["mean"] == pytest.approx(p.mean(), rel=1e-9)
    assert base["pctr"]["expected_auc"] == pytest.approx(expected_auc(p), rel=1e-9)
    assert base["pctr"]["histogram"] == logit_histogram(p).tolist()


def test_band_narrows_with_the_window(model):
    pkg = load_package(model)
    reqs = _requests(pkg, 80, seed=2)
    small = compute_baseline(pkg, reqs, window=50, resamples=200)
    large = compute_baseline(pkg, reqs, window=2000, resamples=200)
    for s, lg in zip(small["layers"], large["layers"]):
        assert (lg["band"][1] - lg["band"][0]) < (s["band"][1] - s["band"][0]) / 3


def test_absent_shares_are_counted_per_row(model):
    pkg = load_package(model)
    d = [0.1, 0.2]
    reqs = [{"context": {"user_id": "u1"}, "ads": [{"features": {"ad_id": "a"}, "dense": d},
                                                    {"features": {"ad_id": []}, "dense": d},
                                                    {"features": {"category": ["c"]}, "dense": d}]},
            {"context": None, "ads": [{"features": {"ad_id": 7, "category": "x"}, "dense": d}]}]
    base = compute_baseline(pkg, reqs, window=10, resamples=3)
    assert base["groups"] == {"user_id": 1 / 4, "city": 1.0, "ad_id": 2 / 4, "category": 2 / 4}
    with pytest.raises(PackageError, match=r"requests\[1\].ads\[0\] is not a valid score request"):
        compute_baseline(pkg, [reqs[0], {"ads": [{"features": {"ad_id": "a"}}]}])
    with pytest.raises(PackageError, match=r"requests\[0\].ads\[1\].*not a finite number"):
        compute_baseline(pkg, [{"ads": [reqs[0]["ads"][0], {"dense": [float("inf"), 0.0]}]}])


def test_the_file_in_the_package(model):
    pkg = load_package(model)
    assert pkg.baseline is None  # old packages load without one
    before = pkg.md5
    base = compute_baseline(pkg, _requests(pkg, 10), window=100, resamples=10)
    with_base = write_baseline(model, base)
    assert with_base.baseline == json.loads(json.dumps(base))
    assert with_base.md5 != before and BASELINE in with_base.checksums
    path = model / BASELINE
    doc = json.loads(path.read_text())
    path.write_text(json.dumps(dict(doc, rows=1)))  # changed after the checksums
    with pytest.raises(ChecksumError):
        load_package(model)
    doc["layers"][1]["neurons"]["sigma"] = doc["layers"][1]["neurons"]["sigma"][:-1]
    _rewrite(model, base)  # back to a valid package
    sums_before = (model / "checksums.md5").read_bytes()
    with pytest.raises(PackageError, match=r"layers\[1\].neurons.sigma must be 12 finite numbers"):
        write_baseline(model, doc)  # refused before anything on disk changes
    assert (model / "checksums.md5").read_bytes() == sums_before
    load_package(model)
    with pytest.raises(PackageError, match=r"layers\[1\].neurons.sigma must be 12 finite numbers"):
        _rewrite(model, doc)


def _rewrite(model, doc) -> object:
    """Write a baseline as is (no computation) and fix the checksums, then load."""
    return _place_baseline(model, json.dumps(doc).encode())


def _place_baseline(model, data: bytes):
    (model / BASELINE).parent.mkdir(exist_ok=True)
    (model / BASELINE).write_bytes(data)
    (model / "checksums.md5").write_text(format_checksums(
        {name: md5_file(model / name) for name in package_files(model)}))
    return load_package(model)


def test_baseline_command_and_bad_request_files(model, tmp_path, capsys):
    pkg = load_package(model)
    lines = [json.dumps(r) for r in _requests(pkg, 5)]
    good = tmp_path / "reqs.jsonl"
    good.write_text("\n".join(lines) + "\n\n")
    assert model_cli(["baseline", str(model), "--requests", str(good), "--window", "50",
                      "--resamples", "5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rows"] == sum(len(json.loads(line)["ads"]) for line in lines)
    assert len(out["layers"]) == 2 and load_package(model).baseline is not None
    bad = tmp_path / "bad.jsonl"
    bad.write_text(lines[0] + "\n{\"ads\": 3}\n")
    with pytest.raises(PackageError, match=r"bad.jsonl:2: expected a score body"):
        read_requests(bad)
    bad.write_text(lines[0] + "\n{oops\n")
    assert model_cli(["baseline", str(model), "--requests", str(bad)]) == 1
    assert "bad.jsonl:2: not JSON" in capsys.readouterr().err


def test_a_package_with_a_baseline_syncs_whole(model, tmp_path):
    pkg = load_package(model)
    write_baseline(model, compute_baseline(pkg, _requests(pkg, 5), window=50, resamples=5))
    syncer = Syncer(SyncConfig(source=f"file://{model}", repo=tmp_path / "repo", model="ctr",
                               rate_limit=None, backoff=0.01))
    assert syncer.cycle().status == INSTALLED
    assert load_package(syncer.repo.path("ctr", "v1")).baseline is not None


def test_resampled_windows_from_weighted_sums_equal_the_windows_themselves():
    from scoring.model.baseline import _resample_counts, _resampled_fluctuation

    rng = np.random.default_rng(4)
    h = np.maximum(rng.standard_normal((300, 9)) * 2, 0)
    request_of_row = np.repeat(np.arange(30), 10)  # 30 requests of 10 ads
    counts = _resample_counts(request_of_row, 120, 40, seed=3)
    assert (counts.sum(axis=1) == 120).all()  # 12 whole requests per window
    for c in counts:  # every ad of a request drawn as often as the request
        assert (c.reshape(30, 10) == c.reshape(30, 10)[:, :1]).all()
    direct = [np.repeat(h, c.astype(int), axis=0).std(axis=0).mean() for c in counts]
    np.testing.assert_allclose(_resampled_fluctuation(h, counts), direct, rtol=1e-9)


def test_the_exporter_writes_the_baseline_it_is_given(tmp_path, model):
    from scoring.model.export import Group, export_numpy

    pkg = load_package(model)
    reqs = _requests(pkg, 8, seed=9)
    out = export_numpy(tmp_path / "exported", name="ctr", version="v9",
                       groups=[Group(g.name, g.side, np.asarray(t), g.pooling)
                               for g, t in zip(pkg.manifest.groups, pkg.tables)],
                       weights=pkg.weights, biases=pkg.biases, dense_dim=pkg.manifest.dense_dim,
                       baseline_requests=reqs)
    exported = load_package(out)
    want = compute_baseline(pkg, reqs)
    got = exported.baseline
    assert got["rows"] == want["rows"] and got["groups"] == want["groups"]
    for a, b in zip(got["layers"], want["layers"]):
        assert a["fluctuation"] == pytest.approx(b["fluctuation"], rel=1e-12)


def test_hostile_baseline_files_and_request_files_give_package_errors_only(model, tmp_path):
    """Raw-byte mutations of a valid baseline file (checksums fixed after each, so the parser
    is reached) and of a requests file: the loader and the command answer PackageError naming
    the file, never another exception."""
    import random

    pkg = load_package(model)
    reqs = _requests(pkg, 4)
    good = json.dumps(compute_baseline(pkg, reqs, window=20, resamples=3)).encode()
    rnd = random.Random(7)
    junk = [b"", b"\xff\xfe", b"1e400", b"NaN", b"[" * 5000, b"{}", b"null", b'"x"', b"-0"]

    def mutate(data: bytes) -> bytes:
        kind = rnd.randrange(4)
        i = rnd.randrange(len(data) + 1)
        if kind == 0:
            return data[:i]
        if kind == 1:
            return data[:i] + rnd.choice(junk) + data[i + rnd.randrange(20):]
        if kind == 2:
            return data[:i] + bytes([rnd.randrange(256)]) + data[i + 1:]
        return rnd.choice(junk)

    outcomes = set()
    for _ in range(150):
        data = mutate(good)
        try:
            _place_baseline(model, data)
            outcomes.add("loaded")
        except PackageError as exc:
            assert str(exc).startswith(BASELINE), str(exc)
            outcomes.add("refused")
    assert "refused" in outcomes
    lines = "\n".join(json.dumps(r) for r in reqs).encode()
    path = tmp_path / "reqs.jsonl"
    for _ in range(150):
        path.write_bytes(mutate(lines))
        try:
            compute_baseline(pkg, read_requests(path), window=10, resamples=2)
        except PackageError:
            pass
