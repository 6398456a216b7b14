"""Any web server or object store that serves the package's files (``http(s)://host/path``).

Files are fetched as ``<url>/<relative path>``. A dropped download resumes with a ``Range``
request; a server that ignores it answers 200 with the whole file, which then starts over. There is
no listing, so sizes are checked from ``Content-Length`` and while streaming.
"""

from __future__ import annotations

import contextlib
from typing import Iterator
from urllib.parse import quote

import requests

from . import rest
from .base import Download, Source, SourceError


class HttpSource(Source):
    scheme = "http"

    def __init__(self, base_url: str, host: str, path: str, *, timeout: tuple[float, float] = (5.0, 30.0),
                 session: requests.Session | None = None) -> None:
        super().__init__((host,), path)
        self.base_url = base_url.rstrip("/")
        self.scheme = base_url.split("://", 1)[0]
        self.timeout = timeout
        self.session = session or rest.new_session()

    def describe(self) -> str:
        return self.base_url

    @contextlib.contextmanager
    def open(self, host: str, name: str, offset: int = 0) -> Iterator[Download]:
        url = f"{self.base_url}/{quote(name, safe='/')}"
        what = f"GET {url}"
        headers = {"Range": f"bytes={offset}-", "Accept-Encoding": "identity"} if offset else \
            {"Accept-Encoding": "identity"}
        resp = rest.get(self.session, url, host, what, timeout=self.timeout, headers=headers)
        if resp.status_code not in (200, 206):
            raise rest.response_error(resp, host, what)
        start = offset if resp.status_code == 206 else 0
        if resp.status_code == 206 and not resp.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
            resp.close()
            raise SourceError(f"{what} on {host}: Content-Range does not start at {offset}",
                              retriable=True, host=host)
        with rest.as_download(resp, start, host, what) as dl:
            yield dl

    def close(self) -> None:
        self.session.close()
