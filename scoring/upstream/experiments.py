"""The default route of ``POST /v1/score`` when the models config has experiments.

:class:`ExperimentRoute` asks the :class:`~scoring.upstream.routing.Router` which arm owns the
request's bucket and hands the data plane that arm's live model, wrapped in an :class:`ArmScorer`
that counts the arm's requests, errors, latency, fallbacks and pCTRs.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping, Sequence

from ..errors import ScoringError
from ..lifecycle.loader import LiveModel
from ..lifecycle.registry import Registry
from .metrics import LegMetrics
from .routing import Router
from .scorer import Scored, native_scored


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

    async def score_async(self, context: Mapping[str, Any] | None, ads: Sequence[Any],
                          keep: Any = None) -> Scored:
        """``keep``: the health monitor's sample hook, for an arm our engine scores (its
        statistics are then those of the arm's model version)."""
        t0 = time.perf_counter()
        live, c = self.live, self.c
        try:
            inner = getattr(live.scorer, "score_async", None)
            if inner is not None:
                result = await inner(context, ads)
            else:  # our engine (the health monitor samples an MLP arm through ``keep``)
                sample = keep if getattr(live.scorer, "score_json", None) is not None else None
                result = native_scored(live.scorer, live.name, live.version, context, ads, sample)
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
