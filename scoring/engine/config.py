"""Compiler flags for the kernels, in one place.

``fastmath`` lets LLVM reassociate float sums so the dot-product loops vectorise; the engine is
tested against a float64 NumPy reference, so the reordering is checked, not assumed. ``cache``
keeps compiled kernels on disk (``NUMBA_CACHE_DIR`` to move them) so a restart does not recompile.
"""

CACHE = True
FASTMATH = True
