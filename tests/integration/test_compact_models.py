"""Format 2 packages with compact tables and a bf16 MLP, live on a real server: copied into the
repository the way an operator does (``cp -a``), swapped in, scored like the float64 reference
over HTTP on both the scanner path and the decoded one."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import orjson

from scoring.model.package import load_package
from scoring.model.quantize import convert
from scoring.model.reference import reference_scores

from ..models import assert_bf16_close, make_model, random_request
from .server import Server

TOL = 2e-5


def test_compact_versions_go_live_and_score_exactly(tmp_path):
    repo = tmp_path / "repo"
    f32 = make_model(tmp_path / "src" / "v1", name="ctr", version="v1", hidden=(48, 16))
    (repo / "ctr").mkdir(parents=True)
    subprocess.run(["cp", "-a", str(f32), str(repo / "ctr" / "v1")], check=True)
    variants = [("v2-int8", dict(tables="int8")), ("v3-fp16-bf16", dict(tables="fp16", mlp="bf16"))]
    with Server(repo, tmp_path / "server.log").wait() as server:
        rng = np.random.default_rng(3)
        for version, options in variants:
            built = convert(f32, tmp_path / "src" / version, version=version, **options)
            subprocess.run(["cp", "-a", str(built), str(repo / "ctr" / version)], check=True)
            server.wait_for_version("ctr", version)
            pkg = load_package(repo / "ctr" / version)
            got_all, want_all = [], []
            for n in (1, 8, 60):
                ctx, ads = random_request(rng, pkg, n, int_ids=(n != 8))
                want = reference_scores(pkg, ctx, ads)
                for path in ("/v1/score", "/v1/models/ctr/score"):
                    r = server.client.post(path, content=orjson.dumps({"context": ctx, "ads": ads}),
                                           headers={"content-type": "application/json"})
                    assert r.status_code == 200, r.text
                    body = r.json()
                    assert body["version"] == version
                    got_all.append(body["scores"])
                    want_all.append(want)
            got_all, want_all = np.concatenate(got_all), np.concatenate(want_all)
            if "mlp" in options:  # bf16: exact but for rounding ties (tests/models.py)
                assert_bf16_close(got_all, want_all)
            else:
                np.testing.assert_allclose(got_all, want_all, atol=TOL, rtol=0)
            described = server.client.get("/v1/models/ctr").json()
            assert described["version"] == version
    shutil.rmtree(tmp_path / "src", ignore_errors=True)
