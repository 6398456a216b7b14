"""Writing a model package: arrays as little-endian ``.npy`` (float32; float16 and int8 kept as
they are, for format 2's compact tables), the manifest, checksums."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .checksums import format_checksums, md5_file, package_files
from .manifest import (
    CHECKSUMS,
    MANIFEST,
    PackageError,
    check_relative_path,
    parse_manifest,
)
from .package import FLOAT32_LE, load_package

_KEPT = {"f2": np.dtype("<f2"), "i1": np.dtype("i1")}  # float16 / int8 tables stay compact


def write_package(out: str | os.PathLike, manifest: Mapping[str, Any],
                  arrays: Mapping[str, np.ndarray]) -> Path:
    """Write a package: every array as little-endian .npy (float32, or float16 / int8 when given
    so), the manifest, checksums.md5.

    The manifest is validated first and every file it names must be in ``arrays``. The result is
    loaded back with full validation, so a package this returns is one the engine accepts.
    """
    out = Path(out)
    parsed = parse_manifest(dict(manifest))
    missing = [n for n in parsed.files() if n not in arrays]
    if missing:
        raise PackageError(f"{missing[0]}: named in the manifest but no array was given for it")
    out.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        check_relative_path(name, "array name")
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        arr = np.asarray(arr)
        dtype = _KEPT.get(arr.dtype.kind + str(arr.dtype.itemsize), FLOAT32_LE)
        np.save(path, np.ascontiguousarray(arr, dtype=dtype), allow_pickle=False)
    (out / MANIFEST).write_text(json.dumps(dict(manifest), indent=2) + "\n", encoding="utf-8")
    sums = {name: md5_file(out / name) for name in package_files(out)}
    (out / CHECKSUMS).write_text(format_checksums(sums), encoding="utf-8")
    load_package(out)
    return out
