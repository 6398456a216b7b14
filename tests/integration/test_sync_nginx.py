"""The syncer against a real nginx serving the package over plain HTTP."""

from __future__ import annotations

import pytest

from scoring.model.manifest import CHECKSUMS
from scoring.model.package import load_package
from scoring.sync.syncer import FAILED, INSTALLED, UNCHANGED

from ..fakes.cluster import HdfsCluster
from ..fakes.nginx import Nginx


@pytest.fixture
def www(tmp_path):
    return HdfsCluster(tmp_path / "www")  # only its publish(): nginx serves the directory


@pytest.fixture
def nginx(www, tmp_path):
    server = Nginx(www.root, tmp_path / "nginx")
    try:
        yield server
    finally:
        server.stop()


def package_bytes_sent(nginx: Nginx) -> int:
    return sum(n for uri, status, n in nginx.access_log() if not uri.endswith(CHECKSUMS))


def test_http_source_installs_then_polls_fetch_only_checksums(www, nginx, make_syncer):
    www.publish("v1", seed=1)
    syncer = make_syncer(f"{nginx.url}/models/ctr")
    result = syncer.cycle()
    assert result.status == INSTALLED, result.message
    load_package(syncer.repo.path("ctr", "v1"))
    sent = package_bytes_sent(nginx)
    assert sent > 100_000
    assert syncer.cycle().status == UNCHANGED
    assert package_bytes_sent(nginx) == sent
    assert nginx.access_log()[-1][0] == "/models/ctr/checksums.md5"

    www.publish("v2", seed=2)
    result = syncer.cycle()
    assert result.status == INSTALLED and result.version == "v2"


def test_http_missing_file_and_symlink_are_final_errors(www, nginx, make_syncer, tmp_path):
    pkg = www.publish("v1", seed=1)
    (pkg / "mlp/b0.npy").unlink()
    result = make_syncer(f"{nginx.url}/models/ctr", retries=2).cycle()
    assert result.status == FAILED and result.attempts == 1
    assert "mlp/b0.npy" in result.message and "HTTP 404 Not Found (not found" in result.message

    www.publish("v1", seed=1)
    (pkg / "mlp/b0.npy").unlink()
    (pkg / "mlp/b0.npy").symlink_to(pkg / "mlp/b1.npy")
    result = make_syncer(f"{nginx.url}/models/ctr", retries=2, repo=tmp_path / "repo2").cycle()
    assert result.status == FAILED and "HTTP 403" in result.message  # nginx: disable_symlinks on
