"""Builds what the models config asks for into a running service.

* ``kind: tfserving`` models become :class:`~scoring.tfserving_model.TFServingScorer` entries of
  the registry (``kind: "tfserving"``, always live: readiness never waits on an upstream); their
  fallback is whatever version of the native model is live at the time.
* ``experiments`` become the default route of ``POST /v1/score``: :class:`ExperimentRoute` picks
  the arm, and :class:`ArmScorer` counts each arm's requests, errors, latency, fallbacks and pCTRs.
* :class:`LegMetrics` holds the Prometheus metrics of both, on the service's registry.

The composition root (``scoring.cli``) calls :func:`setup_models` with the config and the
registry, and hands the result's ``default_route`` and ``services`` to ``create_app``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .breaker import STATE_CODES, CircuitBreaker
from .errors import ScoringError
from .metrics import LATENCY_BUCKETS
from .models_config import ModelsConfig
from .registry import LiveModel, Registry
from .routing import Router
from .tfserving import LoopThread
from .tfserving_model import Scored, TFServingScorer

KIND = "tfserving"


class LegMetrics:
    """Per upstream and per experiment arm: requests, errors, latency, breaker state,
    fallbacks, and pCTR sums (mean pCTR = ``ctr_arm_pctr_sum / ctr_arm_scored_ads``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.upstream_requests = Counter(
            "ctr_upstream_requests", "TF Serving sub-requests by model, upstream and outcome "
            "(ok, timeout, connect, bad_response, http_<code>, circuit_open, cancelled)",
            ["model", "upstream", "outcome"], registry=r)
        self.upstream_seconds = Histogram(
            "ctr_upstream_request_seconds", "TF Serving sub-request time", ["model", "upstream"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.breaker = Gauge("ctr_upstream_breaker_state",
                             "Circuit of each upstream: 0 closed, 1 half-open, 2 open",
                             ["model", "upstream"], registry=r, multiprocess_mode="livemax")
        self.fallbacks = Counter("ctr_upstream_fallbacks",
                                 "Requests a native fallback scored because TF Serving failed",
                                 ["model", "fallback", "reason"], registry=r)
        self.arm_requests = Counter("ctr_arm_requests",
                                    "POST /v1/score requests by experiment arm, model and status",
                                    ["arm", "model", "status"], registry=r)
        self.arm_seconds = Histogram("ctr_arm_request_seconds", "Scoring time by experiment arm",
                                     ["arm"], buckets=LATENCY_BUCKETS, registry=r)
        self.arm_fallbacks = Counter("ctr_arm_fallbacks",
                                     "Requests of an arm scored by a fallback model", ["arm"], registry=r)
        self.arm_pctr = Counter("ctr_arm_pctr_sum", "Sum of the pCTRs an arm returned", ["arm"],
                                registry=r)
        self.arm_ads = Counter("ctr_arm_scored_ads", "Ads an arm scored", ["arm"], registry=r)
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}

    def watch(self, model: str, upstream: str, breaker: CircuitBreaker) -> None:
        self._breakers[(model, upstream)] = breaker
        self.breaker.labels(model, upstream).set(STATE_CODES[breaker.state])

    def attempt(self, model: str, upstream: str, seconds: float, outcome: str) -> None:
        """The TF Serving client's observer: one sub-request ended (or was refused)."""
        self.upstream_requests.labels(model, upstream, outcome).inc()
        if outcome != "circuit_open":
            self.upstream_seconds.labels(model, upstream).observe(seconds)
        breaker = self._breakers.get((model, upstream))
        if breaker is not None:
            self.breaker.labels(model, upstream).set(STATE_CODES[breaker.state])

    def fallback(self, model: str, fallback: str, reason: str) -> None:
        self.fallbacks.labels(model, fallback, reason).inc()


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


class _ArmCounters:
    def __init__(self, m: LegMetrics, arm: str) -> None:
        self.seconds = m.arm_seconds.labels(arm).observe
        self.fallbacks = m.arm_fallbacks.labels(arm).inc
        self.pctr = m.arm_pctr.labels(arm).inc
        self.ads = m.arm_ads.labels(arm).inc
        self.requests = m.arm_requests
        self.arm = arm


class ArmScorer:
    """The scorer of one experiment arm: the arm's live model, counted per arm."""

    def __init__(self, arm: str, live: LiveModel, counters: _ArmCounters) -> None:
        self.arm, self.live, self.c = arm, live, counters

    def score(self, context: Mapping[str, Any] | None, ads: Sequence[Any]) -> Any:
        return self.live.scorer.score(context, ads)

    async def score_async(self, context: Mapping[str, Any] | None, ads: Sequence[Any]) -> Scored:
        t0 = time.perf_counter()
        live, c = self.live, self.c
        try:
            inner = getattr(live.scorer, "score_async", None)
            if inner is not None:
                result = await inner(context, ads)
            else:
                result = Scored(live.scorer.score(context, ads), live.name, live.version)
        except ScoringError as exc:
            c.requests.labels(self.arm, live.name, str(exc.status_code)).inc()
            raise
        c.requests.labels(self.arm, live.name, "200").inc()
        c.seconds(time.perf_counter() - t0)
        n = len(result.scores)
        if n:
            c.pctr(float(result.scores.sum()))
            c.ads(n)
        if result.fallback_for is not None:
            c.fallbacks()
        result.arm = self.arm
        return result


class ExperimentRoute:
    """The default route of ``POST /v1/score``: the experiment arm that owns the request's bucket."""

    def __init__(self, router: Router, registry: Registry, metrics: LegMetrics) -> None:
        self.router, self.registry = router, registry
        self._counters = {arm: _ArmCounters(metrics, arm) for arm in router.arm_names}
        self._wrapped: dict[str, tuple[LiveModel, LiveModel]] = {}

    def __call__(self, request: Any) -> LiveModel:
        route = self.router.route(request.request_id, request.context)
        live = self.registry.get(route.model)
        cached = self._wrapped.get(route.arm)
        if cached is not None and cached[0] is live:
            return cached[1]
        wrapped = dataclasses.replace(live, scorer=ArmScorer(route.arm, live, self._counters[route.arm]))
        self._wrapped[route.arm] = (live, wrapped)  # rebuilt only when the arm's model swaps
        return wrapped


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
    default_route: ExperimentRoute | None
    services: list[ClientsService]


def setup_models(config: ModelsConfig, registry: Registry, metrics_registry: CollectorRegistry) -> ModelsSetup:
    """Register the config's TF Serving models and build the experiment route."""
    metrics = LegMetrics(metrics_registry)
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
    if config.experiments is not None and config.default is not None:
        route = ExperimentRoute(Router(config.default, config.experiments), registry, metrics)
    return ModelsSetup(scorers, route, [ClientsService(scorers, runner)])
