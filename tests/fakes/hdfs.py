"""Test WebHDFS and HttpFS servers, written from Apache Hadoop's WebHDFS REST API documentation.

A local directory plays the HDFS namespace. Three roles share one request handler:

* ``namenode``: ``GETFILESTATUS`` / ``LISTSTATUS`` answer ``FileStatus`` / ``FileStatuses`` JSON;
  ``OPEN`` answers ``307 TEMPORARY_REDIRECT`` with ``Location`` on a DataNode;
* ``datanode``: ``OPEN`` with ``offset`` / ``length`` streams the bytes;
* ``httpfs``: the gateway on port 14000: JSON ops like the NameNode, ``OPEN`` streams directly.

Errors are ``{"RemoteException": {"exception", "javaClassName", "message"}}`` with the documented
statuses (404 FileNotFoundException, 403 AccessControlException / StandbyException, 400
IllegalArgumentException, 500 RuntimeException). :class:`Faults` injects what goes wrong in real
clusters; :class:`Served` counts the bytes of file data each server sent, per path.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

PREFIX = "/webhdfs/v1"
CHUNK = 64 << 10


@dataclass
class Faults:
    """What one server does wrong; tests flip these while it runs."""

    standby: bool = False                 # a standby NameNode: 403 StandbyException on everything
    retriable: int = 0                    # next N requests: 403 RetriableException
    errors_5xx: int = 0                   # next N requests: 500 RuntimeException
    delay: float = 0.0                    # seconds to wait before answering any request
    drop: dict[str, int] = field(default_factory=dict)  # path suffix -> bytes sent before dropping (once)
    corrupt: set[str] = field(default_factory=set)      # path suffixes whose bytes get one bit flipped
    require_user: str | None = None       # answer 401 SecurityException unless user.name matches
    json_padding: int = 0                 # bytes of filler added to every JSON answer
    hide_length: bool = False             # JSON answers without Content-Length (streamed)


class Served:
    """What a server did, for assertions: file bytes per HDFS path, requests as (op, path, query)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bytes: Counter[str] = Counter()
        self.requests: list[tuple[str, str, dict]] = []

    def file_bytes(self, exclude: tuple[str, ...] = ()) -> int:
        with self.lock:
            return sum(n for p, n in self.bytes.items() if not p.endswith(exclude))

    def ops(self, op: str) -> list[tuple[str, str, dict]]:
        with self.lock:
            return [r for r in self.requests if r[0] == op]


def _status_json(path: Path, suffix: str) -> dict:
    st = os.lstat(path)
    kind = "SYMLINK" if stat.S_ISLNK(st.st_mode) else "DIRECTORY" if stat.S_ISDIR(st.st_mode) else "FILE"
    is_file = kind == "FILE"
    return {"accessTime": int(st.st_atime * 1000) if is_file else 0,
            "blockSize": 134217728 if is_file else 0,
            "childrenNum": len(os.listdir(path)) if kind == "DIRECTORY" else 0,
            "fileId": st.st_ino, "group": "supergroup",
            "length": st.st_size if is_file else 0,
            "modificationTime": int(st.st_mtime * 1000), "owner": "hdfs",
            "pathSuffix": suffix, "permission": "644" if is_file else "755",
            "replication": 3 if is_file else 0, "storagePolicy": 0, "type": kind}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # like Jetty: no 40 ms Nagle / delayed-ACK stalls on small answers
    server: "FakeHdfsServer"

    def log_message(self, fmt, *args):  # quiet
        pass

    # -- replies ------------------------------------------------------------------------------

    def _json(self, status: int, obj: dict) -> None:
        faults = self.server.faults
        if faults.json_padding:
            obj = {**obj, "padding": "x" * faults.json_padding}
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if faults.hide_length:
            self.send_header("Connection", "close")
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, exception: str, java: str, message: str) -> None:
        self._json(status, {"RemoteException": {"exception": exception, "javaClassName": java,
                                                "message": message}})

    # -- dispatch -----------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802
        srv = self.server
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        op = query.get("op", "").upper()
        hdfs_path = unquote(parts.path[len(PREFIX):]) if parts.path.startswith(PREFIX) else None
        with srv.served.lock:
            srv.served.requests.append((op, hdfs_path or parts.path, query))
        faults = srv.faults
        if faults.delay:
            time.sleep(faults.delay)
        if hdfs_path is None:
            return self._error(404, "FileNotFoundException", "java.io.FileNotFoundException",
                               f"no such endpoint: {parts.path}")
        if faults.standby and srv.role != "datanode":
            return self._error(403, "StandbyException", "org.apache.hadoop.ipc.StandbyException",
                               "Operation category READ is not supported in state standby")
        with srv.served.lock:
            if faults.retriable:
                faults.retriable -= 1
                retriable = True
            else:
                retriable = False
            if faults.errors_5xx:
                faults.errors_5xx -= 1
                fail = True
            else:
                fail = False
        if retriable:
            return self._error(403, "RetriableException", "org.apache.hadoop.ipc.RetriableException",
                               "NameNode still not started")
        if fail:
            return self._error(500, "RuntimeException", "java.lang.RuntimeException", "injected failure")
        if faults.require_user and query.get("user.name") != faults.require_user:
            return self._error(401, "SecurityException", "java.lang.SecurityException",
                               f"Failed to obtain user group information: user.name={query.get('user.name')}")
        local = srv.local(hdfs_path)
        if local is None:
            return self._error(400, "IllegalArgumentException", "java.lang.IllegalArgumentException",
                               f"Invalid path name {hdfs_path}")
        if not os.path.lexists(local):
            return self._error(404, "FileNotFoundException", "java.io.FileNotFoundException",
                               f"File does not exist: {hdfs_path}")
        if op == "GETFILESTATUS" and srv.role != "datanode":
            return self._json(200, {"FileStatus": _status_json(local, "")})
        if op == "LISTSTATUS" and srv.role != "datanode":
            if local.is_dir() and not local.is_symlink():
                entries = [_status_json(local / n, n) for n in sorted(os.listdir(local))]
            else:
                entries = [_status_json(local, "")]
            return self._json(200, {"FileStatuses": {"FileStatus": entries}})
        if op == "OPEN":
            if local.is_dir() or local.is_symlink():
                return self._error(404, "FileNotFoundException", "java.io.FileNotFoundException",
                                   f"Path is not a file: {hdfs_path}")
            if srv.role == "namenode":
                loc = f"http://{srv.datanode}{PREFIX}{quote(hdfs_path)}?{parts.query}&namenoderpcaddress=nn:8020"
                self.send_response(307, "TEMPORARY_REDIRECT")
                self.send_header("Location", loc)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            return self._open(hdfs_path, local, query)
        return self._error(400, "IllegalArgumentException", "java.lang.IllegalArgumentException",
                           f"Invalid value for webhdfs parameter \"op\": {op!r} ({srv.role})")

    def _open(self, hdfs_path: str, local: Path, query: dict) -> None:
        srv = self.server
        size = local.stat().st_size
        try:
            offset = int(query.get("offset", 0))
            length = int(query["length"]) if "length" in query else size - offset
        except ValueError:
            return self._error(400, "IllegalArgumentException", "java.lang.IllegalArgumentException",
                               "Invalid value for webhdfs parameter \"offset\"")
        if offset < 0 or offset > size:
            return self._error(400, "IOException", "java.io.IOException", f"Offset={offset} out of the range")
        length = max(0, min(length, size - offset))
        drop_at = None
        with srv.served.lock:
            for suffix, n in list(srv.faults.drop.items()):
                if hdfs_path.endswith(suffix):
                    drop_at = n
                    del srv.faults.drop[suffix]
        corrupt = any(hdfs_path.endswith(s) for s in srv.faults.corrupt)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        sent = 0
        with open(local, "rb") as fh:
            if drop_at is None and not corrupt:  # the plain case: zero-copy, little CPU
                try:
                    sent = self.connection.sendfile(fh, offset, length)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                self._count(hdfs_path, sent)
                return
            fh.seek(offset)
            while sent < length:
                block = fh.read(min(CHUNK, length - sent))
                if not block:
                    break
                if corrupt and sent == 0:
                    block = bytes([block[0] ^ 0x01]) + block[1:]
                if drop_at is not None and sent + len(block) > drop_at:
                    block = block[:max(0, drop_at - sent)]
                    self.wfile.write(block)
                    self._count(hdfs_path, len(block))
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                try:
                    self.wfile.write(block)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                    return
                self._count(hdfs_path, len(block))
                sent += len(block)

    def _count(self, path: str, n: int) -> None:
        with self.server.served.lock:
            self.server.served.bytes[path] += n


class FakeHdfsServer(ThreadingHTTPServer):
    """One NameNode, DataNode or HttpFS gateway on a free loopback port."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, root: Path, role: str, datanode: str = "") -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = Path(root)
        self.role = role
        self.datanode = datanode
        self.faults = Faults()
        self.served = Served()
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def local(self, hdfs_path: str) -> Path | None:
        parts = [p for p in hdfs_path.split("/") if p]
        if any(p in (".", "..") for p in parts):
            return None
        return self.root.joinpath(*parts)

    def start(self) -> "FakeHdfsServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def closed_port() -> str:
    """A loopback address nothing listens on (a host that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.fakes.hdfs --root DIR [--role httpfs]``: serve until killed; prints the
    address on the first line (for benchmarks that want the server in its own process)."""
    import argparse
    import sys

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--root", required=True)
    p.add_argument("--role", default="httpfs", choices=["httpfs"])
    args = p.parse_args(argv)
    srv = FakeHdfsServer(Path(args.root), args.role)
    print(srv.address, flush=True)
    sys.stdout.close()
    srv.serve_forever(poll_interval=0.2)


if __name__ == "__main__":
    main()
