"""The report's figures (matplotlib, Agg backend, PNG files beside index.html)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

CLICK = "#cf222e"
OTHER = "#8c959f"
SETS = ("#0969da", "#bf8700", "#1a7f37", "#8250df")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    _plt().close(fig)
    return path.name


def auc_plot(report: dict[str, Any], out: Path) -> str:
    plt = _plt()
    versions = report["versions"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for k, name in enumerate(report["data"]):
        per = [report["results"][v][name] for v in versions]
        c = SETS[k % len(SETS)]
        a1.plot(versions, [r["auc"] for r in per], "o-", color=c, label=f"{name} AUC")
        a1.plot(versions, [r["expected_auc"] for r in per], "x--", color=c, alpha=0.6,
                label=f"{name} expected AUC (no labels)")
        a2.plot(versions, [r["logloss"] for r in per], "o-", color=c, label=name)
    a1.set_title("AUC per version")
    a2.set_title("log loss per version")
    for a in (a1, a2):
        a.tick_params(axis="x", rotation=45)
        a.legend(fontsize=7)
        a.grid(alpha=0.3)
    return _save(fig, out / "auc.png")


def fluctuation_plot(report: dict[str, Any], out: Path) -> str:
    plt = _plt()
    versions = report["versions"]
    n_layers = max(len(report["results"][v][report["data"][0]]["layers"]) for v in versions)
    fig, axes = plt.subplots(1, n_layers, figsize=(3.2 * n_layers, 3.2), squeeze=False)
    for l in range(n_layers):
        ax = axes[0][l]
        for k, name in enumerate(report["data"]):
            values = [report["results"][v][name]["layers"][l]["fluctuation"]
                      if l < len(report["results"][v][name]["layers"]) else np.nan for v in versions]
            ax.plot(versions, values, "o-", color=SETS[k % len(SETS)], label=name)
        ax.set_title(f"F_{l + 1} (layer {l + 1})")
        ax.tick_params(axis="x", rotation=45, labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, out / "fluctuation.png")


def sigma_histograms(report: dict[str, Any], out: Path) -> str:
    """Per-neuron sigma of the last hidden layer, per version (the seed's figure)."""
    plt = _plt()
    versions = report["versions"]
    fig, axes = plt.subplots(1, len(versions), figsize=(2.6 * len(versions), 2.8), squeeze=False,
                             sharey=True)
    all_sig = [s for v in versions for name in report["data"]
               for s in report["results"][v][name]["layers"][-1]["sigma"]]
    edges = np.linspace(0, max(all_sig + [1e-6]) * 1.02, 25)
    for i, v in enumerate(versions):
        ax = axes[0][i]
        for k, name in enumerate(report["data"]):
            ax.hist(report["results"][v][name]["layers"][-1]["sigma"], bins=edges,
                    color=SETS[k % len(SETS)], alpha=0.5, label=name)
        ax.set_title(v, fontsize=9)
        ax.set_xlabel("neuron sigma", fontsize=8)
    axes[0][0].legend(fontsize=7)
    return _save(fig, out / "sigma_last_layer.png")


def influence_plot(report: dict[str, Any], out: Path) -> str:
    plt = _plt()
    versions = report["versions"]
    fig, axes = plt.subplots(1, len(versions), figsize=(2.8 * len(versions), 3.4), squeeze=False)
    for i, v in enumerate(versions):
        inf = report["influence"][v]
        items = sorted(inf["groups"].items(), key=lambda kv: kv[1]["share"])
        ax = axes[0][i]
        ax.barh([g for g, _ in items], [d["share"] for _, d in items], color=SETS[0])
        ax.set_title(f"{v}\nconcentration {inf['concentration']:.3f}", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlim(0, 1)
    return _save(fig, out / "influence.png")


def probe_plot(report: dict[str, Any], out: Path) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for i, v in enumerate(report["versions"]):
        pr = report["probes"][v]
        ax.plot([str(p["layer"]) for p in pr], [p["auc"] for p in pr], "o-", label=v,
                color=plt.cm.viridis(i / max(1, len(report["versions"]) - 1)))
    ax.set_xlabel("representation (pooled input, hidden layer 1, 2, ...)")
    ax.set_ylabel("probe test AUC")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, out / "probes.png")


def tsne_plot(layer: dict[str, Any], clicks: np.ndarray, version: str, out: Path) -> str:
    plt = _plt()
    emb = layer["embedding"]
    c = np.asarray(clicks).astype(bool)
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.scatter(emb[~c, 0], emb[~c, 1], s=2, color=OTHER, alpha=0.35, label="no click")
    ax.scatter(emb[c, 0], emb[c, 1], s=4, color=CLICK, alpha=0.8, label="click")
    lift = layer["knn_click_lift_tsne"]
    ax.set_title(f"{version}, layer {layer['layer']}: click kNN lift "
                 f"{lift:.2f}" if lift is not None else f"{version}, layer {layer['layer']}",
                 fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=3)
    return _save(fig, out / f"tsne_layer{layer['layer']}.png")
