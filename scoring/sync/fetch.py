"""Downloading one package's files into a staging directory: hosts, throttle, md5, resume.

* :class:`HostPicker` starts at a random host and moves to the next one on a retriable error;
  a host that failed is not asked again in the same attempt.
* :class:`Transfer` streams each file through the shared token bucket into the staging directory,
  computing its md5 as the bytes arrive. A dropped connection resumes at the byte it stopped at
  (WebHDFS ``offset``, HTTP ``Range``) on the next host or the next attempt; a file whose md5
  does not match ``checksums.md5`` is thrown away and fetched again from another host.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, TypeVar

from ..model.manifest import MANIFEST, MAX_MANIFEST_BYTES
from . import metrics
from .sources import RemoteFile, Source, SourceError
from .throttle import TokenBucket

log = logging.getLogger(__name__)
T = TypeVar("T")


class SyncError(Exception):
    """A cycle step failed; ``retriable`` says whether a later attempt may succeed."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


class Stopped(Exception):
    """The syncer was asked to stop while a transfer was running."""


class HostPicker:
    """Which host to ask, for one attempt of a cycle."""

    def __init__(self, hosts: tuple[str, ...], rng: random.Random, model: str = "") -> None:
        self.order = list(hosts)
        rng.shuffle(self.order)
        self.failed: list[str] = []
        self.model = model

    @property
    def host(self) -> str:
        return self.order[0]

    def run(self, call: Callable[[str], T]) -> T:
        """``call(host)``, moving to the next host on retriable errors until none is left."""
        while True:
            host = self.order[0]
            try:
                return call(host)
            except SourceError as exc:
                if not exc.retriable:
                    raise SyncError(str(exc), retriable=False) from None
                self.failed.append(host)
                self.order.pop(0)
                if not self.order:
                    raise SyncError(f"{exc} (every host failed this attempt: "
                                    f"{', '.join(self.failed)})", retriable=True) from None
                metrics.FAILOVERS.labels(self.model).inc()
                log.warning("model %r: %s; failing over to %s", self.model, exc, self.order[0])


@dataclass
class _Partial:
    offset: int = 0
    md5: "hashlib._Hash" = field(default_factory=hashlib.md5)


class Transfer:
    """The files of one remote package version being copied into ``staging``."""

    def __init__(self, source: Source, staging: Path, sums: Mapping[str, str], *,
                 bucket: TokenBucket, max_file_bytes: int, model: str,
                 stop: threading.Event, deadline: float,
                 max_package_bytes: int | None = None) -> None:
        self.source = source
        self.staging = staging
        self.sums = sums
        self.bucket = bucket
        self.max_file_bytes = max_file_bytes
        self.max_package_bytes = max_package_bytes
        self.sizes: dict[str, int] = {}  # bytes on disk per file: the package's size so far
        self.model = model
        self.stop = stop
        self.deadline = deadline
        self.done: set[str] = set()
        self.partial: dict[str, _Partial] = {}
        self.bytes = 0

    def check_listing(self, files: Mapping[str, RemoteFile] | None) -> None:
        """Refuse symlinks, directories and oversized files before any byte is fetched."""
        if files is None:
            return
        for name in self.sums:
            info = files.get(name)
            if info is None:
                raise SyncError(f"{name}: listed in checksums.md5 but missing on the source",
                                retriable=False)
            if info.kind != "FILE":
                raise SyncError(f"{name}: is a {info.kind.lower()} on the source, not a regular file; "
                                "package files must be plain files inside the package", retriable=False)
            if info.length > self.limit(name):
                raise SyncError(f"{name}: {info.length} bytes is above the limit of "
                                f"{self.limit(name)} bytes {self._limit_flag(name)}", retriable=False)
        total = sum(max(0, files[n].length) for n in self.sums)
        if self.max_package_bytes is not None and total > self.max_package_bytes:
            raise SyncError(f"the package is {total} bytes, above the limit of "
                            f"{self.max_package_bytes} bytes (--max-package-size)", retriable=False)

    def limit(self, name: str) -> int:
        """Largest size accepted for one file: the manifest is read whole, so it gets 1 MiB."""
        return min(self.max_file_bytes, MAX_MANIFEST_BYTES) if name == MANIFEST else self.max_file_bytes

    @staticmethod
    def _limit_flag(name: str) -> str:
        return "for a manifest" if name == MANIFEST else "per file (--max-file-size)"

    def _target(self, name: str) -> Path:
        path = self.staging / name
        # names were checked by parse_checksums; this guards the filesystem side as well.
        if os.path.commonpath([os.path.realpath(path.parent), os.path.realpath(self.staging)]) \
                != os.path.realpath(self.staging):
            raise SyncError(f"{name}: would be written outside the package", retriable=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def fetch(self, host: str, name: str, info: RemoteFile | None) -> None:
        """Copy one file (resuming a partial one); raises SourceError for the host picker."""
        path = self._target(name)
        part = self.partial.setdefault(name, _Partial())
        flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        with self.source.open(host, name, part.offset) as dl:
            if dl.start != part.offset:  # the server cannot resume: start the file over
                log.info("model %r: %s restarts from byte 0 on %s", self.model, name, host)
                part = self.partial[name] = _Partial()
                self.sizes[name] = 0
            expected = info.length if info is not None and info.length >= 0 else (
                dl.start + dl.length if dl.length is not None else None)
            limit = self.limit(name)
            if expected is not None and expected > limit:
                raise SourceError(f"{name}: {expected} bytes is above the limit of {limit} bytes "
                                  f"{self._limit_flag(name)}", retriable=False, host=host)
            fd = os.open(path, flags | (os.O_TRUNC if part.offset == 0 else 0), 0o644)
            with os.fdopen(fd, "wb") as fh:
                fh.seek(part.offset)
                fh.truncate()
                for chunk in dl.chunks:
                    self._check_running()
                    self.bucket.consume(len(chunk), self.stop)
                    fh.write(chunk)
                    part.md5.update(chunk)
                    part.offset += len(chunk)
                    self.sizes[name] = part.offset
                    self.bytes += len(chunk)
                    metrics.BYTES.labels(self.model).inc(len(chunk))
                    if part.offset > limit or (expected is not None and part.offset > expected):
                        sent = min(limit, expected if expected is not None else limit)
                        self.partial.pop(name, None)
                        raise SourceError(f"{name}: the source sent more than {sent} bytes", retriable=False,
                                          host=host)
                    if self.max_package_bytes is not None and sum(self.sizes.values()) > self.max_package_bytes:
                        raise SourceError(f"the package grew past {self.max_package_bytes} bytes "
                                          "(--max-package-size)", retriable=False, host=host)
        if expected is not None and part.offset < expected:
            raise SourceError(f"{name}: connection ended after {part.offset} of {expected} bytes", retriable=True,
                              host=host)
        digest = part.md5.hexdigest()
        if digest != self.sums[name]:
            self.partial.pop(name, None)
            raise SourceError(f"{name}: md5 mismatch after download from {host}: checksums.md5 says "
                              f"{self.sums[name]}, the bytes have {digest} (corrupted in transit or on the "
                              "source)", retriable=True, host=host)
        self.partial.pop(name, None)
        self.done.add(name)

    def _check_running(self) -> None:
        if self.stop.is_set():
            raise Stopped()
        if time.monotonic() > self.deadline:
            raise SyncError("the cycle ran past its time limit (--cycle-timeout)", retriable=False)
