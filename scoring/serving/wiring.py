"""The composition root of one worker process: repository -> registry -> app, plus what the
settings ask for beside them (TF Serving models and experiments, the in-process model syncer).

``ctr-serve`` (:mod:`scoring.serving.cli`) parses flags into ``CTR_*`` variables and starts
uvicorn, which calls :func:`app_factory` in every worker process; tests call :func:`build_app`.
This is the one module that puts the serving side and the syncer (:mod:`scoring.sync`) together.
"""

from __future__ import annotations

import logging
import os

from ..lifecycle.registry import Registry
from ..lifecycle.repo import ModelRepo
from .app import create_app
from .logs import configure_logging
from .metrics import LATENCY_BUCKETS, Metrics
from .settings import Settings

log = logging.getLogger(__name__)


def build_app(settings: Settings):
    """The app of one worker process: repository -> registry -> API."""
    from ..upstream.config import load_models_config
    from ..upstream.setup import setup_models

    metrics = Metrics()
    config = load_models_config(settings.models_config) if settings.models_config else None
    models = [m.name for m in config.native] if config else (settings.models or None)
    default = (config.default if config else None) or settings.default_model
    registry = Registry(ModelRepo(settings.model_repo), models=models, default_model=default,
                        keep=settings.keep_versions, poll_interval=settings.poll_interval,
                        metrics=metrics)
    board = None  # with several workers /readyz waits for every one (scoring.serving.readiness)
    if settings.ready_dir is not None and settings.workers > 1:
        from .readiness import ReadyBoard

        board = ReadyBoard(settings.ready_dir, settings.workers)
        registry.pollers.append(board.poller(lambda: registry.ready()[0]))
    monitor = health_monitor(settings, registry, metrics)
    sync = in_process_sync(settings, registry, metrics)
    if config is None:
        return create_app(settings, registry, metrics=metrics, services=[monitor, *sync],
                          monitor=monitor, ready_board=board)
    from ..upstream.watch import ConfigWatcher

    setup = setup_models(config, registry, metrics.registry, LATENCY_BUCKETS)  # TF Serving models, experiments
    watcher = ConfigWatcher(settings.models_config, config, setup.default_route, setup.metrics,
                            interval=settings.poll_interval)
    return create_app(settings, registry, metrics=metrics,
                      services=[monitor, *sync, *setup.services, watcher],
                      default_route=setup.default_route, monitor=monitor, ready_board=board)


def health_monitor(settings: Settings, registry: Registry, metrics: Metrics):
    """Model health (:mod:`scoring.monitor`): the sampler and its windows, and the guarded swap
    the registry asks before a version goes live."""
    from ..monitor import GateConfig, HealthMonitor, Webhook, WindowStore
    from ..monitor.gate import SwapGate
    from ..monitor.metrics import HealthMetrics

    directory = settings.health_dir or (settings.metrics_dir / "health" if settings.metrics_dir else None)
    webhook = Webhook(settings.alarm_webhook or os.environ.get("CTR_SYNC_ALARM_WEBHOOK") or None)
    hm = HealthMetrics(metrics.registry)
    monitor = HealthMonitor(WindowStore(settings.health_window, directory),
                            rate=settings.health_sample_rate, queue=settings.health_queue,
                            webhook=webhook, metrics=hm)
    raw = dict(settings.gate or {})
    per_model_raw = raw.pop("models", None) or {}
    if not isinstance(per_model_raw, dict):
        raise ValueError("CTR_GATE.models: expected an object of model name -> limits")
    default = GateConfig.from_mapping(raw)
    per_model = {}
    for name, cfg in per_model_raw.items():
        if not isinstance(cfg, dict):
            raise ValueError(f"CTR_GATE.models.{name}: expected an object of limits")
        per_model[name] = GateConfig.from_mapping({**raw, **cfg}, f"CTR_GATE.models.{name}")
    registry.gate = SwapGate(monitor, default, per_model, metrics=hm, webhook=webhook)
    return monitor


def in_process_sync(settings: Settings, registry, metrics) -> list:
    """With ``CTR_SYNC_SOURCE`` set, a model syncer (:mod:`scoring.sync`) runs in this process: started
    and stopped with the app, asked first by the reload endpoint, and the registry looks at the
    repository as soon as it installs a version. With ``--workers N`` every worker has one, and
    only the host's sync leader (a file lock) polls and downloads; the others follow the
    repository (:mod:`scoring.sync.background`)."""
    if not os.environ.get("CTR_SYNC_SOURCE"):
        return []
    from ..sync import metrics as sync_metrics
    from ..sync import sync_service_from_env

    def installed(name: str, version: str) -> None:
        registry.poke(name)  # the registry's worker loads it, at idle priority

    handle = sync_service_from_env(settings.model_repo, on_installed=installed)
    sync_metrics.register(metrics.registry)
    return [handle] if handle is not None else []


def app_factory():
    """What uvicorn calls in each worker (``scoring.serving.wiring:app_factory``, factory mode)."""
    settings = Settings()
    configure_logging(settings.log_format, settings.log_level, settings.access_log)
    from ..engine.config import CODEGEN
    log.info("kernels compile for %s", CODEGEN.describe())
    return build_app(settings)
