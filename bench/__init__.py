"""Benchmark scripts: ``python -m bench.<name> [--quick]``. Never part of the test suite."""
