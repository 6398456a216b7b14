"""Request -> pCTR: hashing, the JSON scanner, the feature layout, the compiled kernels.

``xxh64`` and ``jsonscan`` (raw body bytes -> hashed ids, compiled), ``features`` (decoded request
-> hashed ids, naming any bad field), ``kernels`` and ``simd`` (gather + pooling, dense layers),
``config`` (compiler flags), ``scorer`` (:class:`Engine`: a loaded MLP model, weights laid out
once, scratch pooled, warm-up), ``graph`` + ``graph_kernels`` (:class:`GraphEngine`: a format 2
model graph compiled into one plan). Uses :mod:`scoring.model` and :mod:`scoring.errors`; the
kernels import nothing of ours.

``kernel_cache`` (compiled kernels shipped with the image) must be importable before Numba is:
nothing here imports the kernels until a name is used.
"""

from typing import Any


def make_engine(package: Any, **kw: Any) -> Any:
    """The engine a package needs: the MLP engine, or the graph engine for a model graph."""
    if getattr(package.manifest, "graph", None) is not None:
        from .graph import GraphEngine
        return GraphEngine(package, **kw)
    from .scorer import Engine
    return Engine(package, **kw)


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from .scorer import Engine
        return Engine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Engine", "make_engine"]
