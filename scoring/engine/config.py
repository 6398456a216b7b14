"""Compiler flags for the kernels, in one place.

``fastmath`` lets LLVM reassociate float sums so the dot-product loops vectorise; the engine is
tested against a float64 NumPy reference, so the reordering is checked, not assumed. It is the
set of LLVM fast-math flags *without* ``nnan`` and ``ninf``: a request's dense values reach the
kernels, and with those two flags LLVM may assume no NaN or infinity ever appears, which makes
an overflow undefined instead of a NaN the engine can see and refuse (``Engine.score_encoded``).
Every kernel is compiled with ``_nrt=False``: without Numba's runtime, no reference counts. With
it, each array argument of a compiled call and each array bound by an inlined helper costs an
atomic increment and decrement; in the body scanner that was 80% of its time (300 us of a 45 KB
body). The kernels allocate nothing, take tables as addresses (``simd.f32_at``) rather than a
list of arrays, and return indices rather than arrays, so they need no runtime.
``cache`` keeps compiled kernels on disk (``NUMBA_CACHE_DIR`` to move them) so a restart does
not recompile.
"""

from . import codegen

CACHE = True
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

CODEGEN = codegen.apply()  # before any kernel compiles: see ``codegen``
