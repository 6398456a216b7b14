"""Service settings: ``CTR_*`` environment variables, with matching ``ctr-serve`` flags.

Nothing is read at import time: :class:`Settings` reads the environment when it is built (in the
command-line entry point, or in tests after ``monkeypatch.setenv``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything ``ctr-serve`` can be told; each field is also ``CTR_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="CTR_", use_attribute_docstrings=True,
                                      extra="ignore", protected_namespaces=())

    model_repo: Path = Path("./model_repo")
    """The local model repository: ``<repo>/<name>/<version>/`` holds one package each."""

    host: str = "127.0.0.1"
    """Address to listen on; ``0.0.0.0`` to accept connections from other hosts."""

    port: int = Field(8080, ge=0, le=65535)
    """TCP port to listen on."""

    admin_port: int | None = Field(None, ge=1, le=65535)
    """A second TCP port for the admin endpoints (reload, rollback, promote, explain unless
    public); with it they answer 403 on ``--port``, so a network policy can tell them apart.
    ``/healthz``, ``/readyz`` and ``/metrics`` answer on both."""

    drain_file: Path | None = None
    """While this file exists, ``/readyz`` answers 503 (draining) and scoring goes on: a preStop
    hook creates it so load balancers stop sending before the process stops."""

    workers: int = Field(1, ge=1, le=256)
    """Worker processes; one per core. They share the memory-mapped tables via the page cache."""

    models: list[str] | None = None
    """Models to serve (JSON list in the environment); default: every model in the repository."""

    default_model: str | None = None
    """The model ``POST /v1/score`` uses; default: the only model served (or ``demo``)."""

    models_config: Path | None = None
    """Models config file (YAML or JSON): native and TF Serving models, fallbacks, the experiment
    split of ``POST /v1/score`` (docs/models-config.md). Unset: every repository model, native."""

    admin_token: SecretStr | None = None
    """Bearer token for the admin endpoints (reload, rollback); unset disables them (403)."""

    admin_token_file: Path | None = None
    """A file holding the admin token (a mounted Secret), read at each admin request so a
    rotation needs no restart; wins over ``CTR_ADMIN_TOKEN``. Empty: admin endpoints disabled."""

    explain_public: bool = False
    """Serve ``POST /v1/models/{name}/explain`` without the admin token (it costs about 2.5x a
    score per ad and shows how the model weighs each feature group)."""

    max_ads: int = Field(2000, ge=1)
    """Most ads one score request may carry; more answers 413."""

    max_body_bytes: int = Field(8 << 20, ge=1024)
    """Largest score request body in bytes; more answers 413."""

    max_values_per_group: int = Field(256, ge=1)
    """Most values one feature group may list in one context or ad; more answers 413."""

    poll_interval: float = Field(2.0, gt=0)
    """Seconds between looks at the repository for new versions (``POST .../reload`` looks now)."""

    keep_versions: int = Field(3, ge=1)
    """Versions of each model kept on disk (the live one plus backups for rollback)."""

    demo_on_empty: bool = True
    """Write the built-in demo model into an empty repository before serving."""

    log_format: Literal["plain", "json"] = "plain"
    """Log lines as plain text or as JSON objects (one per line)."""

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Least severe log level written."""

    access_log: bool = False
    """Log every HTTP request (off by default: the score path is hot)."""

    health_sample_rate: float = Field(0.01, ge=0.0, le=1.0)
    """Share of score requests whose hidden layers the health monitor watches (0: off)."""

    health_window: int = Field(20_000, ge=100)
    """Rows (request x ad) per health window; statistics and alarms are per window."""

    health_queue: int = Field(1024, ge=1)
    """Sampled requests waiting for the monitor at most; more are dropped (and counted)."""

    health_dir: Path | None = None
    """Where the workers merge their health windows; default ``<metrics_dir>/health`` with
    several workers, in memory with one."""

    alarm_webhook: str | None = None
    """URL that receives a JSON POST on a health alarm or a held version (default: the model
    syncer's ``CTR_SYNC_ALARM_WEBHOOK``)."""

    gate: dict[str, Any] | None = None
    """Guarded-swap limits (JSON), e.g. ``{"logit_shift": 0.3, "models": {"ctr": {"ks": 0.2}}}``;
    ``{"enabled": false}`` turns it off (docs/insight.md)."""

    kernel_cache: Path | None = None
    """Compiled kernels shipped with the image (``ctr-kernels build DIR``: one directory per
    x86-64 level); the best level this CPU runs is used instead of compiling at start."""

    ready_dir: Path | None = None
    """Where the workers mark themselves ready (set by ``ctr-serve`` when workers > 1):
    ``/readyz`` waits for all of them."""

    metrics_dir: Path | None = None
    """Directory for Prometheus multi-process files; set by ``ctr-serve`` when workers > 1."""
