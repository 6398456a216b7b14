"""``python -m model_sync``: the same as ``ctr-sync``. The syncer itself is :mod:`scoring.sync`."""
