"""Admin auth: ``Authorization: Bearer <CTR_ADMIN_TOKEN>``, compared in constant time."""

from __future__ import annotations

import hmac

from fastapi import Request

from ..errors import Forbidden, Unauthorized


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
