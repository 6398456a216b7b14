"""``ctr-model``: demo, inspect and verify as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from scoring.model.demo import BASELINE_REQUESTS, write_demo
from scoring.model.package import load_package


def _run(*args):
    return subprocess.run([sys.executable, "-m", "scoring.model.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_demo_is_deterministic_and_has_the_seed_net(tmp_path):
    a = write_demo(tmp_path / "a", seed=3, bucket_shift=6)
    b = write_demo(tmp_path / "b", seed=3, bucket_shift=6)
    c = write_demo(tmp_path / "c", seed=4, bucket_shift=6)
    pa, pb, pc = load_package(a), load_package(b), load_package(c)
    assert pa.md5 == pb.md5 != pc.md5
    m = pa.manifest
    assert len(m.groups) == 16 and all(g.dim == 32 for g in m.groups)
    assert sum(g.side == "context" for g in m.groups) == 8
    assert [w.shape for w in pa.weights] == [(512, 256), (256, 256), (256, 256), (256, 128), (128, 1)]
    np.testing.assert_array_equal(pa.weights[2], pb.weights[2])
    # the demo carries its health baseline: one entry per hidden layer, deterministic too
    assert pa.baseline == pb.baseline and pa.baseline != pc.baseline
    assert [layer["width"] for layer in pa.baseline["layers"]] == [256, 256, 256, 128]
    assert pa.baseline["rows"] == BASELINE_REQUESTS * 100


def test_cli_demo_inspect_verify(tmp_path):
    out = tmp_path / "demo"
    r = _run("demo", str(out), "--seed", "1", "--version", "v7", "--bucket-shift", "8")
    assert r.returncode == 0, r.stderr
    r = _run("inspect", str(out))
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["version"] == "v7" and info["input_dim"] == 512
    assert [g["buckets"] for g in info["groups"]][:2] == [2**10, 2**8]
    r = _run("verify", str(out))
    assert r.returncode == 0 and r.stdout.startswith("OK demo v7")
    # corrupt one byte of a weight file: verify fails, naming the file
    w = out / "mlp" / "w3.npy"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0x01
    w.write_bytes(bytes(data))
    r = _run("verify", str(out))
    assert r.returncode == 1
    assert "mlp/w3.npy: md5 mismatch" in r.stderr
    r = _run("inspect", str(tmp_path / "nope"))
    assert r.returncode == 1 and "not a directory" in r.stderr
