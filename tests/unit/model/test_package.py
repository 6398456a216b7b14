"""The package loader rejects every malformed package whole, naming the file or field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from scoring.model.checksums import (
    format_checksums,
    md5_file,
    package_files,
    verify_checksums,
)
from scoring.model.manifest import CHECKSUMS, MANIFEST, PackageError
from scoring.model.package import load_package

from ...models import make_model


@pytest.fixture()
def pkg_dir(tmp_path) -> Path:
    return make_model(tmp_path / "m", dense_dim=2)


def _rewrite_checksums(root: Path) -> None:
    sums = {name: md5_file(root / name) for name in package_files(root)}
    (root / CHECKSUMS).write_text(format_checksums(sums))


def _edit_manifest(root: Path, fn) -> None:
    raw = json.loads((root / MANIFEST).read_text())
    fn(raw)
    (root / MANIFEST).write_text(json.dumps(raw))
    _rewrite_checksums(root)


def _replace_array(root: Path, name: str, arr) -> None:
    np.save(root / name, arr, allow_pickle=True)
    _rewrite_checksums(root)


def _expect(root: Path, *fragments: str) -> None:
    with pytest.raises(PackageError) as err:
        load_package(root)
    for f in fragments:
        assert f in str(err.value), str(err.value)


def test_valid_package_loads_read_only_and_mapped(pkg_dir):
    pkg = load_package(pkg_dir)
    assert pkg.manifest.input_dim == 8 + 4 + 8 + 4 + 2
    assert len(pkg.tables) == 4 and len(pkg.weights) == 3
    for arr in pkg.tables + pkg.weights + pkg.biases:
        assert arr.dtype == np.float32 and not arr.flags.writeable
        assert isinstance(arr.base, np.memmap) or isinstance(arr, np.memmap) or arr.base is not None
    assert pkg.md5 == md5_file(pkg_dir / CHECKSUMS)
    assert set(pkg.checksums) == set(package_files(pkg_dir))


@pytest.mark.parametrize("edit,fragments", [
    (lambda m: m.pop("version"), ["manifest.json: version is missing"]),
    (lambda m: m.update(format="onnx"), ["format must be 'ctr-mlp'"]),
    (lambda m: m.update(format_version=2), ["format_version must be 1"]),
    (lambda m: m["groups"][0].update(buckets="10"), ["groups[0].buckets must be int"]),
    (lambda m: m["groups"][0].update(buckets=True), ["groups[0].buckets must be int"]),
    (lambda m: m["groups"][0].update(dim=0), ["groups[0].dim must be an integer >= 1"]),
    (lambda m: m["groups"][1].update(side="both"), ["groups[1].side must be one of ['context', 'ad']"]),
    (lambda m: m["groups"][1].update(pooling="max"), ["groups[1].pooling must be one of ['sum', 'mean']"]),
    (lambda m: m["groups"][1].update(name=m["groups"][0]["name"]), ["is repeated"]),
    (lambda m: m["groups"][0].update(table="../evil.npy"), ["must be a relative path inside the package"]),
    (lambda m: m["groups"][0].update(table="/etc/passwd"), ["must be a relative path inside the package"]),
    (lambda m: m["layers"][0].update(activation="tanh"), ["layers[0].activation 'tanh' is not supported"]),
    (lambda m: m["layers"][-1].update(activation="relu"), ["is not supported for the last layer"]),
    (lambda m: m.update(layers=[]), ["layers must list at least one layer"]),
    (lambda m: m.update(name="../x"), ["name must be 1-128 characters"]),
    (lambda m: m.update(dense_dim=-1), ["dense_dim must be an integer >= 0"]),
    (lambda m: m.update(dense_dim=3), ["mlp/w0.npy: layers[0] weight has 26 inputs, expected 27"]),
])
def test_malformed_manifest(pkg_dir, edit, fragments):
    _edit_manifest(pkg_dir, edit)
    _expect(pkg_dir, *fragments)


def test_manifest_not_json(pkg_dir):
    (pkg_dir / MANIFEST).write_text("{not json")
    _rewrite_checksums(pkg_dir)
    _expect(pkg_dir, "manifest.json: not valid JSON")


def test_missing_array(pkg_dir):
    (pkg_dir / "mlp" / "b1.npy").unlink()
    _rewrite_checksums(pkg_dir)
    _expect(pkg_dir, "mlp/b1.npy", "missing")


def test_truncated_array(pkg_dir):
    path = pkg_dir / "emb" / "ad_id.npy"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _rewrite_checksums(pkg_dir)
    _expect(pkg_dir, "emb/ad_id.npy: cannot be read as a .npy array")


@pytest.mark.parametrize("dtype,fragment", [(np.float64, "'<f8'"), (">f4", "'>f4'"), (np.int32, "'<i4'")])
def test_wrong_dtype(pkg_dir, dtype, fragment):
    arr = np.load(pkg_dir / "mlp" / "w1.npy").astype(dtype)
    _replace_array(pkg_dir, "mlp/w1.npy", arr)
    _expect(pkg_dir, "mlp/w1.npy: dtype must be little-endian float32", fragment)


def test_wrong_shape_table(pkg_dir):
    arr = np.zeros((999, 8), np.float32)
    _replace_array(pkg_dir, "emb/user_id.npy", arr)
    _expect(pkg_dir, "emb/user_id.npy: shape must be [1000, 8]", "got [999, 8]")


def test_layers_do_not_chain(pkg_dir):
    _replace_array(pkg_dir, "mlp/w1.npy", np.zeros((31, 16), np.float32))
    _expect(pkg_dir, "mlp/w1.npy: layers[1] weight has 31 inputs, expected 32 (layers[0] out)")


def test_last_layer_must_have_one_output(pkg_dir):
    _replace_array(pkg_dir, "mlp/w2.npy", np.zeros((16, 2), np.float32))
    _replace_array(pkg_dir, "mlp/b2.npy", np.zeros(2, np.float32))
    _expect(pkg_dir, "the last layer must have 1 output")


def test_object_array_is_rejected_without_unpickling(pkg_dir):
    _replace_array(pkg_dir, "mlp/b0.npy", np.array([object()] * 32, dtype=object))
    _expect(pkg_dir, "mlp/b0.npy: cannot be read as a .npy array")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights(pkg_dir, bad):
    arr = np.load(pkg_dir / "mlp" / "b1.npy")
    arr[7] = bad
    _replace_array(pkg_dir, "mlp/b1.npy", arr)
    _expect(pkg_dir, "mlp/b1.npy: holds a non-finite value", "at index [7]")


def test_non_finite_table_row(pkg_dir):
    arr = np.load(pkg_dir / "emb" / "category.npy")
    arr[42, 3] = np.nan
    _replace_array(pkg_dir, "emb/category.npy", arr)
    _expect(pkg_dir, "emb/category.npy", "at index [42, 3]")


def test_checksum_mismatch(pkg_dir):
    path = pkg_dir / "emb" / "city.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    _expect(pkg_dir, "emb/city.npy: md5 mismatch")


def test_unlisted_file_and_missing_checksums(pkg_dir):
    (pkg_dir / "extra.bin").write_bytes(b"x")
    _expect(pkg_dir, "extra.bin: present in the package but not listed")
    (pkg_dir / "extra.bin").unlink()
    (pkg_dir / CHECKSUMS).unlink()
    _expect(pkg_dir, "checksums.md5: missing")


@pytest.mark.parametrize("line,fragment", [
    ("nothex  emb/x.npy", "expected '<32 hex md5>  <relative path>'"),
    ("0" * 32 + "  ../../etc/passwd", "must be a relative path inside the package"),
    ("0" * 32 + "  /abs/path", "must be a relative path inside the package"),
])
def test_malformed_checksums(pkg_dir, line, fragment):
    with open(pkg_dir / CHECKSUMS, "a") as f:
        f.write(line + "\n")
    _expect(pkg_dir, fragment)


def test_symlinked_array_is_rejected(pkg_dir, tmp_path):
    outside = tmp_path / "outside.npy"
    shutil.copy(pkg_dir / "mlp" / "b0.npy", outside)
    (pkg_dir / "mlp" / "b0.npy").unlink()
    (pkg_dir / "mlp" / "b0.npy").symlink_to(outside)
    _expect(pkg_dir, "mlp/b0.npy")


def test_verify_checksums_lists_every_file(pkg_dir):
    sums = verify_checksums(pkg_dir)
    assert MANIFEST in sums and "emb/ad_id.npy" in sums and CHECKSUMS not in sums


def test_a_manifest_above_one_mebibyte_is_refused_unread(pkg_dir):
    _edit_manifest(pkg_dir, lambda m: m.update(notes="x" * (1 << 20)))
    with pytest.raises(PackageError, match=r"manifest.json: larger than 1048576 bytes"):
        load_package(pkg_dir)


def test_an_unfinished_copy_is_a_checksum_error_and_a_bad_export_is_not(pkg_dir, tmp_path):
    from scoring.model.checksums import ChecksumError

    half = tmp_path / "half"
    shutil.copytree(pkg_dir, half)
    data = (half / MANIFEST).read_bytes()
    (half / MANIFEST).write_bytes(data[: len(data) // 2])  # the manifest itself cut off
    with pytest.raises(ChecksumError, match="manifest.json: md5 mismatch"):
        load_package(half)
    (half / CHECKSUMS).unlink()  # checksums.md5 not copied yet
    with pytest.raises(ChecksumError, match="checksums.md5: missing"):
        load_package(half)
    _edit_manifest(pkg_dir, lambda m: m["layers"][0].update(activation="tanh"))
    with pytest.raises(PackageError) as bad:  # intact files, invalid export
        load_package(pkg_dir)
    assert not isinstance(bad.value, ChecksumError)
