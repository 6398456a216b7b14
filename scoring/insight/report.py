"""``ctr-insight report``: the DeepInsight study over a model's versions and labelled logs.

    ctr-insight report --model-repo DIR --model NAME --versions v1,v2,... \\
        --data train.jsonl,test.jsonl --out report/

The first data file is taken as the training data and the last as the test data (probes fit on
the first and are scored on the last; the findings compare the two). Writes ``report.json``
(every figure), PNG plots and ``index.html`` (self-contained apart from the PNGs beside it; no
script, no CDN). Needs the ``insight`` extra (scikit-learn, matplotlib, scipy).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..errors import ScoringError
from ..model.manifest import PackageError, check_name
from . import study
from .data import DataError, load_log
from .study import StudyConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-repo", required=True, type=Path, help="the model repository")
    p.add_argument("--model", required=True, help="the model's name in the repository")
    p.add_argument("--versions", required=True,
                   help="comma-separated versions, in training order (e.g. epoch-01,epoch-02)")
    p.add_argument("--data", required=True,
                   help="comma-separated labelled JSONL logs: training data first, test data last")
    p.add_argument("--out", required=True, type=Path, help="directory to write the report into")
    p.add_argument("--probe-rows", type=int, default=20_000, help="rows per probe sample (20000)")
    p.add_argument("--tsne-rows", type=int, default=5_000, help="rows in the t-SNE sample (5000)")
    p.add_argument("--tsne-iter", type=int, default=500, help="t-SNE iterations (500)")
    p.add_argument("--tsne-version", default=None,
                   help="the version whose layers t-SNE maps (default: the best on the test data)")
    p.add_argument("--neighbours", type=int, default=15, help="k of the click neighbourhood (15)")
    p.add_argument("--influence-rows", type=int, default=0,
                   help="rows of each log the influence is averaged over (0: all)")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = StudyConfig(probe_rows=_positive(args.probe_rows, "--probe-rows"),
                          tsne_rows=_positive(args.tsne_rows, "--tsne-rows"),
                          tsne_iter=max(250, int(args.tsne_iter)),
                          neighbours=_positive(args.neighbours, "--neighbours"),
                          influence_rows=max(0, int(args.influence_rows)), seed=int(args.seed))
        report = build_report(args.model_repo, args.model, _list(args.versions, "--versions"),
                              [Path(p) for p in _list(args.data, "--data")], args.out, cfg,
                              tsne_version=args.tsne_version)
    except (DataError, PackageError, ScoringError, ValueError) as exc:
        print(f"ctr-insight report: {exc}", file=sys.stderr)
        return 2
    f = report["findings"]
    print(f"wrote {args.out / 'index.html'} and report.json in {report['seconds']:.1f} s; "
          f"best version on {report['data'][-1]}: {f['best_version']} "
          f"(AUC {f['test_auc'][f['best_index']]:.4f})")  # both classes: checked on reading
    return 0


def _positive(v: int, flag: str) -> int:
    if int(v) < 1:
        raise ValueError(f"{flag}: expected a positive number, got {v}")
    return int(v)


def _list(text: str, flag: str) -> list[str]:
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    if not items:
        raise ValueError(f"{flag}: expected a comma-separated list, got {text!r}")
    return items


def load_engine(repo: Path, model: str, version: str):
    from ..engine import Engine
    from ..model.package import load_package

    check_name(model, "--model")
    check_name(version, "--versions")
    path = Path(repo) / model / version
    if not path.is_dir():
        raise ValueError(f"--versions: {version!r} is not in {Path(repo) / model}")
    pkg = load_package(path)
    if pkg.manifest.graph is not None:
        raise ValueError(f"--versions: {version!r} is a format 2 model graph; the study looks "
                         "inside MLP packages (pooled groups -> ReLU MLP -> sigmoid)")
    return Engine(pkg)


def build_report(repo: Path, model: str, versions: list[str], data: list[Path], out: Path,
                 cfg: StudyConfig, tsne_version: str | None = None) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if len(set(versions)) != len(versions):
        raise ValueError(f"--versions: a version is listed twice: {versions}")
    logs = [load_log(p) for p in data]
    names = [lg.name for lg in logs]
    if len(set(names)) != len(names):
        names = [f"{i}:{n}" for i, n in enumerate(names)]
        for lg, n in zip(logs, names):
            lg.name = n
    train, test = logs[0], logs[-1]
    for lg in logs:
        clicks = int(lg.clicks.sum())
        if clicks in (0, lg.rows):
            raise DataError(f"{lg.path}: clicks: every row is {int(clicks > 0)}; the AUC and the "
                            "probes need both clicks and non-clicks")
    results: dict[str, dict] = {}
    influence: dict[str, dict] = {}
    probes: dict[str, list] = {}
    mad: dict[str, dict] = {}
    engines = {}
    for v in versions:
        engines[v] = load_engine(repo, model, v)
    known = {g.name for e in engines.values() for g in e.manifest.groups}
    for lg in logs:
        for name, line in lg.groups.items():
            if name not in known:
                raise DataError(f"{lg.path}:{line}: group {name!r} is in none of the versions' "
                                f"models (they have {sorted(known)})")
    with threadpool_limits(1):  # the study runs on one core, as documented
        pick_train = study.sample_requests(train, cfg.probe_rows, cfg.seed)
        pick_test = study.sample_requests(test, cfg.probe_rows, cfg.seed + 1)
        for v in versions:
            engine = engines[v]
            results[v] = {}
            for lg in logs:
                stats, _ = study.forward_stats(engine, lg)
                stats["groups_left_out"] = lg.dropped_for(engine)
                results[v][lg.name] = stats
            influence[v] = {lg.name: study.influence(engine, lg, cfg.influence_rows) for lg in logs}
            reps_train, y_train = study.representations(engine, train, pick_train)
            reps_test, y_test = study.representations(engine, test, pick_test)
            mad[v] = {train.name: study.mad_fluctuation(reps_train[1:]),
                      test.name: study.mad_fluctuation(reps_test[1:])}
            for lg in logs:
                if lg.name in mad[v]:
                    for layer, m in zip(results[v][lg.name]["layers"], mad[v][lg.name]):
                        layer["fluctuation_mad"] = m  # on the probe sample
            probes[v] = study.probes(reps_train, y_train, reps_test, y_test, cfg.probe_gain)
        test_auc = [results[v][test.name]["auc"] for v in versions]
        best_i = int(np.nanargmax([a if a is not None else -np.inf for a in test_auc]))
        tv = tsne_version or versions[best_i]
        if tv not in engines:
            raise ValueError(f"--tsne-version: {tv!r} is not among --versions")
        pick = study.sample_requests(test, cfg.tsne_rows, cfg.seed + 2)
        reps, clicks = study.representations(engines[tv], test, pick)
        reps = [r[:cfg.tsne_rows] for r in reps]
        clicks = clicks[:cfg.tsne_rows]
        tsne = study.tsne_layers(reps[1:], clicks, cfg)

    report: dict[str, Any] = {
        "model": model, "versions": versions, "data": [lg.name for lg in logs],
        "files": [str(p) for p in data], "train": train.name, "test": test.name,
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "results": results,
        "influence": {v: influence[v][test.name] for v in versions},
        "influence_by_data": influence,
        "probes": probes,
        "tsne": {"version": tv, "data": test.name, "rows": int(clicks.size),
                 "click_rate": float(clicks.mean()) if clicks.size else None,
                 "layers": [{k: val for k, val in t.items() if k != "embedding"} for t in tsne]},
        "spearman": _spearman(results, versions, [lg.name for lg in logs]),
    }
    report["findings"] = findings(report)
    _figures(report, tsne, clicks, out)
    report["seconds"] = time.perf_counter() - t0
    (out / "report.json").write_bytes(orjson.dumps(_finite(report), option=orjson.OPT_INDENT_2))
    from .html import write_index

    write_index(report, out)
    return report


def _spearman(results, versions, names) -> dict[str, Any]:
    """Per data set and hidden layer: Spearman's rho between F_l and the AUC across versions
    (layers every version has; versions may differ in depth)."""
    out = {}
    for name in names:
        auc = [results[v][name]["auc"] for v in versions]
        n_layers = min(len(results[v][name]["layers"]) for v in versions)
        out[name] = {str(l + 1): study.spearman(
            [results[v][name]["layers"][l]["fluctuation"] for v in versions], auc)
            for l in range(n_layers)}
    return out


def all_groups(report: dict[str, Any]) -> list[str]:
    """Every feature group of any version, in first-seen order (versions may differ)."""
    seen: dict[str, None] = {}
    for v in report["versions"]:
        seen.update(dict.fromkeys(report["influence"][v]["groups"]))
    return list(seen)


def findings(report: dict[str, Any]) -> dict[str, Any]:
    """The seed's claims, as numbers (docs/insight.md: what reproduces and what does not)."""
    versions, train, test = report["versions"], report["train"], report["test"]
    res = report["results"]
    test_auc = [res[v][test]["auc"] for v in versions]
    train_auc = [res[v][train]["auc"] for v in versions]
    best = int(np.nanargmax([a if a is not None else -np.inf for a in test_auc]))
    f_train = [res[v][train]["layers"][-1]["fluctuation"] for v in versions]
    f_test = [res[v][test]["layers"][-1]["fluctuation"] for v in versions]
    ratio = [a / b if b > 0 else None for a, b in zip(f_train, f_test)]
    gap = [a - b for a, b in zip(f_train, f_test)]
    shares = {g: [report["influence"][v]["groups"].get(g, {}).get("share") for v in versions]
              for g in all_groups(report)}
    conc = [report["influence"][v]["concentration"] for v in versions]
    probe_auc = {v: [p["auc"] for p in report["probes"][v]] for v in versions}
    hidden_probe = {v: a[1:] for v, a in probe_auc.items()}
    return {
        "best_index": best, "best_version": versions[best],
        "test_auc": test_auc, "train_auc": train_auc,
        "test_auc_rises_then_falls": bool(0 < best < len(versions) - 1
                                          and test_auc[-1] < test_auc[best]),
        "test_auc_drop_after_best": test_auc[best] - test_auc[-1],
        "f_last_train": f_train, "f_last_test": f_test,
        "f_last_ratio_train_over_test": ratio, "f_last_gap_train_minus_test": gap,
        "f_last_gap_growth_after_best": gap[-1] - gap[best],
        "influence_share": shares,
        "top_group_by_version": [report["influence"][v]["top"] for v in versions],
        "concentration": conc,
        "probe_auc": probe_auc,
        "probe_flagged_layers": {v: [p["layer"] for p in report["probes"][v] if p.get("flagged")]
                                 for v in versions},
        "probe_last_gain": {v: report["probes"][v][-1].get("gain") for v in versions},
        "probe_hidden_monotone": {v: bool(all(b >= a - 0.002 for a, b in zip(s, s[1:])))
                                  for v, s in hidden_probe.items()},
        "tsne_click_lift": [t["knn_click_lift_tsne"] for t in report["tsne"]["layers"]],
        "hidden_click_lift": [t["knn_click_lift_hidden"] for t in report["tsne"]["layers"]],
    }


def _figures(report: dict[str, Any], tsne: list[dict], clicks: np.ndarray, out: Path) -> None:
    from . import plots

    figs = {"auc": plots.auc_plot(report, out), "fluctuation": plots.fluctuation_plot(report, out),
            "sigma": plots.sigma_histograms(report, out),
            "influence": plots.influence_plot(report, out), "probes": plots.probe_plot(report, out),
            "tsne": [plots.tsne_plot(t, clicks, report["tsne"]["version"], out) for t in tsne]}
    report["figures"] = figs


def _finite(x: Any) -> Any:
    """NaN and infinities as null (JSON has neither)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, np.generic):
        return _finite(x.item())
    return x
