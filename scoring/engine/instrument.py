"""The engine's instrumented forward pass: every hidden layer's output, for model health.

The service samples a share of live requests and watches its models' hidden neurons
(docs/insight.md). This pass pools the embeddings with the engine's own compiled kernel (the
same tables, dtypes and pooling) and runs the layers in NumPy on the engine's own weights
(float32, bf16-rounded for a bf16 model), keeping each hidden layer's post-ReLU output. It runs
off the request path, on a background thread, on a small share of traffic: clarity over speed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..model.quantize import bf16_values
from . import kernels
from .features import EncodedBatch

if TYPE_CHECKING:  # pragma: no cover
    from .scorer import Engine


def pooled_inputs(engine: "Engine", batch: EncodedBatch) -> tuple[np.ndarray, np.ndarray]:
    """(context vector [1, ctx_width], ad rows [n, ad_width] with the dense features), in the
    engine's kernel column order."""
    ctx, ad = engine._ctx, engine._ad
    x_ctx = np.zeros((1, max(1, ctx.width)), dtype=np.float32)
    ctx_counts = np.zeros(max(1, len(engine.layout.ctx_groups)), dtype=np.float32)
    kernels.pool_embeddings(*ctx.args(), batch.ctx_ids, batch.ctx_keys, batch.ctx_lens,
                            batch.ctx_wts,
                            len(engine.layout.ctx_groups), 0, 1, 0, 0, x_ctx, ctx_counts)
    n = batch.n_ads
    x_ad = np.zeros((n, max(1, engine.ad_width)), dtype=np.float32)
    counts = np.zeros(max(1, n * len(engine.layout.ad_groups)), dtype=np.float32)
    if n:
        kernels.pool_embeddings(*ad.args(), batch.ad_ids, batch.ad_keys, batch.ad_lens,
                                batch.ad_wts,
                                len(engine.layout.ad_groups), 0, n, 0, 0, x_ad, counts)
        if batch.dense.shape[1]:
            x_ad[:, engine.dense_col:engine.dense_col + batch.dense.shape[1]] = batch.dense
    return x_ctx[:, :ctx.width], x_ad[:, :engine.ad_width]


def hidden_outputs(engine: "Engine", batch: EncodedBatch) -> tuple[list[np.ndarray], np.ndarray]:
    """Each hidden layer's post-ReLU output [n, width] (float32) and the pCTRs, for ``batch``."""
    hidden, logit = forward_with_hidden(engine, batch)
    with np.errstate(over="ignore"):
        return hidden, (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)


def forward_with_hidden(engine: "Engine", batch: EncodedBatch) -> tuple[list[np.ndarray], np.ndarray]:
    """Each hidden layer's post-ReLU output [n, width] (float32) and the output layer's
    log-odds (float64; not finite where the net overflows)."""
    x_ctx, x_ad = pooled_inputs(engine, batch)
    bf16 = engine.prec != kernels.PREC_F32
    rnd = bf16_values if bf16 else (lambda a: a)
    with np.errstate(all="ignore"):  # an overflowing net is what the caller looks for
        c = engine.b0 + rnd(x_ctx) @ engine.w_ctx            # the context part, once
        h = np.maximum(rnd(x_ad) @ engine.w_ad + c, 0.0) if engine.act0 == kernels.ACT_RELU \
            else rnd(x_ad) @ engine.w_ad + c
        hidden = []
        for wo, k_in, n_out, bo, act in engine.layers.tolist():
            hidden.append(h.astype(np.float32))
            w = engine.params[wo:wo + k_in * n_out].reshape(k_in, n_out)
            z = rnd(h.astype(np.float32)) @ w + engine.params[bo:bo + n_out]
            h = np.maximum(z, 0.0) if act == kernels.ACT_RELU else z
    return hidden, h[:, 0].astype(np.float64)


def forward_batches(engine: "Engine", batches: "list[EncodedBatch]") -> tuple[list[np.ndarray], np.ndarray]:
    """:func:`forward_with_hidden` over the rows of several requests at once: the context part
    once per request, then every layer as one matrix product over all rows. A background thread
    calls this on a few thousand rows at a time: the time goes into BLAS and the compiled
    pooling kernel, which run without the interpreter lock, not into Python between small calls
    (which would hold it, and keep the request thread waiting)."""
    if not batches:
        return [], np.zeros(0)
    pooled = [pooled_inputs(engine, b) for b in batches]
    counts = np.array([b.n_ads for b in batches], dtype=np.int64)
    x_ctx = np.concatenate([p[0] for p in pooled], axis=0)
    x_ad = np.concatenate([p[1] for p in pooled], axis=0)
    bf16 = engine.prec != kernels.PREC_F32
    rnd = bf16_values if bf16 else (lambda a: a)
    with np.errstate(all="ignore"):
        c = np.repeat(engine.b0 + rnd(x_ctx) @ engine.w_ctx, counts, axis=0)
        z = rnd(x_ad) @ engine.w_ad
        z += c
        h = np.maximum(z, 0.0, out=z) if engine.act0 == kernels.ACT_RELU else z
        hidden = []
        for wo, k_in, n_out, bo, act in engine.layers.tolist():
            hidden.append(h)
            w = engine.params[wo:wo + k_in * n_out].reshape(k_in, n_out)
            z = rnd(h) @ w
            z += engine.params[bo:bo + n_out]
            h = np.maximum(z, 0.0, out=z) if act == kernels.ACT_RELU else z
    return hidden, h[:, 0].astype(np.float64)
