"""The app built by create_app with a fake scorer (no server): auth when no token is set, the
generic 500, settings from the environment and the command line."""

from __future__ import annotations

import os
import time
import warnings

import numpy as np
import pytest

with warnings.catch_warnings():  # starlette's TestClient says it prefers httpx2; httpx works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from scoring.lifecycle.loader import LiveModel
from scoring.lifecycle.registry import Registry
from scoring.lifecycle.repo import ModelRepo
from scoring.serving.app import create_app
from scoring.serving.cli import build_parser, settings_from_args
from scoring.serving.settings import Settings


class Scorer:
    def score(self, context, ads):
        if context and context.get("boom"):
            raise RuntimeError("secret internal detail")
        return np.full(len(ads), 0.25, dtype=np.float32)


@pytest.fixture
def client(tmp_path, monkeypatch):
    monkeypatch.delenv("CTR_ADMIN_TOKEN", raising=False)
    registry = Registry(ModelRepo(tmp_path / "empty"))
    registry.add(LiveModel(name="m", version="1", scorer=Scorer(), kind="fake"))
    app = create_app(Settings(), registry)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_scores_through_the_app(client):
    r = client.post("/v1/score", json={"ads": [{}, {}], "request_id": "x"})
    assert r.json() == {"model": "m", "version": "1", "scores": [0.25, 0.25], "request_id": "x"}
    # ready once the registry's worker (idle priority: slow on a loaded machine) read the repo
    deadline = time.monotonic() + 30
    while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.get("/readyz").status_code == 200
    assert client.get("/v1/models").json()["models"][0]["kind"] == "fake"


def test_admin_is_forbidden_with_a_how_to_when_no_token_is_set(client):
    for action in ("reload", "rollback"):
        r = client.post(f"/v1/models/m/{action}", headers={"Authorization": "Bearer anything"})
        assert r.status_code == 403
        assert "CTR_ADMIN_TOKEN" in r.json()["error"]


def test_unexpected_errors_are_a_generic_500(client, caplog):
    r = client.post("/v1/score", json={"context": {"boom": "1"}, "ads": [{}]})
    assert r.status_code == 500
    assert r.json() == {"error": "internal error; the service logged the details"}
    assert "secret" not in r.text
    assert "secret internal detail" in caplog.text
    metrics = client.get("/metrics").text
    assert 'ctr_requests_total{model="m",status="500",version="1"} 1.0' in metrics


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("CTR_MAX_ADS", "7")
    monkeypatch.setenv("CTR_MODELS", '["a", "b"]')
    monkeypatch.setenv("CTR_ADMIN_TOKEN", "s3cret")
    s = Settings()
    assert s.max_ads == 7 and s.models == ["a", "b"] and s.admin_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)
    monkeypatch.setenv("CTR_PORT", "70000")
    with pytest.raises(ValueError):
        Settings()


def test_flags_override_the_environment_and_reach_worker_processes(monkeypatch, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTR_")}
    monkeypatch.setattr(os, "environ", {**env, "CTR_PORT": "9000", "CTR_HOST": "0.0.0.0"})
    s = settings_from_args(["--model-repo", str(tmp_path), "--port", "9100", "--workers", "2",
                            "--models", "a,b", "--log-format", "json", "--no-demo"])
    assert (s.model_repo, s.port, s.workers, s.models, s.log_format, s.demo_on_empty, s.host) == \
        (tmp_path, 9100, 2, ["a", "b"], "json", False, "0.0.0.0")
    # written back for the worker processes, which build their settings from the environment
    assert os.environ["CTR_PORT"] == "9100" and os.environ["CTR_MODELS"] == '["a", "b"]'
    assert Settings() == s


def test_every_flag_is_a_setting():
    parser = build_parser()
    for action in parser._actions:
        if action.dest != "help":
            assert action.dest in Settings.model_fields, action.dest


def test_json_log_lines(capsys):
    import json
    import logging

    from scoring.serving.logs import configure_logging

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("json", "info")
        logging.getLogger("scoring.test").info("model %r: loaded", "ctr", extra={"version": "v2"})
        line = capsys.readouterr().err.strip().splitlines()[-1]
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    rec = json.loads(line)
    assert rec["msg"] == "model 'ctr': loaded" and rec["level"] == "info"
    assert rec["logger"] == "scoring.test" and rec["version"] == "v2" and rec["ts"].endswith("Z")
