"""The HTTP API (contract section 3): one route table built by :func:`create_app`.

Endpoints only do HTTP (content type, body size, admin auth, status codes) and hand over to
:class:`~scoring.serving.dataplane.DataPlane`; the two score endpoints are plain ASGI
(:mod:`scoring.serving.fastpath`) in front of the routes. Every
:class:`~scoring.errors.ScoringError` becomes ``{"error": message}`` with its status; anything
unexpected is logged with its traceback and answered with a generic 500 that leaks nothing.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, AsyncIterator, Protocol, Sequence

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from .. import __version__
from ..errors import ScoringError
from ..lifecycle.registry import Registry
from .auth import AdminAuth
from .dataplane import DataPlane, DefaultRoute
from .fastpath import ScoreFastPath, check_content_type, check_length, too_large
from .metrics import Metrics
from .openapi import ADMIN_DOC, EXPLAIN_DOC, JSON, error_doc, install_openapi
from .schemas import error_json, openapi_components
from .settings import Settings
from .ui import install_ui

log = logging.getLogger(__name__)


class Service(Protocol):
    """Something the app starts and stops with itself (the registry's poller, a model syncer).

    A service may also have ``before_reload(name) -> dict | None``: the reload endpoint calls it
    first (the in-process model syncer fetches a new version there) and reports what it returns
    under ``"sync"``."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type=JSON, headers=headers)


def error_response(message: str, status_code: int, headers: dict[str, str] | None = None) -> Response:
    return Response(error_json(message), status_code=status_code, media_type=JSON, headers=headers)


# -- the app -------------------------------------------------------------------------------------


def create_app(settings: Settings, registry: Registry, *, metrics: Metrics | None = None,
               services: Sequence[Service] = (), default_route: DefaultRoute | None = None,
               monitor: Any = None, ready_board: Any = None) -> FastAPI:
    """The service's ASGI app. ``registry`` is started and stopped with it, then ``services``.
    ``ready_board``: with several workers, ``/readyz`` waits for all of them."""
    metrics = metrics or registry.metrics or Metrics()
    if registry.metrics is None:
        registry.metrics = metrics
    plane = DataPlane(settings, registry, metrics, default_route, monitor=monitor)
    admin = AdminAuth(settings.admin_token.get_secret_value() if settings.admin_token else None,
                      settings.admin_port, settings.admin_token_file)
    drain_file = settings.drain_file
    max_body = settings.max_body_bytes
    explain_public = settings.explain_public

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started = []
        try:
            for service in (registry, *services):
                service.start()
                started.append(service)
            yield
        finally:
            for service in reversed(started):
                service.stop()
            metrics.process_exited()

    app = FastAPI(title="ctr-scoring", version=__version__, lifespan=lifespan,
                  description="Online CTR scoring: POST a context and candidate ads, get one pCTR "
                              "per ad. Models hot-swap from the local repository.")
    app.state.plane = plane
    app.state.registry = registry

    # POST /v1/score and /v1/models/{name}/score: ScoreFastPath below (plain ASGI, no route)

    # -- models --------------------------------------------------------------------------------

    @app.get("/v1/models", summary="Every model: name, version, kind, state, md5, loaded_at")
    def list_models() -> Response:
        return json_response(plane.models())

    @app.get("/v1/models/{name}", summary="One model", responses={404: error_doc("Unknown model")})
    def get_model(name: str) -> Response:
        return json_response(plane.model(name))

    @app.post("/v1/models/{name}/reload", summary="Admin: pick up the newest valid version now",
              **ADMIN_DOC)
    def reload_model(name: str, request: Request) -> Response:
        admin(request)
        hooks = [getattr(s, "before_reload", None) for s in services]
        synced = [r for hook in hooks if hook is not None and (r := hook(name)) is not None]
        out = plane.reload(name)
        if synced:
            out["sync"] = synced[0]
        return json_response(out)

    @app.post("/v1/models/{name}/rollback", summary="Admin: go back to the previous version",
              description="A compare-and-set: it steps back from the version this process serves "
                          "(or `from`), so the same call reaching another worker, or retried (a "
                          "bare rollback repeated within 30 s), rolls back once. `to` names the "
                          "target; calls naming it are idempotent.", **ADMIN_DOC)
    def rollback_model(name: str, request: Request,
                       to: str | None = Query(None, description="the version to go back to "
                                              "(default: the previous live version)"),
                       expected: str | None = Query(None, alias="from", description="the version "
                                                    "expected live now (default: what this "
                                                    "process serves)")) -> Response:
        admin(request)
        return json_response(plane.rollback(name, to=to, expected=expected))

    @app.post("/v1/models/{name}/promote", summary="Admin: serve a version now (a held one with force=true)",
              description="Judges the version with the guarded swap again and serves it when it "
                          "passes; `force=true` serves it without judging (a version the guarded "
                          "swap held back). Every worker follows.", **ADMIN_DOC)
    def promote_model(name: str, request: Request,
                      version: str = Query(..., description="the version to serve"),
                      force: bool = Query(False, description="serve it even if the guarded swap "
                                          "holds it back")) -> Response:
        admin(request)
        return json_response(plane.promote(name, version, force))

    @app.post("/v1/models/{name}/abort", summary="Admin: abort a version (a canary): it serves "
              "nowhere and is not fetched again", description="The version is rejected in the "
              "repository: `<name>@next` no longer resolves to it, the registry never makes it "
              "live, the syncer does not download it again; `POST .../reload` clears it. A live "
              "version cannot be aborted (roll back instead: 409).", **ADMIN_DOC)
    def abort_version(name: str, request: Request,
                      version: str = Query(..., description="the version to abort")) -> Response:
        admin(request)
        return json_response(plane.abort(name, version))

    @app.get("/v1/experiments", summary="Experiment layers: arms, bucket ranges, pinned versions, "
             "this worker's split counts and sample-ratio checks",
             responses={404: error_doc("No experiments in the models config")})
    def experiments() -> Response:
        return json_response(plane.experiments())

    @app.get("/v1/models/{name}/health", summary="Model health: hidden-layer statistics of live "
             "traffic per window, against the package's baseline (docs/insight.md)",
             responses={404: error_doc("Unknown model"), 422: error_doc("Not a native model")})
    def model_health(name: str, version: str | None = Query(
            None, description="a version (default: the live one)")) -> Response:
        return json_response(plane.health(name, version))

    @app.post("/v1/models/{name}/explain", summary="Per-ad attributions: each feature group's "
              "influence and contribution to the logit (admin unless CTR_EXPLAIN_PUBLIC)",
              description="Same body as score, at most 100 ads. Per ad: `pctr`, `logit`, "
              "`remainder` and per group `influence` (L2 norm of d pCTR / d x over the group's "
              "slice of the MLP input) and `contribution` (sum over the slice of x * d logit / "
              "d x); the contributions plus the remainder add up to the logit (docs/insight.md).",
              openapi_extra=EXPLAIN_DOC,
              responses={400: error_doc("Not JSON"), 404: error_doc("Unknown model"),
                         413: error_doc("More than 100 ads, or body bytes (CTR_MAX_BODY_BYTES)"),
                         415: error_doc("Not a JSON content type"),
                         422: error_doc("Invalid body, or a model the engine does not run"),
                         **{k: v for k, v in ADMIN_DOC["responses"].items() if k in (401, 403)}})
    async def explain(name: str, request: Request) -> Response:
        status = 500
        try:
            if not explain_public:
                admin(request)
            check_content_type(request.headers.get("content-type"))
            check_length(request.headers.get("content-length"), max_body)
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_body:
                    raise too_large(max_body)
                chunks.append(chunk)
            out = plane.explain(b"".join(chunks), name)
            status = 200
            return Response(out, media_type="application/json")
        except ScoringError as exc:
            status = exc.status_code
            raise
        finally:
            plane.count_explain(name, status)

    install_ui(app, plane)

    # -- operations ----------------------------------------------------------------------------

    @app.get("/healthz", summary="Liveness: 200 while the process serves HTTP")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz", summary="Readiness: 503 until every configured model is loaded and warm, "
             "and while the drain file (CTR_DRAIN_FILE) exists",
             responses={503: error_doc("Not ready; says which model is missing, or draining")})
    async def readyz() -> Response:
        if drain_file is not None and drain_file.exists():
            return json_response({"error": f"draining: {drain_file} exists (the process is "
                                  "stopping; it still scores what it is sent)", "draining": True}, 503)
        ok, body = plane.ready()
        board = ready_board
        if ok and board is not None:
            n = board.ready_workers()
            if n < board.workers:
                return json_response({"error": f"not ready: {n} of {board.workers} worker "
                                      "processes have their models loaded", **body,
                                      "status": "not ready", "workers_ready": n}, 503)
        if ok:
            return json_response(body)
        return json_response({"error": "not ready: " + "; ".join(body["missing"]), **body}, 503)

    @app.get("/metrics", summary="Prometheus metrics (text format)")
    def metrics_endpoint() -> Response:
        data, ctype = metrics.render()
        return Response(data, media_type=ctype)

    # -- errors --------------------------------------------------------------------------------

    @app.exception_handler(ScoringError)
    async def scoring_error(request: Request, exc: ScoringError) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return error_response(exc.message, exc.status_code, headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"{request.url.path}: no such endpoint"
        elif exc.status_code == 405:
            message = f"{request.method} {request.url.path}: method not allowed"
        return error_response(message, exc.status_code, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "path", "query"))
        return error_response(f"{where or 'request'}: {first.get('msg', 'invalid')}", 422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("%s %s: unexpected error", request.method, request.url.path, exc_info=exc)
        return error_response("internal error; the service logged the details", 500)

    install_openapi(app, openapi_components(settings.max_values_per_group))
    app.add_middleware(ScoreFastPath, plane=plane, max_body=max_body)
    return app
