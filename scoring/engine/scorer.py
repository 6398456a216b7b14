"""A loaded model: request features -> kernels -> pCTRs.

:class:`Engine` takes a validated :class:`~scoring.model.package.ModelPackage`, lays its weights out for
the kernels once (layer 1 split into context and ad rows, later layers in one flat array),
compiles and warms the kernels, and then scores requests without allocating inside the kernels.
Scratch buffers come from small pools, one set per concurrent caller, so an engine can be shared
by threads. ``score`` takes decoded requests; ``score_json`` takes the raw body (``jsonscan``).
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import orjson

from ..model.manifest import PackageError
from ..model.package import TABLE_NUMPY_DTYPES, ModelPackage
from ..model.quantize import bf16_values
from . import jsonscan, kernels
from .codegen import target_has
from .explain import Explainer, Explanation
from .features import EncodedBatch, FeatureLayout
from .outputs import NonFiniteOutput, overflow

# called with (engine, batch, copy) for a request the health monitor samples; ``copy``: the
# batch views the scanner's pooled buffers (scoring.monitor)
Keep = Callable[["Engine", EncodedBatch, bool], None]


SMALL_BATCH = 1      # up to this many ads per chunk: pruned one-ad form; above: register tiles
CHUNK = 96           # ads per pass through the layers: activations stay in L2; a multiple of 6
_ACT_CODES = {"relu": kernels.ACT_RELU, "sigmoid": kernels.ACT_SIGMOID}
_PAGE = 4096


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


def _flatten_layers(weights, biases, specs) -> tuple[np.ndarray, np.ndarray]:
    """Every layer after the first in one float32 array, each piece 64-byte aligned, and a table
    of (weight offset, in, out, bias offset, activation) rows."""
    pieces, table, offset = [], [], 0
    for w, b, spec in zip(weights, biases, specs):
        row = []
        for arr in (w, b):
            flat = np.asarray(arr, dtype=np.float32).reshape(-1)
            row.append(offset)
            pad = (-flat.size) % 16
            pieces.append(np.concatenate([flat, np.zeros(pad, np.float32)]))
            offset += flat.size + pad
        table.append([row[0], w.shape[0], w.shape[1], row[1], _ACT_CODES[spec.activation]])
    params = np.concatenate(pieces) if pieces else np.zeros(16, np.float32)
    layers = np.array(table, dtype=np.int64).reshape(-1, 5)
    return params, layers


def pack_layers(weights: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """bf16-valued ``[in, out]`` weights as the AVX512-BF16 tiles read them: ``[in / 2, out]``
    uint32, row ``i`` holding rows ``2i`` (low half) and ``2i + 1`` (high half), in one flat
    array (each piece 64-byte aligned), with rows of (offset, input pairs, out)."""
    pieces, table, offset = [], [], 0
    for w in weights:
        k, n = w.shape
        bits = np.zeros((k + k % 2, n), dtype=np.uint32)
        bits[:k] = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32)
        packed = (bits[0::2] >> 16) | (bits[1::2] & np.uint32(0xFFFF0000))
        flat = packed.reshape(-1)
        pad = (-flat.size) % 16
        pieces.append(np.concatenate([flat, np.zeros(pad, np.uint32)]))
        table.append([offset, packed.shape[0], n])
        offset += flat.size + pad
    return np.concatenate(pieces), np.array(table, dtype=np.int64).reshape(-1, 3)


_LITERALS = tuple(np.array(list(word), dtype=np.uint8) for word in
                  (b"null", b"context", b"ads", b"request_id", b"id", b"features", b"dense"))


_NO_DENSE = [np.zeros((n, 0), dtype=np.float32) for n in range(1025)]  # shared, never written


class _ScanBuffers:
    """Output arrays of ``jsonscan.scan_request``, grown to the largest body seen."""

    def __init__(self, n_slots: int) -> None:
        self.capacity = 0
        self.meta = np.zeros(8, dtype=np.int64)
        self.num = np.zeros(1, dtype=np.uint64)
        self.seen = np.zeros(max(1, n_slots), dtype=np.bool_)
        self.have = np.zeros(3, dtype=np.bool_)

    def fit(self, body_len: int) -> None:
        if body_len <= self.capacity:
            return
        size = max(4096, body_len // 2 + 2)
        self.ctx_ids = np.empty(size, dtype=np.uint64)
        self.ctx_keys = np.empty(size, dtype=np.int64)
        self.ctx_lens = np.empty(size, dtype=np.int64)
        self.ad_ids = np.empty(size, dtype=np.uint64)
        self.ad_keys = np.empty(size, dtype=np.int64)
        self.ad_lens = np.empty(size, dtype=np.int64)
        self.capacity = 2 * size - 4


@dataclass
class _Scratch:
    """Buffers for one concurrent forward pass; allocated once, reused."""

    x_ctx: np.ndarray
    ctx_counts: np.ndarray
    c: np.ndarray
    buf_a: np.ndarray
    buf_b: np.ndarray
    counts: np.ndarray
    idx: np.ndarray    # non-zero input positions for the axpy form
    vals: np.ndarray
    xp: np.ndarray     # a layer's inputs as bf16 pairs (bf16 precision on AVX512-BF16)


_KINDS = {"float32": kernels.TABLE_F32, "float16": kernels.TABLE_F16,
          "int8_rowwise": kernels.TABLE_INT8_ROWWISE}


POOL_MODES = {"sum": kernels.POOL_SUM, "mean": kernels.POOL_MEAN, "sqrtn": kernels.POOL_SQRTN,
              "weighted_sum": kernels.POOL_WEIGHTED}


def serving_row(group) -> int:
    """The table row of a group's serving value (format 2), or -1."""
    value = getattr(group, "serving_value", None)
    if value is None:
        return -1
    from .features import feature_id
    return int(feature_id(value, f"groups.{group.name}.serving_value") % group.buckets)


class _SidePlan:
    """Kernel arguments for one side's groups (context or ad)."""

    def __init__(self, groups, tables, qparams, dtypes) -> None:
        # kept alive here: the kernels get addresses, and read them as ``dtypes`` say
        self.arrays = [_readonly_table(t) for t in tables]
        for a, q, d in zip(self.arrays, qparams, dtypes):
            if a.dtype != TABLE_NUMPY_DTYPES[d] or (q is None) != (d != "int8_rowwise"):
                raise ValueError(f"a {d} table arrived as {a.dtype} (qparams {q is not None})")
        self.qarrays = [None if q is None else _readonly(q) for q in qparams]
        self.tables = np.array([a.ctypes.data for a in self.arrays] or [0], dtype=np.int64)
        self.qparams = np.array([0 if q is None else q.ctypes.data for q in self.qarrays] or [0],
                                dtype=np.int64)
        self.kinds = np.array([_KINDS[d] for d in dtypes] or [0], dtype=np.int64)
        self.buckets = np.array([g.buckets for g in groups], dtype=np.uint64)
        self.modes = np.array([POOL_MODES[g.pooling] for g in groups], dtype=np.int64)
        self.serving = np.array([serving_row(g) for g in groups], dtype=np.int64)
        self.dims = np.array([g.dim for g in groups], dtype=np.int64)
        self.cols = np.concatenate([[0], np.cumsum(self.dims)[:-1]]).astype(np.int64) \
            if len(groups) else np.zeros(0, dtype=np.int64)
        self.width = int(self.dims.sum())

    def args(self) -> tuple:
        return (self.tables, self.kinds, self.qparams, self.buckets, self.modes, self.serving,
                self.cols, self.dims)


def side_plans(package: ModelPackage, layout: FeatureLayout) -> tuple["_SidePlan", "_SidePlan"]:
    """The kernel arguments of the context groups and of the ad groups."""
    m = package.manifest
    by_name = {g.name: (t, q, m.table_of(g).dtype)
               for g, t, q in zip(m.groups, package.tables, package.qparams)}

    def plan(groups) -> _SidePlan:
        parts = [by_name[g.name] for g in groups]
        return _SidePlan(groups, [p[0] for p in parts], [p[1] for p in parts], [p[2] for p in parts])

    return plan(layout.ctx_groups), plan(layout.ad_groups)


def _readonly_table(t: np.ndarray) -> np.ndarray:
    """A C-contiguous read-only view of a table in its stored dtype (no copy of a mapped file)."""
    a = np.ascontiguousarray(t)
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


class JsonScoring:
    """The compiled body scanner (``jsonscan``) in front of an engine's ``score_encoded``:
    ``score_json`` scores a raw body in one pass when it fits the scanner's shape. The engine
    provides ``layout``, ``manifest``, ``score_encoded`` and a ``_scan_pool``."""

    def score_json(self, body: bytes, max_ads: int, max_values: int,
                   keep: Keep | None = None) -> tuple[np.ndarray, Any] | None:
        """Score a raw score-request body through the compiled scanner (``jsonscan``).

        Returns (pCTRs, request_id), or None when the body is outside the scanner's shape (escapes,
        dense features, errors, limits exceeded, ...): the caller then decodes it the ordinary way,
        which scores it or names what is wrong."""
        if self.manifest.dense_dim:
            return None
        sb = self._scan_buffers()
        try:
            scanned = self._scan(sb, body, max_ads, max_values)
            if scanned is None:
                return None
            batch, rid_kind, rid_s, rid_e = scanned
            try:
                scores = self.score_encoded(batch)
            finally:  # a request the net overflows on is sampled too (then re-raised)
                if keep is not None:
                    keep(self, batch, True)
        finally:
            self._scan_pool.put(sb)
        rid = orjson.loads(body[rid_s:rid_e]) if rid_kind != jsonscan.RID_NONE else None
        return scores, rid

    def scan_json(self, body: bytes, max_ads: int, max_values: int) -> EncodedBatch | None:
        """The scanner alone: the body's hashed feature arrays (copies), or None where
        ``score_json`` would fall back. For benchmarks (a stage of the full path) and tests."""
        if self.manifest.dense_dim:
            return None
        sb = self._scan_buffers()
        try:
            scanned = self._scan(sb, body, max_ads, max_values)
            if scanned is None:
                return None
            b = scanned[0]
            return EncodedBatch(b.ctx_ids.copy(), b.ctx_keys.copy(), b.ctx_lens.copy(),
                                b.ad_ids.copy(), b.ad_keys.copy(), b.ad_lens.copy(), b.dense,
                                b.n_ads)
        finally:
            self._scan_pool.put(sb)

    def _scan_buffers(self) -> _ScanBuffers:
        try:
            return self._scan_pool.get_nowait()
        except queue.Empty:
            return _ScanBuffers(max(len(self.layout.ctx_groups), len(self.layout.ad_groups)))

    def _scan(self, sb: _ScanBuffers, body: bytes, max_ads: int, max_values: int):
        """Run the scanner into ``sb``: (batch viewing sb's arrays, rid kind, start, end) or None."""
        sb.fit(len(body))
        names, offsets, hashes, slots, sides = self.layout.scan_tables
        code = jsonscan.scan_request(
            np.frombuffer(body, dtype=np.uint8), names, offsets, hashes, slots, sides,
            len(self.layout.ad_groups), max_ads, max_values, _LITERALS, sb.ctx_ids,
            sb.ctx_keys, sb.ctx_lens, sb.ad_ids, sb.ad_keys, sb.ad_lens, sb.meta, sb.num,
            sb.seen, sb.have)
        if code != jsonscan.OK:
            return None
        nc, ec, na, ea, n_ads, rid_kind, rid_s, rid_e = sb.meta.tolist()
        batch = EncodedBatch(sb.ctx_ids[:nc], sb.ctx_keys[:ec], sb.ctx_lens[:ec],
                             sb.ad_ids[:na], sb.ad_keys[:ea], sb.ad_lens[:ea],
                             _NO_DENSE[n_ads] if n_ads < len(_NO_DENSE) else
                             np.zeros((n_ads, 0), dtype=np.float32), n_ads)
        return batch, rid_kind, rid_s, rid_e



class Engine(JsonScoring):
    """A model ready to score: weights laid out, kernels compiled and warm."""

    kind = "mlp"
    supports_health = True  # the health monitor and the guarded swap watch it

    def __init__(self, package: ModelPackage, *, chunk: int = CHUNK,
                 small_batch: int = SMALL_BATCH, warm: bool = True) -> None:
        m = package.manifest
        if m.graph is not None:
            raise PackageError(f"{m.name} {m.version}: a format 2 model graph; the graph engine "
                               "runs it (scoring.engine.make_engine picks the engine a package needs)")
        self.package = package
        self.manifest = m
        self.name = m.name
        self.version = m.version
        self.md5 = package.md5
        self.layout = FeatureLayout(m.groups, m.dense_dim)
        self.chunk = int(chunk)
        self.small_batch = int(small_batch)

        self._ctx, self._ad = side_plans(package, self.layout)
        self.dense_col = self._ad.width

        # layer 1 split into context rows and ad rows (+ dense rows), in the kernels' column order
        self.ctx_input_columns = self._column_map(self.layout.ctx_groups, dense=False)
        self.ad_input_columns = self._column_map(self.layout.ad_groups, dense=True)
        self.prec = kernels.PREC_F32
        prep = np.asarray
        if m.mlp_precision == "bf16":  # weights rounded once here, inputs in every layer
            self.prec = kernels.PREC_BF16_NATIVE if target_has("avx512bf16") else kernels.PREC_BF16
            prep = bf16_values
        w0 = prep(np.asarray(package.weights[0], dtype=np.float32))
        self.w_ctx = np.ascontiguousarray(w0[self.ctx_input_columns])
        self.w_ad = np.ascontiguousarray(w0[self.ad_input_columns])
        self.b0 = np.array(package.biases[0], dtype=np.float32)
        rest_w = [prep(np.asarray(w, dtype=np.float32)) for w in package.weights[1:]]
        self.act0 = _ACT_CODES[m.layers[0].activation]
        self.params, self.layers = _flatten_layers(rest_w, package.biases[1:], m.layers[1:])
        self.wpack, self.ptab = (pack_layers([self.w_ad] + rest_w)
                                 if self.prec == kernels.PREC_BF16_NATIVE else
                                 (np.zeros(16, np.uint32), np.zeros((1, 3), np.int64)))
        self.out0 = self.w_ad.shape[1]
        self.width = max([self.w_ad.shape[0], self.out0] + [w.shape[1] for w in rest_w])
        self._pool: queue.SimpleQueue[_Scratch] = queue.SimpleQueue()
        self._scan_pool: queue.SimpleQueue[_ScanBuffers] = queue.SimpleQueue()
        self.explainer = Explainer(self)  # POST .../explain: exact per-ad attributions
        self.warm_seconds = 0.0
        self.warm_nonfinite = False  # the net overflowed on a warm-up request
        if warm:
            self.warm_up()

    # -- scratch ----------------------------------------------------------------------------

    def _new_scratch(self) -> _Scratch:
        n_ad_slots = max(1, len(self.layout.ad_groups))
        return _Scratch(
            x_ctx=np.zeros((1, max(1, self._ctx.width)), dtype=np.float32),
            ctx_counts=np.zeros(max(1, len(self.layout.ctx_groups)), dtype=np.float32),
            c=np.zeros((1, self.out0), dtype=np.float32),
            buf_a=np.zeros((self.chunk, self.width), dtype=np.float32),
            buf_b=np.zeros((self.chunk, self.width), dtype=np.float32),
            counts=np.zeros(self.chunk * n_ad_slots, dtype=np.float32),
            idx=np.zeros(max(self.width, self.w_ctx.shape[0]), dtype=np.int64),
            vals=np.zeros(max(self.width, self.w_ctx.shape[0]), dtype=np.float32),
            xp=np.zeros((self.chunk, self.width // 2 + 1) if self.prec == kernels.PREC_BF16_NATIVE
                        else (1, 1), dtype=np.uint32),
        )

    def _take(self) -> _Scratch:
        try:
            return self._pool.get_nowait()
        except queue.Empty:
            return self._new_scratch()

    # -- scoring ----------------------------------------------------------------------------

    def score(self, context: Mapping[str, Any] | None, ads: Sequence[Any],
              keep: Keep | None = None) -> np.ndarray:
        """pCTR (float32) of every ad; raises ``InvalidRequest`` naming a bad field. ``keep``
        gets the encoded request once it scored (the health monitor's sample)."""
        batch = self.layout.encode(context, ads)
        try:
            out = self.score_encoded(batch)
        except NonFiniteOutput:
            if keep is not None:  # the monitor counts such rows (its "nonfinite" statistic)
                keep(self, batch, False)
            raise
        if keep is not None:
            keep(self, batch, False)
        return out

    def explain(self, context: Mapping[str, Any] | None, ads: Sequence[Any]) -> Explanation:
        """Per-ad logit, pCTR and per-group attributions (:mod:`scoring.engine.explain`);
        raises ``InvalidRequest`` naming a bad field, ``NonFiniteOutput`` on an overflow."""
        return self.explainer.explain(context, ads)

    def score_encoded(self, batch: EncodedBatch) -> np.ndarray:
        out = np.empty(batch.n_ads, dtype=np.float32)
        if batch.n_ads == 0:
            return out
        s = self._take()
        try:
            ctx = self._ctx
            kernels.context_bias(*ctx.args(), batch.ctx_ids, batch.ctx_keys, batch.ctx_lens,
                                 batch.ctx_wts, self.w_ctx, self.b0, s.x_ctx, s.ctx_counts, s.c, s.idx, s.vals,
                                 self.prec)
            ad = self._ad
            bad = kernels.forward(*ad.args(), batch.ad_ids, batch.ad_keys, batch.ad_lens,
                                  batch.ad_wts, batch.dense,
                                  self.dense_col, s.c, self.w_ad, self.act0, self.params,
                                  self.layers, batch.n_ads, s.buf_a, s.buf_b, s.counts,
                                  self.small_batch, s.idx, s.vals, self.prec, self.wpack,
                                  self.ptab, s.xp, out)
        finally:
            self._pool.put(s)
        if bad >= 0:
            raise overflow(bad)
        return out

    def mlp(self, x_ctx: np.ndarray, x_ad: np.ndarray) -> np.ndarray:
        """The MLP alone on pooled inputs (context vector once, ad rows in kernel column order);
        for benchmarks and tests."""
        x_ctx = np.array(x_ctx, dtype=np.float32, order="C").reshape(1, -1)  # copies: bf16
        x_ad = np.array(x_ad, dtype=np.float32, order="C")                   # rounds in place
        n = x_ad.shape[0]
        out = np.empty(n, dtype=np.float32)
        s = self._take()
        try:
            kernels.mlp(x_ctx, self.w_ctx, self.b0, s.c, x_ad, n, self.w_ad,
                        self.act0, self.params, self.layers, s.buf_a, s.buf_b,
                        self.small_batch, s.idx, s.vals, self.prec, self.wpack, self.ptab, s.xp,
                        out)
        finally:
            self._pool.put(s)
        return out

    # -- warm-up ----------------------------------------------------------------------------

    def touch_pages(self) -> None:
        """Read one value per page of every table so the first requests do not fault them in."""
        for table in self._ctx.arrays + self._ad.arrays + [
                q for q in self._ctx.qarrays + self._ad.qarrays if q is not None]:
            flat = table.reshape(-1)
            step = max(1, _PAGE // flat.itemsize)
            float(flat[::step].sum())

    def warm_up(self) -> None:
        """Compile (or load from cache) every kernel path and touch the tables' pages."""
        t0 = time.perf_counter()
        rng = np.random.default_rng(0)
        for n in sorted({1, self.small_batch + 1, self.chunk + 7}):
            ctx = {g.name: int(rng.integers(0, 2**63)) for g in self.layout.ctx_groups}
            ads = [{"features": {g.name: [int(rng.integers(0, 2**63)), int(rng.integers(0, 2**63))]
                                 for g in self.layout.ad_groups},
                    "dense": [0.5] * self.manifest.dense_dim} for _ in range(n)]
            try:  # a net that overflows still gets warm: the guarded swap judges its outputs
                self.score(ctx, ads)
            except NonFiniteOutput:
                self.warm_nonfinite = True
            try:
                self.explain(ctx, ads)
            except NonFiniteOutput:
                pass
            if not self.manifest.dense_dim:  # the compiled body scanner the service tries first
                body = orjson.dumps({"request_id": "warm-up", "context": ctx, "ads": ads})
                try:
                    scanned = self.score_json(body, max_ads=n, max_values=2)
                except NonFiniteOutput:
                    self.warm_nonfinite = True
                    scanned = ()
                if scanned is None:
                    raise RuntimeError("warm-up: the body scanner refused a well-formed body")
        self.mlp(np.zeros(self._ctx.width, np.float32), np.zeros((1, self.w_ad.shape[0]), np.float32))
        self.touch_pages()
        self.warm_seconds = time.perf_counter() - t0

    # -- facts ------------------------------------------------------------------------------

    @property
    def ctx_width(self) -> int:
        return self._ctx.width

    @property
    def ad_width(self) -> int:
        return self.w_ad.shape[0]

    def _column_map(self, groups, dense: bool) -> np.ndarray:
        """For each kernel input column of one side, its column in the manifest's MLP input."""
        offsets, start = {}, 0
        for g in self.manifest.groups:
            offsets[g.name] = start
            start += g.dim
        cols = [np.arange(offsets[g.name], offsets[g.name] + g.dim) for g in groups]
        if dense:
            cols.append(np.arange(start, start + self.manifest.dense_dim))
        return np.concatenate(cols).astype(np.int64) if cols else np.zeros(0, np.int64)
