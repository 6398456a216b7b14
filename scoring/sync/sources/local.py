"""A package on a local or mounted filesystem (``file:///path``): NFS, a FUSE-mounted HDFS, tests.

Symlinks are refused: a package file must be a regular file inside the package directory, so a
link cannot make the syncer copy something from elsewhere on the machine.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Iterator, Mapping

from .base import CHUNK, Download, RemoteFile, Source, SourceError

HOST = "localhost"


class LocalSource(Source):
    scheme = "file"

    def __init__(self, path: str) -> None:
        super().__init__((HOST,), path)
        self.root = Path(path)

    def describe(self) -> str:
        return f"file://{self.path}"

    def _resolve(self, name: str) -> Path:
        full = self.root / name
        # Every component below the package root must be a real directory / regular file.
        probe = self.root
        for part in Path(name).parts:
            probe = probe / part
            try:
                st = os.lstat(probe)
            except FileNotFoundError:
                raise SourceError(f"{name}: not found under {self.describe()}", retriable=False,
                                  host=HOST) from None
            except OSError as exc:
                raise SourceError(f"{name}: cannot be read ({exc})", retriable=True, host=HOST) from None
            if stat.S_ISLNK(st.st_mode):
                raise SourceError(f"{name}: is a symlink in {self.describe()}; package files must be "
                                  "regular files inside the package", retriable=False, host=HOST)
        return full

    def stat_files(self, host: str, names: list[str]) -> Mapping[str, RemoteFile]:
        out = {}
        for name in names:
            st = os.lstat(self._resolve(name))
            kind = "FILE" if stat.S_ISREG(st.st_mode) else "DIRECTORY" if stat.S_ISDIR(st.st_mode) else "OTHER"
            out[name] = RemoteFile(name, st.st_size, kind)
        return out

    @contextlib.contextmanager
    def open(self, host: str, name: str, offset: int = 0) -> Iterator[Download]:
        path = self._resolve(name)
        try:
            fh = open(path, "rb")
        except OSError as exc:
            raise SourceError(f"{name}: cannot be opened ({exc})", retriable=True, host=HOST) from None
        with fh:
            fh.seek(offset)
            size = os.fstat(fh.fileno()).st_size
            yield Download(offset, max(0, size - offset), iter(lambda: fh.read(CHUNK), b""))
