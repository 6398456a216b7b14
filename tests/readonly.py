"""Making a directory unwritable for real, the way operators end up with one.

* ``read_only(path)``: the kernel refuses every new entry in the directories below ``path``
  while the block runs: ``chattr +i`` (EPERM, even for root) when running as root, else
  ``chmod a-w`` (EACCES). Files already there stay readable.
* ``read_only_mount_prefix(path)``: a command prefix that runs a program in a private mount
  namespace where ``path`` is a read-only bind mount (EROFS), when the kernel allows it; None
  otherwise.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Iterator


def _dirs(path: Path) -> list[Path]:
    return [path] + [p for p in sorted(path.rglob("*")) if p.is_dir() and not p.is_symlink()]


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[str]:
    dirs = _dirs(path)
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", *map(str, dirs)], check=True, capture_output=True)
        try:
            yield "chattr +i"
        finally:
            subprocess.run(["chattr", "-i", *map(str, dirs)], check=True, capture_output=True)
    else:
        modes = {d: d.stat().st_mode for d in dirs}
        for d in dirs:
            d.chmod(stat.S_IMODE(modes[d]) & ~0o222)
        try:
            yield "chmod a-w"
        finally:
            for d in dirs:
                d.chmod(stat.S_IMODE(modes[d]))


def read_only_mount_prefix(path: Path) -> list[str] | None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return None
    script = 'mount --bind -o ro "$1" "$1" && shift && exec "$@"'
    probe = subprocess.run(["unshare", "-m", "sh", "-c", script + "", "sh", str(path), "sh", "-c",
                            f'touch "{path}/.probe" 2>/dev/null && exit 1 || exit 0'],
                           capture_output=True)
    if probe.returncode != 0:
        return None
    return ["unshare", "-m", "sh", "-c", script, "sh", str(path)]
