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


def test_readyz_waits_for_every_worker(tmp_path):
    """From the first 200 of /readyz on, every worker answers: new connections land on either,
    and none may still be loading (a probe that reached the faster worker first used to let a
    load balancer send traffic to the other one while it compiled)."""
    repo = _repo(tmp_path)
    with Server(repo.root, tmp_path / "server.log", args=["--workers", "2"]) as server:
        server.wait()
        for _ in range(20):
            r = httpx.get(f"{server.url}/readyz", timeout=30)
            assert r.status_code == 200, r.text
            assert httpx.post(f"{server.url}/v1/score", json=BODY, timeout=30).status_code == 200


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


def test_admin_token_file_is_read_at_each_request(tmp_path):
    """CTR_ADMIN_TOKEN_FILE (a mounted Secret) wins over CTR_ADMIN_TOKEN and a rotation applies
    without a restart; an emptied file disables the admin endpoints."""
    repo = _repo(tmp_path)
    token = tmp_path / "secret" / "token"
    token.parent.mkdir()
    token.write_text("first-token\n")
    with Server(repo.root, tmp_path / "server.log", env={"CTR_ADMIN_TOKEN_FILE": str(token)}) as server:
        server.wait()
        url = f"{server.url}/v1/models/demo/reload"

        def status(secret: str) -> int:
            return httpx.post(url, headers={"Authorization": f"Bearer {secret}"}, timeout=30).status_code

        assert status("first-token") == 200
        assert status(ADMIN_TOKEN) == 401  # the environment's token does not count
        token.write_text("second-token")
        assert status("first-token") == 401 and status("second-token") == 200
        token.write_text("")
        r = httpx.post(url, headers={"Authorization": "Bearer second-token"}, timeout=30)
        assert r.status_code == 403 and "CTR_ADMIN_TOKEN_FILE" in r.json()["error"], r.text
    missing = Server(repo.root, tmp_path / "bad.log", env={"CTR_ADMIN_TOKEN_FILE": str(tmp_path / "nope")})
    try:
        missing.proc.wait(60)
        assert missing.proc.returncode == 2 and "no such file" in missing.log(), missing.log()
    finally:
        missing.stop()
