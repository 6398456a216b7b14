"""The score endpoints as plain ASGI, in front of FastAPI's routing.

Measured on one core, a FastAPI route that reads a body and returns bytes costs about 120 us per
request more than the same thing in plain ASGI (request object, route matching, dependency
solving, response class), about a tenth of a 100-ad request. So ``POST /v1/score`` and
``POST /v1/models/{name}/score`` are answered here, with the same checks, errors and data plane
as the FastAPI routes (which stay for the OpenAPI document and for anything this does not
match). Everything else passes through untouched.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

from ..errors import MalformedRequest, PayloadTooLarge, ScoringError
from .dataplane import DataPlane
from .schemas import error_json

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_PREFIX = "/v1/models/"
_SUFFIX = "/score"
_JSON_HEADERS = [(b"content-type", b"application/json")]


def check_content_type(ctype: str | None) -> None:
    """JSON only; a missing Content-Type is taken as JSON (simple clients omit it)."""
    if ctype is None:
        return
    media = ctype.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise ScoringError(f"Content-Type: expected application/json, got {ctype!r}", 415)


def check_length(length: str | None, limit: int) -> None:
    """Refuse a body that says it is larger than ``limit`` before reading it."""
    if length is None:
        return
    try:
        n = int(length)
    except ValueError:
        raise MalformedRequest(f"Content-Length: expected an integer, got {length!r}") from None
    if n > limit:
        raise PayloadTooLarge(f"body: {n} bytes, more than {limit} (CTR_MAX_BODY_BYTES)")


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"body: more than {limit} bytes (CTR_MAX_BODY_BYTES)")


class ScoreFastPath:
    """ASGI middleware: answers the two score endpoints itself, passes the rest on."""

    def __init__(self, app: ASGIApp, plane: DataPlane, max_body: int) -> None:
        self.app = app
        self.plane = plane
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            name = None
            if path == "/v1/score" or (path.startswith(_PREFIX) and path.endswith(_SUFFIX) and (
                    name := path[len(_PREFIX):-len(_SUFFIX)]) and "/" not in name):
                if scope["method"] == "POST":
                    return await self._score(scope, receive, send, name)
                message = f"{scope['method']} {path}: method not allowed; use POST"
                return await _answer(send, 405, error_json(message), [(b"allow", b"POST")])
        await self.app(scope, receive, send)

    async def _score(self, scope: Scope, receive: Receive, send: Send, name: str | None) -> None:
        try:
            ctype = length = None
            for key, value in scope["headers"]:
                if key == b"content-type":
                    ctype = value.decode("latin-1")
                elif key == b"content-length":
                    length = value.decode("latin-1")
            check_content_type(ctype)
            check_length(length, self.max_body)
            body = await self._body(receive)
            status, out = 200, await self.plane.score(body, name)
        except ScoringError as exc:
            status, out = exc.status_code, error_json(exc.message)
        except Exception:  # a bug: log it, leak nothing
            log.exception("POST %s: unexpected error", scope["path"])
            status, out = 500, error_json("internal error; the service logged the details")
        await _answer(send, status, out)

    async def _body(self, receive: Receive) -> bytes:
        message = await receive()
        body = message.get("body", b"")
        if not message.get("more_body", False):
            if len(body) > self.max_body:
                raise too_large(self.max_body)
            return body
        chunks, size = [body], len(body)
        while message.get("more_body", False):
            message = await receive()
            if message["type"] == "http.disconnect":
                raise MalformedRequest("body: the client disconnected before sending all of it")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise too_large(self.max_body)
            chunks.append(chunk)
        return b"".join(chunks)


async def _answer(send: Send, status: int, body: bytes,
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": _JSON_HEADERS + [(b"content-length", str(len(body)).encode())]
                + (headers or [])})
    await send({"type": "http.response.body", "body": body})
