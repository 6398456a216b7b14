"""Prometheus metrics of the TF Serving leg and of the experiment arms, on the service's registry."""

from __future__ import annotations

from typing import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .breaker import STATE_CODES, CircuitBreaker


class LegMetrics:
    """Per upstream and per experiment arm: requests, errors, latency, breaker state,
    fallbacks, and pCTR sums (mean pCTR = ``ctr_arm_pctr_sum / ctr_arm_scored_ads``)."""

    def __init__(self, registry: CollectorRegistry, latency_buckets: Sequence[float]) -> None:
        r = registry
        self.upstream_requests = Counter(
            "ctr_upstream_requests", "TF Serving sub-requests by model, upstream and outcome "
            "(ok, timeout, connect, bad_response, http_<code>, circuit_open, cancelled)",
            ["model", "upstream", "outcome"], registry=r)
        self.upstream_seconds = Histogram(
            "ctr_upstream_request_seconds", "TF Serving sub-request time", ["model", "upstream"],
            buckets=latency_buckets, registry=r)
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
                                     ["arm"], buckets=latency_buckets, registry=r)
        self.arm_fallbacks = Counter("ctr_arm_fallbacks",
                                     "Requests of an arm scored by a fallback model", ["arm"], registry=r)
        self.arm_pctr = Counter("ctr_arm_pctr_sum", "Sum of the pCTRs an arm returned", ["arm"],
                                registry=r)
        self.arm_ads = Counter("ctr_arm_scored_ads", "Ads an arm scored", ["arm"], registry=r)
        self.assignments = Counter("ctr_experiment_requests",
                                   "Answered POST /v1/score requests by layer and the arm they "
                                   "entered (default: none)", ["layer", "arm"], registry=r)
        self.srm_alarms = Counter("ctr_experiment_srm_alarms",
                                  "Times a layer's split went into sample-ratio-mismatch alarm",
                                  ["layer"], registry=r)
        self.config_reloads = Counter("ctr_models_config_reloads",
                                      "Looks at a changed models config file by outcome (applied, "
                                      "invalid, needs_restart)", ["outcome"], registry=r)
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
