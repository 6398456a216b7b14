"""The local model repository: atomic installs, first sightings, the live version, rollback,
rejections keyed on the files, backups, and a state file that cannot be read or written."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from scoring.lifecycle.repo import ModelRepo, RollbackConflict
from scoring.lifecycle.state import STATE
from scoring.model.manifest import PackageError

from ...models import make_model
from ...readonly import read_only

OLD = time.time() - 30 * 86400  # a build from last month: what cp -a / rsync -a carry over


def _install(repo: ModelRepo, version: str):
    staged = repo.staging_dir("ctr")
    make_model(staged, version=version)
    path = repo.install("ctr", staged, version)
    time.sleep(0.01)  # distinct install times
    return path


def _copy_in(repo: ModelRepo, tmp_path, version: str, *, mtime: float = OLD):
    """What ``cp -a`` of a package built elsewhere leaves: every mtime from the build."""
    build = tmp_path / f"build-{version}"
    make_model(build, version=version)
    for p in [build, *build.rglob("*")]:
        os.utime(p, (mtime, mtime))
    dest = repo.model_dir("ctr") / version
    shutil.copytree(build, dest, copy_function=shutil.copy2)
    shutil.copystat(build, dest)
    time.sleep(0.01)
    return dest


def _decide(repo: ModelRepo, version: str) -> None:
    """A process loaded ``version`` and made it live (what the registry does)."""
    assert repo.promote("ctr", version, time.time()) == version
    time.sleep(0.01)


def test_install_is_a_rename_and_versions_keep_install_order(tmp_path):
    repo = ModelRepo(tmp_path / "repo")
    for v in ("b", "a", "c"):
        _install(repo, v)
    assert repo.models() == ["ctr"]
    assert repo.versions("ctr") == ["b", "a", "c"]
    assert not any((tmp_path / "repo" / ".staging").iterdir())
    with pytest.raises(PackageError, match="already installed"):
        _install(repo, "a")


def test_a_version_copied_in_with_old_mtimes_is_the_newest(tmp_path):
    repo = ModelRepo(tmp_path / "repo")
    _install(repo, "v1")
    _decide(repo, "v1")
    dest = _copy_in(repo, tmp_path, "v2")
    assert dest.stat().st_mtime < repo.path("ctr", "v1").stat().st_mtime  # older on disk
    assert repo.wanted("ctr") == "v2"
    state = repo.state("ctr")
    assert state.installed["v2"] > state.live_since  # first seen now, recorded
    assert repo.versions("ctr") == ["v1", "v2"]


def test_versions_first_seen_together_are_ordered_by_mtime(tmp_path):
    repo = ModelRepo(tmp_path / "repo")
    _copy_in(repo, tmp_path, "b-newer-build", mtime=OLD + 60)
    _copy_in(repo, tmp_path, "a-older-build", mtime=OLD)
    assert repo.wanted("ctr") == "b-newer-build"
    assert repo.versions("ctr") == ["a-older-build", "b-newer-build"]


def test_wanted_follows_new_versions_but_respects_rollback(tmp_path):
    repo = ModelRepo(tmp_path / "repo")
    _install(repo, "v1")
    assert repo.wanted("ctr") == "v1"
    _decide(repo, "v1")
    _install(repo, "v2")
    assert repo.wanted("ctr") == "v2"          # installed after the decision: goes live
    _decide(repo, "v2")
    assert repo.previous("ctr") == "v1"
    done = repo.rollback("ctr", expected="v2")
    assert (done.from_version, done.to_version, done.changed) == ("v2", "v1", True)
    assert repo.wanted("ctr") == "v1"          # the rollback sticks although v2 is newer
    _copy_in(repo, tmp_path, "v3")
    assert repo.wanted("ctr") == "v3"          # a newer version, even copied in, goes live
    fp = repo.fingerprint("ctr", "v3")
    repo.reject("ctr", "v3", "md5 mismatch", fp)
    assert repo.wanted("ctr") == "v1"          # a rejected version is not wanted while unchanged
    assert repo.state("ctr").rejected["v3"].reason == "md5 mismatch"


def test_a_version_copied_in_before_a_rollback_is_not_taken_for_a_new_one(tmp_path):
    """Present at the rollback but not looked at yet: it was there, so the rollback sticks."""
    repo = ModelRepo(tmp_path / "repo")
    _install(repo, "v1")
    _decide(repo, "v1")
    _install(repo, "v2")
    _decide(repo, "v2")
    _copy_in(repo, tmp_path, "v3")             # nobody polled since
    repo.rollback("ctr", expected="v2")
    assert repo.wanted("ctr") == "v1"
    _copy_in(repo, tmp_path, "v4")
    assert repo.wanted("ctr") == "v4"


def test_a_rejection_holds_while_the_files_stay_as_they_were(tmp_path):
    repo = ModelRepo(tmp_path / "repo")
    _install(repo, "v1")
    _decide(repo, "v1")
    half = _copy_in(repo, tmp_path, "v2")
    table = sorted((half / "emb").glob("*.npy"))[0]
    full = table.read_bytes()
    table.write_bytes(full[: len(full) // 2])  # a copy caught half-way
    repo.reject("ctr", "v2", "emb/x.npy: md5 mismatch", repo.fingerprint("ctr", "v2"))
    assert repo.is_rejected("ctr", "v2") and repo.wanted("ctr") == "v1"
    table.write_bytes(full)                    # the copy finishes
    assert not repo.is_rejected("ctr", "v2") and repo.wanted("ctr") == "v2"
    assert repo.clear_rejections("ctr") == ["v2"] and repo.state("ctr").rejected == {}


def test_rollback_is_a_compare_and_set(tmp_path):
    repo = ModelRepo(tmp_path / "repo")
    for v in ("v1", "v2", "v3"):
        _install(repo, v)
        _decide(repo, v)
    first = repo.rollback("ctr", expected="v3")
    assert (first.to_version, first.changed) == ("v2", True)
    # the same call again (a client retry, or another worker that still served v3): a no-op
    again = repo.rollback("ctr", expected="v3")
    assert (again.from_version, again.to_version, again.changed) == ("v3", "v2", False)
    assert repo.state("ctr").live == "v2"
    # a rollback that expected something else entirely: refused, nothing moves
    with pytest.raises(RollbackConflict, match="the live version is 'v2', not 'v1'"):
        repo.rollback("ctr", expected="v1")
    # naming the target makes any number of calls land on it
    for _ in range(2):
        done = repo.rollback("ctr", expected=None, to="v1")
        assert done.to_version == "v1" and repo.state("ctr").live == "v1"
    assert repo.rollback("ctr", expected="v1", to="v1").changed is False
    with pytest.raises(LookupError, match="'v9' is not in the repository"):
        repo.rollback("ctr", expected="v1", to="v9")


def test_rollback_without_history_is_an_error(tmp_path):
    repo = ModelRepo(tmp_path / "repo")
    _install(repo, "v1")
    _decide(repo, "v1")
    with pytest.raises(LookupError, match="no previous version"):
        repo.rollback("ctr", expected="v1")


def test_prune_keeps_n_and_never_the_live_version(tmp_path):
    repo = ModelRepo(tmp_path / "repo")
    for v in ("v1", "v2", "v3", "v4", "v5"):
        _install(repo, v)
    repo.promote("ctr", "v1", 0.0)
    deleted = repo.prune("ctr", keep=3)
    assert deleted == ["v2", "v3"]             # the live one counts among the 3 kept
    assert repo.versions("ctr") == ["v1", "v4", "v5"]
    assert (tmp_path / "repo" / "ctr" / "v1" / "manifest.json").is_file()


def test_staging_leftovers_are_cleaned(tmp_path):
    repo = ModelRepo(tmp_path / "repo")
    leftover = repo.staging_dir("ctr")
    (leftover / "half.npy").write_bytes(b"\x93NUMPY")
    assert repo.clean_staging() == 1
    assert not leftover.exists()
    assert repo.versions("ctr") == []


def test_names_are_checked(tmp_path):
    repo = ModelRepo(tmp_path / "repo")
    with pytest.raises(PackageError, match="model name"):
        repo.path("../etc", "v1")
    with pytest.raises(PackageError, match="version"):
        repo.path("ctr", ".hidden")


def test_prune_never_deletes_a_new_version_waiting_to_go_live(tmp_path):
    repo = ModelRepo(tmp_path / "repo")
    _install(repo, "old")
    _decide(repo, "old")
    _install(repo, "new")
    assert repo.prune("ctr", keep=1) == []
    assert repo.versions("ctr") == ["old", "new"]


def test_clean_staging_of_one_model_leaves_the_others(tmp_path):
    repo = ModelRepo(tmp_path / "repo")
    mine, other = repo.staging_dir("ctr"), repo.staging_dir("ctr2")
    assert repo.clean_staging("ctr") == 1
    assert not mine.exists() and other.exists()


def test_the_state_file_is_replaced_whole(tmp_path):
    repo = ModelRepo(tmp_path / "repo")
    _install(repo, "v1")
    _decide(repo, "v1")
    mdir = repo.model_dir("ctr")
    raw = json.loads((mdir / STATE).read_text())
    assert raw["live"] == "v1" and set(raw["installed"]) == {"v1"}
    assert not list(mdir.glob(f"{STATE}.*.tmp"))  # no temporary file left behind


def test_an_unreadable_state_file_is_set_aside_and_said_so(tmp_path, caplog):
    repo = ModelRepo(tmp_path / "repo")
    _install(repo, "v1")
    _decide(repo, "v1")
    mdir = repo.model_dir("ctr")
    (mdir / STATE).write_text('{"live": "v1", "histo')  # a torn or hand-edited file
    state = repo.state("ctr")
    assert state.live is None  # rebuilt from the directories ...
    kept = list(mdir.glob(f"{STATE}.unreadable-*"))
    assert len(kept) == 1 and kept[0].read_text().startswith('{"live": "v1"')  # ... the bad one kept
    assert "was unreadable" in repo.state_file("ctr").unreadable
    assert any(r.levelname == "ERROR" and "unreadable" in r.getMessage() for r in caplog.records)
    assert repo.wanted("ctr") == "v1"
    _decide(repo, "v1")
    assert json.loads((mdir / STATE).read_text())["live"] == "v1"


def test_a_repository_that_cannot_be_written_is_served_from_memory(tmp_path, caplog):
    """No .state.json, no .lock can be created: every decision is kept in memory (once warned),
    never retried against the disk in a loop."""
    repo = ModelRepo(tmp_path / "repo")
    _copy_in(repo, tmp_path, "v1", mtime=OLD)  # a repository with no state at all
    _copy_in(repo, tmp_path, "v2", mtime=OLD + 60)
    shutil.rmtree(repo.root / ".staging", ignore_errors=True)
    with read_only(repo.root):
        assert repo.wanted("ctr") == "v2"
        assert repo.promote("ctr", "v2", time.time()) == "v2"
        repo.reject("ctr", "v1", "bad", repo.fingerprint("ctr", "v1"))
        state = repo.state("ctr")
        assert state.live == "v2" and "v1" in state.rejected
        assert repo.wanted("ctr") == "v2" and repo.prune("ctr", keep=1) == []
        assert not (repo.model_dir("ctr") / STATE).exists()
    warnings = [r for r in caplog.records if "not writable" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]


def test_an_unreadable_state_file_that_cannot_be_moved_is_reported_once(tmp_path, caplog):
    repo = ModelRepo(tmp_path / "repo")
    _copy_in(repo, tmp_path, "v1")
    (repo.model_dir("ctr") / STATE).write_text("{torn")
    shutil.rmtree(repo.root / ".staging", ignore_errors=True)
    with read_only(repo.root):
        for _ in range(5):
            assert repo.wanted("ctr") == "v1"
    errors = [r for r in caplog.records if r.levelname == "ERROR" and "unreadable" in r.getMessage()]
    assert len(errors) == 1 and "left in place" in errors[0].getMessage()


def test_a_state_file_another_process_rewrote_is_not_set_aside(tmp_path):
    """Two workers find the same torn file: the first sets it aside and writes a good one; the
    second, holding the lock after it, must take the good one, not move it away."""
    from scoring.lifecycle.state import StateFile

    repo = ModelRepo(tmp_path / "repo")
    _install(repo, "v1")
    _decide(repo, "v1")
    mdir = repo.model_dir("ctr")
    good = (mdir / STATE).read_bytes()
    late = StateFile(mdir, "ctr")
    torn = b'{"live": "v1", "hist'
    (mdir / STATE).write_bytes(good)  # what the first worker left by the time the second locks
    state = late._set_aside(torn, ValueError("torn"))
    assert state.live == "v1" and (mdir / STATE).read_bytes() == good
    assert not list(mdir.glob(f"{STATE}.unreadable-*")) and late.unreadable is None


def test_a_repository_writable_again_gets_the_state_back(tmp_path, monkeypatch):
    import scoring.lifecycle.state as state_mod

    monkeypatch.setattr(state_mod, "READ_ONLY_RETRY", 0.0)
    repo = ModelRepo(tmp_path / "repo")
    _copy_in(repo, tmp_path, "v1")
    shutil.rmtree(repo.root / ".staging", ignore_errors=True)
    with read_only(repo.root):  # say the disk was full
        assert repo.promote("ctr", "v1", time.time()) == "v1"
        assert repo.state_file("ctr").read_only_reason
    _copy_in(repo, tmp_path, "v2")
    assert repo.promote("ctr", "v2", time.time()) == "v2"  # the next write reaches the disk
    assert repo.state_file("ctr").read_only_reason is None
    assert json.loads((repo.model_dir("ctr") / STATE).read_text())["live"] == "v2"
