"""What operators do to a running service's repository, against a real ``ctr-serve``: versions
copied in by hand (``cp -a``, ``rsync -a``, a copy caught half-way), reload and rollback answers,
a rollback retried, a repository the service cannot write, a demo model beside a real one."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from scoring.model.package import load_package
from scoring.model.reference import reference_scores

from ..models import make_model
from ..readonly import read_only, read_only_mount_prefix
from .server import Server, install_model, wait_until

LAST_MONTH = time.time() - 30 * 86400
BODY = {"context": {"user_id": "u1", "city": "bj"},
        "ads": [{"features": {"ad_id": "a1", "category": ["c1", "c2"]}}, {"features": {"ad_id": 7}}]}


def build(root: Path, version: str, seed: int, name: str = "ctr") -> Path:
    """A package built elsewhere last month: every file and directory carries that mtime."""
    out = make_model(root / f"build-{name}-{version}", seed=seed, name=name, version=version)
    for p in [out, *out.rglob("*")]:
        os.utime(p, (LAST_MONTH, LAST_MONTH))
    return out


def scores(server: Server, path: str = "/v1/models/ctr/score") -> dict:
    r = server.client.post(path, json=BODY)
    assert r.status_code == 200, r.text
    return r.json()


def assert_scored_by(server: Server, package_dir: Path) -> None:
    got = scores(server)
    want = reference_scores(load_package(package_dir), BODY["context"], BODY["ads"])
    np.testing.assert_allclose(got["scores"], want, atol=1e-5, rtol=0)


def wait_for(predicate, what: str, server: Server, timeout: float = 30.0):
    return wait_until(predicate, what, timeout, server.log)


def test_versions_copied_in_by_hand_go_live(tmp_path):
    repo = tmp_path / "repo"
    install_model(repo, "v1", seed=1)
    with Server(repo, tmp_path / "server.log") as server:
        server.wait()
        # cp -a of an older build: its mtimes are last month's, older than v1's
        v2 = build(tmp_path, "v2", seed=2)
        subprocess.run(["cp", "-a", str(v2), str(repo / "ctr" / "v2")], check=True)
        assert (repo / "ctr" / "v2").stat().st_mtime < (repo / "ctr" / "v1").stat().st_mtime
        server.wait_for_version("ctr", "v2")
        assert_scored_by(server, v2)
        # rsync -a (temporary files renamed into place, mtimes kept)
        v3 = build(tmp_path, "v3", seed=3)
        subprocess.run(["rsync", "-a", f"{v3}/", str(repo / "ctr" / "v3")], check=True)
        server.wait_for_version("ctr", "v3")
        assert_scored_by(server, v3)

        # a copy caught half-way: rejected, then tried again once it is complete
        v4 = build(tmp_path, "v4", seed=4)
        half = repo / "ctr" / "v4"
        half.mkdir()
        for f in ("manifest.json", "checksums.md5"):
            shutil.copy2(v4 / f, half / f)
        shutil.copytree(v4 / "emb", half / "emb", copy_function=shutil.copy2)
        table = sorted((half / "emb").glob("*.npy"))[-1]
        table.write_bytes(table.read_bytes()[:200])  # the copy of this file was cut off
        rejected = wait_for(lambda: server.client.get("/v1/models/ctr").json().get("rejected", {}).get("v4"),
                            "the half copy is rejected", server)
        assert "missing" in rejected or "md5 mismatch" in rejected
        time.sleep(1.0)  # five polls: not retried while it stays as it is
        assert server.client.get("/v1/models/ctr").json()["version"] == "v3"
        subprocess.run(["cp", "-a", f"{v4}/.", str(half)], check=True)  # the copy is completed
        server.wait_for_version("ctr", "v4")
        assert_scored_by(server, v4)

        # reload says why nothing changed
        quiet = server.admin("POST", "/v1/models/ctr/reload").json()
        assert quiet["changed"] is False
        assert quiet["reason"] == "version 'v4' is live and is the newest version in the repository"

        # a rollback sticks (reload says so) until a new version is copied in
        back = server.admin("POST", "/v1/models/ctr/rollback")
        assert back.status_code == 200 and back.json()["version"] == "v3" and back.json()["from"] == "v4"
        assert_scored_by(server, v3)
        stuck = server.admin("POST", "/v1/models/ctr/reload").json()
        assert stuck["version"] == "v3" and "rolled back to 'v3'" in stuck["reason"]
        # the same rollback again (a client retry) does not step back to v2
        retry = server.admin("POST", "/v1/models/ctr/rollback?from=v4")
        assert retry.status_code == 200 and retry.json()["version"] == "v3", retry.text
        assert "already rolled back from 'v4' to 'v3'" in retry.json()["reason"]
        named = server.admin("POST", "/v1/models/ctr/rollback?to=v3")
        assert named.status_code == 200 and named.json()["version"] == "v3"
        conflict = server.admin("POST", "/v1/models/ctr/rollback?from=v2")
        assert conflict.status_code == 409 and "the live version is 'v3', not 'v2'" in conflict.json()["error"]
        bad = server.admin("POST", "/v1/models/ctr/rollback?to=../v1")
        assert bad.status_code == 422 and bad.json()["error"].startswith("to must be")
        v5 = build(tmp_path, "v5", seed=5)
        subprocess.run(["cp", "-a", str(v5), str(repo / "ctr" / "v5")], check=True)
        server.wait_for_version("ctr", "v5")
        assert_scored_by(server, v5)

        # nothing the API shows names a path of this host
        for path in ("/v1/models", "/v1/models/ctr", "/readyz"):
            text = server.client.get(path).text
            assert str(tmp_path) not in text, (path, text)
        assert server.client.get("/v1/models/ctr").json()["path"] == "ctr/v5"
        assert "Traceback" not in server.log()


def test_the_demo_model_never_wins_over_a_real_model(tmp_path):
    repo = tmp_path / "repo"
    install_model(repo, "seed0", seed=1, name="demo")
    install_model(repo, "v1", seed=2)  # synced in beside it; the service (re)starts
    with Server(repo, tmp_path / "server.log") as server:
        server.wait()
        assert scores(server, "/v1/score")["model"] == "ctr"


def _loads(server: Server, result: str) -> float:
    for line in server.client.get("/metrics").text.splitlines():
        if line.startswith(f'ctr_model_loads_total{{model="ctr",result="{result}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_repository_the_service_cannot_write_is_served_from_memory(tmp_path):
    """A read-only mount (or a directory of another uid): no .state.json, no .lock can be
    written. The service must serve, say why in the log and the model status, and never load
    the same version again and again."""
    repo = tmp_path / "repo"
    v1 = build(tmp_path, "v1", seed=1)
    (repo / "ctr").mkdir(parents=True)
    shutil.copytree(v1, repo / "ctr" / "v1", copy_function=shutil.copy2)
    prefix = read_only_mount_prefix(repo)
    if prefix is not None:  # a real read-only mount: EROFS
        server = Server(repo, tmp_path / "server.log", prefix=prefix)
        guard = None
    else:  # EPERM / EACCES from the kernel for every new entry
        guard = read_only(repo)
        guard.__enter__()
        server = Server(repo, tmp_path / "server.log")
    try:
        server.wait()
        assert_scored_by(server, v1)
        time.sleep(1.5)  # several polls
        assert _loads(server, "ok") == 1 and _loads(server, "failed") == 0
        status = server.client.get("/v1/models/ctr").json()
        assert status["version"] == "v1" and status["repository_read_only"].startswith("cannot")
        log = server.log()
        assert log.count("is not writable by this process") == 1, log
        assert not (repo / "ctr" / ".state.json").exists()
    finally:
        server.stop()
        if guard is not None:
            guard.__exit__(None, None, None)
