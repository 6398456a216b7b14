"""Remote kinds a model package can be synced from, one small module each.

:func:`open_source` turns a ``--source`` URL into a :class:`Source`:

* ``webhdfs://nn1:9870,nn2:9870/models/ctr`` (``swebhdfs://`` for TLS): NameNode REST, 307 to DataNodes
* ``httpfs://h1:14000,h2:14000/models/ctr``: HttpFS gateways
* ``http(s)://host/path/to/package``: any web server
* ``file:///path/to/package``: a local or mounted directory

``?user.name=NAME`` in a WebHDFS/HttpFS URL (or ``user=``) sets the HDFS user (simple auth).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, unquote, urlsplit

from .base import Download, RemoteFile, Source, SourceError, SourceURLError
from .http import HttpSource
from .httpfs import HttpFsSource
from .local import LocalSource
from .webhdfs import WebHdfsSource

__all__ = ["Download", "RemoteFile", "Source", "SourceError", "SourceURLError", "open_source"]

SCHEMES = "webhdfs://, swebhdfs://, httpfs://, http://, https:// or file://"
_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+)(?::(\d{1,5}))?$")


def _hosts(netloc: str, default_port: int, url: str) -> tuple[str, ...]:
    if "@" in netloc:
        raise SourceURLError(f"--source {url!r}: credentials in the host part are not supported; "
                             "give the HDFS user as ?user.name=NAME or --user")
    hosts = []
    for item in netloc.split(","):
        m = _HOST_RE.match(item.strip())
        if not m:
            raise SourceURLError(f"--source {url!r}: {item!r} is not a host[:port]; expected e.g. "
                                 "nn1:9870,nn2:9870")
        port = int(m.group(2) or default_port)
        if not 0 < port < 65536:
            raise SourceURLError(f"--source {url!r}: port {port} is out of range")
        hosts.append(f"{m.group(1)}:{port}")
    if len(set(hosts)) != len(hosts):
        raise SourceURLError(f"--source {url!r}: a host is listed twice")
    return tuple(hosts)


def _package_path(path: str, url: str) -> str:
    path = unquote(path).rstrip("/")
    if not path.startswith("/") or path == "":
        raise SourceURLError(f"--source {url!r}: needs the absolute path of the model package "
                             "directory, e.g. webhdfs://nn1:9870/models/ctr")
    if any(part in ("..", ".") for part in path.split("/")):
        raise SourceURLError(f"--source {url!r}: the path may not contain '.' or '..'")
    return path


def open_source(url: str, *, user: str | None = None,
                timeout: tuple[float, float] = (5.0, 30.0)) -> Source:
    """Build the source a URL names; raise :class:`SourceURLError` saying what is wrong."""
    if not isinstance(url, str) or "://" not in url:
        raise SourceURLError(f"--source {url!r}: expected a URL starting with {SCHEMES}")
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme in ("webhdfs", "swebhdfs", "httpfs"):
        query = parse_qs(parts.query)
        unknown = set(query) - {"user.name", "user"}
        if unknown:
            raise SourceURLError(f"--source {url!r}: unknown query parameter {sorted(unknown)[0]!r}; "
                                 "only user.name is understood")
        user = (query.get("user.name") or query.get("user") or [user])[0] or None
        cls = HttpFsSource if scheme == "httpfs" else WebHdfsSource
        if not parts.netloc:
            raise SourceURLError(f"--source {url!r}: no host; expected e.g. {scheme}://nn1:9870/models/ctr")
        return cls(_hosts(parts.netloc, cls.default_port, url), _package_path(parts.path, url),
                   user=user, tls=scheme == "swebhdfs", timeout=timeout)
    if scheme in ("http", "https"):
        if not parts.netloc or "@" in parts.netloc:
            raise SourceURLError(f"--source {url!r}: expected {scheme}://host[:port]/path/to/package")
        path = _package_path(parts.path, url)
        return HttpSource(f"{scheme}://{parts.netloc}{path}", parts.netloc, path, timeout=timeout)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise SourceURLError(f"--source {url!r}: file URLs name a local path: file:///path "
                                 "(three slashes)")
        return LocalSource(_package_path(parts.path, url))
    raise SourceURLError(f"--source {url!r}: unsupported scheme {parts.scheme!r}; expected {SCHEMES}")
