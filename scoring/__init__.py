"""Online CTR scoring: a Numba MLP engine behind an HTTP service with hot-swapped models.

The public Python API (the HTTP service and the commands are documented in the README)::

    from scoring import load_package, Engine, ModelRepo

    package = load_package("model_repo/demo/seed0")      # validate, map the arrays read-only
    engine = Engine(package)                              # lay out, compile, warm
    engine.score({"user_id": "u42"}, [{"features": {"ad_id": "a1"}}])   # -> float32 pCTRs

Names are imported on first use, so ``import scoring`` (and the syncer, which needs no kernels)
stays light. The subpackages, in the order a model travels: :mod:`scoring.model` (the package
format), :mod:`scoring.sync` (remote -> repository), :mod:`scoring.lifecycle` (repository ->
registry), :mod:`scoring.engine` (request -> pCTR), :mod:`scoring.serving` (HTTP),
:mod:`scoring.upstream` (TF Serving, experiments). docs/architecture.md draws the data flow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "load_package": "scoring.model.package",
    "ModelPackage": "scoring.model.package",
    "PackageError": "scoring.model.manifest",
    "write_package": "scoring.model.writer",
    "export_numpy": "scoring.model.export",
    "export_torch": "scoring.model.export",
    "Group": "scoring.model.export",
    "write_demo": "scoring.model.demo",
    "reference_scores": "scoring.model.reference",
    "Engine": "scoring.engine.scorer",
    "ModelRepo": "scoring.lifecycle.repo",
}

__all__ = ["Engine", "Group", "ModelPackage", "ModelRepo", "PackageError", "export_numpy",
           "export_torch", "load_package", "reference_scores", "write_demo", "write_package"]

if TYPE_CHECKING:  # pragma: no cover
    from .engine.scorer import Engine
    from .lifecycle.repo import ModelRepo
    from .model.demo import write_demo
    from .model.export import Group, export_numpy, export_torch
    from .model.manifest import PackageError
    from .model.package import ModelPackage, load_package
    from .model.reference import reference_scores
    from .model.writer import write_package


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'scoring' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
