"""Builds what the models config asks for into a running service.

* ``kind: tfserving`` models become :class:`~scoring.upstream.scorer.TFServingScorer` entries of
  the registry (``kind: "tfserving"``, always live: readiness never waits on an upstream); their
  fallback is whatever version of the native model is live at the time.
* ``experiments`` / ``layers`` become the default route of ``POST /v1/score``
  (:class:`~scoring.upstream.experiments.LayeredRoute`), with the pinned versions its arms name.
* :class:`~scoring.upstream.metrics.LegMetrics` holds the Prometheus metrics of both.

The composition root (``scoring.serving.wiring``) calls :func:`setup_models` with the config and
the registry, and hands the result's ``default_route`` and ``services`` to ``create_app``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from prometheus_client import CollectorRegistry

from ..lifecycle.loader import LiveModel
from ..lifecycle.registry import Registry
from .client import LoopThread
from .config import ModelsConfig
from .experiments import LayeredRoute
from .metrics import LegMetrics
from .scorer import TFServingScorer

KIND = "tfserving"


@dataclass(frozen=True)
class TFServingLive(LiveModel):
    """A registry entry for a TF Serving model: ``describe`` asks the upstreams how they are."""

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        scorer: TFServingScorer = self.scorer  # type: ignore[assignment]
        status = scorer.status(timeout=1.0)
        up = status.pop("state") == "available"
        out.update(status)
        out["state"] = "live" if up else ("degraded" if scorer.config.fallback else "unavailable")
        return out


class ClientsService:
    """Started and stopped with the app: closes the TF Serving clients and their I/O loop."""

    def __init__(self, scorers: Sequence[TFServingScorer], runner: LoopThread | None) -> None:
        self.scorers, self.runner = list(scorers), runner

    def start(self) -> None:
        pass

    def stop(self) -> None:
        for s in self.scorers:
            s.close()
        if self.runner is not None:
            self.runner.close()


@dataclass
class ModelsSetup:
    scorers: list[TFServingScorer]
    default_route: LayeredRoute | None
    services: list[ClientsService]
    metrics: LegMetrics


def setup_models(config: ModelsConfig, registry: Registry, metrics_registry: CollectorRegistry,
                 latency_buckets: Sequence[float]) -> ModelsSetup:
    """Register the config's TF Serving models and build the experiment route."""
    metrics = LegMetrics(metrics_registry, latency_buckets)
    runner = LoopThread("tfserving-io") if config.tfserving else None
    scorers = []
    for cfg in config.tfserving:
        fallback = None
        if cfg.fallback is not None:
            name = cfg.fallback
            fallback = (lambda name=name: registry.get(name).scorer)
        scorer = TFServingScorer(cfg, fallback, runner=runner, observer=metrics.attempt,
                                 on_fallback=metrics.fallback)
        for up in scorer.client.upstreams:
            metrics.watch(cfg.name, up.url, up.breaker)
        registry.add(TFServingLive(name=cfg.name, version=scorer.version, scorer=scorer, kind=KIND,
                                   path=", ".join(cfg.urls)))
        scorers.append(scorer)
    route = None
    if config.layered is not None:
        route = LayeredRoute(config.layered, registry, metrics, config.source)
    return ModelsSetup(scorers, route, [ClientsService(scorers, runner)], metrics)
