"""The status page (``GET /ui``) rendered by a real headless Chromium against a running service
with traffic and a held version: the DOM it builds from the JSON API, and a screenshot (written
to docs/ui.png when ``UPDATE_UI_SCREENSHOT=1``, which the README shows)."""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from scoring.model.package import load_package
from scoring.model.quantize import generated_requests

from ..health_models import shift_last_bias, write
from .server import Server
from .test_model_health import install, requests_for, send, wait

ROOT = Path(__file__).resolve().parents[2]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError("headless Chromium is needed for this test: apt-get install chromium "
                         "(.ci/run installs it)")


def run_chromium(*args: str) -> str:
    cmd = [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--hide-scrollbars", "--virtual-time-budget=8000", "--run-all-compositor-stages-before-draw",
           *args]
    out = subprocess.run(cmd, capture_output=True, timeout=120, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


class Dom(HTMLParser):
    """Elements by id and by (tag, attribute) for assertions on the rendered DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: dict[str, dict] = {}
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if "id" in a:
            self.ids[a["id"]] = a

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui")
    pkg = load_package(write(root / "probe", "p"))
    reference = [{"context": c, "ads": a} for c, a in generated_requests(pkg, 40, 50, seed=1)]
    repo = root / "repo"
    (repo / "ctr").mkdir(parents=True)
    install(repo, write(root / "v1", "v1", None, reference), "v1")
    env = {"CTR_HEALTH_SAMPLE_RATE": "1", "CTR_HEALTH_WINDOW": "400", "CTR_GATE": "{}",
           "CTR_EXPLAIN_PUBLIC": "true"}
    with Server(repo, root / "log", env=env).wait() as server:
        for k in range(4):  # one window at a time (the monitor hands its rows over each second)
            send(server, requests_for(pkg, 8, seed=30 + k))
            wait(lambda: len([w for w in server.client.get("/v1/models/ctr/health").json()["windows"]
                              if w["closed"]]) > k, f"window {k + 1}")
        send(server, requests_for(pkg, 3, seed=40))  # a current window, open
        install(repo, write(root / "v2", "v2", shift_last_bias, reference), "v2")
        wait(lambda: "v2" in server.client.get("/v1/models/ctr").json().get("held", {}), "v2 held")
        yield server, root


def test_the_page_renders_models_health_and_swaps_in_chromium(served):
    server, _ = served
    html = run_chromium("--dump-dom", f"{server.url}/ui/models/ctr")
    dom = Dom()
    dom.feed(html)
    text = " ".join(dom.text)
    assert any(t == "tr" and a.get("data-model") == "ctr" for t, a in dom.tags)
    assert "v2: mean log-odds shift +2" in text  # the held version and why, in the models table
    for layer in (1, 2):  # a fluctuation chart per hidden layer, with its baseline band
        assert f"fl-chart-{layer}" in dom.ids
    assert sum(t == "rect" and a.get("class") == "band" for t, a in dom.tags) == 2
    assert sum(t == "circle" and "point" in a.get("class", "") for t, a in dom.tags) >= 2 * 3
    assert "pctr-histogram" in dom.ids
    assert sum(t == "rect" and a.get("class") == "live-bar" for t, a in dom.tags) == 50
    assert any(t == "polyline" and a.get("class") == "baseline-line" for t, a in dom.tags)
    assert any(t == "tr" and a.get("data-version") == "v2" and a.get("data-result") == "held"
               for t, a in dom.tags)
    assert {a.get("data-group") for t, a in dom.tags if t == "tr"} >= {"user_id", "ad_id"}
    assert "stat-auc" in dom.ids and "Expected AUC" in text
    assert '<span id="error" class="err"></span>' in html  # no fetch failed
    assert '<body data-loaded="1">' in html


def test_the_explain_form_posts_the_sample_and_draws_the_contributions(served):
    """``#explain`` runs the form's sample request (built from the model's groups) on load."""
    server, _ = served
    html = run_chromium("--dump-dom", f"{server.url}/ui/models/ctr#explain")
    dom = Dom()
    dom.feed(html)
    assert '<span id="explain-error" class="err"></span>' in html
    assert "explain-chart" in dom.ids and 'data-explained="1"' in html
    bars = {a["data-group"] for t, a in dom.tags if t == "rect" and a.get("class") == "contribution-bar"}
    model = server.client.get("/v1/models/ctr").json()
    assert bars == {g["name"] for g in model["inputs"]["groups"]} | {"(remainder)"}
    assert sum(t == "tr" and "data-ad" in a for t, a in dom.tags) == 3


def test_a_screenshot_of_the_page(served):
    server, root = served
    shot = root / "ui.png"
    run_chromium(f"--screenshot={shot}", "--window-size=1280,1900", f"{server.url}/ui/models/ctr#explain")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    if os.environ.get("UPDATE_UI_SCREENSHOT") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "ui.png")


def test_the_page_needs_nothing_from_outside(served):
    server, _ = served
    r = server.client.get("/ui")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    body = r.text
    assert "http://" not in body.replace("http://www.w3.org/2000/svg", "") and "https://" not in body
    assert "<script src" not in body and "<link" not in body
    assert server.client.get("/ui/models/nope").status_code == 404
