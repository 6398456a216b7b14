"""The syncer on a file:// source (no servers): install, symlinks, the in-process handle."""

from __future__ import annotations

import shutil

from scoring.model.package import load_package
from scoring.model.quantize import convert
from scoring.sync import SyncConfig, start_background_sync
from scoring.sync.syncer import FAILED, INSTALLED, UNCHANGED, Syncer

from ...models import make_model


def config(tmp_path, **kw) -> SyncConfig:
    return SyncConfig(source=f"file://{tmp_path / 'remote'}", repo=tmp_path / "repo", model="ctr",
                      rate_limit=None, backoff=0.01, **kw)


def test_file_source_installs_and_refuses_symlinks(tmp_path):
    remote = make_model(tmp_path / "remote", version="v1")
    syncer = Syncer(config(tmp_path))
    assert syncer.cycle().status == INSTALLED
    load_package(syncer.repo.path("ctr", "v1"))
    assert syncer.cycle().status == UNCHANGED

    shutil.rmtree(remote)
    make_model(remote, version="v2", seed=2)
    (remote / "emb").rename(tmp_path / "elsewhere")
    (remote / "emb").symlink_to(tmp_path / "elsewhere")  # a directory link out of the package
    result = syncer.cycle()
    assert result.status == FAILED and "is a symlink" in result.message
    assert syncer.repo.versions("ctr") == ["v1"]


def test_manifest_name_must_match_the_model(tmp_path):
    make_model(tmp_path / "remote", version="v1", name="other")
    result = Syncer(config(tmp_path)).cycle()
    assert result.status == FAILED and "name 'other' does not match the model name 'ctr'" in result.message


def test_background_handle_sync_now_and_stop(tmp_path):
    make_model(tmp_path / "remote", version="v1")
    installed = []
    handle = start_background_sync(config(tmp_path, interval=3600),
                                   on_installed=lambda name, version: installed.append((name, version)))
    try:
        first = handle.sync_now(timeout=30)  # the first poll runs at start; this asks for another
        assert first is not None and first.ok
        assert installed == [("ctr", "v1")]
        shutil.rmtree(tmp_path / "remote")
        make_model(tmp_path / "remote", version="v2", seed=2)
        assert handle.before_reload("ctr")["status"] == "installed"
        assert handle.before_reload("other") is None
        assert installed[-1] == ("ctr", "v2") and handle.status.consecutive_failures == 0
    finally:
        handle.stop()
    assert not handle._thread.is_alive()


def test_unusable_repository_is_a_failed_cycle_not_a_crash(tmp_path):
    make_model(tmp_path / "remote", version="v1")
    (tmp_path / "repo").write_text("not a directory")
    result = Syncer(config(tmp_path)).cycle()
    assert result.status == FAILED and result.message.startswith(f"local repository {tmp_path / 'repo'}")


def test_a_compact_package_syncs_with_its_qparams(tmp_path):
    """The syncer copies every file the manifest names, qparams included."""
    src = make_model(tmp_path / "f32", version="v1")
    convert(src, tmp_path / "remote", tables="int8")
    shutil.rmtree(src)
    syncer = Syncer(config(tmp_path))
    assert syncer.cycle().status == INSTALLED
    pkg = load_package(syncer.repo.path("ctr", "v1"))
    assert all(q is not None for q in pkg.qparams)


def test_one_poller_per_host_and_the_leadership_passes_on(tmp_path):
    """Two handles on one repository (two workers of one host): only the leader polls; a
    reload asked of the follower runs one cycle; when the leader stops, the follower takes
    over within its recheck interval and polls from then on."""
    import time

    make_model(tmp_path / "remote", version="v1")
    a = start_background_sync(config(tmp_path, interval=0.2))
    time.sleep(0.3)
    b = _second_worker(tmp_path)
    try:
        deadline = time.monotonic() + 10
        while a.status.cycles < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert a.role == "leader" and b.role == "follower"
        assert b.status.cycles == 0 and a.status.cycles >= 3  # one poller
        result = b.sync_now(timeout=30)  # a reload on the follower: one cycle of its own
        assert result is not None and result.ok and b.status.cycles == 1
        a.stop()
        deadline = time.monotonic() + 10
        while b.role != "leader" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b.role == "leader"
        deadline = time.monotonic() + 10
        while b.status.cycles < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b.status.cycles >= 3
    finally:
        a.stop()
        b.stop()


def _second_worker(tmp_path):
    handle = start_background_sync(config(tmp_path, interval=0.2), start=False)
    handle.recheck = 0.1
    return handle.start()
