"""Fixtures that start real services."""

from __future__ import annotations

from pathlib import Path

import pytest

from scoring.model.package import load_package

from ..fakes.fixtures import cluster, make_syncer, webhook  # noqa: F401  (shared fixtures)
from .server import Server, install_model


@pytest.fixture(scope="module")
def api_server(tmp_path_factory) -> Server:
    """Two models ("ctr" with 2 dense features, "plain" without), "ctr" the default."""
    root: Path = tmp_path_factory.mktemp("api")
    repo = root / "repo"
    install_model(repo, "v1", seed=1, dense_dim=2)
    install_model(repo, "p1", seed=2, name="plain")
    server = Server(repo, root / "server.log", args=["--default-model", "ctr", "--max-ads", "50",
                                                      "--max-values-per-group", "8",
                                                      "--max-body-bytes", "200000"])
    try:
        yield server.wait()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ctr_package(api_server):
    return load_package(api_server.repo / "ctr" / "v1")


@pytest.fixture(scope="module")
def plain_package(api_server):
    return load_package(api_server.repo / "plain" / "p1")
