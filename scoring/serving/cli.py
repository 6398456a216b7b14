"""``ctr-serve``: flags -> settings -> uvicorn, which builds the app in every worker.

Flags override the matching ``CTR_*`` environment variables. The flags are written back into the
environment before uvicorn starts, so with ``--workers N`` every worker process builds the same
settings in :func:`scoring.serving.wiring.app_factory`. Workers map the same package files, so the
tables are in memory once (the page cache) however many workers there are.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from .settings import Settings

log = logging.getLogger(__name__)

# flag -> (settings field, argparse options)
FLAGS: dict[str, tuple[str, dict]] = {
    "--model-repo": ("model_repo", {"metavar": "DIR"}),
    "--host": ("host", {}),
    "--port": ("port", {"type": int}),
    "--admin-port": ("admin_port", {"type": int}),
    "--workers": ("workers", {"type": int, "metavar": "N"}),
    "--models": ("models", {"metavar": "A,B", "type": lambda s: [m for m in s.split(",") if m]}),
    "--default-model": ("default_model", {"metavar": "NAME"}),
    "--models-config": ("models_config", {"metavar": "FILE"}),
    "--max-ads": ("max_ads", {"type": int}),
    "--max-body-bytes": ("max_body_bytes", {"type": int}),
    "--max-values-per-group": ("max_values_per_group", {"type": int}),
    "--poll-interval": ("poll_interval", {"type": float, "metavar": "SECONDS"}),
    "--keep-versions": ("keep_versions", {"type": int, "metavar": "N"}),
    "--log-format": ("log_format", {"choices": ["plain", "json"]}),
    "--log-level": ("log_level", {"choices": ["debug", "info", "warning", "error"]}),
    "--metrics-dir": ("metrics_dir", {"metavar": "DIR"}),
    "--drain-file": ("drain_file", {"metavar": "FILE"}),
    "--kernel-cache": ("kernel_cache", {"metavar": "DIR"}),
}
# flag -> (settings field, value it sets, help; None: the field's description)
SWITCHES = {
    "--access-log": ("access_log", True, None),
    "--no-demo": ("demo_on_empty", False, "Leave an empty repository empty (by default the "
                  "built-in demo model is written into it), e.g. when a model syncer fills it."),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctr-serve", description="Serve CTR models from a local repository over HTTP.",
        epilog="Every flag has an environment variable CTR_<FLAG> (e.g. CTR_MODEL_REPO). "
               "Admin endpoints need CTR_ADMIN_TOKEN or CTR_ADMIN_TOKEN_FILE (environment only).")
    for flag, (field, opts) in FLAGS.items():
        doc = Settings.model_fields[field].description or ""
        default = Settings.model_fields[field].default
        parser.add_argument(flag, dest=field, default=None, help=f"{doc} [{default}]", **opts)
    for flag, (field, value, doc) in SWITCHES.items():
        parser.add_argument(flag, dest=field, action="store_const", const=value, default=None,
                            help=doc or Settings.model_fields[field].description)
    return parser


def settings_from_args(argv: Sequence[str] | None = None) -> Settings:
    """Parse flags, export them as ``CTR_*`` variables (for worker processes) and build settings."""
    args = build_parser().parse_args(argv)
    for field, value in vars(args).items():
        if value is None:
            continue
        env = f"CTR_{field.upper()}"
        os.environ[env] = json.dumps(value) if isinstance(value, list) else str(value)
    return Settings()


def ensure_demo(settings: Settings) -> None:
    """On an empty repository, write the built-in demo model so a bare ``ctr-serve`` serves."""
    from ..lifecycle.repo import ModelRepo
    from ..model.demo import DEMO_NAME, write_demo

    repo = ModelRepo(settings.model_repo)
    if not settings.demo_on_empty or repo.models():
        return
    t0 = time.perf_counter()
    staged = repo.staging_dir(DEMO_NAME)
    try:
        write_demo(staged, version="seed0")
        repo.install(DEMO_NAME, staged, "seed0")
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    log.info("empty repository %s: wrote the built-in demo model %r in %.1fs", settings.model_repo,
             DEMO_NAME, time.perf_counter() - t0)


def _prepare_metrics_dir(settings: Settings) -> Path | None:
    """Multi-process Prometheus: every worker writes its values to files in one fresh directory;
    it must be in the environment before any worker imports prometheus_client. Returns the
    directory when it is a temporary one of ours (removed at exit)."""
    temporary = None if settings.metrics_dir else Path(tempfile.mkdtemp(prefix="ctr-metrics-"))
    path = Path(settings.metrics_dir or temporary)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    ready = path / "ready"  # the workers mark themselves ready here (scoring.serving.readiness)
    shutil.rmtree(ready, ignore_errors=True)
    os.environ["CTR_READY_DIR"] = str(ready)
    os.environ["CTR_WORKERS"] = str(settings.workers)
    if not settings.health_dir:  # the workers merge their health windows here
        health = path / "health"
        shutil.rmtree(health, ignore_errors=True)  # windows of an earlier run are not this run's
        os.environ["CTR_HEALTH_DIR"] = str(health)
    return temporary


def serve_main(argv: Sequence[str] | None = None) -> int:
    from .logs import configure_logging

    try:
        settings = settings_from_args(argv)
    except ValueError as exc:  # pydantic's ValidationError names the variable
        print(f"ctr-serve: invalid settings: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level, settings.access_log)
    if settings.admin_token_file is not None and not settings.admin_token_file.is_file():
        print(f"ctr-serve: invalid settings: CTR_ADMIN_TOKEN_FILE {settings.admin_token_file}: "
              "no such file", file=sys.stderr)
        return 2
    if settings.admin_port is not None and settings.admin_port == settings.port:
        print(f"ctr-serve: invalid settings: --admin-port {settings.admin_port} must differ from "
              "--port", file=sys.stderr)
        return 2
    if settings.kernel_cache:  # before anything imports Numba: worker processes inherit it
        from ..engine.kernel_cache import select

        chosen = select(settings.kernel_cache)
        log.info("compiled kernels: %s%s", chosen.reason,
                 f" ({chosen.copied} files copied)" if chosen.copied else "")
    if settings.models_config:
        from ..upstream.config import ConfigError, load_models_config

        try:  # fail here with the field named, not in every worker
            load_models_config(settings.models_config)
        except ConfigError as exc:
            print(f"ctr-serve: invalid models config: {exc}", file=sys.stderr)
            return 2
    if os.environ.get("CTR_SYNC_SOURCE"):
        from ..sync import config_from_env

        try:  # in-process model sync (CTR_SYNC_*): fail here with the variable named
            config_from_env(settings.model_repo)
        except ValueError as exc:
            print(f"ctr-serve: invalid settings: {exc}", file=sys.stderr)
            return 2
    else:  # with a sync source the repository fills itself: no demo model
        ensure_demo(settings)
    temporary = _prepare_metrics_dir(settings) if settings.workers > 1 else None
    log.info("serving %s on http://%s:%d with %d worker(s)%s", settings.model_repo, settings.host,
             settings.port, settings.workers,
             f", admin endpoints on port {settings.admin_port}" if settings.admin_port else "")
    try:
        return run_uvicorn(settings)
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)


def run_uvicorn(settings: Settings) -> int:
    """uvicorn over the app factory; with ``--admin-port`` the parent binds both ports and every
    worker serves both sockets (the app tells them apart by the connection's local port)."""
    import uvicorn

    config = uvicorn.Config("scoring.serving.wiring:app_factory", factory=True, host=settings.host,
                            port=settings.port, workers=settings.workers, log_config=None,
                            access_log=settings.access_log, server_header=False,
                            timeout_graceful_shutdown=10)
    if settings.admin_port is None:
        uvicorn.run("scoring.serving.wiring:app_factory", factory=True, host=settings.host,
                    port=settings.port, workers=settings.workers, log_config=None,
                    access_log=settings.access_log, server_header=False,
                    timeout_graceful_shutdown=10)
        return 0
    from uvicorn.supervisors import Multiprocess

    sockets = [config.bind_socket(), uvicorn.Config(config.app, host=settings.host,
                                                    port=settings.admin_port).bind_socket()]
    if settings.workers > 1:
        Multiprocess(config, sockets=sockets).run()
    else:
        server = uvicorn.Server(config)
        server.run(sockets=sockets)
        if not server.started:
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(serve_main())
