"""The default route of ``POST /v1/score`` when the models config has experiments.

:class:`LayeredRoute` asks the :class:`~scoring.upstream.assign.Assigner` which arm of every
layer the request is in, takes the parameters that follow (the model, a pinned version of it,
the TF Serving deadline), and hands the data plane that model wrapped in an
:class:`AssignedScorer`, which scores, echoes the arms in the response and counts per arm:
requests, errors, latency, fallbacks, pCTRs, and the sample-ratio check of every layer.

:meth:`LayeredRoute.set` swaps the whole experiment state in one reference (a models config
reload): a request in flight finishes with the state it started with.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Mapping, Sequence

from ..errors import ScoringError
from ..lifecycle.loader import LiveModel
from ..lifecycle.registry import Registry
from .assign import DEFAULT, Assigner, Assignment
from .layers import BUCKETS, NO_FALLBACK, Layer, LayeredExperiments, params_json
from .metrics import LegMetrics
from .pins import VersionPins
from .scorer import NONE, Scored, native_scored
from .srm import srm_test

log = logging.getLogger(__name__)
SRM_EVERY = 500   # answered requests between two sample-ratio checks of the layers


class _Experiments:
    """One models config's experiments: the assigner, the arms' counters, the split counts."""

    def __init__(self, config: LayeredExperiments, metrics: LegMetrics, source: str) -> None:
        self.config, self.metrics, self.source = config, metrics, source
        self.assigner = Assigner(config)
        self.loaded_at = time.time()
        layers = [*([config.exclusive] if config.exclusive else []), *config.layers]
        self.layers: dict[str, Layer] = {layer.name: layer for layer in layers}
        self.shares = {name: _shares(layer) for name, layer in self.layers.items()}
        self.counts: dict[str, dict[str, int]] = {name: {} for name in self.layers}
        self.alarm: dict[str, bool] = {name: False for name in self.layers}
        self.answered = 0

    def label(self, layer: str, arm: str) -> str:
        return arm if self.config.legacy else f"{layer}/{arm}"

    def count(self, a: Assignment) -> None:
        for layer, arm in a.arms.items():
            self.metrics.assignments.labels(layer, arm).inc()
        for layer, arm in a.owners.items():  # the layers whose unit the request has
            c = self.counts[layer]
            c[arm] = c.get(arm, 0) + 1
        self.answered += 1
        if self.answered % SRM_EVERY == 0:
            self.check()

    def check(self) -> dict[str, Any]:
        out = {}
        for name in self.layers:
            result = srm_test(self.counts[name], self.shares[name])
            if result.alarm and not self.alarm[name]:
                self.metrics.srm_alarms.labels(name).inc()
                log.error("experiment layer %r: sample ratio mismatch: %d answered requests split "
                          "%s, configured %s (chi-square p = %.2g); its arms cannot be compared",
                          name, result.requests, result.observed, result.expected_share,
                          result.p_value)
            self.alarm[name] = result.alarm
            out[name] = result
        return out


def _shares(layer: Layer) -> dict[str, float]:
    """Configured fraction of a layer's counted requests per bucket-owning arm (a layer below an
    exclusive domain counts only the units outside it, and its shares are of that rest)."""
    shares = {a.name: a.buckets / BUCKETS for a in layer.arms}
    shares[DEFAULT] = (BUCKETS - layer.used) / BUCKETS
    return shares


class AssignedScorer:
    """Scores one request with the model its arms chose; echoes and counts the arms."""

    def __init__(self, state: _Experiments, a: Assignment, live: LiveModel,
                 deadline_ms: int | None, fallback: Any = None) -> None:
        self.state, self.a, self.live, self.deadline_ms = state, a, live, deadline_ms
        self.fallback = fallback  # None: the model's own; scorer.NONE or a getter

    def score(self, context: Mapping[str, Any] | None, ads: Sequence[Any]) -> Any:
        return self.live.scorer.score(context, ads)

    async def score_async(self, context: Mapping[str, Any] | None, ads: Sequence[Any],
                          keep: Any = None) -> Scored:
        """``keep``: the health monitor's sample hook, for an arm our engine scores (its
        statistics are then those of the arm's model version: a canary's own)."""
        t0 = time.perf_counter()
        live, st, m = self.live, self.state, self.state.metrics
        labels = [st.label(layer, arm) for layer, arm in self.a.arms.items()]
        try:
            inner = getattr(live.scorer, "score_async", None)
            if inner is not None:
                if self.deadline_ms is not None or self.fallback is not None:
                    result = await inner(context, ads, deadline_ms=self.deadline_ms,
                                         fallback=self.fallback)
                else:
                    result = await inner(context, ads)
            else:
                sample = keep if getattr(live.scorer, "score_json", None) is not None else None
                result = native_scored(live.scorer, live.name, live.version, context, ads, sample)
        except ScoringError as exc:
            for label in labels:
                m.arm_requests.labels(label, live.name, str(exc.status_code)).inc()
            raise
        seconds = time.perf_counter() - t0
        n = len(result.scores)
        total = float(result.scores.sum()) if n else 0.0
        for label in labels:
            m.arm_requests.labels(label, live.name, "200").inc()
            m.arm_seconds.labels(label).observe(seconds)
            if n:
                m.arm_pctr.labels(label).inc(total)
                m.arm_ads.labels(label).inc(n)
            if result.fallback_for is not None:
                m.arm_fallbacks.labels(label).inc()
        st.count(self.a)
        if st.config.legacy:
            result.arm = next(iter(self.a.arms.values()))
        else:
            result.arms = dict(self.a.arms)
        return result


class LayeredRoute:
    """The default route of ``POST /v1/score``: the model (and version) the request's arms set."""

    def __init__(self, config: LayeredExperiments, registry: Registry, metrics: LegMetrics,
                 source: str = "models config") -> None:
        self.registry, self.metrics = registry, metrics
        self.pins = VersionPins(registry, config.pins())
        self._state = _Experiments(config, metrics, source)
        self._wrapped: dict[tuple, LiveModel] = {}

    @property
    def config(self) -> LayeredExperiments:
        return self._state.config

    def set(self, config: LayeredExperiments, source: str = "models config") -> None:
        """Put another config's experiments in force (one reference swap)."""
        self.pins.set(config.pins())
        self._state = _Experiments(config, self.metrics, source)
        self._wrapped = {}

    def __call__(self, request: Any) -> LiveModel:
        st = self._state
        a = st.assigner.assign(request.request_id, request.context)
        ref = a.params["model"]
        live = None
        if ref.version is not None:
            live = self.pins.get(ref)  # None: not loaded (yet), or nothing to pin: the live one
        if live is None:
            live = self.registry.get(ref.name)
        deadline = a.params.get("deadline_ms")
        fallback_name = a.params.get("fallback")
        # one wrapper per assignment, rebuilt when its model swaps: the entry then holds the new
        # model only, so a replaced version is not kept alive here
        key = (ref, tuple(a.arms.items()), tuple(a.owners.items()), deadline, fallback_name)
        cached = self._wrapped.get(key)
        if cached is not None and cached.scorer.live is live and cached.scorer.state is st:
            return cached  # the same arms, model and parameters: the same wrapper
        if len(self._wrapped) > 4096:  # many units without a condition's field, many layers
            self._wrapped = {}
        fallback = None
        if fallback_name is not None and getattr(live.scorer, "score_async", None) is not None:
            fallback = NONE if fallback_name == NO_FALLBACK else self._native(fallback_name)
        wrapped = dataclasses.replace(live, scorer=AssignedScorer(st, a, live, deadline, fallback))
        self._wrapped[key] = wrapped
        return wrapped

    def _native(self, name: str) -> Any:
        registry = self.registry
        return lambda: registry.get(name).scorer  # NotReady (503) while it loads

    def describe(self) -> dict[str, Any]:
        """``GET /v1/experiments``: the layers, their arms and bucket ranges, this process's
        counts and sample-ratio checks, the pinned versions."""
        st = self._state
        c = st.config
        srm = st.check()
        layers = []
        for name, layer in st.layers.items():
            start, arms = 0, []
            for arm in layer.arms:
                arms.append({"name": arm.name, "share": arm.share,
                             "buckets": [start, start + arm.buckets],
                             "set": params_json(arm.set),
                             "when": {f"context.{k}": list(v) for k, v in arm.when.items()}})
                start += arm.buckets
            layers.append({"name": name, "exclusive": layer is c.exclusive, "unit": layer.unit,
                           "salt": layer.salt, "params": list(layer.params), "arms": arms,
                           "srm": srm[name].describe()})
        return {"version": c.version, "source": st.source, "loaded_at": st.loaded_at,
                "defaults": params_json(c.defaults), "launch": params_json(c.launch),
                "layers": layers, "pins": self.pins.describe(),
                "counts_are": "this worker process's answered requests since the config loaded"}
