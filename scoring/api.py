"""The HTTP API (contract section 3): one route table built by :func:`create_app`.

Endpoints only do HTTP (content type, body size, admin auth, status codes) and hand over to
:class:`~scoring.dataplane.DataPlane`; the two score endpoints are plain ASGI
(:mod:`scoring.fastpath`) in front of the routes, and are added to the OpenAPI document here. Every :class:`~scoring.errors.ScoringError` becomes
``{"error": message}`` with its status; anything unexpected is logged with its traceback and
answered with a generic 500 that leaks nothing.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from typing import Any, AsyncIterator, Protocol, Sequence

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from . import __version__
from .dataplane import DataPlane, DefaultRoute
from .errors import Forbidden, ScoringError, Unauthorized
from .fastpath import ScoreFastPath
from .metrics import Metrics
from .registry import Registry
from .schemas import error_json, openapi_components
from .settings import Settings

log = logging.getLogger(__name__)

JSON = "application/json"


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


# -- admin auth ----------------------------------------------------------------------------------


class AdminAuth:
    """``Authorization: Bearer <CTR_ADMIN_TOKEN>``, compared in constant time."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None

    def __call__(self, request: Request) -> None:
        if self._token is None:
            raise Forbidden("admin endpoints are disabled: start the service with CTR_ADMIN_TOKEN "
                            "set to a secret and send 'Authorization: Bearer <token>'")
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise Unauthorized("Authorization: expected 'Bearer <token>' (the CTR_ADMIN_TOKEN)")
        if not hmac.compare_digest(given.strip().encode(), self._token):
            raise Unauthorized("Authorization: wrong admin token")


# -- OpenAPI -------------------------------------------------------------------------------------


def _error_doc(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {JSON: {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}


SCORE_EXAMPLE = {
    "request_id": "r-1",
    "context": {"user_id": "u42", "city": "bj", "hour": "14"},
    "ads": [{"id": "a1", "features": {"ad_id": "a1", "category": ["hotpot", "bbq"]}},
            {"id": "a2", "features": {"ad_id": 1234567890123}}],
}
SCORE_RESPONSES = {
    "200": {"description": "One pCTR per ad, in request order",
            "content": {JSON: {"schema": {"$ref": "#/components/schemas/ScoreResponse"},
                               "example": {"model": "ctr", "version": "20261122.1",
                                           "scores": [0.0132, 0.0071], "request_id": "r-1"}}}},
    "400": _error_doc("Not JSON"),
    "404": _error_doc("Unknown model"),
    "413": _error_doc("Too many ads (CTR_MAX_ADS), values in a group (CTR_MAX_VALUES_PER_GROUP) "
                      "or body bytes (CTR_MAX_BODY_BYTES)"),
    "415": _error_doc("Not a JSON content type"),
    "422": _error_doc("Valid JSON that does not fit the schema or the model (unknown group, "
                      "dense length, non-finite number, id out of range)"),
    "503": _error_doc("The model is not loaded yet"),
}


def score_operation(named: bool) -> dict[str, Any]:
    """OpenAPI for a score endpoint (answered by :class:`ScoreFastPath`, not a FastAPI route)."""
    op: dict[str, Any] = {
        "summary": "Score ads with a named model" if named else
                   "Score ads with the default model (or the experiment split)",
        "operationId": "score_named" if named else "score_default",
        "requestBody": {"required": True, "content": {JSON: {
            "schema": {"$ref": "#/components/schemas/ScoreRequest"}, "example": SCORE_EXAMPLE}}},
        "responses": SCORE_RESPONSES,
    }
    if named:
        op["parameters"] = [{"name": "name", "in": "path", "required": True,
                             "schema": {"type": "string"}, "description": "The model's name"}]
    return op


ADMIN_DOC = {"responses": {401: _error_doc("Wrong or missing bearer token"),
                           403: _error_doc("Admin endpoints disabled (CTR_ADMIN_TOKEN unset)"),
                           404: _error_doc("Unknown model"),
                           409: _error_doc("Nothing to roll back to, or the version failed to load")}}


def _install_openapi(app: FastAPI, components: dict[str, Any]) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(components)
            schema["paths"] = {"/v1/models/{name}/score": {"post": score_operation(True)},
                               "/v1/score": {"post": score_operation(False)}, **schema["paths"]}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# -- the app -------------------------------------------------------------------------------------


def create_app(settings: Settings, registry: Registry, *, metrics: Metrics | None = None,
               services: Sequence[Service] = (), default_route: DefaultRoute | None = None) -> FastAPI:
    """The service's ASGI app. ``registry`` is started and stopped with it, then ``services``."""
    metrics = metrics or registry.metrics or Metrics()
    if registry.metrics is None:
        registry.metrics = metrics
    plane = DataPlane(settings, registry, metrics, default_route)
    admin = AdminAuth(settings.admin_token.get_secret_value() if settings.admin_token else None)
    max_body = settings.max_body_bytes

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

    @app.get("/v1/models/{name}", summary="One model", responses={404: _error_doc("Unknown model")})
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
              **ADMIN_DOC)
    def rollback_model(name: str, request: Request) -> Response:
        admin(request)
        return json_response(plane.rollback(name))

    # -- operations ----------------------------------------------------------------------------

    @app.get("/healthz", summary="Liveness: 200 while the process serves HTTP")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz", summary="Readiness: 503 until every configured model is loaded and warm",
             responses={503: _error_doc("Not ready; says which model is missing")})
    async def readyz() -> Response:
        ok, body = plane.ready()
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

    _install_openapi(app, openapi_components(settings.max_values_per_group))
    app.add_middleware(ScoreFastPath, plane=plane, max_body=max_body)
    return app
