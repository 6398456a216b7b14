"""An independent oracle for the explain answers: the textbook forward pass in float64 NumPy over
the package's arrays, recording the ReLU masks, and the chain rule written out layer by layer."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from scoring.model.package import ModelPackage
from scoring.model.reference import mlp_input


def explain_f64(pkg: ModelPackage, ctx: Mapping[str, Any] | None, ad: Mapping[str, Any]) -> dict:
    """One ad: logit, pctr, per group (contribution, influence), dense contribution, and the
    bias path sum_l b_l . d logit / d z_l."""
    x = mlp_input(pkg, ctx, ad)
    ws = [np.asarray(w, np.float64) for w in pkg.weights]
    bs = [np.asarray(b, np.float64) for b in pkg.biases]
    h, masks = x, []
    for w, b in zip(ws[:-1], bs[:-1]):
        z = h @ w + b
        masks.append(z > 0)
        h = np.where(z > 0, z, 0.0)
    logit = float(h @ ws[-1][:, 0] + bs[-1][0])
    delta = ws[-1][:, 0].copy()          # d logit / d h_last
    bias = float(bs[-1][0])
    for i in range(len(masks) - 1, -1, -1):
        delta = delta * masks[i]          # d logit / d z_i
        bias += float(bs[i] @ delta)
        delta = ws[i] @ delta             # d logit / d (input of layer i)
    grad = delta
    p = 1.0 / (1.0 + np.exp(-logit))
    groups, col = {}, 0
    for g in pkg.manifest.groups:
        sl = slice(col, col + g.dim)
        col += g.dim
        groups[g.name] = (float(x[sl] @ grad[sl]), float(p * (1 - p) * np.linalg.norm(grad[sl])))
    return {"logit": logit, "pctr": p, "groups": groups, "bias": bias,
            "dense": float(x[col:] @ grad[col:]) if col < x.size else None}
