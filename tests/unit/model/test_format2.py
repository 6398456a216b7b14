"""Format 2 packages with compact tables: the manifest's checks, int8 row-wise quantization
against its definition, the converter and its command, shared tables."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scoring.model.cli import main as model_cli
from scoring.model.manifest import PackageError, parse_manifest
from scoring.model.package import load_package
from scoring.model.quantize import convert, quantize_rowwise, to_float16
from scoring.model.reference import reference_scores
from scoring.model.writer import write_package

from ...models import make_model, random_request


def _v2(**over) -> dict:
    m = {"format": "ctr-model", "format_version": 2, "name": "m", "version": "1",
         "tables": {"t": {"file": "emb/t.npy", "rows": 10, "dim": 4, "dtype": "float32"}},
         "groups": [{"name": "a", "side": "context", "table": "t", "pooling": "sum"},
                    {"name": "b", "side": "ad", "table": "t", "pooling": "mean"}],
         "dense_dim": 0,
         "blocks": [{"name": "x", "op": "concat", "inputs": ["@groups", "@dense"]},
                    {"name": "deep", "op": "mlp", "input": "x",
                     "layers": [{"weight": "w0.npy", "bias": "b0.npy", "activation": "relu"},
                                {"weight": "w1.npy", "bias": "b1.npy", "activation": "none"}]}],
         "outputs": [{"name": "pctr", "from": "deep", "activation": "sigmoid"}],
         "primary": "pctr"}
    m.update(over)
    return m


def _arrays(rng, rows=10, dim=4) -> dict:
    return {"emb/t.npy": rng.standard_normal((rows, dim)).astype(np.float32),
            "w0.npy": rng.standard_normal((2 * dim, 8)).astype(np.float32),
            "b0.npy": rng.standard_normal(8).astype(np.float32),
            "w1.npy": rng.standard_normal((8, 1)).astype(np.float32),
            "b1.npy": rng.standard_normal(1).astype(np.float32)}


def test_rowwise_int8_matches_its_definition():
    """Codes and (scale, offset) against the definition in float64: every element within half a
    step (plus float32 rounding), codes in range, each row's extremes hit exactly-ish."""
    rng = np.random.default_rng(0)
    table = np.concatenate([
        rng.standard_normal((300, 24)).astype(np.float32) * rng.uniform(1e-3, 50, (300, 1)).astype(np.float32),
        np.full((2, 24), 0.75, np.float32),                       # constant rows: scale 0
        np.linspace(-1e4, 1e-4, 48, dtype=np.float32).reshape(2, 24)])
    q, qp = quantize_rowwise(table)
    assert q.dtype == np.int8 and qp.dtype == np.float32 and qp.shape == (len(table), 2)
    x = table.astype(np.float64)
    lo, hi = x.min(axis=1), x.max(axis=1)
    step = (hi - lo) / 255.0
    np.testing.assert_allclose(qp[:, 0], step, rtol=1e-6, atol=0)
    back = q.astype(np.float64) * qp[:, :1].astype(np.float64) + qp[:, 1:].astype(np.float64)
    err = np.abs(back - x)
    bound = step[:, None] / 2 + 4e-7 * (np.abs(x) + np.abs(lo)[:, None] + 1e-30)
    assert (err <= bound).all(), float((err - bound).max())
    assert q.min() >= -128 and q.max() <= 127
    assert (q[:300].min(axis=1) == -128).all() and (q[:300].max(axis=1) == 127).all()
    np.testing.assert_array_equal(back[300:302], 0.75)


def test_float16_overflow_names_the_table():
    with pytest.raises(PackageError, match="'big'.*float16"):
        to_float16(np.array([[7e4, 0.0]], np.float32), "big")


def test_converter_keeps_scores_within_the_quantization_bound(tmp_path):
    src = make_model(tmp_path / "f32", hidden=(32, 16))
    base = load_package(src)
    rng = np.random.default_rng(1)
    for tables, dtype, tol in (("int8", "int8_rowwise", 1e-2), ("fp16", "float16", 1e-3)):
        pkg = load_package(convert(src, tmp_path / tables, tables=tables, version="v1-" + tables))
        m = pkg.manifest
        assert m.format_version == 2 and m.version == "v1-" + tables
        assert {t.dtype for t in m.tables.values()} == {dtype}
        for g, t in zip(m.groups, pkg.tables):
            itemsize = 1 if dtype == "int8_rowwise" else 2
            assert t.itemsize == itemsize and t.shape == (g.buckets, g.dim)
        ratio = sum(pkg.table_bytes().values()) / sum(base.table_bytes().values())
        dims = [g.dim for g in m.groups]
        rows = [g.buckets for g in m.groups]
        want = (sum(r * (d + 8) for r, d in zip(rows, dims)) / sum(r * d * 4 for r, d in zip(rows, dims))
                if tables == "int8" else 0.5)
        assert ratio == pytest.approx(want)
        for _ in range(5):
            ctx, ads = random_request(rng, base, 20)
            assert np.abs(reference_scores(pkg, ctx, ads) - reference_scores(base, ctx, ads)).max() < tol
        with pytest.raises(PackageError, match="already compact"):
            convert(tmp_path / tables, tmp_path / (tables + "-again"), tables="int8")


def test_shared_table_and_manifest_fields(tmp_path):
    rng = np.random.default_rng(2)
    pkg = load_package(write_package(tmp_path / "p", _v2(), _arrays(rng)))
    m = pkg.manifest
    assert [g.table_name for g in m.groups] == ["t", "t"]
    assert pkg.tables[0] is pkg.tables[1]
    assert m.files() == ["emb/t.npy", "w0.npy", "b0.npy", "w1.npy", "b1.npy"]
    assert m.layers[-1].activation == "sigmoid"  # the output's sigmoid, folded into the last layer
    assert pkg.table_bytes() == {"t": 10 * 4 * 4}


def test_a_table_no_group_reads_is_kept_counted_and_converted(tmp_path):
    rng = np.random.default_rng(5)
    m = _v2()
    m["tables"]["wide"] = {"file": "emb/wide.npy", "rows": 50, "dim": 1, "dtype": "float32"}
    arrays = dict(_arrays(rng), **{"emb/wide.npy": rng.standard_normal((50, 1)).astype(np.float32)})
    pkg = load_package(write_package(tmp_path / "p", m, arrays))
    assert pkg.table_bytes() == {"t": 160, "wide": 200}
    small = load_package(convert(tmp_path / "p", tmp_path / "q", tables="fp16"))
    assert small.table_bytes() == {"t": 80, "wide": 100}
    assert small.manifest.tables["wide"].dtype == "float16"


@pytest.mark.parametrize("change, message", [
    (lambda m: m["blocks"].insert(1, {"name": "fm", "op": "fm2", "inputs": ["x"]}),
     "fm2 takes field vectors"),
    (lambda m: m["groups"][0].update(pooling="max"), "pooling must be one of"),
    (lambda m: m["groups"][0].update(serving_value=1.5), "serving_value must be a string or an id"),
    (lambda m: m["groups"][0].update(table="nope"), "table 'nope' is not in tables"),
    (lambda m: m["tables"]["t"].update(dtype="int8_rowwise"), "tables.t.qparams is missing"),
    (lambda m: m["tables"]["t"].update(dtype="int4"), "tables.t.dtype must be one of"),
    (lambda m: m["tables"]["t"].update(qparams="q.npy"), "only for dtype 'int8_rowwise'"),
    (lambda m: m["outputs"].append({"name": "pcvr", "from": "nope", "activation": "sigmoid"}),
     "from must name a block"),
    (lambda m: m["blocks"][1]["layers"][1].update(activation="sigmoid"), "activation 'sigmoid'"),
    (lambda m: m.update(primary="pcvr"), "primary"),
    (lambda m: m.update(format_version=3), "format_version"),
])
def test_format2_manifest_errors_name_the_field(change, message):
    m = _v2()
    change(m)
    with pytest.raises(PackageError, match=message):
        parse_manifest(m)


def test_compact_files_are_checked(tmp_path):
    rng = np.random.default_rng(3)
    arrays = _arrays(rng)
    q, qp = quantize_rowwise(arrays["emb/t.npy"])
    manifest = _v2()
    manifest["tables"]["t"].update(dtype="int8_rowwise", qparams="emb/t.q.npy")
    good = dict(arrays, **{"emb/t.npy": q, "emb/t.q.npy": qp})
    load_package(write_package(tmp_path / "ok", manifest, good))
    with pytest.raises(PackageError, match="emb/t.npy: dtype must be int8"):
        write_package(tmp_path / "f32codes", manifest, dict(good, **{"emb/t.npy": arrays["emb/t.npy"]}))
    with pytest.raises(PackageError, match=r"emb/t.q.npy: shape must be \[10, 2\]"):
        write_package(tmp_path / "badq", manifest, dict(good, **{"emb/t.q.npy": qp[:, :1]}))
    bad_qp = qp.copy()
    bad_qp[3, 0] = np.inf
    with pytest.raises(PackageError, match="emb/t.q.npy: holds a non-finite value"):
        write_package(tmp_path / "infq", manifest, dict(good, **{"emb/t.q.npy": bad_qp}))
    huge = qp.copy()
    huge[4, 0] = 3e38  # finite, but 127 * scale is not a float32
    with pytest.raises(PackageError, match="emb/t.q.npy: row 4 has scale .* finite float32"):
        write_package(tmp_path / "hugeq", manifest, dict(good, **{"emb/t.q.npy": huge}))
    m16 = _v2()
    m16["tables"]["t"]["dtype"] = "float16"
    half = arrays["emb/t.npy"].astype(np.float16)
    half[0, 0] = np.inf
    with pytest.raises(PackageError, match="emb/t.npy: holds a non-finite value"):
        write_package(tmp_path / "inf16", m16, dict(arrays, **{"emb/t.npy": half}))


def test_quantize_and_inspect_commands(tmp_path, capsys):
    src = make_model(tmp_path / "f32")
    assert model_cli(["quantize", str(src), str(tmp_path / "q"), "--tables", "int8",
                      "--requests", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    groups = load_package(src).manifest.groups
    want = sum(g.buckets * (g.dim + 8) for g in groups) / sum(g.buckets * g.dim * 4 for g in groups)
    assert report["table_bytes_ratio"] == pytest.approx(want, abs=1e-4)
    err = report["pctr_vs_float32"]
    assert err["ads"] == 300 and 0 < err["max_abs_error"] <= 1e-2  # the demo model: see bench
    assert err["mean_abs_error"] <= err["max_abs_error"] and 0 <= err["order_flip_share"] < 0.05
    assert model_cli(["inspect", str(tmp_path / "q")]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["format_version"] == 2
    ad = shown["tables"]["ad_id"]
    assert ad["dtype"] == "int8_rowwise" and ad["bytes"] == ad["rows"] * (ad["dim"] + 8)
    assert ad["bytes_as_float32"] == ad["rows"] * ad["dim"] * 4
    assert model_cli(["quantize", str(tmp_path / "q"), str(tmp_path / "q2"), "--tables", "fp16"]) == 1
    assert "already compact" in capsys.readouterr().err
    before = sorted(p.name for p in (tmp_path / "q").rglob("*"))
    assert model_cli(["quantize", str(src), str(tmp_path / "q"), "--tables", "fp16"]) == 1
    assert "not an empty directory" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "q").rglob("*")) == before
    assert model_cli(["quantize", str(src), str(tmp_path / "q3")]) == 1
    assert "nothing to do" in capsys.readouterr().err


_JUNK = [None, True, 0, -1, 2**64, 1.5, float("nan"), "", "x", "../etc", [], [1], {}, {"a": 1},
         [[[[[]]]]], "\x00", "emb/t.npy"]


def _paths(obj, prefix=()):
    """Every (path) to a value inside the manifest document."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def test_mutated_format2_manifests_fail_with_package_errors_only():
    """Every field replaced by junk or deleted, one at a time and a few at once: the parser
    either accepts the manifest or raises PackageError; never another exception."""
    import copy
    import random

    base = _v2()
    paths = [p for p in _paths(base) if p]
    rnd = random.Random(0)
    cases = 0
    for trial in range(3000):
        m = copy.deepcopy(base)
        for path in rnd.sample(paths, k=1 if trial < 1500 else 3):
            parent = m
            try:
                for key in path[:-1]:
                    parent = parent[key]
                if rnd.random() < 0.2 and isinstance(parent, dict):
                    parent.pop(path[-1], None)
                else:
                    parent[path[-1]] = copy.deepcopy(rnd.choice(_JUNK))
            except (KeyError, IndexError, TypeError):
                continue  # an earlier mutation replaced the parent
        try:
            parse_manifest(m)
        except PackageError:
            cases += 1
    assert cases > 2000  # most mutations are errors; none escaped as another exception
