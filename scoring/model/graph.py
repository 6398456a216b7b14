"""Format 2's model graph (contract section 2b): blocks of named ops over the pooled groups, and
one or more outputs.

``blocks`` are evaluated in order; each names its inputs, which must be groups, ``@groups`` (every
group vector in manifest order), ``@dense`` (the dense features) or blocks defined before it, so
a graph is acyclic by construction and a reference to a later block is named as a cycle or a
forward reference. The ops:

* ``concat``: the inputs side by side;
* ``mlp``: ``h = act(h @ weight + bias)`` per layer, ``relu`` or ``none``;
* ``fm2``: second-order factorization machine over same-dim field vectors, **field level**:
  ``sum over pairs of different fields f < g of <v_f, v_g>``, computed as
  ``0.5 * sum_k[(sum_f v_fk)^2 - sum_f v_fk^2]``; one value;
* ``linear_ids``: the wide part, the sum over the listed groups and each of their ids of a
  dim-1 table's row (``id % rows``); one value;
* ``cross``: DCN-v2, ``x_{l+1} = x0 * (x_l @ W + b) + x_l``, full rank (``weight`` [d, d]) or low
  rank (``u`` [d, r], ``v`` [r, d], ``W = u @ v``);
* ``add``: the inputs summed element-wise (same widths).

``outputs``: ``{"name", "from": block, "activation": "sigmoid" | "none"}`` on a one-value block,
or ``{"name", "product": [output, output]}``; an output may list ``"ignores": [group, ...]``:
the output is computed with those groups as zero vectors adding no wide weight, whatever the
request sends and without their serving value (the order-rate head ignores the ad's position).
A group some output ignores is position-like and must carry a ``serving_value``: what the
other outputs assume when a request sends nothing for it (the group absent or an empty list).

This module checks the structure (names, references, ops, fields, which group each output
ignores); :func:`resolve` checks the dimensions once the arrays' shapes are known.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

OPS = ("concat", "mlp", "fm2", "linear_ids", "cross", "add")
MLP_ACTIVATIONS = ("relu", "none")
OUTPUT_ACTIVATIONS = ("sigmoid", "none")


@dataclass(frozen=True)
class Dense:
    """One layer of an mlp block: ``h = act(h @ weight + bias)``."""

    weight: str
    bias: str
    activation: str


@dataclass(frozen=True)
class CrossLayer:
    """One DCN-v2 layer: full rank (``weight``) or low rank (``u``, ``v``)."""

    bias: str
    weight: str | None = None
    u: str | None = None
    v: str | None = None

    def files(self) -> list[str]:
        return [f for f in (self.weight, self.u, self.v, self.bias) if f]


@dataclass(frozen=True)
class Block:
    """One named op. ``inputs``: references, each ``("group", name)``, ``("dense", "")`` or
    ``("block", name)``; ``groups``: fm2's fields / linear_ids' groups."""

    name: str
    op: str
    inputs: tuple[tuple[str, str], ...] = ()
    layers: tuple = ()
    groups: tuple[str, ...] = ()
    table: str = ""

    def files(self) -> list[str]:
        out: list[str] = []
        for layer in self.layers:
            out += [layer.weight, layer.bias] if isinstance(layer, Dense) else layer.files()
        return out


@dataclass(frozen=True)
class Output:
    name: str
    source: str = ""                   # a one-value block
    activation: str = "sigmoid"
    product: tuple[str, ...] = ()      # or the product of two outputs
    ignores: tuple[str, ...] = ()


@dataclass(frozen=True)
class Graph:
    blocks: tuple[Block, ...]
    outputs: tuple[Output, ...]
    primary: str
    serving_values: Mapping[str, Any] = field(default_factory=dict)
    widths: Mapping[str, int] = field(default_factory=dict)  # filled by resolve()

    def block(self, name: str) -> Block:
        return next(b for b in self.blocks if b.name == name)

    def files(self) -> list[str]:
        return [f for b in self.blocks for f in b.files()]

    def ignored(self, output: Output) -> tuple[str, ...]:
        """Groups an output ignores, through the outputs it multiplies."""
        if output.product:
            by = {o.name: o for o in self.outputs}
            return tuple(sorted({g for o in output.product for g in self.ignored(by[o])}))
        return output.ignores


def parse_graph(raw: Mapping[str, Any], groups: list, tables: Mapping[str, Any], dense_dim: int,
                err: Callable[[str], Exception]) -> Graph:
    """The blocks and outputs of a format 2 manifest, their structure checked (``err`` makes
    the error, naming the field)."""
    group_dims = {g.name: g.dim for g in groups}
    blocks_raw = raw.get("blocks")
    if not isinstance(blocks_raw, list) or not blocks_raw:
        raise err("blocks must be a non-empty list of {\"name\", \"op\", ...} objects")
    blocks: list[Block] = []
    names: set[str] = set()
    for i, b in enumerate(blocks_raw):
        where = f"blocks[{i}]"
        if not isinstance(b, dict):
            raise err(f"{where} must be an object, got {b!r}")
        name = b.get("name")
        if not isinstance(name, str) or not name or name.startswith("@"):
            raise err(f"{where}.name must be a non-empty string not starting with '@', got {name!r}")
        if name in names or name in group_dims:
            raise err(f"{where}.name {name!r} is already the name of a "
                      f"{'block' if name in names else 'group'}")
        op = b.get("op")
        if op not in OPS:
            raise err(f"{where}.op {op!r} is not an op; expected one of {list(OPS)}")

        def ref(r: Any, at: str) -> tuple[str, str]:
            if r == "@dense":
                if not dense_dim:
                    raise err(f"{at}: '@dense' but the model has no dense features (dense_dim 0)")
                return ("dense", "")
            if isinstance(r, str) and r in group_dims:
                return ("group", r)
            if isinstance(r, str) and r in names:
                return ("block", r)
            later = any(isinstance(x, dict) and x.get("name") == r for x in blocks_raw[i:])
            raise err(f"{at}: {r!r} is not a group or a block defined before it"
                      + (" (blocks are evaluated in order: a forward reference or a cycle)"
                         if later else f" (groups: {sorted(group_dims)})"))

        def ref_list(key: str) -> tuple[tuple[str, str], ...]:
            items = b.get(key)
            if not isinstance(items, list) or not items:
                raise err(f"{where}.{key} must be a non-empty list")
            out: list[tuple[str, str]] = []
            for k, r in enumerate(items):
                if r == "@groups":
                    out += [("group", g.name) for g in groups]
                elif r == "@dense" and not dense_dim:
                    continue  # no dense features: nothing to add (as format 1 reads it)
                else:
                    out.append(ref(r, f"{where}.{key}[{k}]"))
            if not out:
                raise err(f"{where}.{key}: nothing to read ('@groups' without groups, or "
                          "'@dense' without dense features)")
            return tuple(out)

        def one_input() -> tuple[tuple[str, str], ...]:
            if "input" not in b:
                raise err(f"{where}.input is missing (the block or group it reads)")
            return (ref(b["input"], f"{where}.input"),)

        if op in ("concat", "add"):
            block = Block(name, op, inputs=ref_list("inputs"))
        elif op == "mlp":
            if b.get("precision", "float32") != "float32":
                raise err(f"{where}.precision {b.get('precision')!r}: bf16 runs on the one-mlp "
                          "shape (a concat feeding one mlp and one sigmoid output); a model "
                          "graph runs in float32")
            block = Block(name, op, inputs=one_input(), layers=_dense_layers(b, where, err))
        elif op == "cross":
            block = Block(name, op, inputs=one_input(), layers=_cross_layers(b, where, err))
        elif op == "fm2":
            fields = ref_list("inputs")
            bad = [r for r in fields if r[0] != "group"]
            if bad:
                raise err(f"{where}.inputs: fm2 takes field vectors (groups or '@groups'), got "
                          f"{bad[0][1] or '@dense'!r}")
            dims = {group_dims[r[1]] for r in fields}
            if len(fields) < 2 or len(dims) != 1:
                raise err(f"{where}.inputs: fm2 needs at least two fields of one dim, got "
                          f"{[(r[1], group_dims[r[1]]) for r in fields]}")
            block = Block(name, op, groups=tuple(r[1] for r in fields))
        else:  # linear_ids
            listed = b.get("groups")
            if not isinstance(listed, list) or not listed or not all(
                    isinstance(g, str) and g in group_dims for g in listed):
                raise err(f"{where}.groups must list groups of the model, got {listed!r}")
            table = b.get("table")
            if not isinstance(table, str) or table not in tables:
                raise err(f"{where}.table {table!r} is not in tables (known: {sorted(tables)})")
            if tables[table].dim != 1:
                raise err(f"{where}.table {table!r} must have dim 1 (one weight per id), "
                          f"has {tables[table].dim}")
            if tables[table].dtype != "float32":
                raise err(f"{where}.table {table!r} must be float32 (the wide part's weights)")
            block = Block(name, op, groups=tuple(listed), table=table)
        blocks.append(block)
        names.add(name)
    outputs = _outputs(raw, names, err)
    ignored = {g for o in outputs for g in o.ignores}
    serving = {g.name: g.serving_value for g in groups if getattr(g, "serving_value", None) is not None}
    for o in outputs:
        for g in o.ignores:
            if g not in group_dims:
                raise err(f"outputs: {o.name!r} ignores {g!r}, which is not a group")
    missing = sorted(ignored - set(serving))
    if missing:
        raise err(f"groups: {missing[0]!r} is ignored by an output (position-like) but has no "
                  "serving_value (what the other outputs assume when a request does not send it)")
    primary = raw.get("primary", outputs[0].name)
    if not isinstance(primary, str) or primary not in {o.name for o in outputs}:
        raise err(f"primary must name an output ({[o.name for o in outputs]}), got {primary!r}")
    return Graph(tuple(blocks), tuple(outputs), primary, serving)


def _dense_layers(b: Mapping[str, Any], where: str, err) -> tuple[Dense, ...]:
    from .manifest import check_relative_path

    layers = b.get("layers")
    if not isinstance(layers, list) or not layers:
        raise err(f"{where}.layers must list at least one layer")
    out = []
    for i, layer in enumerate(layers):
        at = f"{where}.layers[{i}]"
        if not isinstance(layer, dict):
            raise err(f"{at} must be an object, got {layer!r}")
        act = layer.get("activation", "none")
        if act not in MLP_ACTIVATIONS:
            raise err(f"{at}.activation {act!r} is not supported; expected one of {list(MLP_ACTIVATIONS)}")
        files = []
        for key in ("weight", "bias"):
            if not isinstance(layer.get(key), str):
                raise err(f"{at}.{key} must be the path of a .npy file")
            files.append(check_relative_path(layer[key], f"manifest.json: {at}.{key}"))
        out.append(Dense(files[0], files[1], act))
    return tuple(out)


def _cross_layers(b: Mapping[str, Any], where: str, err) -> tuple[CrossLayer, ...]:
    from .manifest import check_relative_path

    layers = b.get("layers")
    if not isinstance(layers, list) or not layers:
        raise err(f"{where}.layers must list at least one cross layer")
    out = []
    for i, layer in enumerate(layers):
        at = f"{where}.layers[{i}]"
        if not isinstance(layer, dict):
            raise err(f"{at} must be an object, got {layer!r}")
        full = "weight" in layer
        low = "u" in layer or "v" in layer
        if full == low:
            raise err(f"{at} must have either \"weight\" [d, d] (full rank) or \"u\" [d, r] and "
                      "\"v\" [r, d] (low rank)")
        keys = ("weight", "bias") if full else ("u", "v", "bias")
        files = {}
        for key in keys:
            if not isinstance(layer.get(key), str):
                raise err(f"{at}.{key} must be the path of a .npy file")
            files[key] = check_relative_path(layer[key], f"manifest.json: {at}.{key}")
        out.append(CrossLayer(**files))
    return tuple(out)


def _outputs(raw: Mapping[str, Any], blocks: set[str], err) -> list[Output]:
    outs = raw.get("outputs")
    if not isinstance(outs, list) or not outs:
        raise err("outputs must list at least one output")
    out: list[Output] = []
    seen: set[str] = set()
    for i, o in enumerate(outs):
        at = f"outputs[{i}]"
        if not isinstance(o, dict) or not isinstance(o.get("name"), str) or not o["name"]:
            raise err(f"{at} must be an object with a non-empty \"name\"")
        name = o["name"]
        if name in seen:
            raise err(f"{at}.name {name!r} is repeated")
        ignores = o.get("ignores", [])
        if not isinstance(ignores, list) or not all(isinstance(g, str) for g in ignores):
            raise err(f"{at}.ignores must be a list of group names")
        if "product" in o:
            prod = o["product"]
            if (not isinstance(prod, list) or len(prod) != 2
                    or not all(isinstance(p, str) and p in seen for p in prod)):
                raise err(f"{at}.product must name two outputs listed before it, got {prod!r}")
            if ignores:
                raise err(f"{at}.ignores: a product takes what its outputs ignore")
            out.append(Output(name, product=tuple(prod)))
        else:
            src = o.get("from")
            if not isinstance(src, str) or src not in blocks:
                raise err(f"{at}.from must name a block, got {src!r}")
            act = o.get("activation", "sigmoid")
            if act not in OUTPUT_ACTIVATIONS:
                raise err(f"{at}.activation {act!r}; expected one of {list(OUTPUT_ACTIVATIONS)}")
            out.append(Output(name, source=src, activation=act, ignores=tuple(ignores)))
        seen.add(name)
    return out


def resolve(graph: Graph, group_dims: Mapping[str, int], dense_dim: int,
            shape_of: Callable[[str], tuple[int, ...]], err) -> Graph:
    """Every block's width from the arrays' shapes (``shape_of(file)``), checked: an mlp's first
    weight has as many rows as its input is wide, each layer's rows are the previous one's
    outputs, cross weights are [d, d], add's inputs are equally wide, an output reads a
    one-value block. Returns the graph with ``widths`` filled."""
    widths: dict[str, int] = {}

    def width(r: tuple[str, str]) -> int:
        kind, name = r
        return dense_dim if kind == "dense" else group_dims[name] if kind == "group" else widths[name]

    for i, b in enumerate(graph.blocks):
        at = f"blocks[{i}] ({b.name!r}, {b.op})"
        if b.op == "concat":
            widths[b.name] = sum(width(r) for r in b.inputs)
        elif b.op == "add":
            ws = [width(r) for r in b.inputs]
            if len(set(ws)) != 1:
                raise err(f"{at}: inputs must be equally wide, got {ws}")
            widths[b.name] = ws[0]
        elif b.op in ("fm2", "linear_ids"):
            widths[b.name] = 1
        elif b.op == "mlp":
            fan_in = width(b.inputs[0])
            for k, layer in enumerate(b.layers):
                w, bias = shape_of(layer.weight), shape_of(layer.bias)
                if len(w) != 2 or w[0] != fan_in or w[1] < 1:
                    raise err(f"{at}: layers[{k}] weight {layer.weight} must be [{fan_in}, out], "
                              f"got {list(w)}")
                if bias != (w[1],):
                    raise err(f"{at}: layers[{k}] bias {layer.bias} must be [{w[1]}], got {list(bias)}")
                fan_in = w[1]
            widths[b.name] = fan_in
        else:  # cross
            d = width(b.inputs[0])
            for k, layer in enumerate(b.layers):
                if layer.weight:
                    if shape_of(layer.weight) != (d, d):
                        raise err(f"{at}: layers[{k}] weight must be [{d}, {d}], got "
                                  f"{list(shape_of(layer.weight))}")
                else:
                    u, v = shape_of(layer.u), shape_of(layer.v)
                    if len(u) != 2 or u[0] != d or len(v) != 2 or v != (u[1], d):
                        raise err(f"{at}: layers[{k}] u must be [{d}, r] and v [r, {d}], got "
                                  f"{list(u)} and {list(v)}")
                if shape_of(layer.bias) != (d,):
                    raise err(f"{at}: layers[{k}] bias must be [{d}], got {list(shape_of(layer.bias))}")
            widths[b.name] = d
    for o in graph.outputs:
        if o.source and widths[o.source] != 1:
            raise err(f"outputs: {o.name!r} reads block {o.source!r}, which is {widths[o.source]} "
                      "wide; an output reads a one-value block")
    return Graph(graph.blocks, graph.outputs, graph.primary, graph.serving_values, widths)
