"""Format 2 manifests (contract section 2b), as far as this engine runs them.

Format 2 names its embedding tables apart from the groups (a table may serve several groups) and
gives each a dtype: ``float32``, ``float16`` or ``int8_rowwise`` (row r's value is
``q[r] * qparams[r, 0] + qparams[r, 1]``, computed in float32). The model is a list of blocks
and outputs. This version runs the shape every format 1 package has: one ``concat`` of
``@groups`` (then ``@dense``) feeding one ``mlp`` whose last layer has one output and no
activation, and one output applying ``sigmoid`` to it. The other ops, poolings and fields the
contract defines (``fm2``, ``cross``, ``linear_ids``, several outputs, ``sqrtn``,
``weighted_sum``, ``serving_value``) are refused with a message naming them, never ignored.

An extension of this project (docs/model-format.md): the mlp block may say ``"precision":
"bf16"``: every layer's inputs and weights are rounded to bfloat16 (round to nearest even) and
multiplied with float32 sums, which AVX512-BF16 CPUs do in one instruction per pair.

The result is the same :class:`~scoring.model.manifest.Manifest` format 1 gives, with
``tables`` filled and the sigmoid folded into the last layer, so everything downstream reads
both versions alike.
"""

from __future__ import annotations

from typing import Any, Mapping

from .manifest import (
    CHECKSUMS,
    HIDDEN_ACTIVATIONS,
    MANIFEST,
    MLP_PRECISIONS,
    SIDES,
    TABLE_DTYPES,
    GroupSpec,
    LayerSpec,
    Manifest,
    PackageError,
    TableSpec,
    _choice,
    _field,
    _positive_int,
    check_name,
    check_relative_path,
    group_entries,
)

POOLINGS_V2 = ("sum", "mean", "sqrtn", "weighted_sum")
_LATER = "is defined by format 2 but not run by this version of the engine"


def _err(text: str) -> PackageError:
    return PackageError(f"{MANIFEST}: {text}")


def _tables(raw: Mapping[str, Any]) -> dict[str, TableSpec]:
    tables_raw = _field(raw, "tables", dict, "")
    if not tables_raw:
        raise _err("tables must name at least one table")
    out = {}
    for key, t in tables_raw.items():
        where = f"tables.{key}."
        if not key:
            raise _err("tables: a table name must be a non-empty string")
        if not isinstance(t, dict):
            raise _err(f"tables.{key} must be an object, got {t!r}")
        rows = _positive_int(t, "rows", where)
        if rows >= 2**63:
            raise _err(f"{where}rows must be < 2**63, got {rows}")
        dtype = _choice(t, "dtype", TABLE_DTYPES, where) if "dtype" in t else "float32"
        qparams = None
        if dtype == "int8_rowwise":
            qparams = check_relative_path(_field(t, "qparams", str, where),
                                          f"{MANIFEST}: {where}qparams")
        elif "qparams" in t:
            raise _err(f"{where}qparams is only for dtype 'int8_rowwise' (this table is {dtype})")
        out[key] = TableSpec(
            name=key,
            file=check_relative_path(_field(t, "file", str, where), f"{MANIFEST}: {where}file"),
            rows=rows, dim=_positive_int(t, "dim", where), dtype=dtype, qparams=qparams)
    return out


def _groups(raw: Mapping[str, Any], tables: Mapping[str, TableSpec]) -> list[GroupSpec]:
    groups = []
    for i, g, gname in group_entries(raw):
        where = f"groups[{i}]."
        key = _field(g, "table", str, where)
        if key not in tables:
            raise _err(f"{where}table {key!r} is not in tables (known: {sorted(tables)})")
        pooling = _choice(g, "pooling", POOLINGS_V2, where)
        serving = g.get("serving_value")
        if "serving_value" in g and not (isinstance(serving, str) or (
                isinstance(serving, int) and not isinstance(serving, bool) and 0 <= serving < 2**64)):
            raise _err(f"{where}serving_value must be a string or an id (0 <= id < 2**64), got "
                       f"{serving!r}")
        t = tables[key]
        groups.append(GroupSpec(name=gname, side=_choice(g, "side", SIDES, where), buckets=t.rows,
                                dim=t.dim, pooling=pooling, table=t.file, table_name=key,
                                serving_value=serving))
    return groups


def _mlp(raw: Mapping[str, Any], dense_dim: int) -> tuple[str, list[LayerSpec], str]:
    blocks = _field(raw, "blocks", list, "")
    ops = [b.get("op") if isinstance(b, dict) else None for b in blocks]
    if ops != ["concat", "mlp"]:
        other = next((op for op in ops if op not in ("concat", "mlp")), None)
        detail = f"op {other!r} {_LATER}" if other else f"blocks are {ops}"
        raise _err(f"blocks: this version runs one 'concat' of @groups (and @dense) feeding one "
                   f"'mlp'; {detail}")
    concat, mlp = blocks
    cname = _field(concat, "name", str, "blocks[0].")
    inputs = _field(concat, "inputs", list, "blocks[0].")
    allowed = (["@groups", "@dense"], ["@groups"] if dense_dim == 0 else None)
    if inputs not in allowed:
        raise _err(f"blocks[0].inputs must be [\"@groups\", \"@dense\"] (or [\"@groups\"] without "
                   f"dense features) in this version, got {inputs!r}")
    if _field(mlp, "input", str, "blocks[1].") != cname:
        raise _err(f"blocks[1].input must be {cname!r} (the concat block)")
    layers_raw = _field(mlp, "layers", list, "blocks[1].")
    if not layers_raw:
        raise _err("blocks[1].layers must list at least one layer")
    layers = []
    for i, layer in enumerate(layers_raw):
        where = f"blocks[1].layers[{i}]."
        if not isinstance(layer, dict):
            raise _err(f"blocks[1].layers[{i}] must be an object, got {layer!r}")
        last = i == len(layers_raw) - 1
        act = _field(layer, "activation", str, where)
        allowed_acts = ("none",) if last else HIDDEN_ACTIVATIONS
        if act not in allowed_acts:
            role = "the last layer (the output applies the sigmoid)" if last else "a hidden layer"
            raise _err(f"{where}activation {act!r} is not supported for {role}; expected one of "
                       f"{list(allowed_acts)}")
        layers.append(LayerSpec(
            weight=check_relative_path(_field(layer, "weight", str, where), f"{MANIFEST}: {where}weight"),
            bias=check_relative_path(_field(layer, "bias", str, where), f"{MANIFEST}: {where}bias"),
            activation="sigmoid" if last else act))  # the output's sigmoid, folded in
    precision = _choice(mlp, "precision", MLP_PRECISIONS, "blocks[1].") if "precision" in mlp \
        else "float32"
    return _field(mlp, "name", str, "blocks[1]."), layers, precision


def _output(raw: Mapping[str, Any], mlp_name: str) -> None:
    outputs = _field(raw, "outputs", list, "")
    if len(outputs) != 1 or not isinstance(outputs[0], dict):
        raise _err(f"outputs: this version runs one output (several outputs {_LATER}), "
                   f"got {len(outputs)}")
    out = outputs[0]
    name = _field(out, "name", str, "outputs[0].")
    if "product" in out:
        raise _err(f"outputs[0].product {_LATER}")
    if _field(out, "from", str, "outputs[0].") != mlp_name:
        raise _err(f"outputs[0].from must be {mlp_name!r} (the mlp block)")
    if _field(out, "activation", str, "outputs[0].") != "sigmoid":
        raise _err("outputs[0].activation must be 'sigmoid' (the pCTR)")
    primary = raw.get("primary", name)
    if primary != name:
        raise _err(f"primary must name an output ({name!r}), got {primary!r}")


def _one_mlp(raw: Mapping[str, Any], groups: list[GroupSpec]) -> bool:
    """The shape every format 1 package has (one concat feeding one mlp, one sigmoid output,
    sum or mean pooling): the MLP engine runs it. Anything else is a model graph."""
    blocks, outputs = raw.get("blocks"), raw.get("outputs")
    if not (isinstance(blocks, list) and isinstance(outputs, list) and len(blocks) == 2
            and all(isinstance(b, dict) for b in blocks)):
        return not (isinstance(blocks, list) and len(blocks) != 2 and blocks)  # errors: one-mlp
    ops = [b.get("op") if isinstance(b, dict) else None for b in blocks]
    one_output = len(outputs) == 1 and isinstance(outputs[0], dict) and \
        "product" not in outputs[0] and not outputs[0].get("ignores")
    plain = all(g.pooling in ("sum", "mean") and g.serving_value is None for g in groups)
    layers = blocks[1].get("layers")
    if not (isinstance(layers, list) and layers and all(isinstance(x, dict) for x in layers)):
        return ops == ["concat", "mlp"]  # the one-mlp parser names what is wrong
    acts = [x.get("activation") for x in layers]
    mlp_like = all(a == "relu" for a in acts[:-1]) and acts[-1] == "none"  # else a graph
    dense = raw.get("dense_dim", 0)
    inputs = ["@groups", "@dense"] if isinstance(dense, int) and dense > 0 else None
    return ops == ["concat", "mlp"] and one_output and plain and mlp_like and \
        blocks[0].get("inputs") in (["@groups", "@dense"], inputs or ["@groups"]) and \
        blocks[1].get("input") == blocks[0].get("name") and \
        outputs[0].get("from") == blocks[1].get("name") and outputs[0].get("activation") == "sigmoid"


def parse_format2(raw: Mapping[str, Any]) -> Manifest:
    name = check_name(_field(raw, "name", str, ""), f"{MANIFEST}: name")
    version = check_name(_field(raw, "version", str, ""), f"{MANIFEST}: version")
    dense_dim = _positive_int(raw, "dense_dim", "", minimum=0) if "dense_dim" in raw else 0
    tables = _tables(raw)
    groups = _groups(raw, tables)
    if sum(g.dim for g in groups) + dense_dim == 0:
        raise _err("the model has no inputs (no groups and dense_dim 0)")
    if _one_mlp(raw, groups):
        mlp_name, layers, precision = _mlp(raw, dense_dim)
        _output(raw, mlp_name)
        manifest = Manifest(name=name, version=version, groups=tuple(groups), dense_dim=dense_dim,
                            layers=tuple(layers), raw=raw, format_version=2, tables=tables,
                            mlp_precision=precision)
    else:
        from .graph import parse_graph
        graph = parse_graph(raw, groups, tables, dense_dim, _err)
        manifest = Manifest(name=name, version=version, groups=tuple(groups), dense_dim=dense_dim,
                            layers=(), raw=raw, format_version=2, tables=tables, graph=graph)
    files = manifest.files()
    if CHECKSUMS in files or MANIFEST in files:
        raise _err(f"arrays may not be named {MANIFEST} or {CHECKSUMS}")
    return manifest
