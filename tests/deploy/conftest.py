"""Fixtures of the deploy/ tests: the tools (kubectl, checkov; a test fails, never skips, when
one is missing) and every kustomization rendered once per session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .k8s import TARGETS


def tool(name: str, env: str, install: str) -> str:
    """``$env`` if set, else ``name`` on PATH; fail the test (not skip) when neither is there."""
    path = os.environ.get(env) or shutil.which(name)
    if not path or not Path(path).exists():
        pytest.fail(f"{name} not found (set {env} or put it on PATH): {install}", pytrace=False)
    return path


@pytest.fixture(scope="session")
def kubectl() -> str:
    return tool("kubectl", "KUBECTL", "apt-get install kubectl (.ci/run does this)")


@pytest.fixture(scope="session")
def checkov() -> str:
    """``$CHECKOV``, else ``checkov`` on PATH, else a virtualenv of its own built once under
    ~/.cache/ctr-scoring/ (checkov pins packaging<24: it must not share the test environment)."""
    path = os.environ.get("CHECKOV") or shutil.which("checkov")
    if path and Path(path).exists():
        return path
    venv = Path.home() / ".cache" / "ctr-scoring" / "checkov-venv"
    binary = venv / "bin" / "checkov"
    if not binary.exists():
        r = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
        if r.returncode == 0:
            r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "checkov"],
                               capture_output=True, text=True, timeout=900)
        if r.returncode != 0 or not binary.exists():
            pytest.fail(f"checkov not found and its virtualenv could not be built in {venv}: "
                        f"{r.stderr[-2000:]}", pytrace=False)
    return str(binary)


def kustomize(kubectl: str, path: Path) -> str:
    r = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"kubectl kustomize {path} failed:\n{r.stderr}"
    return r.stdout


@pytest.fixture(scope="session")
def rendered_text(kubectl) -> dict[str, str]:
    """``kubectl kustomize`` output per target (base and each overlay)."""
    return {target: kustomize(kubectl, path) for target, path in TARGETS.items()}


@pytest.fixture(scope="session")
def rendered(rendered_text) -> dict[str, list[dict]]:
    """The rendered objects per target."""
    return {target: [d for d in yaml.safe_load_all(text) if d is not None]
            for target, text in rendered_text.items()}
