"""WebHDFS: the NameNode's REST API (``webhdfs://nn1:9870,nn2:9870/path``).

Three read-only operations, as Apache Hadoop documents them: ``GETFILESTATUS`` and ``LISTSTATUS``
(JSON ``FileStatus`` / ``FileStatuses``) and ``OPEN`` with ``offset``, which the NameNode answers
with ``307 TEMPORARY_REDIRECT`` to a DataNode that streams the bytes. ``user.name`` is sent when
given (simple authentication). Errors come back as ``{"RemoteException": {...}}``; a standby
NameNode answers ``StandbyException``, which makes the syncer try the next NameNode.

HDFS's own ``GETFILECHECKSUM`` is an MD5 of MD5s of CRC32C block checksums, not the file's md5, so
it is never used: the package's ``checksums.md5`` is the reference.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
from typing import Any, Iterator, Mapping
from urllib.parse import quote, urlencode, urljoin, urlsplit

import requests

from . import rest
from .base import Download, RemoteFile, Source, SourceError

PREFIX = "/webhdfs/v1"


class WebHdfsSource(Source):
    """A model package directory in HDFS, read through NameNodes (and their DataNodes)."""

    scheme = "webhdfs"
    default_port = 9870

    def __init__(self, hosts: tuple[str, ...], path: str, *, user: str | None = None,
                 tls: bool = False, timeout: tuple[float, float] = (5.0, 30.0),
                 session: requests.Session | None = None) -> None:
        super().__init__(hosts, path)
        self.user = user
        self.tls = tls
        self.timeout = timeout
        self.session = session or rest.new_session()

    def describe(self) -> str:
        scheme = "swebhdfs" if self.tls and self.scheme == "webhdfs" else self.scheme
        return f"{scheme}://{','.join(self.hosts)}{self.path}"

    # -- raw operations, one small call each ------------------------------------------------

    def _url(self, host: str, rel: str, op: str, **params: Any) -> str:
        full = posixpath.join(self.path, rel) if rel else self.path
        query = {"op": op, **{k: v for k, v in params.items() if v is not None}}
        if self.user:
            query["user.name"] = self.user
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{host}{PREFIX}{quote(full, safe='/')}?{urlencode(query)}"

    def _json(self, host: str, rel: str, op: str) -> dict:
        what = f"{op} {posixpath.join(self.path, rel) if rel else self.path}"
        resp = rest.get(self.session, self._url(host, rel, op), host, what, timeout=self.timeout)
        if resp.status_code != 200:
            raise rest.response_error(resp, host, what)
        body = rest.read_capped(resp, host, what)
        try:
            raw = json.loads(body)
        except (ValueError, RecursionError):
            raise SourceError(f"{what} on {host}: answer is not JSON (is this a WebHDFS/HttpFS "
                              "endpoint?)", retriable=False, host=host) from None
        if not isinstance(raw, dict):
            raise SourceError(f"{what} on {host}: expected a JSON object", retriable=False, host=host)
        return raw

    def get_file_status(self, host: str, rel: str = "") -> dict:
        raw = self._json(host, rel, "GETFILESTATUS")
        status = raw.get("FileStatus")
        if not isinstance(status, dict):
            raise SourceError(f"GETFILESTATUS on {host}: no FileStatus object in the answer",
                              retriable=False, host=host)
        return status

    def list_status(self, host: str, rel: str = "") -> list[dict]:
        raw = self._json(host, rel, "LISTSTATUS")
        try:
            entries = raw["FileStatuses"]["FileStatus"]
        except (KeyError, TypeError):
            entries = None
        if not isinstance(entries, list):
            raise SourceError(f"LISTSTATUS on {host}: no FileStatuses.FileStatus list in the answer",
                              retriable=False, host=host)
        return [e for e in entries if isinstance(e, dict)]

    # -- Source -----------------------------------------------------------------------------

    def stat_files(self, host: str, names: list[str]) -> Mapping[str, RemoteFile]:
        """One LISTSTATUS per directory of the package that holds listed files."""
        out: dict[str, RemoteFile] = {}
        by_dir: dict[str, list[str]] = {}
        for name in names:
            by_dir.setdefault(posixpath.dirname(name), []).append(name)
        for rel_dir, members in sorted(by_dir.items()):
            listing = {str(e.get("pathSuffix", "")): e for e in self.list_status(host, rel_dir)}
            for name in members:
                entry = listing.get(posixpath.basename(name))
                if entry is None:
                    raise SourceError(f"{name}: listed in checksums.md5 but not found under "
                                      f"{self.describe()} (LISTSTATUS on {host})",
                                      retriable=False, host=host)
                try:
                    length = int(entry.get("length", -1))
                except (TypeError, ValueError):
                    length = -1
                out[name] = RemoteFile(name, length, str(entry.get("type", "FILE")))
        return out

    @contextlib.contextmanager
    def open(self, host: str, name: str, offset: int = 0) -> Iterator[Download]:
        what = f"OPEN {posixpath.join(self.path, name)}"
        url = self._url(host, name, "OPEN", offset=offset or None)
        resp = rest.get(self.session, url, host, what, timeout=self.timeout, redirects=False)
        if resp.status_code in (301, 302, 303, 307, 308):
            location = resp.headers.get("Location", "")
            resp.close()
            target = urljoin(url, location)
            if urlsplit(target).scheme not in ("http", "https"):
                raise SourceError(f"{what} on {host}: redirect to an unsupported URL {location!r}",
                                  retriable=False, host=host)
            datanode = urlsplit(target).netloc
            resp = rest.get(self.session, target, host, f"{what} via DataNode {datanode}",
                            timeout=self.timeout)
        if resp.status_code != 200:
            err = rest.response_error(resp, host, what)
            if resp.status_code == 404:
                err = SourceError(f"{err}; {self._explain_missing(host, name)}", retriable=False, host=host)
            raise err
        with rest.as_download(resp, offset, host, what) as dl:
            yield dl

    def _explain_missing(self, host: str, name: str) -> str:
        """Why a package file is missing, from GETFILESTATUS of the package directory."""
        try:
            status = self.get_file_status(host)
        except SourceError as exc:
            if "HTTP 404" in str(exc):
                return f"the package directory {self.path} does not exist"
            return "the package directory cannot be checked"
        if status.get("type") != "DIRECTORY":
            return f"{self.path} is a {str(status.get('type', '?')).lower()}; --source must name the package directory"
        return f"the directory {self.path} exists but has no {name} (an export still being written?)"

    def close(self) -> None:
        self.session.close()
