"""``checksums.md5``: one md5sum line per package file, and the md5 of that file as the identity
of the whole package (two packages with the same ``checksums.md5`` hold the same bytes).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Mapping

from .manifest import CHECKSUMS, PackageError, check_relative_path, read_small_file

_MD5_LINE = re.compile(r"^([0-9a-fA-F]{32}) [ *](.+)$")
MAX_CHECKSUMS_BYTES = 1 << 20  # one line per file: a package's list is a few KB


class ChecksumError(PackageError):
    """A package's files do not match its ``checksums.md5`` (missing, changed, unlisted, or no
    readable list): an unfinished copy looks like this, a bad export does not."""


def md5_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """md5 of a file, read into one reused buffer: no allocation per chunk, and the GIL is held
    only between chunks (reads and ``hashlib`` on large buffers release it), so a thread serving
    requests beside it is not held up."""
    h = hashlib.md5()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def read_checksums(root: Path) -> tuple[bytes, dict[str, str]]:
    """The bytes of ``<root>/checksums.md5`` and what they list; :class:`ChecksumError` if it is
    missing, larger than 1 MiB or malformed."""
    data = read_small_file(root / CHECKSUMS, MAX_CHECKSUMS_BYTES,
                           f"{CHECKSUMS}: missing (or not a regular file)",
                           f"{CHECKSUMS}: larger than {MAX_CHECKSUMS_BYTES} bytes", ChecksumError)
    try:
        return data, parse_checksums(data.decode("utf-8", errors="replace"))
    except ChecksumError:
        raise
    except PackageError as exc:
        raise ChecksumError(str(exc)) from None


def parse_checksums(text: str, source: str = CHECKSUMS) -> dict[str, str]:
    """Parse md5sum output (``<32 hex>  <relative path>`` per line) into {path: md5}."""
    sums: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _MD5_LINE.match(line.rstrip("\r"))
        if not m:
            raise PackageError(f"{source} line {lineno}: expected '<32 hex md5>  <relative path>', "
                               f"got {line[:80]!r}")
        digest, name = m.group(1).lower(), m.group(2)
        check_relative_path(name, f"{source} line {lineno}")
        if name in (CHECKSUMS,):
            raise PackageError(f"{source} line {lineno}: {CHECKSUMS} must not list itself")
        if name in sums:
            raise PackageError(f"{source} line {lineno}: {name!r} is listed twice")
        sums[name] = digest
    if not sums:
        raise PackageError(f"{source}: no entries; expected one line per package file")
    return sums


def format_checksums(sums: Mapping[str, str]) -> str:
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items()))


def package_files(root: Path) -> list[str]:
    """Every regular file below ``root`` except checksums.md5, as relative POSIX paths."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            full = Path(dirpath) / fn
            rel = full.relative_to(root).as_posix()
            if rel != CHECKSUMS:
                out.append(rel)
    return out


def verify_checksums(root: str | os.PathLike) -> dict[str, str]:
    """Check ``checksums.md5`` against every file of the package; return {path: md5}. Raises
    :class:`ChecksumError` naming the first file that does not match."""
    root = Path(root)
    _, sums = read_checksums(root)
    for name, digest in sums.items():
        fpath = root / name
        if fpath.is_symlink() or not fpath.is_file():
            raise ChecksumError(f"{name}: listed in {CHECKSUMS} but missing (or not a regular file)")
        actual = md5_file(fpath)
        if actual != digest:
            raise ChecksumError(f"{name}: md5 mismatch, {CHECKSUMS} says {digest}, file has {actual}")
    unlisted = [f for f in package_files(root) if f not in sums]
    if unlisted:
        raise ChecksumError(f"{unlisted[0]}: present in the package but not listed in {CHECKSUMS}")
    return sums
