"""Keeps a local model repository in step with a remote model path (WebHDFS, HttpFS, HTTP, file).

``ctr-sync`` (:mod:`model_sync.cli`) runs it as a command or sidecar; :func:`start_background_sync`
runs it in a thread of another program. It uses :mod:`scoring.package` and :mod:`scoring.repo`
only, never the serving side.
"""

from .background import SyncHandle, config_from_env, start_background_sync, sync_service_from_env
from .syncer import SyncConfig, Syncer, SyncResult

__all__ = ["SyncConfig", "SyncHandle", "SyncResult", "Syncer", "config_from_env", "start_background_sync",
           "sync_service_from_env"]
