"""Shared fixtures. Tests are tagged by folder: tests/unit and tests/integration."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scoring.engine import Engine
from scoring.model.package import load_package

from .models import make_model

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_var, "1")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("models") / "small", dense_dim=3)


@pytest.fixture(scope="session")
def small_package(small_model_dir):
    return load_package(small_model_dir)


@pytest.fixture(scope="session")
def small_engine(small_package) -> Engine:
    return Engine(small_package)
