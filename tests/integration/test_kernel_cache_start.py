"""A real start on shipped compiled kernels (``CTR_KERNEL_CACHE``): loaded, not compiled."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx

from scoring.engine.kernel_cache import MARKER, build
from scoring.lifecycle.repo import ModelRepo
from scoring.model.demo import write_demo

from .server import Server


def _files(root):
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_a_start_with_shipped_kernels_compiles_nothing(tmp_path):
    """A CI-sized build (the x86-64-v3 level, the demo's kernels only), then a real ctr-serve
    with an empty cache: it copies the level and becomes ready without writing a single new
    cache file (compiling would add index and code files)."""
    kernels = tmp_path / "kernels"
    build(kernels, ["x86-64-v3"], demo_only=True)
    assert _files(kernels / "x86-64-v3") - {MARKER}
    repo = ModelRepo(tmp_path / "repo")
    staged = repo.staging_dir("demo")
    write_demo(staged, version="seed0", bucket_shift=4)
    repo.install("demo", staged, "seed0")
    cache = tmp_path / "cache"
    env = {"NUMBA_CACHE_DIR": str(cache), "CTR_KERNEL_CACHE": str(kernels),
           "CTR_HEALTH_SAMPLE_RATE": "0"}
    env = {k: v for k, v in {**os.environ, **env}.items() if not k.startswith("NUMBA_CPU")}
    with Server(repo.root, tmp_path / "server.log", env=env, args=["--no-demo"]) as server:
        server.wait(timeout=120)
        log = server.log()
        assert "shipped kernels for x86-64-v3" in log and "kernels compile for x86-64-v3" in log, log
        r = httpx.post(f"{server.url}/v1/score", json={"context": {"user_id": "u"},
                                                       "ads": [{"features": {"ad_id": "a"}}]})
        assert r.status_code == 200, r.text
        assert _files(cache) == _files(kernels / "x86-64-v3") - {MARKER}, \
            sorted(_files(cache) ^ (_files(kernels / "x86-64-v3") - {MARKER}))
    out = subprocess.run([sys.executable, "-m", "scoring.engine.kernel_cache", "show", str(kernels)],
                         capture_output=True, text=True, check=True)
    assert '"level": "x86-64-v3"' in out.stdout
