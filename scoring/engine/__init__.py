"""Request -> pCTR: hashing, the JSON scanner, the feature layout, the compiled kernels.

``xxh64`` and ``jsonscan`` (raw body bytes -> hashed ids, compiled), ``features`` (decoded request
-> hashed ids, naming any bad field), ``kernels`` and ``simd`` (gather + pooling, dense layers),
``config`` (compiler flags), ``scorer`` (:class:`Engine`: a loaded model, weights laid out once,
scratch pooled, warm-up). Uses :mod:`scoring.model` and :mod:`scoring.errors`; the kernels import
nothing of ours.
"""

from .scorer import Engine

__all__ = ["Engine"]
