"""The TF Serving REST client: sub-batches sent concurrently under one deadline, retry, breakers.

One request's ads are split into sub-batches that run **concurrently** (``max_concurrency`` at a
time) over pooled keep-alive connections, within one deadline for the whole request. A failed
sub-batch is retried once on another host when time allows; each host has a circuit breaker.
The HTTP client is ``httpx.AsyncClient`` on a private event-loop thread: sub-requests overlap
without a thread each, the connection pool and per-request timeouts are httpx's own, and both
sync and async callers (any server, any worker model) can use it. The bodies and answers are
:mod:`scoring.upstream.payload`'s.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx
import numpy as np
import orjson

from ..errors import UpstreamError, UpstreamTimeout
from .breaker import CircuitBreaker
from .config import TFServingModel
from .payload import BadResponse, RequestTensors, parse_predictions, predict_body

log = logging.getLogger(__name__)

MIN_ATTEMPT_S = 0.002  # do not start (or retry) an attempt with less time than this left


class _Failure(Exception):
    """One failed attempt. ``host_fault`` counts against the host's breaker; ``retriable``
    allows one more attempt on another host; ``timeout`` makes the request's answer a 504."""

    def __init__(self, message: str, *, host_fault: bool = True, retriable: bool = True,
                 timeout: bool = False, reason: str = "error") -> None:
        super().__init__(message)
        self.message, self.host_fault, self.retriable = message, host_fault, retriable
        self.timeout, self.reason = timeout, reason


@dataclass
class Upstream:
    """One TF Serving host with its breaker and counters."""

    url: str
    breaker: CircuitBreaker
    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None


class LoopThread:
    """An asyncio event loop on a daemon thread, for callers on any thread or loop."""

    def __init__(self, name: str = "tfserving-io") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
        if not self.loop.is_running() and not self.loop.is_closed():
            self.loop.close()


Observer = Callable[[str, str, float, str], None]  # (model, upstream url, seconds, outcome)


class TFServingClient:
    """Sends hashed requests to the upstreams of one ``kind: tfserving`` model."""

    def __init__(self, config: TFServingModel, runner: LoopThread | None = None,
                 observer: Observer | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._own_runner = runner is None
        self.runner = runner or LoopThread(f"tfserving-{config.name}")
        self.observer = observer
        self.upstreams = [Upstream(u, CircuitBreaker(config.breaker.failures,
                                                     config.breaker.cooldown_ms / 1000.0, clock))
                          for u in config.urls]
        self._rr = 0
        limits = httpx.Limits(max_connections=config.max_connections,
                              max_keepalive_connections=config.max_connections, keepalive_expiry=60.0)
        self._http = httpx.AsyncClient(limits=limits, trust_env=False,
                                       headers={"Content-Type": "application/json"})
        self._path = config.predict_path()

    # -- sync / async entry points ----------------------------------------------------------

    def predict(self, tensors: RequestTensors) -> np.ndarray:
        """pCTRs for every row; raises UpstreamError (502) or UpstreamTimeout (504)."""
        fut = self.runner.submit(self.predict_async(tensors))
        try:
            return fut.result(timeout=self.config.deadline_ms / 1000.0 + 1.0)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise UpstreamTimeout(self._msg(f"no answer within the {self.config.deadline_ms} ms "
                                            "deadline")) from None

    async def predict_on_caller_loop(self, tensors: RequestTensors,
                                     deadline_ms: int | None = None) -> np.ndarray:
        """Like :meth:`predict`, awaited from another event loop (e.g. an ASGI server's)."""
        return await asyncio.wrap_future(self.runner.submit(self.predict_async(tensors, deadline_ms)))

    async def predict_async(self, tensors: RequestTensors, deadline_ms: int | None = None) -> np.ndarray:
        """Runs on the client's loop: sub-batches concurrently under one deadline (``deadline_ms``,
        default the model's)."""
        cfg = self.config
        budget_ms = deadline_ms if deadline_ms is not None else cfg.deadline_ms
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget_ms / 1000.0
        n, size = tensors.n, cfg.sub_batch_size
        if n == 0:
            return np.zeros(0, dtype=np.float64)
        spans = [(i, min(n, i + size)) for i in range(0, n, size)]
        first = self._rr
        self._rr = (self._rr + len(spans)) % max(1, len(self.upstreams))
        sem = asyncio.Semaphore(cfg.max_concurrency)

        async def one(k: int, i: int, j: int) -> np.ndarray:
            async with sem:
                body = predict_body(tensors.slice(i, j), cfg.format, cfg.signature_name)
                return await self._sub_batch(body, j - i, deadline, first + k)

        tasks = [asyncio.ensure_future(one(k, i, j)) for k, (i, j) in enumerate(spans)]
        try:
            parts = await asyncio.wait_for(asyncio.gather(*tasks), deadline - loop.time())
        except asyncio.TimeoutError:
            raise UpstreamTimeout(self._msg(f"no answer within the {budget_ms} ms deadline "
                                            f"({len(spans)} sub-requests)")) from None
        except _Failure as f:
            exc_type = UpstreamTimeout if f.timeout else UpstreamError
            raise exc_type(self._msg(f.message)) from None
        finally:
            for t in tasks:
                t.cancel()
        return np.concatenate(parts)

    # -- one sub-batch ----------------------------------------------------------------------

    def _pick(self, start: int, avoid: set[int]) -> int | None:
        """The next host (round-robin from ``start``) whose breaker lets a request through,
        preferring hosts not tried yet for this sub-batch."""
        k = len(self.upstreams)
        order = [(start + d) % k for d in range(k)]
        for idx in [i for i in order if i not in avoid] + [i for i in order if i in avoid]:
            if self.upstreams[idx].breaker.allow():
                return idx
        return None

    async def _sub_batch(self, body: bytes, n: int, deadline: float, start: int) -> np.ndarray:
        loop = asyncio.get_running_loop()
        tried: set[int] = set()
        failure: _Failure | None = None
        for _attempt in range(2):
            remaining = deadline - loop.time()
            if remaining < MIN_ATTEMPT_S:
                break
            idx = self._pick(start, tried)
            if idx is None:
                if self.observer is not None:
                    for up in self.upstreams:
                        self.observer(self.config.name, up.url, 0.0, "circuit_open")
                if failure is None:
                    failure = _Failure(f"circuit open for all {len(self.upstreams)} upstream(s) "
                                       f"after repeated failures; retrying after "
                                       f"{self.config.breaker.cooldown_ms} ms",
                                       host_fault=False, reason="circuit_open")
                break
            up = self.upstreams[idx]
            tried.add(idx)
            try:
                out = await self._attempt(up, body, n, remaining)
            except _Failure as f:
                failure = f
                if not f.retriable:
                    break
                continue
            return out
        if failure is None:
            failure = _Failure("no time left for the request within its deadline",
                               timeout=True, reason="timeout")
        raise failure

    async def _attempt(self, up: Upstream, body: bytes, n: int, timeout: float) -> np.ndarray:
        t0 = time.perf_counter()
        up.requests += 1
        outcome = "ok"
        try:
            try:
                resp = await self._http.post(up.url + self._path, content=body,
                                             timeout=httpx.Timeout(timeout))
            except httpx.TimeoutException:
                raise _Failure(f"{up.url} did not answer within {timeout * 1000:.0f} ms",
                               timeout=True, reason="timeout") from None
            except httpx.HTTPError as exc:
                raise _Failure(f"{up.url}: {type(exc).__name__}: {exc or 'connection failed'}",
                               reason="connect") from None
            if resp.status_code != 200:
                raise _status_failure(up.url, resp)
            try:
                out = parse_predictions(resp.content, n, self.config.format, self.config.inputs.output,
                                        self.config.inputs.outputs)
            except BadResponse as exc:
                raise _Failure(f"{up.url} answered 200 with a bad predict response: {exc}",
                               reason="bad_response") from None
        except _Failure as f:
            outcome = f.reason
            up.errors[f.reason] = up.errors.get(f.reason, 0) + 1
            up.last_error = f.message
            if f.host_fault:
                up.breaker.failure()
            else:
                up.breaker.release()
            log.warning("tfserving model %r: %s", self.config.name, f.message)
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            up.breaker.release()
            raise
        finally:
            if self.observer is not None:
                self.observer(self.config.name, up.url, time.perf_counter() - t0, outcome)
        up.breaker.success()
        return out

    # -- status -----------------------------------------------------------------------------

    def model_status(self, timeout: float = 2.0) -> list[dict[str, Any]]:
        """``GET /v1/models/{m}[/versions/{v}|/labels/{l}]`` on every upstream: what TF Serving
        reports (``model_version_status``) or the error, with the breaker's state."""
        return self.runner.submit(self._status_all(timeout)).result(timeout=timeout + 1.0)

    async def _status_all(self, timeout: float) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(self._status(up, timeout) for up in self.upstreams)))

    async def _status(self, up: Upstream, timeout: float) -> dict[str, Any]:
        info: dict[str, Any] = {"url": up.url, "breaker": up.breaker.state,
                                "requests": up.requests, "errors": dict(up.errors),
                                "last_error": up.last_error}
        try:
            resp = await self._http.get(up.url + self.config.model_path(),
                                        timeout=httpx.Timeout(timeout))
            doc = orjson.loads(resp.content)
        except (httpx.HTTPError, orjson.JSONDecodeError) as exc:
            info.update(reachable=False, error=f"{type(exc).__name__}: {exc}")
            return info
        info["reachable"] = True
        if resp.status_code != 200:
            info["error"] = doc.get("error") if isinstance(doc, dict) else str(doc)[:200]
        else:
            info["model_version_status"] = doc.get("model_version_status", []) \
                if isinstance(doc, dict) else []
        return info

    def _msg(self, what: str) -> str:
        return f"TF Serving model {self.config.name!r} ({self.config.model_name}): {what}"

    def close(self) -> None:
        try:
            self.runner.submit(self._http.aclose()).result(timeout=5)
        except Exception:  # noqa: BLE001 - closing is best effort
            log.debug("closing the TF Serving client of %r failed", self.config.name, exc_info=True)
        if self._own_runner:
            self.runner.close()


def _status_failure(url: str, resp: httpx.Response) -> _Failure:
    try:
        doc = orjson.loads(resp.content)
        detail = doc["error"] if isinstance(doc, dict) and "error" in doc else resp.text[:200]
    except orjson.JSONDecodeError:
        detail = resp.text[:200]
    code = resp.status_code
    msg = f"{url} answered {code}: {detail}"
    if code == 400:  # INVALID_ARGUMENT: our request does not fit the signature
        return _Failure(msg + " (check the model's inputs mapping against its signature)",
                        host_fault=False, retriable=False, reason="http_400")
    return _Failure(msg, timeout=code == 504, reason=f"http_{code}")
