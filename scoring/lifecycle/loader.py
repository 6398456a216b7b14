"""What a loaded model version is (:class:`LiveModel`), and how a native package becomes one.

:func:`load_native` validates a package (checksums, shapes, NaN/Inf), builds the engine, compiles
and warms its kernels and touches every page of its tables: seconds of work, never on the request
path. The registry calls it on its own thread and swaps the result in with one reference.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from ..model.manifest import PackageError

NATIVE = "native"


class Scorer(Protocol):
    def score(self, context: Mapping[str, Any] | None, ads: Sequence[Any]) -> np.ndarray: ...


@dataclass(frozen=True)
class LiveModel:
    """One servable model version: what a request holds while it is scored."""

    name: str
    version: str
    scorer: Scorer
    kind: str = NATIVE
    md5: str = ""
    loaded_at: float = field(default_factory=time.time)
    path: str | None = None
    nbytes: int = 0
    load_seconds: float = 0.0
    warm_seconds: float = 0.0

    def describe(self) -> dict[str, Any]:
        out = {"name": self.name, "version": self.version, "kind": self.kind, "state": "live",
               "md5": self.md5, "loaded_at": _iso(self.loaded_at), "path": self.path,
               "bytes": self.nbytes, "load_seconds": round(self.load_seconds, 3),
               "warm_seconds": round(self.warm_seconds, 3)}
        manifest = getattr(self.scorer, "manifest", None)
        if manifest is not None:  # what a request to this model carries (the explain form uses it)
            out["inputs"] = {"groups": [{"name": g.name, "side": g.side, "dim": g.dim,
                                         "pooling": g.pooling} for g in manifest.groups],
                             "dense_dim": manifest.dense_dim}
            if manifest.graph is not None:  # a model graph: its outputs, the primary first
                out["outputs"] = list(self.scorer.output_names)
                out["primary"] = manifest.graph.primary
                out["family"] = manifest.raw.get("family")
        return out


def load_native(name: str, version: str, path: str) -> LiveModel:
    """Validate, map, lay out and warm one package version (seconds; not on the request path).
    ``path`` is where the package is; the model shows ``<name>/<version>``, never a host path."""
    from ..engine import make_engine
    from ..model.package import load_package

    t0 = time.perf_counter()
    package = load_package(path)
    if package.manifest.name != name:
        raise PackageError(f"manifest.json: name {package.manifest.name!r} does not match the "
                           f"repository's model directory {name!r}")
    engine = make_engine(package, warm=True)
    return LiveModel(name=name, version=version, scorer=engine, kind=NATIVE, md5=package.md5,
                     path=f"{name}/{version}", nbytes=package.nbytes, load_seconds=time.perf_counter() - t0,
                     warm_seconds=engine.warm_seconds)


Loader = Callable[[str, str, str], LiveModel]


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
