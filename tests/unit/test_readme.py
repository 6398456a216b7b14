"""The README's Python example runs as written (in a scratch directory)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_python_example_runs(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## From Python"):readme.index("## What is here")]
    code = "\n".join(line[4:] for line in section.splitlines() if line.startswith("    "))
    assert "from scoring import load_package, Engine, ModelRepo" in code
    code = code.replace('"/tmp/pkg"', repr(str(tmp_path / "pkg")))
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    pctr = float(re.match(r"\[([0-9.e-]+)\]", r.stdout).group(1))
    assert 0.0 < pctr < 1.0
