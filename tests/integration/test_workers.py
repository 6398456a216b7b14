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
