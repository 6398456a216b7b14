"""A real ``ctr-serve`` (``python -m scoring``) in a subprocess on a free port, for tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import httpx

from scoring.lifecycle.repo import ModelRepo

from ..models import make_model

ADMIN_TOKEN = "test-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, what: str, timeout: float = 30.0, log=None):
    """Poll ``predicate`` every 50 ms until it returns something true (returned); fail naming
    ``what`` (and the server's log, when given) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"never: {what} (last: {value!r})" + (f"\n{log()}" if log else ""))


class Server:
    """One service process; ``client`` talks to it over HTTP with keep-alive."""

    def __init__(self, repo: Path, log_path: Path, args: Sequence[str] = (),
                 env: dict[str, str] | None = None, prefix: Sequence[str] = ()) -> None:
        """``prefix``: a command the server runs under (e.g. one that mounts the repository
        read-only first)."""
        self.repo = Path(repo)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        # The versions these tests deploy are unrelated random models, which the guarded swap
        # rightly holds back; it is off here unless a test turns it on (test_model_health.py).
        full_env = {**os.environ, "CTR_ADMIN_TOKEN": ADMIN_TOKEN, "CTR_POLL_INTERVAL": "0.2",
                    "NUMBA_NUM_THREADS": "1", "CTR_GATE": '{"enabled": false}', **(env or {})}
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "scoring", "--model-repo", str(repo), "--port",
             str(self.port), *args], env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def wait(self, path: str = "/readyz", timeout: float = 90.0) -> "Server":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.log()
                self.stop()
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{log}")
            try:
                if self.client.get(path, timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        log = self.log()
        self.stop()
        raise AssertionError(f"server not answering 200 on {path} after {timeout}s:\n{log}")

    def wait_for_version(self, name: str, version: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        body: Any = None
        while time.monotonic() < deadline:
            r = self.client.get(f"/v1/models/{name}")
            body = r.json()
            if r.status_code == 200 and body.get("version") == version:
                return
            time.sleep(0.05)
        raise AssertionError(f"{name} never went to {version}: {body}\n{self.log()}")

    def admin(self, method: str, path: str) -> httpx.Response:
        return self.client.request(method, path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def install_model(repo: Path, version: str, *, seed: int, name: str = "ctr", **kw: Any) -> Path:
    """Build a small model in the repository's staging area and move it into place."""
    r = ModelRepo(repo)
    staged = r.staging_dir(name)
    try:
        make_model(staged, seed=seed, name=name, version=version, **kw)
        return r.install(name, staged, version)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def install_corrupt(repo: Path, version: str, *, seed: int, name: str = "ctr", **kw: Any) -> Path:
    """A version whose table bytes no longer match checksums.md5."""
    r = ModelRepo(repo)
    staged = r.staging_dir(name)
    make_model(staged, seed=seed, name=name, version=version, **kw)
    table = sorted((staged / "emb").glob("*.npy"))[0] if (staged / "emb").is_dir() \
        else sorted(staged.rglob("*.npy"))[0]
    data = bytearray(table.read_bytes())
    data[-1] ^= 0xFF
    table.write_bytes(bytes(data))
    return r.install(name, staged, version)
