"""Online CTR scoring: a Numba MLP engine behind a FastAPI service with hot-swapped models."""

__version__ = "0.1.0"
