"""``--admin-port`` (admin endpoints only there) and ``--drain-file`` (readiness flips, scoring
goes on): what the Kubernetes manifests' NetworkPolicy and preStop hook rely on."""

from __future__ import annotations

import shutil

import httpx
import pytest

from scoring.lifecycle.repo import ModelRepo
from scoring.model.demo import write_demo

from .server import ADMIN_TOKEN, Server, free_port

BODY = {"context": {"user_id": "u1"}, "ads": [{"features": {"ad_id": "a1"}}]}
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _repo(tmp_path) -> ModelRepo:
    repo = ModelRepo(tmp_path / "repo")
    staged = repo.staging_dir("demo")
    write_demo(staged, version="small", bucket_shift=6)
    repo.install("demo", staged, "small")
    shutil.rmtree(staged, ignore_errors=True)
    return repo


@pytest.mark.parametrize("workers", [1, 2])
def test_admin_endpoints_answer_only_on_the_admin_port(tmp_path, workers):
    repo = _repo(tmp_path)
    admin_port = free_port()
    drain = tmp_path / "run" / "draining"
    with Server(repo.root, tmp_path / "server.log",
                args=["--admin-port", str(admin_port), "--drain-file", str(drain),
                      "--workers", str(workers)]) as server:
        server.wait()
        admin_url = f"http://127.0.0.1:{admin_port}"
        for _ in range(4 * workers):  # new connections: every worker answers some
            # the main port scores and refuses admin requests, even with the right token
            assert httpx.post(f"{server.url}/v1/score", json=BODY, timeout=30).status_code == 200
            r = httpx.post(f"{server.url}/v1/models/demo/reload", headers=AUTH, timeout=30)
            assert r.status_code == 403, r.text
            assert f"admin port {admin_port}" in r.json()["error"]
            r = httpx.post(f"{server.url}/v1/models/demo/explain", json=BODY, headers=AUTH, timeout=30)
            assert r.status_code == 403, r.text
            # the admin port takes them (with the token) and serves the operations endpoints
            assert httpx.post(f"{admin_url}/v1/models/demo/reload", timeout=30).status_code == 401
            r = httpx.post(f"{admin_url}/v1/models/demo/reload", headers=AUTH, timeout=30)
            assert r.status_code == 200, r.text
            r = httpx.post(f"{admin_url}/v1/models/demo/explain", json=BODY, headers=AUTH, timeout=30)
            assert r.status_code == 200 and "contribution" in r.text, r.text
            for url in (server.url, admin_url):
                for path in ("/healthz", "/readyz", "/metrics"):
                    assert httpx.get(url + path, timeout=30).status_code == 200, (url, path)

        # draining: the file flips readiness on every worker; liveness and scoring go on
        drain.parent.mkdir(parents=True)
        drain.touch()
        for _ in range(4 * workers):
            r = httpx.get(f"{server.url}/readyz", timeout=30)
            assert r.status_code == 503 and r.json()["draining"] is True, r.text
            assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200
            assert httpx.post(f"{server.url}/v1/score", json=BODY, timeout=30).status_code == 200
        drain.unlink()
        assert httpx.get(f"{server.url}/readyz", timeout=30).status_code == 200


def test_admin_port_equal_to_port_is_refused(tmp_path):
    repo = _repo(tmp_path)
    port = free_port()
    server = Server(repo.root, tmp_path / "server.log", args=["--admin-port", "0"])
    try:
        server.proc.wait(60)
        assert server.proc.returncode == 2 and "admin_port" in server.log(), server.log()
    finally:
        server.stop()
    server = Server(repo.root, tmp_path / "server2.log", args=["--port", str(port), "--admin-port", str(port)])
    try:
        server.proc.wait(60)
        assert server.proc.returncode == 2 and "must differ from --port" in server.log(), server.log()
    finally:
        server.stop()
