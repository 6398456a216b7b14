"""``ctr-insight report`` end to end on a CI-sized synthetic world: synth, train five epochs,
report; its figures checked against torch autograd on the trained nets, and the seed's findings
as far as a small world shows them. The full-size study is ``test_full_study`` (marked slow)."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
import torch

from scoring.insight import synth, train
from scoring.insight.cli import main
from scoring.insight.data import DataError, load_log

CI_ARGS = ["--probe-rows", "4000", "--tsne-rows", "600", "--tsne-iter", "250"]


def _study(root, size: str, extra: list[str]):
    data, repo, out = root / "data", root / "repo", root / "report"
    t0 = time.perf_counter()
    assert main(["synth", "--out", str(data), "--size", size]) == 0
    assert main(["train", "--data", str(data), "--model-repo", str(repo), "--size", size]) == 0
    trained = time.perf_counter() - t0
    versions = json.loads((repo / "insight" / "training.json").read_text())
    names = [e["version"] for e in (versions["epochs"] if isinstance(versions, dict) else versions)]
    assert main(["report", "--model-repo", str(repo), "--model", "insight", "--versions",
                 ",".join(names), "--data", f"{data}/train.jsonl,{data}/test.jsonl",
                 "--out", str(out), *extra]) == 0
    report = json.loads((out / "report.json").read_text())
    return data, repo, out, report, trained


@pytest.fixture(scope="module")
def ci_study(tmp_path_factory):
    return _study(tmp_path_factory.mktemp("insight"), "ci", CI_ARGS)


def _rows(data, name):
    world = synth.read_world(data)
    return train.encode(synth.read_jsonl(data / f"{name}.jsonl"), train.buckets_for(world))


@pytest.mark.torch
def test_report_figures_match_torch_on_the_trained_nets(ci_study):
    """F_l, AUC and group influence of the report, recomputed with torch (autograd for the
    gradients) on the package's own weights, for the first and the last version."""
    data, repo, _, report, _ = ci_study
    rows = _rows(data, "test")
    ids = torch.from_numpy(rows.ids)
    for v in (report["versions"][0], report["versions"][-1]):
        net = train.load_net(repo / "insight" / v)
        x = net.mlp_input(ids).detach().requires_grad_(True)
        h, hidden = x, []
        for mod in net.mlp[:-1]:
            h = mod(h)
            if isinstance(mod, torch.nn.ReLU):
                hidden.append(h)
        p = torch.sigmoid(h[:, 0])
        (grad,) = torch.autograd.grad(p.sum(), x)
        got = report["results"][v]["test"]
        for layer, hl in zip(got["layers"], hidden):
            sigma = hl.detach().double().std(dim=0, unbiased=False)
            assert layer["fluctuation"] == pytest.approx(float(sigma.mean()), rel=1e-4, abs=1e-6)
        from sklearn.metrics import roc_auc_score
        assert got["auc"] == pytest.approx(roc_auc_score(rows.clicks, p.detach().double()), abs=1e-5)
        norms = {g: grad[:, s].double().norm(dim=1).mean().item() for g, s in net.slices.items()}
        total = sum(norms.values())
        for g, d in report["influence"][v]["groups"].items():
            assert d["influence"] == pytest.approx(norms[g], rel=1e-3, abs=1e-8), g
            assert d["share"] == pytest.approx(norms[g] / total, rel=1e-3, abs=1e-6), g


def test_report_files_are_self_contained(ci_study):
    _, _, out, report, _ = ci_study
    html = (out / "index.html").read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html
    images = re.findall(r"<img src='([^']+)'", html)
    assert len(images) >= 5 + len(report["tsne"]["layers"])
    for name in images:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    for key in ("results", "influence", "probes", "tsne", "spearman", "findings"):
        assert key in report
    v = report["versions"][0]
    assert {"auc", "logloss", "expected_auc", "layers"} <= set(report["results"][v]["test"])
    assert len(report["results"][v]["test"]["layers"]) == 4
    assert len(report["probes"][v]) == 5  # the pooled input and four hidden layers
    for t in report["tsne"]["layers"]:
        assert t["knn_click_lift_tsne"] > 0 and t["knn_click_lift_hidden"] > 0


def test_a_small_world_already_shows_overfitting(ci_study):
    """What five epochs of the CI-sized world show: test AUC peaks and falls, the last layer's
    fluctuation on training rows pulls away from test rows, user_id's influence share grows."""
    _, _, _, report, trained = ci_study
    f = report["findings"]
    assert f["test_auc_rises_then_falls"], f["test_auc"]
    assert f["train_auc"][-1] > f["train_auc"][0] + 0.1
    assert f["f_last_gap_growth_after_best"] > 0, f["f_last_gap_train_minus_test"]
    user = f["influence_share"]["user_id"]
    assert user[-1] > user[f["best_index"]] > user[0], user
    assert trained < 40 and report["seconds"] < 40


def test_bad_logs_are_named_by_file_and_line(tmp_path):
    good = {"context": {"user_id": "u"}, "ads": [{"features": {"ad_id": "a"}}], "clicks": [1]}
    cases = [(b"{not json\n", "not JSON"), (json.dumps({**good, "clicks": [1, 0]}).encode(), "clicks"),
             (json.dumps({**good, "clicks": [2]}).encode(), "clicks[0]"),
             (json.dumps({**good, "clicks": [True]}).encode(), "clicks[0]"),
             (json.dumps([good]).encode(), "JSON object"), (b"\xff\xfe\n", "not JSON"),
             (json.dumps({**good, "ads": "x"}).encode(), "ads")]
    for i, (line, message) in enumerate(cases):
        path = tmp_path / f"bad{i}.jsonl"
        path.write_bytes(json.dumps(good).encode() + b"\n\n" + line + b"\n")
        with pytest.raises(DataError, match=re.escape(f"bad{i}.jsonl:3: ") + ".*" + re.escape(message)):
            load_log(path)
    (tmp_path / "empty.jsonl").write_bytes(b"\n")
    with pytest.raises(DataError, match="no requests"):
        load_log(tmp_path / "empty.jsonl")


def test_report_cli_answers_bad_arguments_clearly(ci_study, tmp_path, capsys):
    data, repo, _, report, _ = ci_study
    base = ["report", "--model-repo", str(repo), "--model", "insight", "--data",
            f"{data}/train.jsonl,{data}/test.jsonl", "--out", str(tmp_path / "r")]
    assert main(base + ["--versions", "epoch-99"]) == 2
    assert "epoch-99" in capsys.readouterr().err
    assert main(base + ["--versions", "../x"]) == 2
    assert "--versions" in capsys.readouterr().err
    v = report["versions"][0]
    assert main(base[:6] + [f"{data}/nope.jsonl", "--out", str(tmp_path / "r"), "--versions", v]) == 2
    assert "nope.jsonl" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ads": [{"features": {"bogus": "x"}}, {"features": {}}], "clicks": [0, 1]}\n')
    assert main(base[:6] + [f"{bad},{bad}", "--out", str(tmp_path / "r"), "--versions", v]) == 2
    assert "bad.jsonl:1: group 'bogus' is in none of the versions' models" in capsys.readouterr().err


def test_versions_may_differ_in_groups_and_depth_and_a_log_needs_both_classes(tmp_path, capsys):
    from scoring.model.package import load_package

    from ...models import make_model, random_request

    repo = tmp_path / "repo"
    make_model(repo / "ctr" / "a", version="a", hidden=(16, 8), seed=1)
    make_model(repo / "ctr" / "b", version="b", hidden=(24, 16, 8), seed=2,
               ad=(("ad_id", 5000, 8, "sum"), ("category", 100, 4, "mean"), ("brand", 50, 4, "sum")))
    pkg = load_package(repo / "ctr" / "b")
    rng = np.random.default_rng(0)
    for name, n, rate in (("train", 300, 0.3), ("test", 200, 0.3), ("none", 50, 0.0)):
        with open(tmp_path / f"{name}.jsonl", "w") as f:
            for _ in range(n):
                ctx, ads = random_request(rng, pkg, int(rng.integers(1, 5)))
                f.write(json.dumps({"context": ctx, "ads": ads,
                                    "clicks": [int(rng.random() < rate) for _ in ads]}) + "\n")
    args = ["report", "--model-repo", str(repo), "--model", "ctr", "--out", str(tmp_path / "r"),
            "--tsne-rows", "300", "--tsne-iter", "250", "--probe-rows", "500"]
    # version a has no "brand" group and one layer fewer: the group is absent there, not an error
    for order in ("b,a", "a,b"):
        assert main(args + ["--versions", order, "--data",
                            f"{tmp_path}/train.jsonl,{tmp_path}/test.jsonl"]) == 0, capsys.readouterr()
        report = json.loads((tmp_path / "r" / "report.json").read_text())
        shares = report["findings"]["influence_share"]["brand"]
        assert shares[order.split(",").index("a")] is None and shares[order.split(",").index("b")] > 0
        assert "brand" in (tmp_path / "r" / "index.html").read_text()
        assert report["results"]["a"]["test"]["groups_left_out"] == ["brand"]
        assert report["results"]["b"]["test"]["groups_left_out"] == []
    assert main(args + ["--versions", "a", "--data", f"{tmp_path}/train.jsonl,{tmp_path}/none.jsonl"]) == 2
    assert "none.jsonl: clicks: every row is 0" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.torch
def test_full_study(tmp_path):
    """The seed's findings on the full-size world (200k training rows, 8 epochs; about 75 s on
    one core): ``python -m pytest -m slow``. Figures recorded in docs/insight.md."""
    _, _, _, report, _ = _study(tmp_path, "full", [])
    f = report["findings"]
    best = f["best_index"]
    assert f["test_auc_rises_then_falls"] and f["test_auc_drop_after_best"] > 0.02, f["test_auc"]
    ratio = f["f_last_ratio_train_over_test"]
    assert ratio[-1] > ratio[best] + 0.1 and abs(ratio[best] - 1) < 0.05, ratio
    user = f["influence_share"]["user_id"]
    assert user[-1] > 2 * user[best] and f["top_group_by_version"][-1] == "user_id", user
    assert f["concentration"][-1] > f["concentration"][best]
    assert f["probe_hidden_monotone"][report["versions"][best]], f["probe_auc"]
    assert all(x > 1.2 for x in f["tsne_click_lift"]), f["tsne_click_lift"]
    assert report["seconds"] < 180
