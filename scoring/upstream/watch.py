"""The models config file, watched: a changed file is validated and its experiments put in force
atomically, without a restart.

Every ``interval`` seconds the file's bytes are read (a Kubernetes ConfigMap volume swaps a
symlink, an operator's editor renames a temporary file: either way the content changes). A
change is parsed and validated completely; an invalid file is logged with the field named and
the experiments in force stay. What a reload applies: ``layers``, ``exclusive``, ``launch``,
``experiments``, ``default`` and ``version``. A change to ``models`` (a model added, removed or
reconfigured) needs a restart: it is refused and logged, and counted as ``needs_restart``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

from .config import ConfigError, ModelsConfig, load_models_config
from .experiments import LayeredRoute
from .metrics import LegMetrics

log = logging.getLogger(__name__)


class ConfigWatcher:
    def __init__(self, path: str | Path, config: ModelsConfig, route: LayeredRoute | None,
                 metrics: LegMetrics, interval: float = 2.0) -> None:
        self.path, self.config, self.route = Path(path), config, route
        self.metrics, self.interval = metrics, interval
        self._digest = self._read_digest()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    def _read_digest(self) -> str | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return None

    def check(self) -> str | None:
        """Look once; returns the outcome when the file changed (applied, invalid, needs_restart)."""
        digest = self._read_digest()
        if digest is None or digest == self._digest:
            return None
        self._digest = digest
        outcome = self._apply()
        self.metrics.config_reloads.labels(outcome).inc()
        return outcome

    def _apply(self) -> str:
        try:
            new = load_models_config(self.path)
        except Exception as exc:  # ConfigError names the field; anything else is invalid too
            self.last_error = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
            log.error("models config %s changed but is invalid; the experiments in force stay: %s",
                      self.path, self.last_error)
            return "invalid"
        old = self.config
        if new.models != old.models or (new.layered is None) != (old.layered is None) or \
                self.route is None:
            self.last_error = ("the models (or whether there are experiments at all) changed: "
                               "restart ctr-serve to apply")
            log.error("models config %s: %s; the config in force stays (version %s)", self.path,
                      self.last_error, old.layered.version if old.layered else None)
            return "needs_restart"
        self.route.set(new.layered, new.source)
        self.config, self.last_error = new, None
        log.info("models config %s: experiments of version %s in force (was %s)", self.path,
                 new.layered.version, old.layered.version)
        return "applied"

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="models-config", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # a watcher must survive anything
                log.exception("models config watcher failed")
