"""The syncer against a test WebHDFS cluster: NameNodes that redirect OPEN to a DataNode."""

from __future__ import annotations

from scoring.model.manifest import CHECKSUMS
from scoring.model.package import load_package
from scoring.sync.syncer import FAILED, INSTALLED, UNCHANGED


def test_open_follows_the_307_to_the_datanode(cluster, make_syncer):
    cluster.publish("v1", seed=1)
    (nn1, nn2), dn = cluster.webhdfs(2)
    syncer = make_syncer(cluster.url("webhdfs", [nn1, nn2]), user="etl")
    result = syncer.cycle()
    assert result.status == INSTALLED, result.message
    load_package(syncer.repo.path("ctr", "v1"))
    namenodes_data = nn1.served.file_bytes() + nn2.served.file_bytes()
    assert namenodes_data == 0 and dn.served.file_bytes() > 100_000  # bytes come from the DataNode
    nn_requests = nn1.served.requests + nn2.served.requests
    assert {r[0] for r in nn_requests} >= {"OPEN", "LISTSTATUS"}
    assert all(r[2].get("user.name") == "etl" for r in nn_requests)
    # The DataNode got the redirect's URL, with the NameNode's parameters on it.
    assert all(r[2].get("namenoderpcaddress") for r in dn.served.requests)

    before = dn.served.file_bytes(exclude=(CHECKSUMS,))
    assert syncer.cycle().status == UNCHANGED
    assert dn.served.file_bytes(exclude=(CHECKSUMS,)) == before


def test_standby_namenode_fails_over_to_the_active_one(cluster, make_syncer):
    cluster.publish("v1", seed=1)
    (standby, active), dn = cluster.webhdfs(2)
    standby.faults.standby = True
    syncer = make_syncer(cluster.url("webhdfs", [standby, active]), ordered=True, retries=0)
    result = syncer.cycle()
    assert result.status == INSTALLED, result.message
    assert len(standby.served.requests) == 1  # asked once, then never again this attempt
    assert active.served.ops("OPEN")


def test_retriable_exception_is_retried(cluster, make_syncer):
    cluster.publish("v1", seed=1)
    (nn,), dn = cluster.webhdfs(1)
    nn.faults.retriable = 1
    result = make_syncer(cluster.url("webhdfs", [nn])).cycle()
    assert result.status == INSTALLED and result.attempts == 2


def test_every_namenode_standby_fails_with_the_remote_message(cluster, make_syncer):
    cluster.publish("v1", seed=1)
    (a, b), dn = cluster.webhdfs(2)
    a.faults.standby = b.faults.standby = True
    result = make_syncer(cluster.url("webhdfs", [a, b]), retries=1).cycle()
    assert result.status == FAILED and result.attempts == 2
    assert "StandbyException: Operation category READ is not supported in state standby" in result.message
    assert "every host failed" in result.message


def test_datanode_dropping_the_connection_resumes(cluster, make_syncer):
    cluster.publish("v1", seed=1)
    (nn,), dn = cluster.webhdfs(1)
    dn.faults.drop["mlp/w0.npy"] = 1000
    result = make_syncer(cluster.url("webhdfs", [nn])).cycle()
    assert result.status == INSTALLED, result.message
    offsets = [r[2].get("offset") for r in dn.served.ops("OPEN") if r[1].endswith("mlp/w0.npy")]
    assert offsets == [None, "1000"]
