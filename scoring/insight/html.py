"""``index.html`` of the report: tables of the figures and the PNGs beside it. No script, no
stylesheet or font from elsewhere: it opens from a file system or an artifact store as is."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from .report import all_groups

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; color: #1f2328; margin: 24px; max-width: 1400px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { padding: 3px 10px; border-bottom: 1px solid #d0d7de; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { color: #656d76; font-size: 12px; }
.flag { color: #cf222e; font-weight: 600; } .ok { color: #1a7f37; font-weight: 600; }
img { max-width: 100%; border: 1px solid #d0d7de; margin: 4px 0; }
.muted { color: #656d76; }
"""


def _f(x: Any, d: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.{d}f}"
    return escape(str(x))


def _table(head: list[str], rows: list[list[Any]], attrs: str = "") -> str:
    h = "".join(f"<th>{escape(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table {attrs}><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _yes(ok: bool, text_ok: str = "reproduced", text_no: str = "not reproduced") -> str:
    return f'<span class="ok">{text_ok}</span>' if ok else f'<span class="flag">{text_no}</span>'


def write_index(report: dict[str, Any], out: Path) -> Path:
    f = report["findings"]
    versions, res = report["versions"], report["results"]
    train, test = report["train"], report["test"]
    figs = report["figures"]
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>DeepInsight report: {escape(report['model'])}</title><style>{STYLE}</style>"
             f"</head><body><h1>DeepInsight report: model <code>{escape(report['model'])}</code></h1>",
             f"<p class='muted'>{len(versions)} versions; data: "
             + ", ".join(f"<code>{escape(n)}</code> ({res[versions[0]][n]['rows']} rows, CTR "
                         f"{res[versions[0]][n]['ctr']:.4f})" for n in report["data"])
             + f". Training data: <code>{escape(train)}</code>; test data: <code>{escape(test)}"
             f"</code>. Definitions: docs/insight.md.</p>"]

    best = f["best_version"]
    parts.append("<h2>Findings</h2>" + _table(["claim of the seed", "figure", "here"], [
        ["test AUC rises, then falls (overfitting)",
         f"best {escape(best)}: {_f(f['test_auc'][f['best_index']])}; last "
         f"{_f(f['test_auc'][-1])}", _yes(f["test_auc_rises_then_falls"])],
        ["last-layer fluctuation on training data pulls away from test data after the best "
         "version", f"gap train−test {_f(f['f_last_gap_train_minus_test'][f['best_index']])} → "
         f"{_f(f['f_last_gap_train_minus_test'][-1])}", _yes(f["f_last_gap_growth_after_best"] > 0)],
        ["an overfit model leans on a few groups (concentration of influence)",
         f"{_f(f['concentration'][f['best_index']])} at best → {_f(f['concentration'][-1])} last; "
         f"top group {escape(str(f['top_group_by_version'][-1]))}",
         _yes(f["concentration"][-1] > f["concentration"][f["best_index"]])],
        ["probe AUC does not fall from hidden layer to hidden layer (at the best version)",
         ", ".join(f"{escape(v)}: {_f(ok)}" for v, ok in f["probe_hidden_monotone"].items()),
         _yes(f["probe_hidden_monotone"][best])],
        ["the last hidden layer adds no discriminative power (probe gain < "
         f"{report['config']['probe_gain']})",
         ", ".join(f"{escape(v)}: {_f(g, 4)}" for v, g in f["probe_last_gain"].items()),
         _yes(f["probe_last_gain"][best] < report["config"]["probe_gain"])],
        ["clicks cluster in t-SNE without separating (kNN click lift > 1)",
         ", ".join(f"L{i + 1} {_f(x, 2)}" for i, x in enumerate(f["tsne_click_lift"])),
         _yes(bool(f["tsne_click_lift"])
              and all(x is not None and x > 1 for x in f["tsne_click_lift"]))],
    ]))

    rows = []
    for v in versions:
        r = [escape(v)]
        for n in report["data"]:
            s = res[v][n]
            r += [_f(s["auc"]), _f(s["expected_auc"]), _f(s["logloss"])]
        rows.append(r)
    head = ["version"] + [f"{n} {k}" for n in report["data"] for k in ("AUC", "exp. AUC", "log loss")]
    parts.append("<h2>Quality per version</h2>" + _table(head, rows, "id='quality'")
                 + f"<img src='{figs['auc']}' alt='AUC per version'>")

    n_layers = max(len(res[v][train]["layers"]) for v in versions)
    rows = []
    for v in versions:
        r = [escape(v)]
        for n in report["data"]:
            layers = res[v][n]["layers"]
            r += [_f(layers[l]["fluctuation"] if l < len(layers) else None) for l in range(n_layers)]
        rows.append(r)
    head = ["version"] + [f"{n} F{l + 1}" for n in report["data"] for l in range(n_layers)]
    sp = report["spearman"]
    sp_rows = [[escape(n)] + [_f(sp[n].get(str(l + 1)), 3) for l in range(n_layers)]
               for n in report["data"]]
    parts.append("<h2>Neuron fluctuation F<sub>l</sub> (no labels needed)</h2>"
                 + _table(head, rows, "id='fluctuation'")
                 + "<p>Spearman correlation of F<sub>l</sub> with AUC across versions:</p>"
                 + _table(["data"] + [f"layer {l + 1}" for l in range(n_layers)], sp_rows)
                 + f"<img src='{figs['fluctuation']}' alt='fluctuation per layer'>"
                 + "<p>Per-neuron sigma of the last hidden layer (the seed's figure):</p>"
                 + f"<img src='{figs['sigma']}' alt='sigma histograms'>")

    groups = all_groups(report)
    rows = [[escape(v)] + [_f(report["influence"][v]["groups"].get(g, {}).get("share"), 3)
                           for g in groups]
            + [_f(report["influence"][v]["concentration"], 3)] for v in versions]
    parts.append(f"<h2>Feature-group influence on {escape(test)} (share of mean ||dpCTR/dx||)</h2>"
                 + _table(["version"] + groups + ["concentration"], rows, "id='influence'")
                 + f"<img src='{figs['influence']}' alt='influence per version'>")

    rows = []
    for v in versions:
        r = [escape(v)]
        for p in report["probes"][v]:
            cls = " class='flag'" if p.get("flagged") else ""
            r.append(f"<span{cls}>{_f(p['auc'])}</span>")
        rows.append(r)
    reps = [str(p["layer"]) for p in max(report["probes"].values(), key=len)]
    parts.append("<h2>Linear probes (logistic regression, test AUC; red: gains less than "
                 f"{report['config']['probe_gain']} over the previous)</h2>"
                 + _table(["version"] + reps, rows, "id='probes'")
                 + f"<img src='{figs['probes']}' alt='probe AUC per layer'>")

    t = report["tsne"]
    rows = [[str(L["layer"]), _f(L["knn_click_lift_tsne"], 3), _f(L["knn_click_lift_hidden"], 3)]
            for L in t["layers"]]
    parts.append(f"<h2>t-SNE of the hidden layers ({escape(t['version'])}, {t['rows']} rows of "
                 f"{escape(t['data'])}, click rate {_f(t['click_rate'])})</h2>"
                 + _table(["layer", "kNN click lift (t-SNE)", "kNN click lift (layer space)"], rows,
                          "id='tsne'")
                 + "".join(f"<img src='{p}' alt='t-SNE layer {i + 1}' width='380'>"
                           for i, p in enumerate(figs["tsne"])))
    parts.append(f"<p class='muted'>Written in {report.get('seconds', 0):.1f} s.</p></body></html>")
    path = Path(out) / "index.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
