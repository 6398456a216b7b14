"""The model graph's compiled interpreter: one call scores a request through a plan of
instructions (``scoring.engine.graph`` compiles a package's blocks into it at load).

Values live in two flat float32 scratch arrays: context-side values (computed once per request)
as ``[1, width]`` rows of ``cv``, ad-side values as ``[chunk, width]`` matrices carved out of
``av`` (C order, so the register-tile dense kernels take them). Pooled groups are ``xc``
(context, one row) and ``xa`` (ads, then the dense features), as the MLP engine pools them.
Nothing is allocated here.

Instruction rows ``ins[i]`` (int64): op, side (0 context / 1 ad), out offset, out width, input
offset, input side, aux offset (-1 none), -, layer start, layer count, operand start, operand
count. Operand rows ``opd[j]``: kind, side, offset or column (a wide operand: its table's
index), width, slot, zeroed (an output that ignores the group reads zeros). Layer rows
``lt[k]``: weight offset, in, out, bias offset (-1: no bias), activation. Wide tables are one
flat array, ``wide_rows[t]`` = (offset, rows); ``wide_serving[j]`` the serving value's row of
wide operand j, or -1.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from . import kernels
from .config import CACHE, FASTMATH

OP_GATHER = 0     # out = the operands side by side (concat, or a part of one)
OP_LINEAR = 1     # out = input @ W + b, one layer (a split first layer's context part)
OP_MLP = 2        # layers; the first takes aux (if any) as its bias
OP_FM = 3         # field-level FM; operands: fields; aux: the context part's (S, Q)
OP_FM_PART = 4    # (S, Q) of the context fields, [1, 2k]
OP_WIDE = 5       # sum of a dim-1 table's rows over the operands' ids; aux: the context part
OP_CROSS = 6      # DCN-v2 layers over the input; layer rows (full: 1, low rank: 2 with bias -1)
OP_ADD = 7        # out = sum of the operands

SRC_FIELD = 0     # pooled columns (side 0: xc; side 1: xa, the dense features included)
SRC_VALUE = 2     # another instruction's value (side 0: cv; side 1: av)

OUT_SIGMOID = 0
OUT_NONE = 1
OUT_PRODUCT = 2


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH, inline="always")
def _view(cv, av, xa, chunk, side, off, width):
    """A value as a matrix: [1, width] of cv, [chunk, width] of av, or (side 2) the pooled ad
    rows themselves, when a split layer's ad part is exactly them in order (no copy)."""
    if side == 0:
        return cv[off:off + width].reshape((1, width))
    if side == 2:
        return xa
    return av[off:off + chunk * width].reshape((chunk, width))


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH, inline="always")
def _operand(xc, xa, cv, av, chunk, opd, j, r, d):
    kind = opd[j, 0]
    side = opd[j, 1]
    off = opd[j, 2]
    if kind == SRC_VALUE:
        if side == 0:
            return cv[off + d]
        return av[off + r * opd[j, 3] + d]
    if side == 0:
        return xc[0, off + d]
    return xa[r, off + d]


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH, _nrt=False)
def _layers(x, n, params, lt, k0, count, first_bias, zeros, out, buf_a, buf_b, small_batch, idx,
            vals):
    """Layers ``lt[k0 .. k0 + count]`` over rows ``x[:n]``; the last writes ``out``. The first
    layer's bias is ``first_bias`` when given (a split layer's context part) else its own."""
    cur = x
    for k in range(count):
        wo = lt[k0 + k, 0]
        k_in = lt[k0 + k, 1]
        n_out = lt[k0 + k, 2]
        bo = lt[k0 + k, 3]
        w = params[wo:wo + k_in * n_out].reshape((k_in, n_out))
        dst = out if k == count - 1 else (buf_a if k % 2 == 0 else buf_b)
        if k == 0 and first_bias.shape[0] > 0:
            bias = first_bias
        elif bo < 0:
            bias = zeros[:n_out]
        else:
            bias = params[bo:bo + n_out]
        kernels.dense_layer(cur, n, k_in, w, bias, dst, lt[k0 + k, 4], small_batch, idx, vals)
        cur = dst


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH, _nrt=False)
def _exec(ins, i, n, xc, xa, cv, av, chunk, opd, params, lt, zeros, buf_a, buf_b, small_batch,
          idx, vals, ids, keys, lens, e0, v0, row0, n_slots, counts, wide_tables, wide_rows,
          wide_serving):
    op = ins[i, 0]
    side = ins[i, 1]
    out_off = ins[i, 2]
    out_w = ins[i, 3]
    rows = n if side == 1 else 1
    out = _view(cv, av, xa, chunk, side, out_off, out_w)
    o0 = ins[i, 10]
    no = ins[i, 11]
    if op == OP_GATHER:
        for r in range(rows):
            col = 0
            for j in range(o0, o0 + no):
                w = opd[j, 3]
                if opd[j, 5] == 1:
                    for d in range(w):
                        out[r, col + d] = 0.0
                else:
                    for d in range(w):
                        out[r, col + d] = _operand(xc, xa, cv, av, chunk, opd, j, r, d)
                col += w
    elif op == OP_LINEAR or op == OP_MLP:
        x = _view(cv, av, xa, chunk, ins[i, 5], ins[i, 4], lt[ins[i, 8], 1])
        aux = ins[i, 6]
        first_bias = zeros[:0]
        if aux >= 0:
            first_bias = cv[aux:aux + lt[ins[i, 8], 2]]
        _layers(x, rows, params, lt, ins[i, 8], ins[i, 9], first_bias, zeros, out, buf_a, buf_b,
                small_batch if side == 1 else 1 << 30, idx, vals)
    elif op == OP_FM_PART or op == OP_FM:
        k = opd[o0, 3]
        aux = ins[i, 6]
        for r in range(rows):
            total = 0.0
            for d in range(k):
                s = 0.0
                q = 0.0
                if aux >= 0:
                    s = cv[aux + d]
                    q = cv[aux + k + d]
                for j in range(o0, o0 + no):
                    if opd[j, 5] == 0:
                        v = _operand(xc, xa, cv, av, chunk, opd, j, r, d)
                        s += v
                        q += v * v
                if op == OP_FM_PART:
                    out[r, d] = s
                    out[r, k + d] = q
                else:
                    total += s * s - q
            if op == OP_FM:
                out[r, 0] = 0.5 * total
    elif op == OP_WIDE:
        aux = ins[i, 6]
        for r in range(rows):
            out[r, 0] = cv[aux] if aux >= 0 else 0.0
        n_entries = keys.shape[0]
        end_key = (row0 + rows) * n_slots
        base = row0 * n_slots
        e = e0
        v = v0
        while e < n_entries and keys[e] < end_key:
            key = keys[e] - base
            r = key // n_slots
            s = key - r * n_slots
            for j in range(o0, o0 + no):
                if opd[j, 4] == s and opd[j, 5] == 0:
                    t0 = wide_rows[opd[j, 2], 0]
                    nr = np.uint64(wide_rows[opd[j, 2], 1])
                    acc = 0.0
                    for q in range(v, v + lens[e]):
                        acc += wide_tables[t0 + np.int64(ids[q] % nr)]
                    out[r, 0] += acc
            v += lens[e]
            e += 1
        for j in range(o0, o0 + no):  # a group the request did not send: its serving value
            srow = wide_serving[j]
            if opd[j, 5] == 0 and srow >= 0:
                s = opd[j, 4]
                for r in range(rows):
                    if counts[r * n_slots + s] == 0.0:
                        out[r, 0] += wide_tables[wide_rows[opd[j, 2], 0] + srow]
    elif op == OP_CROSS:
        x0 = _view(cv, av, xa, chunk, ins[i, 5], ins[i, 4], out_w)
        for r in range(rows):
            for d in range(out_w):
                out[r, d] = x0[r, d]
        for j in range(o0, o0 + no):  # one operand per cross layer: (layer row, its kind)
            k0 = opd[j, 2]
            kind = opd[j, 3]
            sb = small_batch if side == 1 else 1 << 30
            if kind >= 3:  # a split first layer: the ad part times W_ad (or u_ad), plus the
                # context part computed once per request (as the bias)
                xad = _view(cv, av, xa, chunk, opd[j, 1], opd[j, 0], lt[k0, 1])
                c = opd[j, 4]
                dst = buf_a if kind == 3 else buf_b
                _layers(xad, rows, params, lt, k0, 1, cv[c:c + lt[k0, 2]], zeros, dst, buf_a,
                        buf_b, sb, idx, vals)
                if kind == 4:
                    _layers(buf_b, rows, params, lt, k0 + 1, 1, zeros[:0], zeros, buf_a, buf_b,
                            buf_b, sb, idx, vals)
            elif kind == 2:
                _layers(out, rows, params, lt, k0, 1, zeros[:0], zeros, buf_b, buf_a, buf_a,
                        sb, idx, vals)
                _layers(buf_b, rows, params, lt, k0 + 1, 1, zeros[:0], zeros, buf_a, buf_b, buf_b,
                        sb, idx, vals)
            else:
                _layers(out, rows, params, lt, k0, 1, zeros[:0], zeros, buf_a, buf_b, buf_b,
                        sb, idx, vals)
            for r in range(rows):
                for d in range(out_w):
                    out[r, d] = x0[r, d] * buf_a[r, d] + out[r, d]
    else:  # OP_ADD
        for r in range(rows):
            for d in range(out_w):
                s = 0.0
                for j in range(o0, o0 + no):
                    s += _operand(xc, xa, cv, av, chunk, opd, j, r, d)
                out[r, d] = s


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH, _nrt=False)
def run(ctx_tables, ctx_kinds, ctx_qparams, ctx_buckets, ctx_modes, ctx_serving, ctx_cols,
        ctx_dims, ctx_ids, ctx_keys, ctx_lens, ctx_wts, ad_tables, ad_kinds, ad_qparams,
        ad_buckets, ad_modes, ad_serving, ad_cols, ad_dims, ad_ids, ad_keys, ad_lens, ad_wts,
        dense, dense_col, n_ads, ins, opd, params, lt, outs, zeros, wide_tables, wide_rows,
        wide_serving, xc, ctx_counts, xa, counts, cv, av, buf_a, buf_b, small_batch, idx, vals,
        res):
    """Score ``n_ads`` ads through the plan; ``res[o, a]`` = output ``o`` of ad ``a``. Output
    rows ``outs[o]``: kind (sigmoid / none / product), value offset, value side, product's two
    outputs. Returns the first ad with a non-finite output, or -1."""
    chunk = xa.shape[0]
    n_ctx_slots = ctx_buckets.shape[0]
    n_slots = ad_buckets.shape[0]
    dense_dim = dense.shape[1]
    kernels.pool_embeddings(ctx_tables, ctx_kinds, ctx_qparams, ctx_buckets, ctx_modes,
                            ctx_serving, ctx_cols, ctx_dims, ctx_ids, ctx_keys, ctx_lens, ctx_wts,
                            n_ctx_slots, 0, 1, 0, 0, xc, ctx_counts)
    for i in range(ins.shape[0]):
        if ins[i, 1] == 0:
            _exec(ins, i, 1, xc, xa, cv, av, chunk, opd, params, lt, zeros, buf_a, buf_b,
                  small_batch, idx, vals, ctx_ids, ctx_keys, ctx_lens, 0, 0, 0, n_ctx_slots,
                  ctx_counts, wide_tables, wide_rows, wide_serving)
    bad = -1
    e = 0
    v = 0
    for row0 in range(0, n_ads, chunk):
        n = min(chunk, n_ads - row0)
        e0 = e
        v0 = v
        e, v = kernels.pool_embeddings(ad_tables, ad_kinds, ad_qparams, ad_buckets, ad_modes,
                                       ad_serving, ad_cols, ad_dims, ad_ids, ad_keys, ad_lens,
                                       ad_wts, n_slots, row0, n, e, v, xa, counts)
        for r in range(n):
            for d in range(dense_dim):
                xa[r, dense_col + d] = dense[row0 + r, d]
        for i in range(ins.shape[0]):
            if ins[i, 1] == 1:
                _exec(ins, i, n, xc, xa, cv, av, chunk, opd, params, lt, zeros, buf_a, buf_b,
                      small_batch, idx, vals, ad_ids, ad_keys, ad_lens, e0, v0, row0, n_slots,
                      counts, wide_tables, wide_rows, wide_serving)
        for o in range(outs.shape[0]):
            kind = outs[o, 0]
            for r in range(n):
                if kind == OUT_PRODUCT:
                    z = res[outs[o, 3], row0 + r] * res[outs[o, 4], row0 + r]
                else:
                    off = outs[o, 1]
                    z = cv[off] if outs[o, 2] == 0 else av[off + r]
                    if kind == OUT_SIGMOID:
                        z = np.float32(1.0) / (np.float32(1.0) + np.float32(math.exp(-z)))
                res[o, row0 + r] = z
                if bad < 0 and not math.isfinite(z):
                    bad = row0 + r
    return bad
