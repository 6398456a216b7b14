"""A ``kind: tfserving`` model as the service sees it: validate, send, fall back.

The request is validated and hashed exactly as for a native model (unknown groups are a 422
before anything leaves the process), then scored by TF Serving. When TF Serving fails (timeout,
error status, bad answer, open circuit) the configured native ``fallback`` model scores the
whole request instead, and the result says so; without a fallback the failure is an
:class:`~scoring.errors.UpstreamError` (502) or :class:`~scoring.errors.UpstreamTimeout` (504).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..engine.features import FeatureLayout
from ..errors import ScoringError, UpstreamError, UpstreamTimeout
from ..model.manifest import GroupSpec, Manifest
from .client import LoopThread, Observer, TFServingClient
from .config import Features, TFServingModel
from .payload import request_tensors

log = logging.getLogger(__name__)

FallbackGetter = Callable[[], Any]  # returns the live native engine (has .score, .name, .version)
FallbackHook = Callable[[str, str, str], None]  # (model, fallback model, reason)


class NONE:
    """A request's fallback: none (an experiment arm that must see TF Serving's failures)."""


@dataclass
class Scored:
    """Scores of one request and who computed them."""

    scores: np.ndarray
    model: str                 # the model that scored: this one, or its fallback
    version: str
    fallback_for: str | None = None   # set when the fallback scored instead of TF Serving
    fallback_reason: str | None = None
    arm: str | None = None            # the experiment arm of POST /v1/score (``experiments:``)
    arms: dict[str, str] | None = None  # layer -> arm, with experiment ``layers``
    outputs: dict[str, np.ndarray] | None = None  # a multi-head model: every output by name

    @property
    def extra(self) -> dict[str, str] | None:
        """Fields a score response adds to the contract's: the arm, which model fell back, why."""
        out = {}
        if self.arm is not None:
            out["arm"] = self.arm
        if self.arms is not None:
            out["arms"] = self.arms
        if self.fallback_for is not None:
            out["fallback_for"] = self.fallback_for
            out["fallback_reason"] = self.fallback_reason or ""
        return out or None


def native_scored(scorer: Any, name: str, version: str, context, ads, keep: Any = None,
                  **extra: Any) -> Scored:
    """What our engine answers for a request: a multi-head model graph every output (the
    primary as the scores), a single-head model its scores."""
    heads = getattr(scorer, "output_names", ())
    if len(heads) > 1:
        outputs = scorer.score_outputs(context, ads)
        return Scored(outputs[heads[scorer.primary]], name, version, outputs=outputs, **extra)
    scores = scorer.score(context, ads, keep) if keep is not None else scorer.score(context, ads)
    return Scored(scores, name, version, **extra)


def features_of(manifest: Manifest) -> Features:
    ctx = tuple(g.name for g in manifest.groups if g.side == "context")
    ad = tuple(g.name for g in manifest.groups if g.side == "ad")
    return Features(ctx, ad, manifest.dense_dim)


def layout_of(features: Features) -> FeatureLayout:
    """A FeatureLayout for validation and hashing only (buckets and dims are TF Serving's)."""
    groups = [GroupSpec(g, "context", 1, 1, "sum", "") for g in features.context]
    groups += [GroupSpec(g, "ad", 1, 1, "sum", "") for g in features.ad]
    return FeatureLayout(groups, features.dense_dim)


class TFServingScorer:
    """Scores requests through TF Serving, with an optional native fallback."""

    kind = "tfserving"

    def __init__(self, config: TFServingModel, fallback: FallbackGetter | None = None, *,
                 runner: LoopThread | None = None, observer: Observer | None = None,
                 on_fallback: FallbackHook | None = None) -> None:
        if config.fallback is not None and fallback is None:
            raise ValueError(f"model {config.name!r}: fallback {config.fallback!r} is configured "
                             "but no fallback model was given")
        self.config = config
        self.name = config.name
        self.fallback = fallback
        self.on_fallback = on_fallback
        self._features = config.features
        self._layout = layout_of(config.features) if config.features else None
        self.client = TFServingClient(config, runner=runner, observer=observer)
        self.fallbacks = 0

    @property
    def features(self) -> Features:
        """The request's groups: from the config, else from the fallback's manifest (read on
        first use: the fallback may still be loading when this model is built)."""
        if self._features is None:
            self._features = features_of(self._fallback_engine().manifest)
            self._layout = layout_of(self._features)
        return self._features

    def _fallback_engine(self) -> Any:
        assert self.fallback is not None
        return self.fallback()  # raises NotReady (503) while the fallback model is loading

    @property
    def version(self) -> str:
        c = self.config
        return str(c.version) if c.version is not None else (c.label or "latest")

    def _tensors(self, context: Mapping[str, Any] | None, ads: Sequence[Any]):
        f = self.features
        batch = self._layout.encode(context, ads)  # InvalidRequest (422) names the bad field
        return request_tensors(batch, f.context, f.ad, f.dense_dim, self.config.inputs)

    def score(self, context: Mapping[str, Any] | None, ads: Sequence[Any]) -> Scored:
        """Blocking: for threads (and the benchmark)."""
        tensors = self._tensors(context, ads)
        try:
            scores = self.client.predict(tensors)
        except UpstreamError as exc:
            return self._fall_back(exc, context, ads)
        return self._scored(scores)

    async def score_async(self, context: Mapping[str, Any] | None, ads: Sequence[Any],
                          deadline_ms: int | None = None,
                          fallback: FallbackGetter | type[NONE] | None = None) -> Scored:
        """For an event loop: waits on the client's loop without blocking the caller's.
        ``deadline_ms``: this request's deadline (an experiment arm's), else the model's;
        ``fallback``: this request's fallback (None: the model's; ``NONE``: none)."""
        tensors = self._tensors(context, ads)
        try:
            scores = await self.client.predict_on_caller_loop(tensors, deadline_ms)
        except UpstreamError as exc:
            return self._fall_back(exc, context, ads, fallback)
        return self._scored(scores)

    def _scored(self, values: np.ndarray) -> Scored:
        names = self.config.inputs.outputs
        if not names:
            return Scored(values, self.name, self.version)
        outputs = {name: values[:, i] for i, name in enumerate(names)}
        return Scored(outputs[self.config.inputs.primary], self.name, self.version, outputs=outputs)

    def _fall_back(self, exc: UpstreamError, context: Mapping[str, Any] | None,
                   ads: Sequence[Any], override: Any = None) -> Scored:
        getter = self.fallback if override is None else override
        if getter is None or getter is NONE:
            raise exc
        try:
            engine = getter()
        except ScoringError as unavailable:
            raise type(exc)(f"{exc.message}; fallback unavailable: {unavailable.message}") from None
        reason = "timeout" if isinstance(exc, UpstreamTimeout) else "error"
        self.fallbacks += 1
        if self.on_fallback is not None:
            self.on_fallback(self.name, engine.name, reason)
        log.warning("model %r: scored by fallback %r (%s)", self.name, engine.name, exc.message)
        return native_scored(engine, engine.name, engine.version, context, ads,
                             fallback_for=self.name, fallback_reason=exc.message)

    def status(self, timeout: float = 2.0) -> dict[str, Any]:
        """What ``GET /v1/models/{name}`` shows: the upstreams as TF Serving reports them."""
        c = self.config
        upstreams = self.client.model_status(timeout)
        return {"name": self.name, "kind": self.kind, "version": self.version,
                "tfserving_model": c.model_name, "signature_name": c.signature_name,
                "fallback": c.fallback, "fallbacks": self.fallbacks,
                "state": "available" if any(_available(u) for u in upstreams) else "unavailable",
                "upstreams": upstreams}

    def close(self) -> None:
        self.client.close()


def _available(upstream: Mapping[str, Any]) -> bool:
    return any(v.get("state") == "AVAILABLE" for v in upstream.get("model_version_status", []))
