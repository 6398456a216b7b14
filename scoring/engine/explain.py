"""Exact per-ad attributions: the gradient of the logit with respect to the MLP input, by one
backward pass through the ReLU masks the forward pass recorded (``POST .../explain``).

A ReLU MLP is piecewise linear: on the region of input space where every ReLU keeps its on/off
state, ``logit(x) = x . g + r`` with ``g = d logit / d x`` and ``r`` the biases carried through the
same masks, ``r = sum_l b_l . delta_l`` (``delta_l = d logit / d z_l``, the gradient at layer l's
pre-activation). So the per-group **contributions** ``sum over the group's slice of x_k g_k`` plus
the **remainder** (``r`` plus the dense features' contribution) add up to the logit exactly; the
kernel computes ``r`` from the biases, not as a difference, so the identity is a check of the
backward pass (docs/insight.md). The seed's **influence** of a group is the L2 norm of
``d pCTR / d x = p (1 - p) g`` over its slice.

The pass runs on the engine's own tables and weights (bf16-rounded for a bf16 model) with float32
activations: for a bf16 model the logit here can differ from the score path's in the last bits
of the activations' rounding. It reuses the score path's compiled layer kernels: forward as
usual, keeping every hidden layer's output; backward as the same dense kernels over the
transposed weights (``delta @ W^T``), laid out once at load. Nothing is allocated in the kernel;
scratch comes from a pool, as for scoring.
"""

from __future__ import annotations

import math
import queue
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
from numba import njit

from . import kernels
from .config import CACHE, FASTMATH
from .features import EncodedBatch
from .outputs import overflow

if TYPE_CHECKING:  # pragma: no cover
    from .scorer import Engine


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH, inline="always")
def _relu_grad(h, act, v):
    """``v`` times the derivative of the activation whose output is ``h`` (ReLU: 0 where off)."""
    if act == kernels.ACT_RELU:
        return v if h > 0.0 else np.float32(0.0)
    return v


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH, _nrt=False)
def explain_rows(ctx_tables, ctx_kinds, ctx_qparams, ctx_buckets, ctx_modes, ctx_serving,
                 ctx_cols, ctx_dims, ctx_ids, ctx_keys, ctx_lens, ctx_wts, ad_tables, ad_kinds,
                 ad_qparams, ad_buckets, ad_modes, ad_serving, ad_cols, ad_dims, ad_ids, ad_keys,
                 ad_lens, ad_wts, dense, dense_col, n_ads, w_ctx, b0,
                 w_ad, act0, params, layers, wt_ctx, wt_ad, tparams, tlayers, zeros, x_ctx,
                 ctx_counts, c, xa, hs, da, db, g_ctx, g_ad, counts, small_batch, idx, vals,
                 column, out):
    """Forward and backward pass for ``n_ads`` ads, ``xa.shape[0]`` at a time.

    Pools the context and computes layer 1's context part (``kernels.context_bias``), then per
    chunk of ads pools them, runs the layers keeping every hidden output, and goes back through
    the ReLU masks. ``layers`` rows: (weight offset, in, out, bias offset, activation) of every
    layer after the first, the last being the output layer (one output; its sigmoid is left out:
    the logit). ``tlayers[j]``: (offset in ``tparams``, out, in) of layer j's weights transposed.

    Writes row ``a`` of ``out``: logit, pCTR, the bias path ``sum over layers of bias . delta``,
    then per input slot ``s`` (context groups, ad groups, the dense features as one slot) at
    column ``3 + column[s]`` the contribution ``sum of x * d logit / d x`` and at column
    ``3 + n_slots + column[s]`` the influence ``p (1 - p) || d logit / d x ||`` over the slot's
    columns. Returns the first ad whose logit or attributions are not finite, or -1."""
    kernels.context_bias(ctx_tables, ctx_kinds, ctx_qparams, ctx_buckets, ctx_modes, ctx_serving,
                         ctx_cols, ctx_dims, ctx_ids, ctx_keys, ctx_lens, ctx_wts, w_ctx, b0, x_ctx, ctx_counts, c,
                         idx, vals, kernels.PREC_F32)
    chunk = xa.shape[0]
    n_slots = ad_buckets.shape[0]
    n_ctx = ctx_cols.shape[0]
    dense_dim = dense.shape[1]
    ad_w = w_ad.shape[0]
    ctx_w = wt_ctx.shape[1]
    out0 = w_ad.shape[1]
    n_layers = layers.shape[0]          # layers after the first; the last one is the output
    n_hidden = n_layers                 # hidden outputs hs[0 .. n_hidden - 1]
    n_out_slots = n_ctx + n_slots + 1
    bad = -1
    e = 0
    v = 0
    for row0 in range(0, n_ads, chunk):
        n = min(chunk, n_ads - row0)
        e, v = kernels.pool_embeddings(ad_tables, ad_kinds, ad_qparams, ad_buckets, ad_modes,
                                       ad_serving, ad_cols, ad_dims, ad_ids, ad_keys, ad_lens,
                                       ad_wts, n_slots, row0, n, e, v, xa, counts)
        for r in range(n):
            for d in range(dense_dim):
                xa[r, dense_col + d] = dense[row0 + r, d]
        # forward, keeping every hidden output
        kernels.dense_layer(xa, n, ad_w, w_ad, c[0], hs[0], act0, small_batch, idx, vals)
        for li in range(n_layers - 1):
            wo = layers[li, 0]
            k_in = layers[li, 1]
            n_out = layers[li, 2]
            bo = layers[li, 3]
            w = params[wo:wo + k_in * n_out].reshape((k_in, n_out))
            kernels.dense_layer(hs[li], n, k_in, w, params[bo:bo + n_out], hs[li + 1],
                                layers[li, 4], small_batch, idx, vals)
        wo = layers[n_layers - 1, 0]
        k_last = layers[n_layers - 1, 1]
        b_out = params[layers[n_layers - 1, 3]]
        last = hs[n_hidden - 1]
        act_last = act0 if n_hidden == 1 else layers[n_hidden - 2, 4]
        for r in range(n):
            z = np.float64(b_out)
            for k in range(k_last):
                z += last[r, k] * params[wo + k]
            out[row0 + r, 0] = z
            out[row0 + r, 2] = b_out
            for k in range(k_last):
                da[r, k] = _relu_grad(last[r, k], act_last, params[wo + k])
        # backward: da holds delta of hidden output j (at its pre-activation)
        cur_a = True
        for j in range(n_hidden - 1, -1, -1):
            cur = da if cur_a else db
            nxt = db if cur_a else da
            width = out0 if j == 0 else layers[j - 1, 2]
            for r in range(n):  # the bias of the layer that made hidden output j
                z = 0.0
                if j == 0:
                    for k in range(width):
                        z += b0[k] * cur[r, k]
                else:
                    bo = layers[j - 1, 3]
                    for k in range(width):
                        z += params[bo + k] * cur[r, k]
                out[row0 + r, 2] += z
            if j == 0:
                break
            to = tlayers[j - 1, 0]
            t_in = tlayers[j - 1, 1]
            t_out = tlayers[j - 1, 2]
            wt = tparams[to:to + t_in * t_out].reshape((t_in, t_out))
            kernels.dense_layer(cur, n, t_in, wt, zeros, nxt, kernels.ACT_NONE, small_batch, idx,
                                vals)
            prev = hs[j - 1]
            act_prev = act0 if j == 1 else layers[j - 2, 4]
            for r in range(n):
                for k in range(t_out):
                    nxt[r, k] = _relu_grad(prev[r, k], act_prev, nxt[r, k])
            cur_a = not cur_a
        delta0 = da if cur_a else db
        # the input gradient, split as layer 1 is: ad columns and context columns
        kernels.dense_layer(delta0, n, out0, wt_ad, zeros, g_ad, kernels.ACT_NONE, small_batch,
                            idx, vals)
        if ctx_w > 0:
            kernels.dense_layer(delta0, n, out0, wt_ctx, zeros, g_ctx, kernels.ACT_NONE,
                                small_batch, idx, vals)
        for r in range(n):
            row = row0 + r
            z = out[row, 0]
            p = 1.0 / (1.0 + math.exp(-z)) if z > -700.0 else 0.0
            out[row, 1] = p
            slope = p * (1.0 - p)
            for q in range(n_out_slots):
                cs = 0.0
                qs = 0.0
                if q < n_ctx:
                    for k in range(ctx_cols[q], ctx_cols[q] + ctx_dims[q]):
                        gk = np.float64(g_ctx[r, k])
                        cs += x_ctx[0, k] * gk
                        qs += gk * gk
                elif q < n_ctx + n_slots:
                    s = q - n_ctx
                    for k in range(ad_cols[s], ad_cols[s] + ad_dims[s]):
                        gk = np.float64(g_ad[r, k])
                        cs += xa[r, k] * gk
                        qs += gk * gk
                else:
                    for k in range(dense_col, dense_col + dense_dim):
                        gk = np.float64(g_ad[r, k])
                        cs += xa[r, k] * gk
                        qs += gk * gk
                out[row, 3 + column[q]] = cs
                out[row, 3 + n_out_slots + column[q]] = slope * math.sqrt(qs)
                if bad < 0 and not (math.isfinite(cs) and math.isfinite(qs)):
                    bad = row
            if bad < 0 and not math.isfinite(z):
                bad = row
    return bad


@dataclass
class Explanation:
    """Per-ad attributions of one request, groups in the manifest's order: views of one
    ``[n, 3 + 2 (groups + 1)]`` float64 array the kernel filled (logit, pCTR, bias path, the
    contributions, the influences; the dense features last in each block)."""

    groups: list[str]
    table: np.ndarray
    has_dense: bool

    @property
    def logit(self) -> np.ndarray:
        return self.table[:, 0]

    @property
    def pctr(self) -> np.ndarray:
        return self.table[:, 1]

    @property
    def bias(self) -> np.ndarray:
        """The biases carried through the ReLU masks: sum over layers of bias . delta."""
        return self.table[:, 2]

    @property
    def contribution(self) -> np.ndarray:
        g = len(self.groups)
        return self.table[:, 3:3 + g]

    @property
    def influence(self) -> np.ndarray:
        """L2 norm of d pCTR / d x over each group's slice."""
        g = len(self.groups)
        return self.table[:, 4 + g:4 + 2 * g]

    @property
    def dense_contribution(self) -> np.ndarray | None:
        return self.table[:, 3 + len(self.groups)] if self.has_dense else None

    @property
    def dense_influence(self) -> np.ndarray | None:
        return self.table[:, 4 + 2 * len(self.groups)] if self.has_dense else None

    @property
    def remainder(self) -> np.ndarray:
        """What the groups do not account for: the bias path plus the dense features."""
        return self.table[:, 2] + self.table[:, 3 + len(self.groups)]

    def to_json(self) -> list[dict[str, Any]]:
        """The contract's ``ads`` list (``POST /v1/models/{name}/explain``)."""
        names = self.groups
        g = len(names)
        rem = self.remainder.tolist()
        out = []
        for a, row in enumerate(self.table.tolist()):
            ad = {"pctr": row[1], "logit": row[0], "remainder": rem[a], "bias": row[2],
                  "groups": {name: {"influence": row[4 + g + i], "contribution": row[3 + i]}
                             for i, name in enumerate(names)}}
            if self.has_dense:
                ad["dense"] = {"influence": row[4 + 2 * g], "contribution": row[3 + g]}
            out.append(ad)
        return out


@dataclass
class _Scratch:
    x_ctx: np.ndarray
    ctx_counts: np.ndarray
    c: np.ndarray
    xa: np.ndarray
    hs: np.ndarray
    da: np.ndarray
    db: np.ndarray
    g_ctx: np.ndarray
    g_ad: np.ndarray
    counts: np.ndarray
    idx: np.ndarray
    vals: np.ndarray


class Explainer:
    """The engine's explain pass: transposed weights laid out once, scratch pooled."""

    def __init__(self, engine: "Engine") -> None:
        # a proxy, not a reference: the engine holds its explainer, and a cycle would keep a
        # retired version's engine (and its memory maps) alive while the service freezes the GC
        self.engine = weakref.proxy(engine)
        layers = engine.layers
        rest = [engine.params[wo:wo + k * n].reshape(k, n) for wo, k, n, _, _ in layers.tolist()]
        # every hidden layer after the first, transposed ([out, in]); the output layer is not
        pieces, table, offset = [], [], 0
        for w in rest[:-1]:
            flat = np.ascontiguousarray(w.T).reshape(-1)
            pad = (-flat.size) % 16
            pieces.append(np.concatenate([flat, np.zeros(pad, np.float32)]))
            table.append([offset, w.shape[1], w.shape[0]])
            offset += flat.size + pad
        self.tparams = np.concatenate(pieces) if pieces else np.zeros(16, np.float32)
        self.tlayers = np.array(table, dtype=np.int64).reshape(-1, 3)
        if not table:
            self.tlayers = np.zeros((1, 3), dtype=np.int64)
        self.wt_ad = np.ascontiguousarray(engine.w_ad.T)
        self.wt_ctx = np.ascontiguousarray(engine.w_ctx.T) if engine.w_ctx.shape[0] \
            else np.zeros((engine.out0, 0), np.float32)
        self.n_hidden = layers.shape[0]
        self.width = max([engine.width, engine.ad_width, engine.ctx_width, 1])
        self.zeros = np.zeros(self.width, np.float32)
        kernel_order = [g.name for g in engine.layout.ctx_groups + engine.layout.ad_groups]
        self.groups = [g.name for g in engine.manifest.groups]
        position = {name: i for i, name in enumerate(self.groups)}
        # kernel slot (context groups, ad groups, dense) -> column in the manifest's order
        self.column = np.array([position[n] for n in kernel_order] + [len(self.groups)], np.int64)
        self.has_dense = engine.manifest.dense_dim > 0
        # a net without hidden layers (logistic regression): no masks; explained in NumPy
        self.linear = self.n_hidden == 0
        self._pool: queue.SimpleQueue[_Scratch] = queue.SimpleQueue()

    def _scratch(self) -> _Scratch:
        try:
            return self._pool.get_nowait()
        except queue.Empty:
            pass
        e = self.engine
        chunk = e.chunk
        return _Scratch(
            x_ctx=np.zeros((1, max(1, e.ctx_width)), np.float32),
            ctx_counts=np.zeros(max(1, len(e.layout.ctx_groups)), np.float32),
            c=np.zeros((1, e.out0), np.float32),
            xa=np.zeros((chunk, max(1, e.ad_width)), np.float32),
            hs=np.zeros((self.n_hidden, chunk, self.width), np.float32),
            da=np.zeros((chunk, self.width), np.float32),
            db=np.zeros((chunk, self.width), np.float32),
            g_ctx=np.zeros((chunk, max(1, e.ctx_width)), np.float32),
            g_ad=np.zeros((chunk, max(1, e.ad_width)), np.float32),
            counts=np.zeros(chunk * max(1, len(e.layout.ad_groups)), np.float32),
            idx=np.zeros(self.width, np.int64),
            vals=np.zeros(self.width, np.float32),
        )

    def explain(self, context: Mapping[str, Any] | None, ads: Sequence[Any]) -> Explanation:
        return self.explain_encoded(self.engine.layout.encode(context, ads))

    def explain_encoded(self, batch: EncodedBatch) -> Explanation:
        if self.linear:
            return self._explain_linear(batch)
        e = self.engine
        n = batch.n_ads
        table = np.empty((n, 3 + 2 * (len(self.groups) + 1)), np.float64)
        bad = -1
        if n:
            s = self._scratch()
            try:
                bad = explain_rows(*e._ctx.args(), batch.ctx_ids, batch.ctx_keys, batch.ctx_lens,
                                   batch.ctx_wts, *e._ad.args(), batch.ad_ids, batch.ad_keys,
                                   batch.ad_lens, batch.ad_wts, batch.dense, e.dense_col, n, e.w_ctx, e.b0, e.w_ad, e.act0,
                                   e.params, e.layers, self.wt_ctx, self.wt_ad, self.tparams,
                                   self.tlayers, self.zeros, s.x_ctx, s.ctx_counts, s.c, s.xa,
                                   s.hs, s.da, s.db, s.g_ctx, s.g_ad, s.counts, e.small_batch,
                                   s.idx, s.vals, self.column, table)
            finally:
                self._pool.put(s)
        if bad >= 0:
            raise overflow(bad)
        return Explanation(self.groups, table, self.has_dense)

    def _explain_linear(self, batch: EncodedBatch) -> Explanation:
        """``logit = x . w + b``: the gradient is the weight column itself, the bias path is b."""
        from .instrument import pooled_inputs

        e = self.engine
        n = batch.n_ads
        g = len(self.groups)
        table = np.zeros((n, 3 + 2 * (g + 1)), np.float64)
        if not n:
            return Explanation(self.groups, table, self.has_dense)
        x_ctx, x_ad = pooled_inputs(e, batch)
        w_ctx = e.w_ctx[:, 0].astype(np.float64)
        w_ad = e.w_ad[:, 0].astype(np.float64)
        b = float(e.b0[0])
        pieces_ctx = x_ctx[0].astype(np.float64) * w_ctx
        pieces_ad = x_ad.astype(np.float64) * w_ad
        with np.errstate(all="ignore"):
            z = pieces_ad.sum(axis=1) + pieces_ctx.sum() + b
            p = 1.0 / (1.0 + np.exp(-z))
        slope = p * (1.0 - p)
        table[:, 0], table[:, 1], table[:, 2] = z, p, b
        ctx, ad = e._ctx, e._ad
        spans = [(pieces_ctx, w_ctx, c, d) for c, d in zip(ctx.cols.tolist(), ctx.dims.tolist())]
        spans += [(pieces_ad, w_ad, c, d) for c, d in zip(ad.cols.tolist(), ad.dims.tolist())]
        spans.append((pieces_ad, w_ad, e.dense_col, e.manifest.dense_dim))
        for (pieces, w, c, d), col in zip(spans, self.column.tolist()):
            part = pieces[..., c:c + d].sum(axis=-1)
            table[:, 3 + col] = part
            table[:, 4 + g + col] = slope * float(np.linalg.norm(w[c:c + d]))
        bad = np.flatnonzero(~np.isfinite(table).all(axis=1))
        if bad.size:
            raise overflow(int(bad[0]))
        return Explanation(self.groups, table, self.has_dense)
