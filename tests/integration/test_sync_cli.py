"""``ctr-sync`` as a process: exit codes and messages, a crash mid-download, the /metrics port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from scoring.lifecycle.repo import ModelRepo
from scoring.model.package import load_package

from ..integration.server import free_port

ROOT = Path(__file__).resolve().parents[2]


def ctr_sync(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "model_sync", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def start_ctr_sync(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "model_sync", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)


def test_once_exit_codes_and_messages(cluster, tmp_path):
    cluster.publish("v1", seed=1)
    (gw,) = cluster.httpfs(1)
    base = ["--source", cluster.url("httpfs", [gw]), "--repo", str(tmp_path / "repo"), "--model", "ctr",
            "--once", "--retries", "0"]
    first = ctr_sync(*base)
    assert first.returncode == 0, first.stderr
    assert "installed version 'v1'" in first.stdout
    second = ctr_sync(*base)
    assert second.returncode == 0 and "version 'v1' is current" in second.stdout

    gw.faults.corrupt.add("manifest.json")
    cluster.publish("v2", seed=2)
    failed = ctr_sync(*base)
    assert failed.returncode == 1
    assert "sync from httpfs://" in failed.stderr and "manifest.json: md5 mismatch" in failed.stderr
    assert ModelRepo(tmp_path / "repo").versions("ctr") == ["v1"]


def test_bad_flags_are_named(tmp_path):
    repo = ["--repo", str(tmp_path / "repo"), "--model", "ctr", "--once"]
    cases = {
        ("--source", "ftp://h/models/ctr"): "unsupported scheme 'ftp'",
        ("--source", "httpfs://h1:99999/models/ctr"): "port 99999 is out of range",
        ("--source", "webhdfs://nn1:9870"): "needs the absolute path",
        ("--source", "file://relative/path"): "three slashes",
        ("--source", "file:///x", "--rate-limit", "fast"): "--rate-limit: rate limit 'fast'",
        ("--source", "file:///x", "--keep", "0"): "--keep: must be > 0",
        ("--source", "file:///x", "--alarm-webhook", "mailto:ops"): "--alarm-webhook 'mailto:ops'",
    }
    for args, message in cases.items():
        out = ctr_sync(*args, *repo)
        assert out.returncode == 2, (args, out.stderr)
        assert message in out.stderr, (args, out.stderr)
    (tmp_path / "afile").write_text("x")
    not_dir = ctr_sync("--source", "file:///x", "--repo", str(tmp_path / "afile"), "--model", "ctr", "--once")
    assert not_dir.returncode == 2 and "exists and is not a directory" in not_dir.stderr
    bad_model = ctr_sync("--source", "file:///x", "--repo", str(tmp_path), "--model", "../etc", "--once")
    assert bad_model.returncode == 2 and "model name" in bad_model.stderr
    assert not (tmp_path / "repo").exists()


def test_killed_mid_download_leaves_repo_valid_and_next_start_cleans_staging(cluster, tmp_path):
    cluster.publish("v1", seed=1)
    (gw,) = cluster.httpfs(1)
    repo_dir = tmp_path / "repo"
    base = ["--source", cluster.url("httpfs", [gw]), "--repo", str(repo_dir), "--model", "ctr", "--once"]
    assert ctr_sync(*base).returncode == 0
    cluster.publish("v2", seed=2, ctx=(("user_id", 40_000, 16, "sum"),))  # 2.5 MB
    proc = start_ctr_sync(*base, "--rate-limit", "1M")
    staging = repo_dir / ".staging"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        written = sum(f.stat().st_size for f in staging.rglob("*") if f.is_file()) if staging.exists() else 0
        if written > 300_000:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert written > 300_000, "the download never started"

    repo = ModelRepo(repo_dir)
    assert repo.versions("ctr") == ["v1"] and repo.wanted("ctr") == "v1"
    load_package(repo.path("ctr", "v1"))
    assert any(staging.iterdir())  # the leftover of the killed download

    again = ctr_sync(*base)
    assert again.returncode == 0, again.stderr
    assert repo.versions("ctr") == ["v1", "v2"]
    load_package(repo.path("ctr", "v2"))
    assert not any(staging.iterdir())


def test_daemon_serves_metrics_and_stops_on_sigterm(cluster, tmp_path):
    cluster.publish("v1", seed=1)
    (gw,) = cluster.httpfs(1)
    port = free_port()
    proc = start_ctr_sync("--source", cluster.url("httpfs", [gw]), "--repo", str(tmp_path / "repo"),
                          "--model", "ctr", "--interval", "0.3", "--metrics-port", str(port))
    try:
        text = ""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                if 'ctr_sync_cycles_total{model="ctr",result="unchanged"}' in text:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        assert 'ctr_sync_cycles_total{model="ctr",result="installed"} 1.0' in text
        assert 'ctr_sync_consecutive_failures{model="ctr"} 0.0' in text
        assert "ctr_sync_last_success_timestamp_seconds" in text
        assert "ctr_sync_downloaded_bytes_total" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "installed version 'v1'" in err
    assert os.path.isdir(tmp_path / "repo" / "ctr" / "v1")


def test_once_fails_for_a_version_the_service_rejected_and_can_wait_for_the_service(tmp_path):
    """cron runs ``ctr-sync --once``: it must not report success for a version the service
    refused, and ``--wait-live`` waits for the service's verdict."""
    from tests.models import make_model

    from .server import Server

    remote = make_model(tmp_path / "remote" / "ctr", seed=1, version="v1")
    repo = tmp_path / "repo"
    base = ["--source", f"file://{remote}", "--repo", str(repo), "--model", "ctr", "--once",
            "--retries", "0"]
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    alone = ctr_sync(*base, "--wait-live", "2")  # installed, but no service is running
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert alone.returncode == 1 and "installed version 'v1'" in alone.stderr
    waited_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    assert waited_cpu < 1.9, waited_cpu  # it polls the state, it does not spin for those 2 s
    assert "is not live after 2s" in alone.stderr and "is ctr-serve running" in alone.stderr
    with Server(repo, tmp_path / "server.log") as server:
        server.wait()
        live = ctr_sync(*base, "--wait-live", "30")
        assert live.returncode == 0 and "version 'v1' is live" in live.stdout, live.stderr
    # the service refuses the version (as it would an export its engine cannot take)
    r = ModelRepo(repo)
    r.reject("ctr", "v1", "layers[0]: something the service refused", r.fingerprint("ctr", "v1"),
             content=True)
    refused = ctr_sync(*base)
    assert refused.returncode == 1
    assert "installed but the service rejected it: layers[0]: something the service refused" in refused.stderr
