"""Admin auth: ``Authorization: Bearer <CTR_ADMIN_TOKEN>``, compared in constant time, on the
admin port when there is one (``CTR_ADMIN_PORT``)."""

from __future__ import annotations

import hmac
from pathlib import Path

from fastapi import Request

from ..errors import Forbidden, Unauthorized


class AdminAuth:
    """``Authorization: Bearer <CTR_ADMIN_TOKEN>``, compared in constant time."""

    def __init__(self, token: str | None, port: int | None = None,
                 token_file: Path | None = None) -> None:
        self._token = token.encode() if token else None
        self._port = port  # with an admin port, admin requests are only taken there
        self._file = token_file  # read at each admin request: a rotated Secret applies at once

    def _current(self) -> bytes | None:
        if self._file is None:
            return self._token
        try:
            return self._file.read_bytes().strip() or None
        except OSError:
            return None

    def __call__(self, request: Request) -> None:
        if self._port is not None:
            server = request.scope.get("server")
            if not server or server[1] != self._port:
                raise Forbidden(f"admin endpoints are served on the admin port {self._port} "
                                "(CTR_ADMIN_PORT), not on this one")
        token = self._current()
        if token is None and self._file is not None:
            raise Forbidden(f"admin endpoints are disabled: the admin token file {self._file} "
                            "(CTR_ADMIN_TOKEN_FILE) is empty or unreadable")
        if token is None:
            raise Forbidden("admin endpoints are disabled: start the service with CTR_ADMIN_TOKEN "
                            "set to a secret and send 'Authorization: Bearer <token>'")
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise Unauthorized("Authorization: expected 'Bearer <token>' (the CTR_ADMIN_TOKEN)")
        if not hmac.compare_digest(given.strip().encode(), token):
            raise Unauthorized("Authorization: wrong admin token")
