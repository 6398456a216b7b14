"""The local model repository: atomic installs, the live version, rollback, backups."""

from __future__ import annotations

import time

import pytest

from scoring.model.manifest import PackageError
from scoring.lifecycle.repo import ModelRepo

from ...models import make_model


def _install(repo: ModelRepo, tmp_path, version: str):
    staged = repo.staging_dir("ctr")
    make_model(staged, version=version)
    path = repo.install("ctr", staged, version)
    time.sleep(0.01)  # distinct install times
    return path


def test_install_is_a_rename_and_versions_keep_install_order(tmp_path):
    repo = ModelRepo(tmp_path / "repo")
    for v in ("b", "a", "c"):
        _install(repo, tmp_path, v)
    assert repo.models() == ["ctr"]
    assert repo.versions("ctr") == ["b", "a", "c"]
    assert repo.newest("ctr") == "c"
    assert not any((tmp_path / "repo" / ".staging").iterdir())
    with pytest.raises(PackageError, match="already installed"):
        _install(repo, tmp_path, "a")


def test_wanted_follows_new_installs_but_respects_rollback(tmp_path):
    repo = ModelRepo(tmp_path / "repo")
    _install(repo, tmp_path, "v1")
    assert repo.wanted("ctr") == "v1"
    repo.set_live("ctr", "v1")
    _install(repo, tmp_path, "v2")
    assert repo.wanted("ctr") == "v2"          # installed after the decision: goes live
    repo.set_live("ctr", "v2")
    assert repo.previous("ctr") == "v1"
    assert repo.rollback("ctr") == "v1"
    assert repo.wanted("ctr") == "v1"          # the rollback sticks although v2 is newer
    _install(repo, tmp_path, "v3")
    assert repo.wanted("ctr") == "v3"          # a newer export still goes live by itself
    repo.reject("ctr", "v3", "md5 mismatch")
    assert repo.wanted("ctr") == "v1"          # a rejected version is never wanted again
    assert repo.state("ctr").rejected == {"v3": "md5 mismatch"}


def test_rollback_without_history_is_an_error(tmp_path):
    repo = ModelRepo(tmp_path / "repo")
    _install(repo, tmp_path, "v1")
    repo.set_live("ctr", "v1")
    with pytest.raises(LookupError, match="no previous version"):
        repo.rollback("ctr")


def test_prune_keeps_n_and_never_the_live_version(tmp_path):
    repo = ModelRepo(tmp_path / "repo")
    for v in ("v1", "v2", "v3", "v4", "v5"):
        _install(repo, tmp_path, v)
    repo.set_live("ctr", "v1")
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
    _install(repo, tmp_path, "old")
    repo.set_live("ctr", "old")
    _install(repo, tmp_path, "new")
    assert repo.prune("ctr", keep=1) == []
    assert repo.versions("ctr") == ["old", "new"]


def test_clean_staging_of_one_model_leaves_the_others(tmp_path):
    repo = ModelRepo(tmp_path / "repo")
    mine, other = repo.staging_dir("ctr"), repo.staging_dir("ctr2")
    assert repo.clean_staging("ctr") == 1
    assert not mine.exists() and other.exists()
