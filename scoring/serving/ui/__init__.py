"""``GET /ui`` and ``/ui/models/{name}``: the service's own status page for the on-call engineer.

One self-contained HTML file (``page.html``: inline CSS and JavaScript, charts drawn as inline
SVG, nothing from a CDN) that polls the JSON API every two seconds: ``GET /v1/models`` and
``GET /v1/models/{name}/health``. It shows the live versions and their state, held versions with
the reason, each layer's fluctuation over the recent windows with the baseline band, the pCTR
histogram live against the baseline, the expected AUC, group absent shares, alarms and the last
guarded-swap decisions.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from starlette.responses import Response

_PAGE: bytes | None = None


def page() -> bytes:
    global _PAGE
    if _PAGE is None:
        _PAGE = resources.files(__package__).joinpath("page.html").read_bytes()
    return _PAGE


def install_ui(app: FastAPI, plane) -> None:
    headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
               "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
                                          "style-src 'unsafe-inline'; img-src 'self' data:"}

    @app.get("/ui", summary="Status page: models, health, guarded swaps (HTML)", include_in_schema=True)
    def ui() -> Response:
        return Response(page(), media_type="text/html; charset=utf-8", headers=headers)

    @app.get("/ui/models/{name}", summary="Status page of one model (HTML)")
    def ui_model(name: str) -> Response:
        plane.model(name)  # 404 for an unknown model
        return Response(page(), media_type="text/html; charset=utf-8", headers=headers)
