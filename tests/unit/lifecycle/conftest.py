"""Fixtures of the lifecycle tests."""

from __future__ import annotations

import pytest

from scoring.lifecycle.repo import ModelRepo


@pytest.fixture
def repo(tmp_path) -> ModelRepo:
    """A repository holding version v1 of model ctr (a bare manifest: for fake loaders)."""
    r = ModelRepo(tmp_path / "repo")
    staged = r.staging_dir("ctr")
    (staged / "manifest.json").write_text("{}")
    r.install("ctr", staged, "v1")
    return r
