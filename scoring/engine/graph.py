"""A model graph (format 2 blocks and outputs) compiled into a plan for ``graph_kernels.run``.

At load, every block an output needs becomes one or more instructions, each with its side:
context-side instructions (every input context-side) run once per request, ad-side ones per
chunk of ads. The context split generalises the MLP engine's:

* an ``mlp`` or a ``cross`` fed by a concat with context members splits its first linear
  layer, ``x @ W = x_ctx @ W_ctx + x_ad @ W_ad`` (for a low-rank cross, ``x @ u``): the context
  part is one context-side instruction whose result enters the ad-side product as its bias
  (the cross still reads the whole ``x0`` for its element-wise product);
* ``fm2`` splits as ``0.5 * sum_k((S_c + S_a)^2 - Q_c - Q_a)``, ``S_c``, ``Q_c`` once per request;
* ``linear_ids`` sums the context groups' weights once per request.

An output that ignores groups (``"ignores"``) gets its own instance of each block that depends
on them, reading zeros for those groups; blocks that do not depend on them are shared.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..model.package import ModelPackage
from . import graph_kernels as gk
from . import kernels
from .features import EncodedBatch, FeatureLayout
from .outputs import overflow
from .scorer import JsonScoring, side_plans

_ACT = {"relu": kernels.ACT_RELU, "none": kernels.ACT_NONE}


@dataclass(frozen=True)
class _Value:
    side: int      # 0 context, 1 ad
    offset: int
    width: int


class _Plan:
    """The compiler: instructions, operands, layer rows and packed parameters."""

    def __init__(self, engine: "GraphEngine") -> None:
        self.e = engine
        self.m = engine.manifest
        self.g = self.m.graph
        self.arrays = engine.package.arrays
        self.ins: list[list[int]] = []
        self.opd: list[list[int]] = []
        self.lt: list[list[int]] = []
        self.params: list[np.ndarray] = []
        self.p_size = 0
        self.cv_size = 0
        self.av_width = 0   # sum of ad-side value widths (each gets chunk rows)
        self.max_width = 1
        self.wide: dict[str, int] = {}
        self.wide_arrays: list[np.ndarray] = []
        self.wide_serving: list[int] = []
        self.memo: dict[Any, Any] = {}
        self.deps = self._deps()

    # -- layout helpers ------------------------------------------------------------------

    def _deps(self) -> dict[str, frozenset[str]]:
        deps: dict[str, frozenset[str]] = {}
        for b in self.g.blocks:
            d = set(b.groups)
            for kind, name in b.inputs:
                if kind == "group":
                    d.add(name)
                elif kind == "block":
                    d |= deps[name]
            deps[b.name] = frozenset(d)
        return deps

    def field(self, name: str) -> tuple[int, int, int, int]:
        """(side, column, dim, slot) of a pooled group."""
        e = self.e
        if name in e.layout.ctx_slot:
            s = e.layout.ctx_slot[name]
            return 0, int(e._ctx.cols[s]), int(e._ctx.dims[s]), s
        s = e.layout.ad_slot[name]
        return 1, int(e._ad.cols[s]), int(e._ad.dims[s]), s

    def alloc(self, side: int, width: int) -> _Value:
        self.max_width = max(self.max_width, width)
        if side == 0:
            v = _Value(0, self.cv_size, width)
            self.cv_size += width + (-width) % 16
        else:  # [chunk, width] in av
            v = _Value(1, self.av_width * self.e.chunk, width)
            self.av_width += width + (-width) % 16
        return v

    def pack(self, a: np.ndarray) -> int:
        flat = np.ascontiguousarray(a, dtype=np.float32).reshape(-1)
        off = self.p_size
        pad = (-flat.size) % 16
        self.params.append(np.concatenate([flat, np.zeros(pad, np.float32)]))
        self.p_size += flat.size + pad
        return off

    def layer(self, w: np.ndarray, b: np.ndarray | None, act: int) -> int:
        self.max_width = max(self.max_width, w.shape[0], w.shape[1])
        self.lt.append([self.pack(w), w.shape[0], w.shape[1], -1 if b is None else self.pack(b), act])
        return len(self.lt) - 1

    def emit(self, op: int, out: _Value, *, inp: _Value | None = None, aux: int = -1,
             lt: tuple[int, int] = (0, 0), operands: Sequence[Sequence[int]] = (),
             extra: int = 0) -> _Value:
        start = len(self.opd)
        self.opd += [list(o) for o in operands]
        self.ins.append([op, out.side, out.offset, out.width, inp.offset if inp else 0,
                         inp.side if inp else 0, aux, extra, lt[0], lt[1], start, len(operands)])
        return out

    # -- blocks --------------------------------------------------------------------------

    def ref_members(self, ref: tuple[str, str], ignored: frozenset[str]) -> list[list[int]]:
        """Operand rows for one input reference (a group, the dense features, a block)."""
        kind, name = ref
        if kind == "dense":
            return [[gk.SRC_FIELD, 1, self.e.dense_col, self.m.dense_dim, -1, 0]]
        if kind == "group":
            side, col, dim, slot = self.field(name)
            return [[gk.SRC_FIELD, side, col, dim, slot, int(name in ignored)]]
        v = self.value(name, ignored)
        return [[gk.SRC_VALUE, v.side, v.offset, v.width, -1, 0]]

    def gather(self, members: list[list[int]]) -> _Value:
        side = max([m[1] for m in members] + [0])
        out = self.alloc(side, sum(m[3] for m in members))
        return self.emit(gk.OP_GATHER, out, operands=members)

    def ref_value(self, ref: tuple[str, str], ignored: frozenset[str]) -> _Value:
        if ref[0] == "block":
            return self.value(ref[1], ignored)
        return self.gather(self.ref_members(ref, ignored))

    def value(self, name: str, ignored: frozenset[str]) -> _Value:
        """The instruction computing block ``name`` for an output ignoring ``ignored``."""
        key = (name, ignored & self.deps[name])
        if key not in self.memo:
            self.memo[key] = self._block(self.g.block(name), key[1])
        return self.memo[key]

    def concat_members(self, name: str, ignored: frozenset[str]) -> list[list[int]]:
        out: list[list[int]] = []
        for ref in self.g.block(name).inputs:
            out += self.ref_members(ref, ignored)
        return out

    def _block(self, b, ignored: frozenset[str]) -> _Value:
        if b.op == "concat":
            return self.gather(self.concat_members(b.name, ignored))
        if b.op == "add":
            members = []
            for ref in b.inputs:
                v = self.ref_value(ref, ignored)
                members.append([gk.SRC_VALUE, v.side, v.offset, v.width, -1, 0])
            side = max(m[1] for m in members)
            return self.emit(gk.OP_ADD, self.alloc(side, members[0][3]), operands=members)
        if b.op == "mlp":
            return self._mlp(b, ignored)
        if b.op == "cross":
            return self._cross(b, ignored)
        if b.op == "fm2":
            return self._fm(b, ignored)
        return self._wide(b, ignored)

    def _split_input(self, ref, ignored) -> tuple[_Value, _Value, np.ndarray, np.ndarray] | None:
        """A concat with context and ad members, as (context part, ad part, the concat's
        columns of each): the first linear layer over it can be split."""
        if ref[0] != "block" or self.g.block(ref[1]).op != "concat":
            return None
        members = self.concat_members(ref[1], ignored)
        if not any(m[1] == 0 for m in members) or not any(m[1] == 1 for m in members):
            return None
        cols = np.cumsum([0] + [m[3] for m in members])
        ctx_cols = np.concatenate([np.arange(cols[i], cols[i + 1]) for i, m in enumerate(members) if m[1] == 0])
        ad_cols = np.concatenate([np.arange(cols[i], cols[i + 1]) for i, m in enumerate(members) if m[1] == 1])
        key = ("parts", ref[1], ignored & self.deps[ref[1]])
        if key not in self.memo:
            ad = [m for m in members if m[1] == 1]
            self.memo[key] = (self.gather([m for m in members if m[1] == 0]),
                              self._pooled_rows() if self._is_pooled_rows(ad) else self.gather(ad))
        ctx_part, ad_part = self.memo[key]
        return ctx_part, ad_part, ctx_cols, ad_cols

    def _is_pooled_rows(self, members: list[list[int]]) -> bool:
        """Members that are exactly the pooled ad rows (every ad group in slot order, then the
        dense features), none zeroed: the layer can read ``xa`` itself."""
        col = 0
        for m in members:
            if m[0] != gk.SRC_FIELD or m[1] != 1 or m[5] or m[2] != col:
                return False
            col += m[3]
        return col == self.e.ad_width and self.e.ad_width > 0

    def _pooled_rows(self) -> _Value:
        return _Value(2, 0, self.e.ad_width)

    def _mlp(self, b, ignored) -> _Value:
        ws = [np.asarray(self.arrays[layer.weight], np.float32) for layer in b.layers]
        bs = [np.asarray(self.arrays[layer.bias], np.float32) for layer in b.layers]
        acts = [_ACT[layer.activation] for layer in b.layers]
        split = self._split_input(b.inputs[0], ignored)
        if split is not None:
            ctx_part, ad_part, ctx_cols, ad_cols = split
            first = self.layer(ws[0][ctx_cols], bs[0], kernels.ACT_NONE)
            c = self.emit(gk.OP_LINEAR, self.alloc(0, ws[0].shape[1]), inp=ctx_part, lt=(first, 1))
            start = self.layer(ws[0][ad_cols], None, acts[0])
            for w, bias, act in zip(ws[1:], bs[1:], acts[1:]):
                self.layer(w, bias, act)
            out = self.alloc(1, ws[-1].shape[1])
            return self.emit(gk.OP_MLP, out, inp=ad_part, aux=c.offset, lt=(start, len(ws)))
        x = self.ref_value(b.inputs[0], ignored)
        start = len(self.lt)
        for w, bias, act in zip(ws, bs, acts):
            self.layer(w, bias, act)
        return self.emit(gk.OP_MLP, self.alloc(x.side, ws[-1].shape[1]), inp=x, lt=(start, len(ws)))

    def _cross(self, b, ignored) -> _Value:
        x0 = self.ref_value(b.inputs[0], ignored)
        split = self._split_input(b.inputs[0], ignored)
        operands = []
        for i, layer in enumerate(b.layers):
            bias = np.asarray(self.arrays[layer.bias], np.float32)
            first = self.arrays[layer.weight] if layer.weight else self.arrays[layer.u]
            first = np.asarray(first, np.float32)
            if i == 0 and split is not None:  # x0 @ W = x_ctx @ W_ctx + x_ad @ W_ad
                ctx_part, ad_part, ctx_cols, ad_cols = split
                ctx_bias = bias if layer.weight else None
                k_ctx = self.layer(first[ctx_cols], ctx_bias if ctx_bias is not None else
                                   np.zeros(first.shape[1], np.float32), kernels.ACT_NONE)
                c = self.emit(gk.OP_LINEAR, self.alloc(0, first.shape[1]), inp=ctx_part, lt=(k_ctx, 1))
                k = self.layer(first[ad_cols], None, kernels.ACT_NONE)
                if not layer.weight:
                    self.layer(np.asarray(self.arrays[layer.v], np.float32), bias, kernels.ACT_NONE)
                operands.append([ad_part.offset, ad_part.side, k, 3 if layer.weight else 4,
                                 c.offset, 0])
            elif layer.weight:
                k = self.layer(first, bias, kernels.ACT_NONE)
                operands.append([0, 0, k, 1, -1, 0])
            else:
                k = self.layer(first, None, kernels.ACT_NONE)
                self.layer(np.asarray(self.arrays[layer.v], np.float32), bias, kernels.ACT_NONE)
                operands.append([0, 0, k, 2, -1, 0])
        return self.emit(gk.OP_CROSS, self.alloc(x0.side, x0.width), inp=x0, operands=operands)

    def _fm(self, b, ignored) -> _Value:
        fields = [self.ref_members(("group", g), ignored)[0] for g in b.groups]
        ctx = [f for f in fields if f[1] == 0]
        ad = [f for f in fields if f[1] == 1]
        k = fields[0][3]
        if not ad:
            return self.emit(gk.OP_FM, self.alloc(0, 1), operands=ctx)
        aux = -1
        if ctx:
            aux = self.emit(gk.OP_FM_PART, self.alloc(0, 2 * k), operands=ctx).offset
        return self.emit(gk.OP_FM, self.alloc(1, 1), aux=aux, operands=ad)

    def _wide(self, b, ignored) -> _Value:
        if b.table not in self.wide:
            self.wide[b.table] = len(self.wide_arrays)
            self.wide_arrays.append(np.asarray(self.e.package.table_arrays[b.table][0],
                                               np.float32).reshape(-1))
        t = self.wide[b.table]
        rows = self.wide_arrays[t].size
        ops = []
        for gname in b.groups:
            side, _, _, slot = self.field(gname)
            ops.append([0, side, t, 1, slot, int(gname in ignored)])
        ctx = [o for o in ops if o[1] == 0]
        ad = [o for o in ops if o[1] == 1]

        def emit(side: int, operands: list, aux: int) -> _Value:
            for o, gname in zip(operands, [g for g in b.groups if self.field(g)[0] == side]):
                row = self.e.serving_ids.get(gname)
                self.wide_serving.append(-1 if row is None else int(row % rows))
            start = len(self.opd)
            out = self.emit(gk.OP_WIDE, self.alloc(side, 1), aux=aux, operands=operands)
            assert start == len(self.opd) - len(operands)
            return out

        if not ad:
            return emit(0, ctx, -1)
        aux = emit(0, ctx, -1).offset if ctx else -1
        return emit(1, ad, aux)

    def outputs(self) -> np.ndarray:
        rows = []
        names = [o.name for o in self.g.outputs]
        for o in self.g.outputs:
            if o.product:
                rows.append([gk.OUT_PRODUCT, 0, 0, names.index(o.product[0]), names.index(o.product[1])])
            else:
                v = self.value(o.source, frozenset(o.ignores))
                rows.append([gk.OUT_SIGMOID if o.activation == "sigmoid" else gk.OUT_NONE,
                             v.offset, v.side, 0, 0])
        return np.array(rows, dtype=np.int64).reshape(-1, 5)


@dataclass
class _Scratch:
    xc: np.ndarray
    ctx_counts: np.ndarray
    xa: np.ndarray
    counts: np.ndarray
    cv: np.ndarray
    av: np.ndarray
    buf_a: np.ndarray
    buf_b: np.ndarray
    idx: np.ndarray
    vals: np.ndarray


class GraphEngine(JsonScoring):
    """A format 2 model graph ready to score: the plan compiled, kernels warm. Answers every
    output (``score_outputs``) and the primary one as ``score``; a single-head graph also
    through the compiled body scanner (``score_json``)."""

    kind = "graph"
    supports_health = False  # the health monitor and the guarded swap watch MLP models

    def __init__(self, package: ModelPackage, *, chunk: int = 96, small_batch: int = 1,
                 warm: bool = True) -> None:
        from .features import feature_id
        m = package.manifest
        self.package = package
        self.manifest = m
        self.name, self.version, self.md5 = m.name, m.version, package.md5
        self.layout = FeatureLayout(m.groups, m.dense_dim)
        self.chunk = int(chunk)
        self.small_batch = int(small_batch)
        self._ctx, self._ad = side_plans(package, self.layout)
        self.dense_col = self._ad.width
        self.ad_width = self._ad.width + m.dense_dim
        self.serving_ids = {g.name: feature_id(g.serving_value, f"groups.{g.name}.serving_value")
                            for g in m.groups if g.serving_value is not None}
        p = _Plan(self)
        self.outs = p.outputs()
        self.output_names = [o.name for o in m.graph.outputs]
        self.primary = self.output_names.index(m.graph.primary)
        self.ins = np.array(p.ins, dtype=np.int64).reshape(-1, 12)
        self.opd = np.array(p.opd or [[0] * 6], dtype=np.int64).reshape(-1, 6)
        self.lt = np.array(p.lt or [[0] * 5], dtype=np.int64).reshape(-1, 5)
        self.params = np.concatenate(p.params) if p.params else np.zeros(16, np.float32)
        self.wide_tables = np.concatenate(p.wide_arrays) if p.wide_arrays else np.zeros(1, np.float32)
        offs = np.cumsum([0] + [a.size for a in p.wide_arrays])
        self.wide_rows = np.array([[offs[i], a.size] for i, a in enumerate(p.wide_arrays)] or [[0, 1]],
                                  dtype=np.int64)
        serving = np.full(len(self.opd), -1, dtype=np.int64)
        j = 0
        for row in self.ins:  # the wide operands' serving rows, in operand order
            if row[0] == gk.OP_WIDE:
                for q in range(row[10], row[10] + row[11]):
                    serving[q] = p.wide_serving[j]
                    j += 1
        self.wide_serving = serving
        self.cv_size = max(16, p.cv_size)
        self.av_width = max(16, p.av_width)
        self.width = max(p.max_width, self.ad_width, self._ctx.width, 16)
        self.zeros = np.zeros(self.width, np.float32)
        self.n_instructions = len(self.ins)
        self._pool: queue.SimpleQueue[_Scratch] = queue.SimpleQueue()
        self._scan_pool: queue.SimpleQueue = queue.SimpleQueue()
        self.warm_seconds = 0.0
        self.warm_nonfinite = False
        if warm:
            self.warm_up()

    def _scratch(self) -> _Scratch:
        try:
            return self._pool.get_nowait()
        except queue.Empty:
            pass
        c = self.chunk
        return _Scratch(
            xc=np.zeros((1, max(1, self._ctx.width)), np.float32),
            ctx_counts=np.zeros(max(1, len(self.layout.ctx_groups)), np.float32),
            xa=np.zeros((c, max(1, self.ad_width)), np.float32),
            counts=np.zeros(c * max(1, len(self.layout.ad_groups)), np.float32),
            cv=np.zeros(self.cv_size, np.float32),
            av=np.zeros(c * self.av_width, np.float32),
            buf_a=np.zeros((c, self.width), np.float32),
            buf_b=np.zeros((c, self.width), np.float32),
            idx=np.zeros(self.width, np.int64),
            vals=np.zeros(self.width, np.float32))

    def outputs_encoded(self, batch: EncodedBatch) -> np.ndarray:
        """``[outputs, n_ads]`` float32: every output of every ad."""
        n = batch.n_ads
        res = np.empty((len(self.output_names), n), np.float32)
        if not n:
            return res
        s = self._scratch()
        try:
            bad = gk.run(*self._ctx.args(), batch.ctx_ids, batch.ctx_keys, batch.ctx_lens,
                         batch.ctx_wts, *self._ad.args(), batch.ad_ids, batch.ad_keys,
                         batch.ad_lens, batch.ad_wts, batch.dense, self.dense_col, n, self.ins,
                         self.opd, self.params, self.lt, self.outs, self.zeros, self.wide_tables,
                         self.wide_rows, self.wide_serving, s.xc, s.ctx_counts, s.xa, s.counts,
                         s.cv, s.av, s.buf_a, s.buf_b, self.small_batch, s.idx, s.vals, res)
        finally:
            self._pool.put(s)
        if bad >= 0:
            raise overflow(bad)
        return res

    def score_encoded(self, batch: EncodedBatch) -> np.ndarray:
        return self.outputs_encoded(batch)[self.primary]

    def score_json(self, body: bytes, max_ads: int, max_values: int, keep=None):
        """The scanner's path for a single-head graph (None for a multi-head one: the caller
        decodes the body and answers every output). ``keep`` is ignored: the health monitor
        watches MLP models."""
        if len(self.output_names) > 1:
            return None
        return JsonScoring.score_json(self, body, max_ads, max_values, None)

    def score(self, context: Mapping[str, Any] | None, ads: Sequence[Any], keep=None) -> np.ndarray:
        return self.score_encoded(self.layout.encode(context, ads))

    def score_outputs(self, context: Mapping[str, Any] | None, ads: Sequence[Any]) -> dict[str, np.ndarray]:
        res = self.outputs_encoded(self.layout.encode(context, ads))
        return {name: res[i] for i, name in enumerate(self.output_names)}

    def warm_up(self) -> None:
        import time

        t0 = time.perf_counter()
        rng = np.random.default_rng(0)
        for n in sorted({1, self.small_batch + 1, self.chunk + 7}):
            ctx = {g.name: int(rng.integers(0, 2**63)) for g in self.layout.ctx_groups}
            ads = [{"features": {g.name: [int(rng.integers(0, 2**63))] for g in self.layout.ad_groups},
                    "dense": [0.5] * self.manifest.dense_dim} for _ in range(n)]
            try:
                self.score_outputs(ctx, ads)
                if len(self.output_names) == 1 and not self.manifest.dense_dim:
                    import orjson  # the compiled body scanner the service tries first

                    body = orjson.dumps({"request_id": "warm-up", "context": ctx, "ads": ads})
                    if self.score_json(body, max_ads=n, max_values=2) is None:
                        raise RuntimeError("warm-up: the body scanner refused a well-formed body")
            except Exception as exc:  # an overflow on random inputs: the model still serves
                if exc.__class__.__name__ != "NonFiniteOutput":
                    raise
                self.warm_nonfinite = True
        self.warm_seconds = time.perf_counter() - t0
