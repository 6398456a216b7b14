"""Compiled kernels of the forward pass: embedding gather + pooling, dense layers, the whole MLP.

Pure ``@njit`` functions over contiguous arrays; nothing is allocated here: every buffer comes
from the caller (``scorer._Scratch``), sized once. Weights are ``[in, out]`` row-major, one layout
for both dense-layer forms, chosen by batch size (``scorer.SMALL_BATCH``):

* ``dense_axpy``: the seed's loop, for a single ad (and a tile's odd last row). The non-zero
  inputs are gathered first, so an input that ReLU made zero never touches its weight row
  (pruning); each kept row is read in order into up to 256 outputs held in vector registers
  (``simd.make_sparse_row``). Memory-bound: skipping rows saves bandwidth.
* ``dense_tiled``: register tiles of 6 ads x 64 neurons (``simd.make_tile``): each weight vector
  loaded serves six ads from registers, no horizontal sums. Compute-bound: near the GEMM peak.

Layer 1 is split (``x @ W = x_ctx @ W_ctx + x_ad @ W_ad``): the context part is computed once per
request (``context_bias``) and enters every ad's row as its bias.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .config import CACHE, FASTMATH
from .simd import (
    f32_at,
    make_bf16_tile,
    make_row_accumulate,
    make_sparse_row,
    make_tile,
    prefetch_row,
)

ACT_NONE = 0
ACT_RELU = 1
ACT_SIGMOID = 2
# MLP precision (``prec``): float32; bf16 on float32 kernels; bf16 on AVX512-BF16 tiles
PREC_F32 = 0
PREC_BF16 = 1
PREC_BF16_NATIVE = 2
# table storage (``kinds`` of pool_embeddings), contract section 2b
TABLE_F32 = 0
TABLE_F16 = 1
TABLE_INT8_ROWWISE = 2
# pooling of a group (``modes`` of pool_embeddings), contract sections 1 and 2b
POOL_SUM = 0
POOL_MEAN = 1
POOL_SQRTN = 2
POOL_WEIGHTED = 3


@njit(cache=CACHE, nogil=True, inline="always")
def _bucket(h, buckets):
    """``h % buckets`` (contract section 1), as a mask when ``buckets`` is a power of two."""
    if buckets & (buckets - np.uint64(1)) == 0:
        return h & (buckets - np.uint64(1))
    return h % buckets


_ACC_F32 = make_row_accumulate("float32")
_ACC_F16 = make_row_accumulate("float16")
_ACC_I8 = make_row_accumulate("int8")


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH, _nrt=False)
def pool_embeddings(tables, kinds, qparams, buckets, modes, serving, cols, dims, ids, keys, lens,
                    wts, n_slots, row0, n_rows, e_start, v_start, out, counts):
    """Pool rows ``row0 .. row0 + n_rows`` of one side's groups into ``out[row - row0, cols[slot]:]``.

    ``tables[slot]`` is the address of the slot's table (C order, ``dims[slot]`` wide) stored as
    ``kinds[slot]``: float32, float16, or int8 row-wise with float32 (scale, offset) rows at
    ``qparams[slot]``, read back as ``q * scale + offset`` (contract section 2b).
    Values come run-length encoded: entry ``e`` says ``lens[e]`` consecutive ``ids`` belong to
    ``keys[e] = row * n_slots + slot`` (non-decreasing in row). Each id adds table row
    ``id % buckets[slot]``; ``modes[slot]`` says how they pool: ``POOL_SUM``, ``POOL_MEAN``
    (divided by the value count), ``POOL_SQRTN`` (by its square root) or ``POOL_WEIGHTED`` (each
    row times ``wts[value]``). A group with no value stays a zero vector, unless
    ``serving[slot]`` names a table row (>= 0): a format 2 group's serving value, assumed when
    the request does not send it. Starts at entry ``e_start`` / value ``v_start`` and returns
    where it stopped, so chunks of rows walk the arrays once.
    """
    for r in range(n_rows):
        for s in range(n_slots):
            c0 = cols[s]
            for d in range(dims[s]):
                out[r, c0 + d] = 0.0
            counts[r * n_slots + s] = 0.0
    end_key = (row0 + n_rows) * n_slots
    base = row0 * n_slots
    n_entries = keys.shape[0]
    # pass 1: prefetch every row this chunk will read, so the misses overlap
    e = e_start
    v = v_start
    while e < n_entries and keys[e] < end_key:
        s = (keys[e] - base) % n_slots
        addr = tables[s]
        bk = buckets[s]
        kind = kinds[s]
        row_bytes = dims[s] * (4 if kind == TABLE_F32 else 2 if kind == TABLE_F16 else 1)
        for q in range(v, v + lens[e]):
            row = _bucket(ids[q], bk)
            prefetch_row(addr, row, row_bytes)
            if kind == TABLE_INT8_ROWWISE:
                prefetch_row(qparams[s], row, 8)
        v += lens[e]
        e += 1
    # pass 2: accumulate
    e = e_start
    v = v_start
    while e < n_entries and keys[e] < end_key:
        key = keys[e] - base
        r = key // n_slots
        s = key - r * n_slots
        m = lens[e]
        weighted = modes[s] == POOL_WEIGHTED and wts.shape[0] > 0  # no weights sent: 1 each
        for q in range(v, v + m):
            _add_row(tables[s], kinds[s], qparams[s], dims[s], np.int64(_bucket(ids[q], buckets[s])),
                     out, r, cols[s], wts[q] if weighted else np.float32(1.0))
        counts[key] += m
        v += m
        e += 1
    for r in range(n_rows):
        for s in range(n_slots):
            cnt = counts[r * n_slots + s]
            mode = modes[s]
            if cnt == 0.0 and serving[s] >= 0:
                _add_row(tables[s], kinds[s], qparams[s], dims[s], serving[s], out, r, cols[s],
                         np.float32(1.0))
            elif cnt > 1.0 and (mode == POOL_MEAN or mode == POOL_SQRTN):
                inv = np.float32(1.0) / (cnt if mode == POOL_MEAN else np.float32(math.sqrt(cnt)))
                c0 = cols[s]
                for d in range(dims[s]):
                    out[r, c0 + d] *= inv
    return e, v


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH, inline="always")
def _add_row(addr, kind, qaddr, dim, row, out, r, c0, weight):
    """``out[r, c0:c0 + dim] += weight * table row``, the row read as its storage says."""
    if kind == TABLE_F32:
        _ACC_F32(out, r, c0, addr + row * dim * 4, dim, weight, 0.0)
    elif kind == TABLE_INT8_ROWWISE:
        qp = f32_at(qaddr)
        _ACC_I8(out, r, c0, addr + row * dim, dim, qp[2 * row] * weight, qp[2 * row + 1] * weight)
    else:
        _ACC_F16(out, r, c0, addr + row * dim * 2, dim, weight, 0.0)


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH, inline="always")
def _act(v, act):
    if act == ACT_RELU:  # NaN passes through, as in simd's tiles
        return np.float32(0.0) if v <= 0.0 else v
    if act == ACT_SIGMOID:
        return np.float32(1.0) / (np.float32(1.0) + np.float32(math.exp(-v)))
    return v


_SPARSE_ROW = make_sparse_row()
_TILE6, _TILE4, _TILE2 = make_tile(6), make_tile(4), make_tile(2)
_TILE8 = make_tile(8, (2, 1))  # 8 ads x 32 neurons: 16 accumulators + 2 weight vectors


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH, inline="always")
def _pruned_row(x, a, k_in, w, bias, y, act, idx, vals):
    """Ad ``a``: gather its non-zero inputs into ``idx``/``vals`` (ReLU pruning: a zero input
    never touches its weight row), then accumulate blocks of up to 256 neurons in registers over
    those rows (``simd.make_sparse_row``); neurons that do not fill a 16-lane vector, and sigmoid
    layers, are summed one at a time over the same rows."""
    n_out = w.shape[1]
    m = 0
    for k in range(k_in):
        v = x[a, k]
        if v != 0.0:
            idx[m] = k
            vals[m] = v
            m += 1
    j = 0
    if act != ACT_SIGMOID:
        j = _SPARSE_ROW(idx, vals, m, w, bias, y, a, 1 if act == ACT_RELU else 0)
    for jj in range(j, n_out):
        s = bias[jj]
        for q in range(m):
            s += vals[q] * w[idx[q], jj]
        y[a, jj] = _act(s, act)


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH, _nrt=False)
def dense_axpy(x, n, k_in, w, bias, y, act, idx, vals):
    """``y[:n, :out] = act(x[:n, :k_in] @ w + bias)`` with ``w`` as [in, out], one ad at a time,
    pruned: the seed's loop, with the output block kept in registers."""
    for a in range(n):
        _pruned_row(x, a, k_in, w, bias, y, act, idx, vals)


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH, _nrt=False)
def dense_cols(x, n, k_in, w, bias, y, act, j_start):
    """Neurons ``j_start..`` one dot product at a time: the last layer (one output, sigmoid) and
    the few neurons of a layer that do not fill a 16-lane vector."""
    n_out = w.shape[1]
    for a in range(n):
        for j in range(j_start, n_out):
            s = np.float32(0.0)
            for k in range(k_in):
                s += x[a, k] * w[k, j]
            y[a, j] = _act(s + bias[j], act)


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH, _nrt=False)
def dense_tiled(x, n, k_in, w, bias, y, act, idx, vals):
    """``y[:n, :out] = act(x[:n, :k_in] @ w + bias)`` with ``w`` as [in, out]: register tiles of
    6 ads x 64 neurons (``simd.make_tile``), then 4 and 2 ads for the rows left over and the
    pruned one-ad form for a last odd row; neurons that do not fill a vector, and sigmoid layers,
    go one dot product at a time."""
    if act == ACT_SIGMOID or w.shape[1] < 16:
        dense_cols(x, n, k_in, w, bias, y, act, 0)
        return
    relu = 1 if act == ACT_RELU else 0
    a = 0
    j_end = 0
    while a + 6 <= n and n - a != 8:
        j_end = _TILE6(x, a, k_in, w, bias, y, relu)
        a += 6
    if n - a == 8:  # 8 left: one 8 x 32 tile, ~10% faster than 6 + 2 (5% than 4 + 4)
        j_end = _TILE8(x, a, k_in, w, bias, y, relu)
        a += 8
    if a + 4 <= n:
        j_end = _TILE4(x, a, k_in, w, bias, y, relu)
        a += 4
    if a + 2 <= n:
        j_end = _TILE2(x, a, k_in, w, bias, y, relu)
        a += 2
    dense_cols(x, a, k_in, w, bias, y, act, j_end)
    if a < n:
        _pruned_row(x, a, k_in, w, bias, y, act, idx, vals)


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH, _nrt=False)
def dense_layer(x, n, k_in, w, bias, y, act, small_batch, idx, vals):
    """One layer, in the form that suits the batch size."""
    if n <= small_batch:
        dense_axpy(x, n, k_in, w, bias, y, act, idx, vals)
    else:
        dense_tiled(x, n, k_in, w, bias, y, act, idx, vals)


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH, _nrt=False)
def context_bias(ctx_tables, ctx_kinds, ctx_qparams, ctx_buckets, ctx_modes, ctx_serving, ctx_cols,
                 ctx_dims, ctx_ids, ctx_keys, ctx_lens, ctx_wts, w_ctx, b0, x_ctx, counts, c, idx,
                 vals, prec):
    """``c = b0 + pooled_context @ W_ctx``: layer 1's context part, once per request."""
    n_slots = ctx_buckets.shape[0]
    pool_embeddings(ctx_tables, ctx_kinds, ctx_qparams, ctx_buckets, ctx_modes, ctx_serving,
                    ctx_cols, ctx_dims, ctx_ids, ctx_keys, ctx_lens, ctx_wts, n_slots, 0, 1, 0, 0,
                    x_ctx, counts)
    k_in = w_ctx.shape[0]
    if prec != PREC_F32:
        round_bf16(x_ctx, 1, k_in)
    dense_axpy(x_ctx, 1, k_in, w_ctx, b0, c, ACT_NONE, idx, vals)


@njit(cache=CACHE, nogil=True, _nrt=False)
def round_bf16(x, n, k):
    """``x[:n, :k]`` rounded to bfloat16 in place (to nearest, ties to even; kept as float32)."""
    u = x.view(np.uint32)
    for a in range(n):
        for j in range(k):
            b = np.uint64(u[a, j])
            u[a, j] = np.uint32((b + np.uint64(0x7FFF) + ((b >> np.uint64(16)) & np.uint64(1)))
                                & np.uint64(0xFFFF0000))


@njit(cache=CACHE, nogil=True, _nrt=False)
def pack_bf16_pairs(x, n, k, xp):
    """``xp[a, i]`` = the bf16 of ``x[a, 2i]`` (low half) and ``x[a, 2i + 1]`` (high half), for
    ``x`` already rounded (``round_bf16``); an odd last input pairs with zero."""
    u = x.view(np.uint32)
    half = k // 2
    for a in range(n):
        for i in range(half):
            xp[a, i] = (u[a, 2 * i] >> np.uint32(16)) | (u[a, 2 * i + 1] & np.uint32(0xFFFF0000))
        if k % 2:
            xp[a, half] = u[a, k - 1] >> np.uint32(16)


_BTILE6, _BTILE4, _BTILE2, _BTILE1 = (make_bf16_tile(6), make_bf16_tile(4), make_bf16_tile(2),
                                      make_bf16_tile(1))


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH, _nrt=False)
def any_layer(x, n, k_in, w, bias, y, act, small_batch, idx, vals, prec, wpack, ptab, li, xp):
    """One layer at the model's precision. float32: ``dense_layer``. bf16: the inputs rounded to
    bf16 first (the weights were at load), then the AVX512-BF16 tiles (``PREC_BF16_NATIVE``;
    neurons that do not fill a vector and the sigmoid layer on float32 kernels, same values) or
    the float32 kernels throughout. ``ptab[li]`` = (offset in ``wpack``, input pairs, out)."""
    if prec == PREC_F32:
        dense_layer(x, n, k_in, w, bias, y, act, small_batch, idx, vals)
        return
    round_bf16(x, n, k_in)
    n_out = w.shape[1]
    if prec != PREC_BF16_NATIVE or act == ACT_SIGMOID or n_out < 16:
        dense_layer(x, n, k_in, w, bias, y, act, small_batch, idx, vals)
        return
    pack_bf16_pairs(x, n, k_in, xp)
    wo = ptab[li, 0]
    k_pairs = ptab[li, 1]
    wp = wpack[wo:wo + k_pairs * n_out].reshape((k_pairs, n_out))
    relu = 1 if act == ACT_RELU else 0
    a = 0
    j_end = 0
    while a + 6 <= n and n - a != 8:  # 8 left: two tiles of 4 beat 6 + 2
        j_end = _BTILE6(xp, a, k_pairs, wp, bias, y, relu)
        a += 6
    if n - a == 8:
        j_end = _BTILE4(xp, a, k_pairs, wp, bias, y, relu)
        a += 4
    if a + 4 <= n:
        j_end = _BTILE4(xp, a, k_pairs, wp, bias, y, relu)
        a += 4
    if a + 2 <= n:
        j_end = _BTILE2(xp, a, k_pairs, wp, bias, y, relu)
        a += 2
    if a < n:
        j_end = _BTILE1(xp, a, k_pairs, wp, bias, y, relu)
    if j_end < n_out:
        dense_cols(x, n, k_in, w, bias, y, act, j_end)


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH, _nrt=False)
def mlp_rows(x, n, c, w_ad, act0, params, layers, buf_a, buf_b, small_batch, idx, vals, prec,
             wpack, ptab, xp):
    """Layers for ``n`` rows of ad inputs ``x``: layer 1 with the context bias ``c``, then every
    further layer ping-ponging between the two buffers. Returns the buffer holding the output.

    Layers after the first live in one flat ``params`` array (one argument instead of a list of
    arrays: a typed list costs ~1 us per call to unbox); row ``li`` of ``layers`` holds
    (weight offset, in, out, bias offset, activation). Returns 0 when the output is in
    ``buf_a``, 1 when it is in ``buf_b``. ``prec`` and the rest: see ``any_layer``."""
    any_layer(x, n, w_ad.shape[0], w_ad, c, buf_b, act0, small_batch, idx, vals, prec, wpack, ptab,
              0, xp)
    in_b = True
    for li in range(layers.shape[0]):
        wo = layers[li, 0]
        k_in = layers[li, 1]
        n_out = layers[li, 2]
        bo = layers[li, 3]
        w = params[wo:wo + k_in * n_out].reshape((k_in, n_out))
        if in_b:
            any_layer(buf_b, n, k_in, w, params[bo:bo + n_out], buf_a, layers[li, 4],
                      small_batch, idx, vals, prec, wpack, ptab, li + 1, xp)
        else:
            any_layer(buf_a, n, k_in, w, params[bo:bo + n_out], buf_b, layers[li, 4],
                      small_batch, idx, vals, prec, wpack, ptab, li + 1, xp)
        in_b = not in_b
    return 1 if in_b else 0


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH, _nrt=False)
def forward(ad_tables, ad_kinds, ad_qparams, ad_buckets, ad_modes, ad_serving, ad_cols, ad_dims,
            ad_ids, ad_keys, ad_lens, ad_wts, dense, dense_col, c, w_ad, act0, params, layers, n_ads, buf_a, buf_b, counts,
            small_batch, idx, vals, prec, wpack, ptab, xp, out):
    """Score ``n_ads`` ads in chunks of ``buf_a.shape[0]`` rows: pool the ad groups and copy the
    dense features into ``buf_a``, run the layers, and write ad i's pCTR to ``out[i]``. Returns
    the first ad whose pCTR is not a number in [0, 1] (an overflow inside the net), or -1."""
    chunk = buf_a.shape[0]
    n_slots = ad_buckets.shape[0]
    dense_dim = dense.shape[1]
    e = 0
    v = 0
    bad = -1
    for row0 in range(0, n_ads, chunk):
        n = min(chunk, n_ads - row0)
        e, v = pool_embeddings(ad_tables, ad_kinds, ad_qparams, ad_buckets, ad_modes, ad_serving,
                               ad_cols, ad_dims, ad_ids, ad_keys, ad_lens, ad_wts, n_slots, row0,
                               n, e, v, buf_a, counts)
        for r in range(n):
            for d in range(dense_dim):
                buf_a[r, dense_col + d] = dense[row0 + r, d]
        res = buf_b if mlp_rows(buf_a, n, c[0], w_ad, act0, params, layers, buf_a, buf_b,
                                small_batch, idx, vals, prec, wpack, ptab, xp) else buf_a
        for r in range(n):
            p = res[r, 0]
            out[row0 + r] = p
            if bad < 0 and not (p >= 0.0 and p <= 1.0):
                bad = row0 + r
    return bad


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH, _nrt=False)
def mlp(x_ctx, w_ctx, b0, c, x_ad, n_ads, w_ad, act0, params, layers, buf_a, buf_b,
        small_batch, idx, vals, prec, wpack, ptab, xp, out):
    """The MLP alone on pooled inputs: context part once, then the ad rows chunk by chunk.
    At bf16 precision the inputs are rounded in place (the caller passes copies)."""
    if prec != PREC_F32:
        round_bf16(x_ctx, 1, w_ctx.shape[0])
    dense_axpy(x_ctx, 1, w_ctx.shape[0], w_ctx, b0, c, ACT_NONE, idx, vals)
    chunk = buf_a.shape[0]
    for row0 in range(0, n_ads, chunk):
        n = min(chunk, n_ads - row0)
        res = buf_b if mlp_rows(x_ad[row0:row0 + n], n, c[0], w_ad, act0, params, layers, buf_a,
                                buf_b, small_batch, idx, vals, prec, wpack, ptab, xp) else buf_a
        for r in range(n):
            out[row0 + r] = res[r, 0]
