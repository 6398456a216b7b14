"""pytest fixtures for the sync tests; test modules import the ones they use."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from scoring.sync.syncer import SyncConfig, Syncer

from .cluster import HdfsCluster
from .webhook import WebhookReceiver


class FirstHostFirst(random.Random):
    """A random source that keeps host lists in the order given, so a test chooses which host
    the syncer tries first; everything else stays random."""

    def shuffle(self, x, *args, **kwargs):  # noqa: D401
        return None


@pytest.fixture
def cluster(tmp_path):
    c = HdfsCluster(tmp_path / "hdfs")
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def webhook():
    w = WebhookReceiver()
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture
def make_syncer(tmp_path):
    made: list[Syncer] = []

    def make(source: str, *, repo: Path | None = None, ordered: bool = False, **kw) -> Syncer:
        kw.setdefault("backoff", 0.01)
        kw.setdefault("timeout", 5.0)
        kw.setdefault("rate_limit", None)
        config = SyncConfig(source=source, repo=repo or tmp_path / "repo", model=kw.pop("model", "ctr"), **kw)
        syncer = Syncer(config, rng=FirstHostFirst() if ordered else None)
        made.append(syncer)
        return syncer

    try:
        yield make
    finally:
        for s in made:
            s.close()
