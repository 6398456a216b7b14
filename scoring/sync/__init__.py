"""Keeps a local model repository in step with a remote model path (WebHDFS, HttpFS, HTTP, file).

``sources/`` (one module per remote kind), ``throttle`` (the token bucket), ``fetch`` (hosts,
resume, md5 while streaming), ``syncer`` (one cycle, retries, install), ``alarms``, ``metrics``,
``background`` (the syncer in a thread of ``ctr-serve``), ``cli`` (``ctr-sync``, also
``python -m model_sync``). Uses :mod:`scoring.model` (validation) and the repository of
:mod:`scoring.lifecycle` only, never the engine or the serving side.
"""

from .background import (
           SyncHandle,
           config_from_env,
           start_background_sync,
           sync_service_from_env,
)
from .syncer import SyncConfig, Syncer, SyncResult

__all__ = ["SyncConfig", "SyncHandle", "SyncResult", "Syncer", "config_from_env", "start_background_sync",
           "sync_service_from_env"]
