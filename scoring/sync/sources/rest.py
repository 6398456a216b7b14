"""HTTP plumbing shared by the WebHDFS, HttpFS and plain HTTP sources (requests-based).

Turns every way a request can fail into a :class:`SourceError` that says whether another host or
a later try may help: connection errors, timeouts (also mid-body), dropped connections, 5xx, 408,
429 and the HDFS exceptions ``StandbyException`` / ``RetriableException`` are retriable; the rest
(404 not found, 403 permission denied, 400 bad parameter, ...) are final.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Iterator

import requests
import urllib3

from .base import CHUNK, Download, SourceError

log = logging.getLogger(__name__)

RETRIABLE_STATUS = {408, 429}
# Java class simple names a NameNode / HttpFS answers with when another host or a later try helps.
RETRIABLE_EXCEPTIONS = {"StandbyException", "RetriableException", "ObserverRetryOnActiveException",
                        "SafeModeException"}
USER_AGENT = "ctr-sync/0.1"
MAX_JSON_BYTES = 1 << 20  # a GETFILESTATUS / LISTSTATUS answer of a package directory is a few KB


def new_session() -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    session.trust_env = False  # an HTTP(S)_PROXY meant for the internet must not catch HDFS calls
    return session


def network_error(exc: Exception, host: str, what: str) -> SourceError:
    """A request that got no (complete) answer: always worth another host."""
    if isinstance(exc, requests.Timeout) or "timed out" in str(exc).lower():
        why = "timed out"
    elif isinstance(exc, requests.exceptions.ChunkedEncodingError) or "IncompleteRead" in str(exc):
        why = "connection dropped mid-transfer"
    else:
        why = "connection failed"
    return SourceError(f"{what} on {host}: {why} ({_short(exc)})", retriable=True, host=host)


def remote_exception(body: bytes) -> tuple[str, str] | None:
    """``(exception, message)`` from a WebHDFS ``{"RemoteException": {...}}`` error body."""
    try:
        raw = json.loads(body.decode("utf-8", "replace"))
        rex = raw["RemoteException"]
        name = str(rex.get("exception") or rex.get("javaClassName", "").rsplit(".", 1)[-1])
        return name, str(rex.get("message", ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def response_error(resp: requests.Response, host: str, what: str) -> SourceError:
    """An HTTP error answer as a SourceError; a RemoteException body becomes its message."""
    try:
        body = resp.raw.read(16 << 10, decode_content=True) if resp.raw is not None else b""
    except Exception:  # the body of an error answer is a courtesy
        body = b""
    finally:
        resp.close()
    rex = remote_exception(body)
    status = resp.status_code
    if rex:
        name, message = rex
        detail = f"{name}: {message}" if message else name
        retriable = name in RETRIABLE_EXCEPTIONS or status >= 500 or status in RETRIABLE_STATUS
    else:
        text = body.decode("utf-8", "replace").strip().replace("\n", " ")[:200]
        if text.startswith("<"):  # an HTML error page says no more than the status line
            text = ""
        detail = f"{resp.reason or ''} {text}".strip()
        retriable = status >= 500 or status in RETRIABLE_STATUS
    hint = ""
    if status == 404:
        hint = " (not found: check the --source path)"
    elif status in (401, 403) and not retriable:
        hint = " (permission denied: check --user / the remote permissions)"
    return SourceError(f"{what} on {host}: HTTP {status} {detail}{hint}", retriable=retriable, host=host)


def iter_body(resp: requests.Response, host: str, what: str) -> Iterator[bytes]:
    """The response body in chunks; failures mid-body become retriable SourceErrors."""
    raw = resp.raw
    try:
        # read1 hands over whatever arrived, so a connection that drops mid-file leaves every
        # received byte with us and the download resumes exactly there.
        while chunk := raw.read1(CHUNK, decode_content=True):
            yield chunk
    except (requests.RequestException, OSError, urllib3.exceptions.HTTPError) as exc:
        raise network_error(exc, host, what) from None
    finally:
        resp.close()


def read_capped(resp: requests.Response, host: str, what: str, limit: int = MAX_JSON_BYTES) -> bytes:
    """A whole (small) answer, refused unread past ``limit`` bytes: a metadata answer is a few KB,
    and a server that streams more is not one to trust with our memory."""
    declared = resp.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        resp.close()
        raise SourceError(f"{what} on {host}: the answer is {declared} bytes, above the "
                          f"{limit} bytes a metadata answer may have", retriable=False, host=host)
    body = bytearray()
    for chunk in iter_body(resp, host, what):
        body += chunk
        if len(body) > limit:
            resp.close()
            raise SourceError(f"{what} on {host}: the answer is larger than the {limit} bytes a "
                              "metadata answer may have", retriable=False, host=host)
    return bytes(body)


@contextlib.contextmanager
def as_download(resp: requests.Response, start: int, host: str, what: str) -> Iterator[Download]:
    """A 200/206 answer as a :class:`Download` starting at byte ``start``; closed afterwards."""
    length = resp.headers.get("Content-Length")
    if length is not None and not length.strip().isdigit():
        resp.close()
        raise SourceError(f"{what} on {host}: the answer's Content-Length is not a number "
                          f"({length[:40]!r})", retriable=True, host=host)
    try:
        yield Download(start, int(length) if length is not None else None, iter_body(resp, host, what))
    finally:
        resp.close()


def get(session: requests.Session, url: str, host: str, what: str, *, timeout: tuple[float, float],
        headers: dict | None = None, redirects: bool = True) -> requests.Response:
    """GET with streaming on; network failures become retriable SourceErrors."""
    log.debug("GET %s", url)
    try:
        return session.get(url, stream=True, timeout=timeout, headers=headers,
                           allow_redirects=redirects)
    except requests.RequestException as exc:
        raise network_error(exc, host, what) from None


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "..."
