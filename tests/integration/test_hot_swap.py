"""Hot swap under load, corrupt versions, rollback, restart: against a real server."""

from __future__ import annotations

import re
import threading
import time

import httpx
import numpy as np
import pytest

from scoring.model.package import load_package
from scoring.model.reference import reference_scores

from ..models import random_request
from .server import Server, install_corrupt, install_model

SEEDS = {"v1": 11, "v2": 12, "v3": 13}
N_CLIENTS = 5


def _requests(package, n: int = 24):
    rng = np.random.default_rng(99)
    return [random_request(rng, package, int(rng.integers(1, 40))) for _ in range(n)]


def _failed_loads(server: Server) -> float:
    text = server.client.get("/metrics").text
    m = re.search(r'ctr_model_loads_total\{model="ctr",result="failed"\} (\S+)', text)
    return float(m.group(1)) if m else 0.0


def test_hot_swap_under_load(tmp_path):
    repo = tmp_path / "repo"
    install_model(repo, "v1", seed=SEEDS["v1"], dense_dim=2)
    server = Server(repo, tmp_path / "server.log").wait()
    try:
        requests = _requests(load_package(repo / "ctr" / "v1"))
        expected: dict[str, list[np.ndarray]] = {}

        def remember(version: str) -> None:  # old versions get pruned (keep 3): compute now
            pkg = load_package(repo / "ctr" / version)
            expected[version] = [reference_scores(pkg, ctx, ads) for ctx, ads in requests]

        remember("v1")
        results: list[tuple[int, int, dict]] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def client(k: int) -> None:
            try:
                with httpx.Client(base_url=server.url, timeout=30) as c:
                    i = k
                    while not stop.is_set():
                        ctx, ads = requests[i % len(requests)]
                        r = c.post("/v1/models/ctr/score", json={"context": ctx, "ads": ads})
                        results.append((i % len(requests), r.status_code,
                                        r.json() if r.status_code == 200 else {"text": r.text}))
                        i += N_CLIENTS
            except BaseException as exc:  # report in the main thread
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(N_CLIENTS)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        for version in ("v2", "v3"):
            install_model(repo, version, seed=SEEDS[version], dense_dim=2)
            remember(version)
            server.wait_for_version("ctr", version)
            time.sleep(0.4)
        # a corrupt version never goes live, is counted, and is not retried in a loop
        install_corrupt(repo, "v4", seed=14, dense_dim=2)
        deadline = time.monotonic() + 30
        while _failed_loads(server) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # five more polls
        assert _failed_loads(server) == 1
        status = server.client.get("/v1/models/ctr").json()
        assert status["version"] == "v3"
        assert "md5 mismatch" in status["rejected"]["v4"]
        assert "md5 mismatch" in status["last_failure"]["reason"]
        # rollback goes back to the previous live version
        r = server.admin("POST", "/v1/models/ctr/rollback")
        assert r.status_code == 200, r.text
        assert r.json()["version"] == "v2" and r.json()["changed"] is True
        time.sleep(0.6)  # polls must not undo the rollback
        stop.set()
        for t in threads:
            t.join(30)
        assert not errors, errors

        assert server.client.get("/v1/models/ctr").json()["version"] == "v2"
        bad = [(s, body) for _, s, body in results if s != 200]
        assert not bad, bad[:3]
        seen = {body["version"] for _, _, body in results}
        assert seen == {"v1", "v2", "v3"}, seen
        assert len(results) > 100
        for i, _, body in results:
            np.testing.assert_allclose(body["scores"], expected[body["version"]][i], atol=2e-5, rtol=0)
    finally:
        server.stop()

    # a restart keeps the version that was live (the rollback stands)
    with Server(repo, tmp_path / "server2.log") as again:
        again.wait()
        assert again.client.get("/v1/models/ctr").json()["version"] == "v2"
        ctx, ads = requests[0]
        body = again.client.post("/v1/score", json={"context": ctx, "ads": ads}).json()
        assert body["version"] == "v2"
        np.testing.assert_allclose(body["scores"], expected["v2"][0], atol=2e-5, rtol=0)
        # a version installed later still goes live by itself
        install_model(repo, "v5", seed=15, dense_dim=2)
        again.wait_for_version("ctr", "v5")


@pytest.mark.parametrize("models_flag", [True, False])
def test_readiness_before_and_after_the_first_load(tmp_path, models_flag):
    repo = tmp_path / "repo"
    repo.mkdir()
    args = ["--no-demo"] + (["--models", "ctr"] if models_flag else [])
    with Server(repo, tmp_path / "server.log", args=args) as server:
        server.wait("/healthz")
        r = server.client.get("/readyz")
        assert r.status_code == 503
        assert ("'ctr'" if models_flag else "no models") in r.json()["error"]
        r = server.client.post("/v1/score", json={"ads": []})
        assert r.status_code in (503, 404) and r.json()["error"]
        if models_flag:
            r = server.client.post("/v1/models/ctr/score", json={"ads": []})
            assert r.status_code == 503 and "not loaded" in r.json()["error"]
            install_model(repo, "v1", seed=1)
            server.wait("/readyz", timeout=30)
            assert server.client.get("/readyz").json()["models"] == {"ctr": "v1"}
            r = server.client.post("/v1/models/ctr/score", json={"ads": [{"features": {}}]})
            assert r.status_code == 200 and r.json()["version"] == "v1"


def test_corrupt_first_version_keeps_the_service_unready(tmp_path):
    repo = tmp_path / "repo"
    install_corrupt(repo, "v1", seed=3)
    with Server(repo, tmp_path / "server.log") as server:
        server.wait("/healthz")
        deadline = time.monotonic() + 30
        while _failed_loads(server) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        r = server.client.get("/readyz")
        assert r.status_code == 503 and "md5 mismatch" in r.json()["error"]
        r = server.client.post("/v1/models/ctr/score", json={"ads": []})
        assert r.status_code == 503 and "md5 mismatch" in r.json()["error"]
        install_model(repo, "v2", seed=4)
        server.wait("/readyz", timeout=30)
        assert server.client.get("/v1/models/ctr").json()["version"] == "v2"
