"""The registry's swap/reject/rollback logic over a real repository, with a fake loader."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from scoring.errors import ModelNotFound, NotReady, ScoringError
from scoring.lifecycle.loader import LiveModel
from scoring.lifecycle.registry import Registry
from scoring.lifecycle.repo import ModelRepo
from scoring.model.checksums import ChecksumError
from scoring.model.manifest import PackageError
from scoring.serving.metrics import Metrics

from ...readonly import read_only


class FakeScorer:
    def __init__(self, version: str) -> None:
        self.version = version

    def score(self, context, ads):
        return np.full(len(ads), float(self.version.strip("v")), dtype=np.float32)


class FakeLoader:
    """Loads any version; versions in ``bad`` raise PackageError, in ``broken`` RuntimeError; a
    version directory holding a file ``.partial`` is an unfinished copy (ChecksumError)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.threads: list[str] = []
        self.bad: set[str] = set()
        self.broken: set[str] = set()
        self.during: dict[str, Callable[[], object]] = {}

    def __call__(self, name: str, version: str, path: str) -> LiveModel:
        self.calls.append(version)
        self.threads.append(threading.current_thread().name)
        if version in self.during:
            self.during.pop(version)()
        if (Path(path) / "partial").exists():
            raise ChecksumError("emb/x.npy: listed in checksums.md5 but missing")
        if version in self.bad:
            raise PackageError(f"emb/x.npy: md5 mismatch in {version}")
        if version in self.broken:
            raise RuntimeError("out of something")
        return LiveModel(name=name, version=version, scorer=FakeScorer(version), md5=version * 4,
                         path=path)


def install(repo: ModelRepo, version: str, name: str = "ctr") -> None:
    staged = repo.staging_dir(name)
    (staged / "manifest.json").write_text("{}")
    repo.install(name, staged, version)


def copy_in(repo: ModelRepo, version: str, *, partial: bool = False, name: str = "ctr") -> Path:
    """A version directory put in place by hand (``cp -a``: last month's mtimes), maybe half done."""
    dest = repo.model_dir(name) / version
    dest.mkdir(parents=True)
    (dest / "manifest.json").write_text("{}")
    if partial:
        (dest / "partial").write_text("the copy is still running")
    old = time.time() - 30 * 86400
    for p in (dest, *dest.iterdir()):
        os.utime(p, (old, old))
    return dest


def make(repo: ModelRepo, loader: FakeLoader | None = None, **kw) -> tuple[Registry, FakeLoader]:
    loader = loader or FakeLoader()
    return Registry(repo, loader=loader, metrics=Metrics(), **kw), loader


def serving_v2(repo: ModelRepo) -> tuple[Registry, FakeLoader]:
    """A registry that served v1 and now serves v2."""
    reg, loader = make(repo)
    reg.sync_all()
    install(repo, "v2")
    assert reg.sync("ctr").live == "v2"
    return reg, loader


def test_first_sync_loads_and_records_the_live_version(repo):
    reg, loader = make(repo)
    assert reg.ready() == (False, ["the repository has not been read yet"])
    reg.sync_all()
    assert reg.get("ctr").version == "v1" and reg.ready() == (True, [])
    assert repo.state("ctr").live == "v1"
    reg.sync_all()
    assert loader.calls == ["v1"]


def test_a_request_keeps_the_handle_it_started_with(repo):
    reg, _ = make(repo)
    reg.sync_all()
    held = reg.get("ctr")
    install(repo, "v2")
    result = reg.sync("ctr")
    assert result.changed and result.live == "v2"
    assert reg.get("ctr").version == "v2"
    assert held.version == "v1" and held.scorer.score(None, [1, 2]).tolist() == [1.0, 1.0]


def test_an_invalid_version_never_goes_live_and_is_not_retried(repo):
    reg, loader = make(repo)
    reg.sync_all()
    install(repo, "v2")
    loader.bad.add("v2")
    result = reg.sync("ctr")
    assert result.failed[0] == "v2" and "md5 mismatch" in result.failed[1]
    assert reg.get("ctr").version == "v1"
    for _ in range(3):
        reg.sync_all()
    assert loader.calls == ["v1", "v2"]
    assert "md5 mismatch" in repo.state("ctr").rejected["v2"].reason
    assert reg.metrics.loads.labels("ctr", "failed")._value.get() == 1
    # another process following the repository does not try it either
    other, other_loader = make(repo)
    other.sync_all()
    assert other_loader.calls == ["v1"]
    # a newer good version still goes live
    install(repo, "v3")
    assert reg.sync("ctr").live == "v3"


def test_a_failure_that_is_not_the_package_is_retried_only_on_reload(repo):
    reg, loader = make(repo)
    reg.sync_all()
    install(repo, "v2")
    loader.broken.add("v2")
    reg.sync("ctr")
    reg.sync("ctr")
    assert loader.calls == ["v1", "v2"] and reg.get("ctr").version == "v1"
    assert "v2" not in repo.state("ctr").rejected
    loader.broken.clear()
    assert reg.reload("ctr").live == "v2"


def test_rollback_sticks_until_a_newer_version_arrives(repo):
    reg, _ = serving_v2(repo)
    result = reg.rollback("ctr")
    assert result.live == "v1" and reg.get("ctr").version == "v1"
    assert repo.state("ctr").live == "v1"
    reg.sync_all()
    assert reg.get("ctr").version == "v1"
    with pytest.raises(ScoringError) as err:
        reg.rollback("ctr", expected="v1")  # nothing before v1
    assert err.value.status_code == 409
    install(repo, "v3")
    reg.sync_all()
    assert reg.get("ctr").version == "v3"


def test_workers_follow_one_state_file(repo):
    a, a_loader = make(repo)
    b, b_loader = make(repo)
    a.sync_all()
    b.sync_all()
    install(repo, "v2")
    a.sync_all()
    b.sync_all()
    assert a.get("ctr").version == b.get("ctr").version == "v2"
    assert repo.state("ctr").history == ["v1"]
    a.rollback("ctr")
    b.sync_all()
    assert b.get("ctr").version == "v1"
    assert b_loader.calls == ["v1", "v2", "v1"]


def test_a_version_installed_during_a_load_goes_live_next(repo):
    reg, loader = make(repo)
    reg.sync_all()
    install(repo, "v2")
    loader.during["v2"] = lambda: install(repo, "v3")
    assert reg.sync("ctr").live == "v2"
    assert reg.sync("ctr").live == "v3"


def test_a_load_overtaken_by_a_rollback_is_not_served(repo):
    reg, loader = serving_v2(repo)
    install(repo, "v3")
    other, _ = make(repo)
    other.sync_all()  # another process made v3 live; this one follows it, and while it loads
    # v3 an operator rolls back (to v2) through the other process: the newer decision wins
    loader.during["v3"] = lambda: repo.rollback("ctr", expected="v3")
    result = reg.sync("ctr")
    assert result.live == "v2" and not result.changed
    assert reg.get("ctr").version == "v2"


def test_keep_prunes_old_versions_but_not_the_live_one(repo):
    reg, _ = make(repo, keep=2)
    reg.sync_all()
    for v in ("v2", "v3", "v4"):
        install(repo, v)
        reg.sync("ctr")
    assert repo.versions("ctr") == ["v3", "v4"]


def test_default_model_and_lookups(repo):
    install(repo, "w1", name="other")
    reg, _ = make(repo)
    with pytest.raises(NotReady):
        reg.default()
    reg.sync_all()
    with pytest.raises(ModelNotFound) as err:
        reg.default()
    assert "CTR_DEFAULT_MODEL" in err.value.message
    with pytest.raises(ModelNotFound):
        reg.get("nope")
    reg2, _ = make(repo, default_model="other")
    reg2.sync_all()
    assert reg2.default().name == "other"
    reg3, _ = make(repo, models=["ctr"])
    reg3.sync_all()
    assert reg3.default().name == "ctr" and reg3.names() == ["ctr"]


def test_configured_model_missing_keeps_it_unready(repo):
    reg, loader = make(repo, models=["ctr", "later"])
    reg.sync_all()
    ok, missing = reg.ready()
    assert not ok and "'later'" in missing[0]
    with pytest.raises(NotReady):
        reg.get("later")
    install(repo, "l1", name="later")
    reg.sync_all()
    assert reg.ready() == (True, [])


def test_models_of_another_kind_are_served_but_not_polled(repo):
    reg, _ = make(repo)
    reg.add(LiveModel(name="tf", version="7", scorer=FakeScorer("v7"), kind="tfserving"))
    reg.sync_all()
    assert reg.get("tf").kind == "tfserving" and reg.describe("tf")["kind"] == "tfserving"
    with pytest.raises(ScoringError):
        reg.reload("tf")


def test_poller_thread_starts_and_stops(repo):
    reg, _ = make(repo, poll_interval=0.01)
    reg.start()
    try:
        deadline = time.monotonic() + 5
        while not reg.ready()[0] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert reg.get("ctr").version == "v1"
        install(repo, "v2")
        while reg.get("ctr").version != "v2" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert reg.get("ctr").version == "v2"
    finally:
        reg.stop()
    assert reg._thread is None


def test_an_old_version_is_released_once_no_request_holds_it(tmp_path, small_model_dir):
    """With the real loader: the old engine (and its memory maps) goes away after a swap as
    soon as the last request holding it lets go, even though the registry freezes the GC."""
    import shutil
    import weakref

    repo = ModelRepo(tmp_path / "repo")
    for version in ("v1", "v2"):
        staged = repo.staging_dir("ctr")
        shutil.copytree(small_model_dir, staged, dirs_exist_ok=True)
        repo.install("ctr", staged, version)
        if version == "v1":
            reg = Registry(repo, metrics=Metrics())
            reg.sync_all()
            held = reg.get("ctr")
            old = weakref.ref(held.scorer)
    assert reg.sync("ctr").live == "v2"
    assert old() is not None  # a request still holds v1
    assert held.scorer.score({}, [{"features": {}, "dense": [0, 0, 0]}]).shape == (1,)
    del held
    assert old() is not None  # kept for the worker to release, off the request path
    assert reg.release_retired() == 1
    assert old() is None


def test_an_empty_model_list_serves_no_repository_model(repo):
    """A models config with only TF Serving models must not start serving the whole repo."""
    reg, loader = make(repo, models=[])
    reg.sync_all()
    assert loader.calls == [] and reg.names() == []


def test_a_version_copied_in_by_hand_goes_live(repo):
    reg, loader = make(repo)
    reg.sync_all()
    copy_in(repo, "v2")  # older mtimes than v1, which the syncer installed just now
    assert reg.sync("ctr").live == "v2" and reg.get("ctr").version == "v2"
    assert loader.calls == ["v1", "v2"]


def test_a_half_copied_version_goes_live_once_the_copy_is_complete(repo):
    reg, loader = make(repo)
    reg.sync_all()
    half = copy_in(repo, "v2", partial=True)
    result = reg.sync("ctr")
    assert result.failed[0] == "v2" and reg.get("ctr").version == "v1"
    assert repo.state("ctr").rejected["v2"].content is False  # files, not the export, were bad
    for _ in range(3):  # while it stays as it is, nobody retries it
        assert reg.sync("ctr").live == "v1"
    assert loader.calls == ["v1", "v2"]
    (half / "partial").unlink()  # the copy completes
    (half / "table.npy").write_bytes(b"x" * 100)
    waiting = reg.sync("ctr")  # changed since the rejection: wait until it stops changing
    assert not waiting.changed and "tried again once they stop changing" in waiting.reason
    assert reg.sync("ctr").live == "v2" and loader.calls == ["v1", "v2", "v2"]
    assert "v2" not in repo.state("ctr").rejected or not repo.is_rejected("ctr", "v2")


def test_reload_retries_a_rejected_version_and_says_why_when_nothing_changed(repo):
    reg, loader = make(repo)
    reg.sync_all()
    first = reg.reload("ctr")
    assert not first.changed and first.reason == "version 'v1' is live and is the newest version in the repository"
    install(repo, "v2")
    loader.bad.add("v2")
    assert reg.sync("ctr").failed[0] == "v2"
    loader.calls.clear()
    again = reg.reload("ctr")  # an operator asks: tried again, and the answer says what happened
    assert loader.calls == ["v2"] and again.failed[0] == "v2" and again.live == "v1"
    assert not reg.sync("ctr").changed  # a poll leaves it; the reload's answer would say why:
    assert reg.explain("ctr", "v1").startswith("version 'v2' was rejected: emb/x.npy: md5 mismatch")
    loader.bad.clear()  # say the operator fixed what the loader choked on
    assert reg.reload("ctr").live == "v2"


def test_rollback_sticks_and_a_new_copy_after_it_goes_live(repo):
    reg, _ = serving_v2(repo)
    assert reg.rollback("ctr").live == "v1"
    after = reg.reload("ctr")
    assert after.live == "v1" and "rolled back to 'v1'" in after.reason and "v2" in after.reason
    copy_in(repo, "v3")
    assert reg.sync("ctr").live == "v3"


def test_a_rollback_retried_on_another_worker_steps_back_once(repo):
    a, _ = make(repo)
    b, b_loader = make(repo)
    for v in ("v2", "v3"):
        install(repo, v)
        a.sync_all()
        b.sync_all()
    assert a.get("ctr").version == b.get("ctr").version == "v3"
    first = a.rollback("ctr")
    assert (first.live, first.rolled_back_from, first.changed) == ("v2", "v3", True)
    # the client timed out and retried; the retry lands on worker b, which still serves v3
    retry = b.rollback("ctr")
    assert retry.live == "v2" and "already rolled back from 'v3' to 'v2'" in retry.reason
    assert b.get("ctr").version == "v2" and repo.state("ctr").live == "v2"
    # a retry on the first worker that names its target is a no-op too
    assert a.rollback("ctr", to="v2").reason.startswith("already rolled back from 'v3' to 'v2'")
    # one that expects what no longer serves is refused with the live version named
    with pytest.raises(ScoringError, match="the live version is 'v2', not 'v3'") as err:
        a.rollback("ctr", expected="v3", to="v1")
    assert err.value.status_code == 409 and a.get("ctr").version == "v2"


def test_the_demo_model_never_wins_over_a_real_model(tmp_path):
    repo = ModelRepo(tmp_path / "repo")
    install(repo, "seed0", name="demo")
    reg, _ = make(repo)
    reg.sync_all()
    assert reg.default().name == "demo"  # alone, it serves POST /v1/score
    install(repo, "v1", name="ctr")  # a real model is synced in beside it
    reg.sync_all()
    assert reg.default().name == "ctr"
    restarted, _ = make(repo)
    restarted.sync_all()
    assert restarted.default().name == "ctr"


def test_model_work_runs_on_the_idle_worker_whoever_asks(repo):
    reg, loader = make(repo, poll_interval=30)
    reg.start()
    try:
        deadline = time.monotonic() + 5
        while not reg.ready()[0] and time.monotonic() < deadline:
            time.sleep(0.01)
        install(repo, "v2")
        assert reg.reload("ctr").live == "v2"  # asked from this thread, done on the worker
        install(repo, "v3")
        reg.poke("ctr")
        while reg.get("ctr").version != "v3" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert reg.rollback("ctr").live == "v2"
        assert set(loader.threads) == {"model-registry"}
        assert reg.priority in ("SCHED_IDLE", "nice 19")
    finally:
        reg.stop()


def test_a_read_only_repository_is_served_without_reloading_in_a_loop(tmp_path, caplog):
    repo = ModelRepo(tmp_path / "repo")
    copy_in(repo, "v1")
    with read_only(repo.root):
        reg, loader = make(repo)
        for _ in range(4):
            reg.sync_all()
        assert reg.get("ctr").version == "v1" and loader.calls == ["v1"]
        assert reg.describe("ctr")["repository_read_only"].startswith("cannot")
    assert sum("not writable" in r.getMessage() for r in caplog.records) == 1


def test_a_directory_that_is_no_version_is_ignored_not_fatal(repo, caplog):
    """``cp -a v2 "v2 copy"``: not a name a version can have. It is named once in a warning and
    everything else works: polls, new versions, reload."""
    reg, loader = make(repo)
    reg.sync_all()
    copy_in(repo, "v2 copy")
    (repo.root / "lost+found").mkdir()
    for _ in range(3):
        assert reg.sync_all()[0].live == "v1"
    install(repo, "v3")
    assert reg.reload("ctr").live == "v3" and reg.ready() == (True, [])
    warned = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert len(warned) == 2 and "'v2 copy'" in warned[0] + warned[1], warned


def test_a_bare_rollback_repeated_at_once_is_a_retry(repo):
    reg, _ = make(repo)
    for v in ("v2", "v3"):
        install(repo, v)
        reg.sync("ctr")
    assert reg.rollback("ctr").live == "v2"
    again = reg.rollback("ctr")  # the client retried on the same worker, which serves v2 now
    assert again.live == "v2" and not again.changed and "?to=" in again.reason
    assert reg.rollback("ctr", to="v1").live == "v1"  # stepping further back names the target


def test_an_upgrade_keeps_the_live_version(repo):
    """The first release wrote no ``format`` and ordered versions it had not recorded by mtime:
    a version copied in long ago that it never served must not go live after the upgrade."""
    import json

    mdir = repo.model_dir("ctr")
    copy_in(repo, "v0")  # an old copy the first release ignored (old mtime)
    state = json.loads((mdir / ".state.json").read_text())
    state.pop("format", None)
    state["installed"].pop("v0", None)
    state.update(live="v1", live_since=time.time())
    (mdir / ".state.json").write_text(json.dumps(state))
    reg, loader = make(repo)
    reg.sync_all()
    assert reg.get("ctr").version == "v1" and loader.calls == ["v1"]
    copy_in(repo, "v2")  # a copy after the upgrade goes live as usual
    assert reg.sync("ctr").live == "v2"


def test_the_demo_does_not_stand_in_for_a_real_model_still_loading(tmp_path):
    repo = ModelRepo(tmp_path / "repo")
    install(repo, "seed0", name="demo")
    install(repo, "v1", name="ctr")
    reg, loader = make(repo)
    loader.broken.add("v1")
    reg.sync_all()
    with pytest.raises(NotReady, match="'ctr' is not loaded yet"):
        reg.default()


def test_stopping_fails_what_waits_for_the_worker(repo):
    reg, loader = make(repo, poll_interval=30)
    started = threading.Event()
    release = threading.Event()
    loader.during["v2"] = lambda: (started.set(), release.wait(5))
    reg.start()
    deadline = time.monotonic() + 5
    while not reg.ready()[0] and time.monotonic() < deadline:
        time.sleep(0.01)
    install(repo, "v2")
    reg.poke("ctr")
    assert started.wait(5)  # the worker is busy loading v2
    outcome: dict = {}
    waiter = threading.Thread(target=lambda: outcome.update(r=_catch(lambda: reg.reload("ctr"))))
    waiter.start()
    time.sleep(0.1)
    stopper = threading.Thread(target=reg.stop, kwargs={"timeout": 0.2})
    stopper.start()
    stopper.join(5)
    release.set()
    waiter.join(5)
    assert not waiter.is_alive() and isinstance(outcome["r"], NotReady), outcome


def _catch(fn):
    try:
        return fn()
    except Exception as exc:  # the test looks at what came out
        return exc


def test_readiness_says_loading_while_a_model_loads(repo):
    reg, _ = make(repo)
    reg._expected = ["ctr"]
    assert reg.ready() == (False, ["model 'ctr' is not loaded (loading version 'v1')"])
