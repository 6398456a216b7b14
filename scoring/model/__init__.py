"""The model package (contract section 2): what training exports, the syncer copies and the
engine loads.

``manifest`` (fields and their checks), ``checksums`` (md5 of every file), ``package`` (read and
validate, arrays mapped read-only), ``writer``, ``export`` (from NumPy / PyTorch), ``demo`` (the
built-in model), ``reference`` (the contract in plain float64 NumPy, for tests and benchmarks:
it shares no code with the engine), ``cli`` (``ctr-model``).

Imports nothing else of ``scoring``: NumPy only (PyTorch for ``export_torch``, optional).
"""
