"""Compiled kernels of the forward pass: embedding gather + pooling, dense layers, the whole MLP.

Pure ``@njit`` functions over contiguous arrays; nothing of ours is imported here and nothing is
allocated: every buffer comes from the caller (``engine.Scratch``), sized once.

Two dense-layer forms, chosen by batch size (see ``engine.SMALL_BATCH``):

* ``dense_axpy``: the seed's loop. Weights ``[in, out]`` row-major, so the inner loop walks one
  weight row in order; an input that is zero (ReLU pruned it) skips its whole row. Memory-bound,
  it wins for one or two ads, where skipping rows saves bandwidth.
* ``dense_tiled``: dot-product form over weights transposed once at load (``[out, in]``), a
  register tile of 6 ads x 4 neurons: each weight vector loaded serves six ads, 24 accumulators
  that LLVM vectorises along ``in``. Compute-bound, it wins from a handful of ads up.

Layer 1 is split (``x @ W = x_ctx @ W_ctx + x_ad @ W_ad``): the context part is computed once per
request and enters every ad's row as its bias.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .kernel_config import CACHE, FASTMATH

ACT_NONE = 0
ACT_RELU = 1
ACT_SIGMOID = 2

TILE_ADS = 6
TILE_OUT = 4


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH)
def pool_embeddings(tables, buckets, is_mean, cols, dims, ids, keys, lens, n_slots, row0, n_rows,
                    e_start, v_start, out, counts):
    """Pool rows ``row0 .. row0 + n_rows`` of one side's groups into ``out[row - row0, cols[slot]:]``.

    Values come run-length encoded: entry ``e`` says ``lens[e]`` consecutive ``ids`` belong to
    ``keys[e] = row * n_slots + slot`` (non-decreasing in row). Each id adds table row
    ``id % buckets[slot]``; mean pooling divides by the value count; a group with no value stays a
    zero vector. Starts at entry ``e_start`` / value ``v_start`` and returns where it stopped, so
    chunks of rows walk the arrays once.
    """
    for r in range(n_rows):
        for s in range(n_slots):
            c0 = cols[s]
            for d in range(dims[s]):
                out[r, c0 + d] = 0.0
            counts[r * n_slots + s] = 0.0
    end_key = (row0 + n_rows) * n_slots
    base = row0 * n_slots
    e = e_start
    v = v_start
    n_entries = keys.shape[0]
    while e < n_entries and keys[e] < end_key:
        key = keys[e] - base
        r = key // n_slots
        s = key - r * n_slots
        table = tables[s]
        bk = buckets[s]
        c0 = cols[s]
        dim = dims[s]
        m = lens[e]
        for q in range(v, v + m):
            row = ids[q] % bk
            for d in range(dim):
                out[r, c0 + d] += table[row, d]
        counts[key] += m
        v += m
        e += 1
    for r in range(n_rows):
        for s in range(n_slots):
            cnt = counts[r * n_slots + s]
            if is_mean[s] and cnt > 1.0:
                inv = np.float32(1.0) / cnt
                c0 = cols[s]
                for d in range(dims[s]):
                    out[r, c0 + d] *= inv
    return e, v


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH, inline="always")
def _act(v, act):
    if act == ACT_RELU:
        return v if v > 0.0 else np.float32(0.0)
    if act == ACT_SIGMOID:
        return np.float32(1.0) / (np.float32(1.0) + np.float32(math.exp(-v)))
    return v


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH)
def dense_axpy(x, n, k_in, w, bias, y, act, idx, vals):
    """``y[:n, :out] = act(x[:n, :k_in] @ w + bias)`` with ``w`` as [in, out].

    Per ad, the non-zero inputs are first gathered into ``idx``/``vals`` (ReLU pruning: a zero
    input never touches its weight row), then four weight rows at a time are added into the
    output row, so each load and store of ``y`` serves four multiply-adds."""
    n_out = w.shape[1]
    for a in range(n):
        m = 0
        for k in range(k_in):
            v = x[a, k]
            if v != 0.0:
                idx[m] = k
                vals[m] = v
                m += 1
        for j in range(n_out):
            y[a, j] = bias[j]
        q = 0
        while q + 4 <= m:
            k0 = idx[q]
            k1 = idx[q + 1]
            k2 = idx[q + 2]
            k3 = idx[q + 3]
            v0 = vals[q]
            v1 = vals[q + 1]
            v2 = vals[q + 2]
            v3 = vals[q + 3]
            for j in range(n_out):
                y[a, j] += v0 * w[k0, j] + v1 * w[k1, j] + v2 * w[k2, j] + v3 * w[k3, j]
            q += 4
        while q < m:
            k0 = idx[q]
            v0 = vals[q]
            for j in range(n_out):
                y[a, j] += v0 * w[k0, j]
            q += 1
        for j in range(n_out):
            y[a, j] = _act(y[a, j], act)


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH)
def dense_tiled(x, n, k_in, wt, bias, y, act):
    """``y[:n, :out] = act(x[:n, :k_in] @ wt.T + bias)`` with ``wt`` as [out, in]: tiles of 6 ads x 4
    neurons, then the 0-5 ads left over in tiles of 4, 2 and 1 ads."""
    n_out = wt.shape[0]
    a = 0
    while a + TILE_ADS <= n:
        j = 0
        while j + TILE_OUT <= n_out:
            s00 = s01 = s02 = s03 = np.float32(0.0)
            s10 = s11 = s12 = s13 = np.float32(0.0)
            s20 = s21 = s22 = s23 = np.float32(0.0)
            s30 = s31 = s32 = s33 = np.float32(0.0)
            s40 = s41 = s42 = s43 = np.float32(0.0)
            s50 = s51 = s52 = s53 = np.float32(0.0)
            for k in range(k_in):
                w0 = wt[j, k]
                w1 = wt[j + 1, k]
                w2 = wt[j + 2, k]
                w3 = wt[j + 3, k]
                x0 = x[a, k]
                x1 = x[a + 1, k]
                x2 = x[a + 2, k]
                x3 = x[a + 3, k]
                x4 = x[a + 4, k]
                x5 = x[a + 5, k]
                s00 += x0 * w0
                s01 += x0 * w1
                s02 += x0 * w2
                s03 += x0 * w3
                s10 += x1 * w0
                s11 += x1 * w1
                s12 += x1 * w2
                s13 += x1 * w3
                s20 += x2 * w0
                s21 += x2 * w1
                s22 += x2 * w2
                s23 += x2 * w3
                s30 += x3 * w0
                s31 += x3 * w1
                s32 += x3 * w2
                s33 += x3 * w3
                s40 += x4 * w0
                s41 += x4 * w1
                s42 += x4 * w2
                s43 += x4 * w3
                s50 += x5 * w0
                s51 += x5 * w1
                s52 += x5 * w2
                s53 += x5 * w3
            b0 = bias[j]
            b1 = bias[j + 1]
            b2 = bias[j + 2]
            b3 = bias[j + 3]
            y[a, j] = _act(s00 + b0, act)
            y[a, j + 1] = _act(s01 + b1, act)
            y[a, j + 2] = _act(s02 + b2, act)
            y[a, j + 3] = _act(s03 + b3, act)
            y[a + 1, j] = _act(s10 + b0, act)
            y[a + 1, j + 1] = _act(s11 + b1, act)
            y[a + 1, j + 2] = _act(s12 + b2, act)
            y[a + 1, j + 3] = _act(s13 + b3, act)
            y[a + 2, j] = _act(s20 + b0, act)
            y[a + 2, j + 1] = _act(s21 + b1, act)
            y[a + 2, j + 2] = _act(s22 + b2, act)
            y[a + 2, j + 3] = _act(s23 + b3, act)
            y[a + 3, j] = _act(s30 + b0, act)
            y[a + 3, j + 1] = _act(s31 + b1, act)
            y[a + 3, j + 2] = _act(s32 + b2, act)
            y[a + 3, j + 3] = _act(s33 + b3, act)
            y[a + 4, j] = _act(s40 + b0, act)
            y[a + 4, j + 1] = _act(s41 + b1, act)
            y[a + 4, j + 2] = _act(s42 + b2, act)
            y[a + 4, j + 3] = _act(s43 + b3, act)
            y[a + 5, j] = _act(s50 + b0, act)
            y[a + 5, j + 1] = _act(s51 + b1, act)
            y[a + 5, j + 2] = _act(s52 + b2, act)
            y[a + 5, j + 3] = _act(s53 + b3, act)
            j += TILE_OUT
        while j < n_out:  # neurons left over: 6 ads x 1 neuron
            s0 = s1 = s2 = s3 = s4 = s5 = np.float32(0.0)
            for k in range(k_in):
                w0 = wt[j, k]
                s0 += x[a, k] * w0
                s1 += x[a + 1, k] * w0
                s2 += x[a + 2, k] * w0
                s3 += x[a + 3, k] * w0
                s4 += x[a + 4, k] * w0
                s5 += x[a + 5, k] * w0
            b0 = bias[j]
            y[a, j] = _act(s0 + b0, act)
            y[a + 1, j] = _act(s1 + b0, act)
            y[a + 2, j] = _act(s2 + b0, act)
            y[a + 3, j] = _act(s3 + b0, act)
            y[a + 4, j] = _act(s4 + b0, act)
            y[a + 5, j] = _act(s5 + b0, act)
            j += 1
        a += TILE_ADS
    if a + 4 <= n:
        _rows4(x, a, k_in, wt, bias, y, act)
        a += 4
    if a + 2 <= n:
        _rows2(x, a, k_in, wt, bias, y, act)
        a += 2
    if a < n:
        _rows1(x, a, k_in, wt, bias, y, act)


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH, inline="always")
def _rows4(x, a, k_in, wt, bias, y, act):
    """Ads a..a+3 (left over after the 6-ad tiles) x every neuron, 4 neurons at a time."""
    n_out = wt.shape[0]
    j = 0
    while j + TILE_OUT <= n_out:
        s00 = s01 = s02 = s03 = np.float32(0.0)
        s10 = s11 = s12 = s13 = np.float32(0.0)
        s20 = s21 = s22 = s23 = np.float32(0.0)
        s30 = s31 = s32 = s33 = np.float32(0.0)
        for k in range(k_in):
            w0 = wt[j, k]
            w1 = wt[j + 1, k]
            w2 = wt[j + 2, k]
            w3 = wt[j + 3, k]
            x0 = x[a, k]
            x1 = x[a + 1, k]
            x2 = x[a + 2, k]
            x3 = x[a + 3, k]
            s00 += x0 * w0
            s01 += x0 * w1
            s02 += x0 * w2
            s03 += x0 * w3
            s10 += x1 * w0
            s11 += x1 * w1
            s12 += x1 * w2
            s13 += x1 * w3
            s20 += x2 * w0
            s21 += x2 * w1
            s22 += x2 * w2
            s23 += x2 * w3
            s30 += x3 * w0
            s31 += x3 * w1
            s32 += x3 * w2
            s33 += x3 * w3
        y[a, j] = _act(s00 + bias[j], act)
        y[a, j + 1] = _act(s01 + bias[j + 1], act)
        y[a, j + 2] = _act(s02 + bias[j + 2], act)
        y[a, j + 3] = _act(s03 + bias[j + 3], act)
        y[a + 1, j] = _act(s10 + bias[j], act)
        y[a + 1, j + 1] = _act(s11 + bias[j + 1], act)
        y[a + 1, j + 2] = _act(s12 + bias[j + 2], act)
        y[a + 1, j + 3] = _act(s13 + bias[j + 3], act)
        y[a + 2, j] = _act(s20 + bias[j], act)
        y[a + 2, j + 1] = _act(s21 + bias[j + 1], act)
        y[a + 2, j + 2] = _act(s22 + bias[j + 2], act)
        y[a + 2, j + 3] = _act(s23 + bias[j + 3], act)
        y[a + 3, j] = _act(s30 + bias[j], act)
        y[a + 3, j + 1] = _act(s31 + bias[j + 1], act)
        y[a + 3, j + 2] = _act(s32 + bias[j + 2], act)
        y[a + 3, j + 3] = _act(s33 + bias[j + 3], act)
        j += TILE_OUT
    while j < n_out:
        s0 = s1 = s2 = s3 = np.float32(0.0)
        for k in range(k_in):
            w0 = wt[j, k]
            s0 += x[a, k] * w0
            s1 += x[a + 1, k] * w0
            s2 += x[a + 2, k] * w0
            s3 += x[a + 3, k] * w0
        y[a, j] = _act(s0 + bias[j], act)
        y[a + 1, j] = _act(s1 + bias[j], act)
        y[a + 2, j] = _act(s2 + bias[j], act)
        y[a + 3, j] = _act(s3 + bias[j], act)
        j += 1


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH, inline="always")
def _rows2(x, a, k_in, wt, bias, y, act):
    """Ads a, a+1 x every neuron, 4 neurons at a time."""
    n_out = wt.shape[0]
    j = 0
    while j + TILE_OUT <= n_out:
        s00 = s01 = s02 = s03 = np.float32(0.0)
        s10 = s11 = s12 = s13 = np.float32(0.0)
        for k in range(k_in):
            w0 = wt[j, k]
            w1 = wt[j + 1, k]
            w2 = wt[j + 2, k]
            w3 = wt[j + 3, k]
            x0 = x[a, k]
            x1 = x[a + 1, k]
            s00 += x0 * w0
            s01 += x0 * w1
            s02 += x0 * w2
            s03 += x0 * w3
            s10 += x1 * w0
            s11 += x1 * w1
            s12 += x1 * w2
            s13 += x1 * w3
        y[a, j] = _act(s00 + bias[j], act)
        y[a, j + 1] = _act(s01 + bias[j + 1], act)
        y[a, j + 2] = _act(s02 + bias[j + 2], act)
        y[a, j + 3] = _act(s03 + bias[j + 3], act)
        y[a + 1, j] = _act(s10 + bias[j], act)
        y[a + 1, j + 1] = _act(s11 + bias[j + 1], act)
        y[a + 1, j + 2] = _act(s12 + bias[j + 2], act)
        y[a + 1, j + 3] = _act(s13 + bias[j + 3], act)
        j += TILE_OUT
    while j < n_out:
        s0 = s1 = np.float32(0.0)
        for k in range(k_in):
            w0 = wt[j, k]
            s0 += x[a, k] * w0
            s1 += x[a + 1, k] * w0
        y[a, j] = _act(s0 + bias[j], act)
        y[a + 1, j] = _act(s1 + bias[j], act)
        j += 1


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH, inline="always")
def _rows1(x, a, k_in, wt, bias, y, act):
    """Ad a x every neuron, 4 neurons at a time."""
    n_out = wt.shape[0]
    j = 0
    while j + TILE_OUT <= n_out:
        s0 = s1 = s2 = s3 = np.float32(0.0)
        for k in range(k_in):
            xv = x[a, k]
            s0 += xv * wt[j, k]
            s1 += xv * wt[j + 1, k]
            s2 += xv * wt[j + 2, k]
            s3 += xv * wt[j + 3, k]
        y[a, j] = _act(s0 + bias[j], act)
        y[a, j + 1] = _act(s1 + bias[j + 1], act)
        y[a, j + 2] = _act(s2 + bias[j + 2], act)
        y[a, j + 3] = _act(s3 + bias[j + 3], act)
        j += TILE_OUT
    while j < n_out:
        s0 = np.float32(0.0)
        for k in range(k_in):
            s0 += x[a, k] * wt[j, k]
        y[a, j] = _act(s0 + bias[j], act)
        j += 1


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH)
def dense_layer(x, n, k_in, w, wt, bias, y, act, small_batch, idx, vals):
    """One layer, in the form that suits the batch size."""
    if n <= small_batch:
        dense_axpy(x, n, k_in, w, bias, y, act, idx, vals)
    else:
        dense_tiled(x, n, k_in, wt, bias, y, act)


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH)
def context_bias(ctx_tables, ctx_buckets, ctx_mean, ctx_cols, ctx_dims, ctx_ids, ctx_keys,
                 ctx_lens, w_ctx, b0, x_ctx, counts, c, idx, vals):
    """``c = b0 + pooled_context @ W_ctx``: layer 1's context part, once per request."""
    n_slots = ctx_buckets.shape[0]
    pool_embeddings(ctx_tables, ctx_buckets, ctx_mean, ctx_cols, ctx_dims, ctx_ids, ctx_keys,
                    ctx_lens, n_slots, 0, 1, 0, 0, x_ctx, counts)
    k_in = w_ctx.shape[0]
    dense_axpy(x_ctx, 1, k_in, w_ctx, b0, c, ACT_NONE, idx, vals)


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH)
def mlp_rows(x, n, c, w_ad, wt_ad, ws, wts, bs, acts, buf_a, buf_b, small_batch, idx, vals):
    """Layers for ``n`` rows of ad inputs ``x``: layer 1 with the context bias ``c``, then every
    further layer ping-ponging between the two buffers. Returns the buffer holding the output."""
    dense_layer(x, n, w_ad.shape[0], w_ad, wt_ad, c, buf_b, acts[0], small_batch, idx, vals)
    src = buf_b
    dst = buf_a
    for li in range(len(ws)):
        w = ws[li]
        dense_layer(src, n, w.shape[0], w, wts[li], bs[li], dst, acts[li + 1], small_batch, idx,
                    vals)
        src, dst = dst, src
    return src


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH)
def forward(ad_tables, ad_buckets, ad_mean, ad_cols, ad_dims, ad_ids, ad_keys, ad_lens, dense,
            dense_col, c, w_ad, wt_ad, ws, wts, bs, acts, n_ads, buf_a, buf_b, counts,
            small_batch, idx, vals, out):
    """Score ``n_ads`` ads in chunks of ``buf_a.shape[0]`` rows: pool the ad groups and copy the
    dense features into ``buf_a``, run the layers, and write ad i's pCTR to ``out[i]``."""
    chunk = buf_a.shape[0]
    n_slots = ad_buckets.shape[0]
    dense_dim = dense.shape[1]
    e = 0
    v = 0
    for row0 in range(0, n_ads, chunk):
        n = min(chunk, n_ads - row0)
        e, v = pool_embeddings(ad_tables, ad_buckets, ad_mean, ad_cols, ad_dims, ad_ids, ad_keys,
                               ad_lens, n_slots, row0, n, e, v, buf_a, counts)
        for r in range(n):
            for d in range(dense_dim):
                buf_a[r, dense_col + d] = dense[row0 + r, d]
        res = mlp_rows(buf_a, n, c[0], w_ad, wt_ad, ws, wts, bs, acts, buf_a, buf_b, small_batch,
                       idx, vals)
        for r in range(n):
            out[row0 + r] = res[r, 0]


@njit(cache=CACHE, nogil=True, fastmath=FASTMATH)
def mlp(x_ctx, w_ctx, b0, c, x_ad, n_ads, w_ad, wt_ad, ws, wts, bs, acts, buf_a, buf_b,
        small_batch, idx, vals, out):
    """The MLP alone on pooled inputs: context part once, then the ad rows chunk by chunk."""
    dense_axpy(x_ctx, 1, w_ctx.shape[0], w_ctx, b0, c, ACT_NONE, idx, vals)
    chunk = buf_a.shape[0]
    for row0 in range(0, n_ads, chunk):
        n = min(chunk, n_ads - row0)
        res = mlp_rows(x_ad[row0:row0 + n], n, c[0], w_ad, wt_ad, ws, wts, bs, acts, buf_a, buf_b,
                       small_batch, idx, vals)
        for r in range(n):
            out[row0 + r] = res[r, 0]
