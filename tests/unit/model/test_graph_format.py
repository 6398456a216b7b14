"""Format 2 model graphs: every validation failure named in one clear error, and random graph
shapes of every op scored by the engine as the float64 reference computes them."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from scoring.engine.graph import GraphEngine
from scoring.model.manifest import PackageError, parse_manifest
from scoring.model.package import load_package
from scoring.model.reference_graph import graph_outputs
from scoring.model.writer import write_package

from ...graph_models import mixed_graph, mixed_request


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    path = mixed_graph(tmp_path_factory.mktemp("g") / "m")
    manifest = json.loads((path / "manifest.json").read_text())
    arrays = {p.relative_to(path).as_posix(): np.load(p) for p in path.rglob("*.npy")}
    return manifest, arrays


def _block(m, name):
    return next(b for b in m["blocks"] if b["name"] == name)


MANIFEST_ERRORS = [
    (lambda m: _block(m, "x")["inputs"].append("deep"), "blocks\\[0\\].inputs\\[2\\]: 'deep' is not a "
     "group or a block defined before it \\(blocks are evaluated in order: a forward reference "
     "or a cycle\\)"),
    (lambda m: m["blocks"].append({"name": "att", "op": "attention", "inputs": ["x"]}),
     "blocks\\[9\\].op 'attention' is not an op"),
    (lambda m: m["groups"][5].pop("serving_value"), "'position' is ignored by an output "
     "\\(position-like\\) but has no serving_value"),
    (lambda m: m["outputs"][1].update(ignores=["nope"]), "ignores 'nope', which is not a group"),
    (lambda m: _block(m, "fm").update(inputs=["user_id"]), "fm2 needs at least two fields"),
    (lambda m: _block(m, "fm").update(inputs=["x", "user_id"]), "fm2 takes field vectors"),
    (lambda m: _block(m, "wide").update(table="user"), "table 'user' must have dim 1"),
    (lambda m: _block(m, "wide").update(groups=["nope"]), "groups must list groups of the model"),
    (lambda m: m["blocks"].append({"name": "deep", "op": "add", "inputs": ["fm"]}),
     "name 'deep' is already the name of a block"),
    (lambda m: m["blocks"].append({"name": "user_id", "op": "add", "inputs": ["fm"]}),
     "already the name of a group"),
    (lambda m: m["outputs"].append({"name": "p", "product": ["pctr", "nope"]}),
     "product must name two outputs listed before it"),
    (lambda m: m["outputs"][0].update({"from": "nope"}), "from must name a block"),
    (lambda m: m["outputs"][0].update(activation="tanh"), "activation 'tanh'"),
    (lambda m: m.update(primary="nope"), "primary must name an output"),
    (lambda m: _block(m, "cross")["layers"][0].update(weight="c/w1.npy"), "either \"weight\""),
    (lambda m: _block(m, "deep")["layers"][0].update(activation="gelu"), "activation 'gelu'"),
    (lambda m: _block(m, "deep").pop("input"), "blocks\\[1\\].input is missing"),
    (lambda m: m["groups"][0].update(pooling="max"), "pooling must be one of"),
]


@pytest.mark.parametrize("change,message", MANIFEST_ERRORS)
def test_manifest_errors_name_the_field(mixed, change, message):
    manifest, _ = mixed
    m = copy.deepcopy(manifest)
    change(m)
    with pytest.raises(PackageError, match=message):
        parse_manifest(m)


SHAPE_ERRORS = [
    ("d/w0.npy", lambda a: a[:-1], "blocks\\[1\\] \\('deep', mlp\\): layers\\[0\\] weight d/w0.npy must be \\[26, out\\]"),
    ("d/b1.npy", lambda a: a[:-1], "layers\\[1\\] bias d/b1.npy must be \\[17\\]"),
    ("c/w1.npy", lambda a: a[:, :-1], "layers\\[1\\] weight must be \\[26, 26\\]"),
    ("c/v0.npy", lambda a: a[:-1], "u must be \\[26, r\\] and v \\[r, 26\\]"),
    ("co/w.npy", lambda a: np.hstack([a, a]), "layers\\[0\\] bias co/b.npy must be \\[2\\]"),
]


@pytest.mark.parametrize("file,cut,message", SHAPE_ERRORS)
def test_dimension_mismatches_are_named_at_load(mixed, tmp_path, file, cut, message):
    manifest, arrays = mixed
    arrays = dict(arrays)
    arrays[file] = cut(arrays[file])
    with pytest.raises(PackageError, match=message):
        write_package(tmp_path / "p", manifest, arrays)


def _random_graph(rng: np.random.Generator, out):
    """A random valid graph: 1-3 context and 0-3 ad groups of one dim, dense or not, then 2-6
    blocks each built over what exists, one output (two when it can multiply them)."""
    dim = int(rng.choice([2, 3, 4]))
    n_ctx, n_ad = int(rng.integers(1, 4)), int(rng.integers(0, 4))
    groups = [{"name": f"g_c{i}", "side": "context", "table": f"t{i % 2}",
               "pooling": str(rng.choice(["sum", "mean", "sqrtn"]))} for i in range(n_ctx)]
    groups += [{"name": f"g_a{i}", "side": "ad", "table": f"t{i % 2}",
                "pooling": str(rng.choice(["sum", "mean", "sqrtn"]))} for i in range(n_ad)]
    dense_dim = int(rng.integers(0, 3))
    arrays = {"t0.npy": rng.standard_normal((40, dim)).astype(np.float32),
              "t1.npy": rng.standard_normal((30, dim)).astype(np.float32),
              "w.npy": rng.standard_normal((50, 1)).astype(np.float32)}
    widths = {g["name"]: dim for g in groups}
    blocks, k = [], 0

    def new(prefix):
        nonlocal k
        k += 1
        return f"{prefix}{k}"

    def mlp(inp, width, last):
        name = new("m")
        sizes = [width] + [int(rng.integers(1, 40)) for _ in range(int(rng.integers(0, 3)))] + [last]
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            w, bias = f"{name}/w{i}.npy", f"{name}/b{i}.npy"
            arrays[w] = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
            arrays[bias] = (rng.standard_normal(b) * 0.1).astype(np.float32)
            layers.append({"weight": w, "bias": bias,
                           "activation": "relu" if i < len(sizes) - 2 else str(rng.choice(["relu", "none"]))})
        blocks.append({"name": name, "op": "mlp", "input": inp, "layers": layers})
        widths[name] = last
        return name

    members = [g["name"] for g in groups]
    x = new("x")
    inputs = list(rng.permutation(members)) + (["@dense"] if dense_dim else [])
    blocks.append({"name": x, "op": "concat", "inputs": [str(i) for i in inputs]})
    widths[x] = len(members) * dim + dense_dim
    ones = []
    for _ in range(int(rng.integers(1, 4))):
        kind = rng.choice(["mlp", "cross", "fm", "wide"])
        if kind == "cross":
            c = new("c")
            d = widths[x]
            layers = []
            for i in range(int(rng.integers(1, 3))):
                if rng.random() < 0.5:
                    arrays[f"{c}/w{i}.npy"] = (rng.standard_normal((d, d)) * 0.2 / np.sqrt(d)).astype(np.float32)
                    layers.append({"weight": f"{c}/w{i}.npy", "bias": f"{c}/b{i}.npy"})
                else:
                    r = int(rng.integers(1, 4))
                    arrays[f"{c}/u{i}.npy"] = (rng.standard_normal((d, r)) * 0.3).astype(np.float32)
                    arrays[f"{c}/v{i}.npy"] = (rng.standard_normal((r, d)) * 0.3 / np.sqrt(d)).astype(np.float32)
                    layers.append({"u": f"{c}/u{i}.npy", "v": f"{c}/v{i}.npy", "bias": f"{c}/b{i}.npy"})
                arrays[f"{c}/b{i}.npy"] = (rng.standard_normal(d) * 0.1).astype(np.float32)
            blocks.append({"name": c, "op": "cross", "input": x, "layers": layers})
            widths[c] = d
            ones.append(mlp(c, d, 1))
        elif kind == "fm" and len(members) >= 2:
            f = new("f")
            blocks.append({"name": f, "op": "fm2", "inputs": [str(m) for m in rng.permutation(members)[:max(2, len(members) - 1)]]})
            ones.append(f)
        elif kind == "wide":
            wd = new("w")
            picked = [str(m) for m in rng.permutation(members)[:int(rng.integers(1, len(members) + 1))]]
            blocks.append({"name": wd, "op": "linear_ids", "groups": picked, "table": "w"})
            ones.append(wd)
        else:
            ones.append(mlp(x, widths[x], 1))
    top = new("sum")
    blocks.append({"name": top, "op": "add", "inputs": ones})
    outputs = [{"name": "p", "from": top, "activation": "sigmoid"}]
    if len(ones) > 1:
        outputs += [{"name": "q", "from": ones[0], "activation": "sigmoid"},
                    {"name": "pq", "product": ["p", "q"]}]
    manifest = {"format": "ctr-model", "format_version": 2, "name": "r", "version": "v1",
                "tables": {"t0": {"file": "t0.npy", "rows": 40, "dim": dim},
                           "t1": {"file": "t1.npy", "rows": 30, "dim": dim},
                           "w": {"file": "w.npy", "rows": 50, "dim": 1}},
                "groups": groups, "dense_dim": dense_dim, "blocks": blocks, "outputs": outputs}
    return write_package(out, manifest, arrays)


@pytest.mark.parametrize("seed", range(30))
def test_random_graphs_score_as_the_reference(tmp_path, seed):
    rng = np.random.default_rng(seed)
    pkg = load_package(_random_graph(rng, tmp_path / "g"))
    engine = GraphEngine(pkg, chunk=int(rng.choice([6, 96])))
    m = pkg.manifest
    for n in (1, 4, 15):
        ctx = {g.name: [f"v{rng.integers(30)}" for _ in range(int(rng.integers(0, 3)))]
               for g in m.groups if g.side == "context"}
        ads = [{"features": {g.name: f"v{rng.integers(30)}" for g in m.groups if g.side == "ad"
                             and rng.random() < 0.8},
                **({"dense": [float(v) for v in rng.standard_normal(m.dense_dim)]} if m.dense_dim else {})}
               for _ in range(n)]
        want = graph_outputs(pkg, ctx, ads)
        got = engine.score_outputs(ctx, ads)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], atol=1e-5, rtol=1e-4, err_msg=name)


def test_a_mixed_graph_round_trips_through_the_writer(mixed, tmp_path):
    manifest, arrays = mixed
    pkg = load_package(write_package(tmp_path / "again", manifest, arrays))
    assert [o.name for o in pkg.manifest.graph.outputs] == ["pctr", "pcvr", "pctcvr"]
    assert pkg.manifest.graph.widths["x"] == 26
    ctx, ads = mixed_request(np.random.default_rng(0), 3)
    assert set(graph_outputs(pkg, ctx, ads)) == {"pctr", "pcvr", "pctcvr"}


@pytest.mark.parametrize("change,message", [
    (lambda m: m["outputs"][0].update({"from": "x"}), "outputs: 'pctr' reads block 'x', which is 26 wide"),
    (lambda m: _block(m, "logit")["inputs"].append("x"), "\\('logit', add\\): inputs must be equally "
     "wide, got \\[1, 1, 1, 1, 26\\]"),
])
def test_widths_are_checked_at_load(mixed, tmp_path, change, message):
    manifest, arrays = mixed
    m = copy.deepcopy(manifest)
    change(m)
    with pytest.raises(PackageError, match=message):
        write_package(tmp_path / "p", m, arrays)


def test_mutated_graph_manifests_fail_with_package_errors_only(mixed, tmp_path):
    """Every field of a graph manifest (every op, pooling and output kind) replaced by junk, by
    another field's value or deleted, one at a time and a few at once: the parser accepts it or
    raises PackageError, never another exception; and what it accepts loads or fails with a
    PackageError naming the problem."""
    import random

    from .test_format2 import _JUNK, _paths

    manifest, arrays = mixed
    paths = [p for p in _paths(manifest) if p]
    values = [v for p in paths for v in [_get(manifest, p)] if not isinstance(v, (dict, list))]
    rnd = random.Random(1)
    errors = accepted = 0
    for trial in range(2000):
        m = copy.deepcopy(manifest)
        for path in rnd.sample(paths, k=1 if trial < 1000 else 3):
            try:
                parent = _get(m, path[:-1])
                if rnd.random() < 0.2 and isinstance(parent, dict):
                    parent.pop(path[-1], None)
                else:
                    parent[path[-1]] = copy.deepcopy(rnd.choice(_JUNK + values))
            except (KeyError, IndexError, TypeError):
                continue
        try:
            parse_manifest(m)
        except PackageError:
            errors += 1
            continue
        accepted += 1
        if accepted % 25 == 0:  # some of what parses goes on to the loader
            try:
                write_package(tmp_path / f"p{trial}", m, arrays)
            except PackageError:
                pass
    assert errors > 1000 and accepted > 50, (errors, accepted)


def _get(doc, path):
    for key in path:
        doc = doc[key]
    return doc
