"""The subpackages import one way (docs/architecture.md): each may import those listed before it,
never those after; the kernels import nothing of ours; only the wiring puts the syncer in."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ORDER = ["model", "engine", "lifecycle", "monitor", "sync", "upstream", "serving", "insight"]
EVERYONE = {"errors", "__version__"}  # scoring/errors.py (errors with their HTTP status), the version
KERNELS = {"engine/kernels.py", "engine/simd.py", "engine/xxh64.py", "engine/jsonscan.py",
           "engine/config.py"}


def _imports(path: Path) -> set[str]:
    """The ``scoring`` subpackages (first component under scoring) a module imports."""
    rel = path.relative_to(ROOT / "scoring")
    package = list(rel.parent.parts)
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                parts = base + (node.module.split(".") if node.module else [])
                if not parts:  # "from .. import x" at the top: x names a subpackage or module
                    parts = [a.name for a in node.names]
                    out.update(parts)
                    continue
                out.add(parts[0])
            elif node.module and node.module.split(".")[0] == "scoring":
                parts = node.module.split(".")
                out.add(parts[1] if len(parts) > 1 else "")
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "scoring":
                    out.add(parts[1] if len(parts) > 1 else "")
    return out


def test_subpackages_import_only_what_comes_before_them():
    problems = []
    for sub in ORDER:
        allowed = set(ORDER[:ORDER.index(sub) + 1]) | EVERYONE
        for path in sorted((ROOT / "scoring" / sub).rglob("*.py")):
            bad = _imports(path) - allowed - {""}
            if bad:
                problems.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not problems, problems


def test_kernels_import_nothing_of_ours_but_their_flags():
    for rel in sorted(KERNELS):
        imports = _imports(ROOT / "scoring" / rel)
        assert imports <= {"engine"}, (rel, imports)  # engine.config / simd / xxh64 only


def test_only_the_wiring_and_the_cli_know_the_syncer():
    users = sorted(str(p.relative_to(ROOT)) for sub in ("serving", "upstream", "lifecycle", "engine", "model")
                   for p in (ROOT / "scoring" / sub).rglob("*.py") if "sync" in _imports(p))
    assert users == ["scoring/serving/cli.py", "scoring/serving/wiring.py"], users


def test_model_sync_is_only_the_old_entry_point():
    files = sorted(p.name for p in (ROOT / "model_sync").glob("*.py"))
    assert files == ["__init__.py", "__main__.py"]
    for path in (ROOT / "scoring").rglob("*.py"):
        assert "model_sync" not in _imports(path) and "import model_sync" not in path.read_text(), path
