"""``ctr-serve --workers 2``: both workers serve, metrics add up, the tables are shared."""

from __future__ import annotations

import re
import shutil
import time

import httpx

from bench.procmem import memory, uvicorn_workers, wait_ready_everywhere
from scoring.lifecycle.repo import ModelRepo
from scoring.model.demo import write_demo

from .server import Server


def test_two_workers_share_the_tables(tmp_path):
    repo = ModelRepo(tmp_path / "repo")
    staged = repo.staging_dir("demo")
    write_demo(staged, version="small", bucket_shift=6)
    repo.install("demo", staged, "small")
    shutil.rmtree(staged, ignore_errors=True)
    with Server(repo.root, tmp_path / "server.log", args=["--workers", "2"],
                env={"CTR_HEALTH_SAMPLE_RATE": "1"}) as server:
        deadline = time.monotonic() + 90
        workers: list[int] = []
        while time.monotonic() < deadline:
            workers = uvicorn_workers(server.proc.pid)
            if len(workers) == 2:
                break
            time.sleep(0.1)
        assert len(workers) == 2, server.log()
        assert wait_ready_everywhere(server.url, 10, 90), server.log()
        body = {"context": {"user_id": "u1", "city": "bj"},
                "ads": [{"features": {"ad_id": f"a{i}", "category": ["c1", "c2"]}} for i in range(10)]}
        scores = set()
        n = 40
        for _ in range(n):  # a new connection each time, so the kernel spreads them over workers
            r = httpx.post(f"{server.url}/v1/score", json=body, timeout=30)
            assert r.status_code == 200, r.text
            assert r.json()["version"] == "small"
            scores.add(tuple(r.json()["scores"]))
        assert len(scores) == 1  # every worker scores alike
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
        total = sum(float(v) for v in re.findall(
            r'ctr_requests_total\{model="demo",status="200",version="small"\} (\S+)', text))
        assert total == n, text[:2000]
        # model health: the two workers' samples land in one window, whichever worker answers
        deadline = time.monotonic() + 30
        answers: list = []
        while time.monotonic() < deadline:
            answers = [httpx.get(f"{server.url}/v1/models/demo/health", timeout=10).json()
                       for _ in range(6)]  # new connections: both workers answer
            if all(a["windows"] and a["windows"][-1]["rows"] == n * 10 for a in answers):
                break
            time.sleep(0.2)
        assert [a["windows"][-1]["rows"] if a["windows"] else 0 for a in answers] == [n * 10] * 6
        print("samples per answering worker:", sorted({a["sampling"]["sampled"] for a in answers}))
        # both workers touched every page of the tables: each is charged half of them (PSS)
        table_dir = repo.path("demo", "small")
        mems = [memory(pid, table_dir) for pid in workers]
        file_rss = sum(m.file_rss for m in mems)
        file_pss = sum(m.file_pss for m in mems)
        print(f"tables in 2 workers: RSS {file_rss >> 10} KiB, PSS {file_pss >> 10} KiB")
        assert mems[0].file_rss > 2 << 20 and mems[1].file_rss > 2 << 20
        assert file_pss < 0.6 * file_rss


def test_two_workers_poll_the_source_once_per_interval_and_both_serve_new_versions(tmp_path):
    """In-process sync with --workers 2: only the host's sync leader polls (one checksums.md5
    request per interval, not two); a new version reaches both workers."""
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from ..models import make_model

    remote = tmp_path / "remote"
    make_model(remote / "ctr", version="v1", seed=1)
    polls = []

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(remote), **kw)

        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path.endswith("checksums.md5"):
                polls.append(time.monotonic())
            super().do_GET()

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    interval = 1.0
    env = {"CTR_SYNC_SOURCE": f"http://127.0.0.1:{http.server_address[1]}/ctr",
           "CTR_SYNC_INTERVAL": str(interval), "CTR_SYNC_RATE_LIMIT": "0", "CTR_POLL_INTERVAL": "0.2"}
    try:
        with Server(tmp_path / "repo", tmp_path / "server.log", args=["--workers", "2"], env=env) as server:
            assert wait_ready_everywhere(server.url, 10, 90), server.log()
            polls.clear()
            time.sleep(6 * interval)
            # one poller: about one poll per interval (jitter +-), not one per worker
            assert 3 <= len(polls) <= 9, (len(polls), server.log())
            shutil.rmtree(remote / "ctr")
            make_model(remote / "ctr", version="v2", seed=2)
            deadline = time.monotonic() + 30
            seen: set[str] = set()
            while time.monotonic() < deadline:
                seen = {httpx.get(f"{server.url}/v1/models/ctr", timeout=10).json().get("version")
                        for _ in range(12)}  # new connections: both workers answer
                if seen == {"v2"}:
                    break
                time.sleep(0.2)
            assert seen == {"v2"}, (seen, server.log())
            log = server.log()
            assert log.count("sync leader") == 1, log
    finally:
        http.shutdown()
