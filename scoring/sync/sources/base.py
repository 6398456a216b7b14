"""What every remote kind provides: file sizes up front (where it can) and a byte stream.

A source names one remote model package. It may have several hosts (an HttpFS pool, NameNodes of
an HA pair); the syncer picks one at random per cycle and moves to another when a call fails with a
:class:`SourceError` whose ``retriable`` is true. Errors carry a message that says which host,
which file and what the remote side answered.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterator, Mapping

CHUNK = 1 << 20  # bytes per read: few Python-level steps per MiB, so little GIL time


class SourceError(Exception):
    """A remote call failed. ``retriable``: a timeout, a dropped connection, a 5xx or a
    NameNode that is standby or busy, worth another host or a later try; otherwise final."""

    def __init__(self, message: str, *, retriable: bool, host: str = "") -> None:
        super().__init__(message)
        self.retriable = retriable
        self.host = host


class SourceURLError(ValueError):
    """A ``--source`` URL that cannot name a model package; the message says what to write."""


@dataclass(frozen=True)
class RemoteFile:
    """What a listing says about one file of the package."""

    name: str
    length: int
    kind: str = "FILE"  # FILE, DIRECTORY or SYMLINK (WebHDFS FileStatus "type")


@dataclass
class Download:
    """An open byte stream of one file. ``start`` is the offset the bytes begin at: the offset
    asked for, or 0 when the server cannot resume and sends the whole file again."""

    start: int
    length: int | None  # bytes this stream will carry, when the server says
    chunks: Iterator[bytes]


class Source(ABC):
    """One remote model package, reachable through one or more hosts."""

    scheme: str = ""

    def __init__(self, hosts: tuple[str, ...], path: str) -> None:
        self.hosts = hosts
        self.path = path

    def describe(self) -> str:
        """The source as a URL (no credentials), for logs and alarms."""
        return f"{self.scheme}://{','.join(self.hosts)}{self.path}"

    def stat_files(self, host: str, names: list[str]) -> Mapping[str, RemoteFile] | None:
        """Sizes and types of ``names`` (relative to the package), or None if this kind of
        source cannot list files; then sizes are only enforced while streaming."""
        return None

    @abstractmethod
    def open(self, host: str, name: str, offset: int = 0) -> contextlib.AbstractContextManager[Download]:
        """Stream ``name`` (relative to the package) from ``offset``."""

    def close(self) -> None:
        """Release connections."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"
