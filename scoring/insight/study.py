"""The DeepInsight study's measurements on one model version and one labelled log.

Every number here follows the definitions in docs/insight.md (and ``scoring.model.health``):

* **forward statistics** over every row: AUC and log loss against the clicks, the label-free
  expected AUC of the pCTRs, and per hidden layer the fluctuation ``F_l = mean_j sigma_lj``
  (population std of each neuron's post-ReLU output), the per-neuron sigmas (for the seed's
  histogram) and the dead share (neurons that are zero on every row);
* **group influence** over every row, from the engine's exact backward pass
  (:mod:`scoring.engine.explain`): the mean over rows of ``|| d pCTR / d x_g ||``, its share of the
  groups' total and the concentration ``sum of squared shares`` (1 / number of groups when even,
  1 when one group carries everything);
* **probes** (Alain & Bengio): a logistic regression per hidden layer, and on the pooled input,
  fitted on a sample of training rows and scored by AUC on a sample of test rows;
* **t-SNE** of each hidden layer on a sample of rows, and the click neighbourhood lift: the share
  of click rows among each click row's k nearest neighbours, over the base click rate (1: clicks
  are spread like everything else; above 1: they cluster).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engine import instrument
from ..model.health import LayerMoments, expected_auc, mean_abs_fluctuation
from .data import DataError, LabelledLog

CHUNK_ROWS = 8192


@dataclass
class StudyConfig:
    probe_rows: int = 20_000      # training rows the probes fit on (and test rows they score)
    tsne_rows: int = 5_000
    tsne_iter: int = 500
    perplexity: float = 30.0
    neighbours: int = 15
    influence_rows: int = 0       # 0: every row
    probe_gain: float = 0.001     # a layer gaining less over the previous one is flagged
    seed: int = 0


def _chunks(batches: list, limit: int = CHUNK_ROWS):
    part, rows = [], 0
    for b in batches:
        part.append(b)
        rows += b.n_ads
        if rows >= limit:
            yield part
            part, rows = [], 0
    if part:
        yield part


def forward_stats(engine, log: LabelledLog) -> tuple[dict[str, Any], np.ndarray]:
    """Labelled and label-free statistics of ``engine`` over every row of ``log``; also the
    pCTRs (float64, row order)."""
    from sklearn.metrics import log_loss, roc_auc_score

    batches = log.encoded(engine)
    moments: list[LayerMoments] | None = None
    logits = []
    for part in _chunks(batches):
        hidden, logit = instrument.forward_batches(engine, part)
        if moments is None:
            moments = [LayerMoments(h.shape[1]) for h in hidden]
        for m, h in zip(moments, hidden):
            m.add(h)
        logits.append(logit)
    z = np.concatenate(logits)
    if not np.isfinite(z).all():
        row = int(np.flatnonzero(~np.isfinite(z))[0])
        ends = np.cumsum([b.n_ads for b in batches])
        i = int(np.searchsorted(ends, row, side="right"))
        ad = row - (int(ends[i - 1]) if i else 0)
        raise DataError(f"{log.path}:{log.lines[i]}: ads[{ad}]: the model's output is not a "
                        f"number (an overflow inside version {engine.version})")
    p = 1.0 / (1.0 + np.exp(-z))
    y = log.clicks
    both = 0 < y.sum() < y.size
    out = {
        "rows": log.rows, "requests": len(batches), "clicks": int(y.sum()),
        "ctr": float(y.mean()), "pctr_mean": float(p.mean()),
        "auc": float(roc_auc_score(y, p)) if both else None,
        "logloss": float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1])),
        "expected_auc": expected_auc(p),
        "layers": [{"layer": i + 1, "width": m.width, "fluctuation": m.fluctuation,
                    "sigma": [round(float(s), 6) for s in m.sigma],
                    "zero_share": float(m.zero_share.mean()),
                    "dead_share": float((m.zero_share >= 1.0).mean())}
                   for i, m in enumerate(moments or [])],
    }
    return out, p


def influence(engine, log: LabelledLog, max_rows: int = 0) -> dict[str, Any]:
    """Mean influence and mean |contribution| per group over the log's rows (the first
    ``max_rows`` rows' requests when set), from the engine's exact backward pass."""
    explainer = engine.explainer
    groups = explainer.groups
    infl = np.zeros(len(groups))
    contrib = np.zeros(len(groups))
    rows = 0
    for b in log.encoded(engine):
        if max_rows and rows >= max_rows:
            break
        ex = explainer.explain_encoded(b)
        infl += ex.influence.sum(axis=0)
        contrib += np.abs(ex.contribution).sum(axis=0)
        rows += b.n_ads
    mean = infl / max(rows, 1)
    total = mean.sum()
    share = mean / total if total > 0 else np.zeros_like(mean)
    return {"rows": rows,
            "groups": {g: {"influence": float(mean[i]), "share": float(share[i]),
                           "abs_contribution": float(contrib[i] / max(rows, 1))}
                       for i, g in enumerate(groups)},
            "concentration": float((share ** 2).sum()),
            "top": groups[int(np.argmax(share))] if len(groups) else None}


def sample_requests(log: LabelledLog, rows: int, seed: int) -> list[int]:
    """Indices of whole requests drawn at random (seeded) until they hold ``rows`` rows."""
    order = np.random.default_rng(seed).permutation(len(log.requests))
    picked, n = [], 0
    for i in order.tolist():
        if n >= rows:
            break
        picked.append(i)
        n += len(log.requests[i].ads)
    return sorted(picked)


def representations(engine, log: LabelledLog, picked: list[int]) -> tuple[list[np.ndarray], np.ndarray]:
    """For the picked requests' rows: the pooled MLP input then every hidden layer's output
    (float32), and the clicks."""
    batches = log.encoded(engine)
    part = [batches[i] for i in picked]
    inputs = []
    for b in part:
        x_ctx, x_ad = instrument.pooled_inputs(engine, b)
        inputs.append(np.hstack([np.repeat(x_ctx, b.n_ads, axis=0), x_ad]))
    hidden_parts: list[list[np.ndarray]] = []
    for chunk in _chunks(part):
        hidden_parts.append(instrument.forward_batches(engine, chunk)[0])
    hidden = [np.concatenate([hp[l] for hp in hidden_parts]).astype(np.float32)
              for l in range(len(hidden_parts[0]))] if hidden_parts else []
    y = np.concatenate([log.requests[i].clicks for i in picked])
    return [np.concatenate(inputs).astype(np.float32)] + hidden, y


def probes(train: list[np.ndarray], y_train: np.ndarray, test: list[np.ndarray],
           y_test: np.ndarray, gain: float) -> list[dict[str, Any]]:
    """A logistic-regression probe per representation (pooled input, layer 1, ...): test AUC,
    its gain over the previous representation, flagged when below ``gain``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    out = []
    prev = None
    for i, (a, b) in enumerate(zip(train, test)):
        scaler = StandardScaler().fit(a)
        lr = LogisticRegression(C=1.0, max_iter=1000)
        lr.fit(scaler.transform(a), y_train)
        auc = float(roc_auc_score(y_test, lr.decision_function(scaler.transform(b))))
        entry = {"layer": "input" if i == 0 else i, "auc": auc, "width": int(a.shape[1])}
        if prev is not None:
            entry["gain"] = auc - prev
            entry["flagged"] = bool(auc - prev < gain)
        out.append(entry)
        prev = auc
    return out


def tsne_layers(hidden: list[np.ndarray], clicks: np.ndarray, cfg: StudyConfig) -> list[dict[str, Any]]:
    """t-SNE of each hidden layer (PCA to 50 dims first when wider, as is usual) and the click
    neighbourhood lift in the embedding and in the layer's own space."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    out = []
    if clicks.size < max(10, 2 * (cfg.neighbours + 1)):  # too few rows for a map or neighbours
        return out
    for l, h in enumerate(hidden, start=1):
        x = h.astype(np.float64)
        live = x.std(axis=0) > 0
        x = x[:, live] if live.any() else x[:, :1]
        if x.shape[1] > 50:
            x = PCA(50, random_state=cfg.seed).fit_transform(x)
        perplexity = min(cfg.perplexity, max(2.0, (x.shape[0] - 1) / 3.0))
        emb = TSNE(2, perplexity=perplexity, init="pca", random_state=cfg.seed,
                   max_iter=cfg.tsne_iter, n_jobs=1).fit_transform(x)
        out.append({"layer": l, "rows": int(x.shape[0]), "embedding": emb,
                    "knn_click_lift_tsne": knn_click_lift(emb, clicks, cfg.neighbours),
                    "knn_click_lift_hidden": knn_click_lift(h, clicks, cfg.neighbours)})
    return out


def knn_click_lift(points: np.ndarray, clicks: np.ndarray, k: int) -> float | None:
    """Mean share of click rows among each click row's ``k`` nearest other rows, over the base
    click rate."""
    from sklearn.neighbors import NearestNeighbors

    clicks = np.asarray(clicks).astype(bool)
    n = clicks.size
    if clicks.sum() == 0 or n <= k:
        return None
    nn = NearestNeighbors(n_neighbors=k + 1).fit(points)
    idx = nn.kneighbors(points[clicks], return_distance=False)
    rows = np.flatnonzero(clicks)
    share = np.empty(rows.size)
    for i, r in enumerate(rows):  # drop the row itself (not always first when rows coincide)
        others = idx[i][idx[i] != r][:k]
        share[i] = clicks[others].mean()
    base = (clicks.sum() - 1) / (n - 1)
    return float(share.mean() / base) if base > 0 else None


def spearman(x: list[float], y: list[float]) -> float | None:
    from scipy.stats import spearmanr

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(spearmanr(x, y).statistic)


def mad_fluctuation(hidden: list[np.ndarray]) -> list[float]:
    """The mean-absolute-deviation form of F_l per layer, on a sample's hidden outputs."""
    return [mean_abs_fluctuation(h) for h in hidden]
