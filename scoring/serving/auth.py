"""Admin auth: ``Authorization: Bearer <CTR_ADMIN_TOKEN>``, compared in constant time, on the
admin port when there is one (``CTR_ADMIN_PORT``)."""

from __future__ import annotations

import hmac

from fastapi import Request

from ..errors import Forbidden, Unauthorized


class AdminAuth:
    """``Authorization: Bearer <CTR_ADMIN_TOKEN>``, compared in constant time."""

    def __init__(self, token: str | None, port: int | None = None) -> None:
        self._token = token.encode() if token else None
        self._port = port  # with an admin port, admin requests are only taken there

    def __call__(self, request: Request) -> None:
        if self._port is not None:
            server = request.scope.get("server")
            if not server or server[1] != self._port:
                raise Forbidden(f"admin endpoints are served on the admin port {self._port} "
                                "(CTR_ADMIN_PORT), not on this one")
        if self._token is None:
            raise Forbidden("admin endpoints are disabled: start the service with CTR_ADMIN_TOKEN "
                            "set to a secret and send 'Authorization: Bearer <token>'")
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise Unauthorized("Authorization: expected 'Bearer <token>' (the CTR_ADMIN_TOKEN)")
        if not hmac.compare_digest(given.strip().encode(), self._token):
            raise Unauthorized("Authorization: wrong admin token")
