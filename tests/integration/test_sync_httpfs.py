"""The syncer against test HttpFS gateways: install, no-change polls, failover, faults, alarms."""

from __future__ import annotations

import time

from scoring.lifecycle.repo import ModelRepo
from scoring.model.manifest import CHECKSUMS
from scoring.model.package import load_package
from scoring.sync.syncer import FAILED, INSTALLED, SKIPPED, UNCHANGED

from ..fakes.cluster import closed_port


def staging_empty(repo: ModelRepo) -> bool:
    staging = repo.root / ".staging"
    return not staging.exists() or not any(staging.iterdir())


def test_installs_then_unchanged_poll_fetches_no_file_bytes(cluster, make_syncer):
    cluster.publish("v1", seed=1)
    (gw,) = cluster.httpfs(1)
    syncer = make_syncer(cluster.url("httpfs", [gw]))
    first = syncer.cycle()
    assert first.status == INSTALLED and first.version == "v1", first.message
    repo = syncer.repo
    assert repo.wanted("ctr") == "v1"
    load_package(repo.path("ctr", "v1"))  # a complete, valid package
    package_bytes = gw.served.file_bytes(exclude=(CHECKSUMS,))
    assert package_bytes > 100_000

    for _ in range(3):
        again = syncer.cycle()
        assert again.status == UNCHANGED, again.message
    # Only checksums.md5 was read again: not one byte of any other file.
    assert gw.served.file_bytes(exclude=(CHECKSUMS,)) == package_bytes
    opened = [r[1] for r in gw.served.ops("OPEN")]
    assert opened.count("/models/ctr/checksums.md5") == 4
    assert staging_empty(repo)


def test_new_version_installed_old_kept_as_backup(cluster, make_syncer):
    cluster.publish("v1", seed=1)
    gws = cluster.httpfs(2)
    syncer = make_syncer(cluster.url("httpfs", gws))
    assert syncer.cycle().status == INSTALLED
    syncer.repo.promote("ctr", "v1", time.time())  # what the serving registry does after the swap
    cluster.publish("v2", seed=2)
    result = syncer.cycle()
    assert result.status == INSTALLED and result.version == "v2"
    assert syncer.repo.wanted("ctr") == "v2"
    assert syncer.repo.versions("ctr") == ["v1", "v2"]


def test_one_host_down_other_host_used(cluster, make_syncer):
    cluster.publish("v1", seed=1)
    (gw,) = cluster.httpfs(1)
    down = closed_port()
    syncer = make_syncer(cluster.url("httpfs", [down, gw.address]), ordered=True, timeout=2.0)
    result = syncer.cycle()
    assert result.status == INSTALLED, result.message
    assert result.attempts == 1  # failed over within the attempt, no retry needed
    assert gw.served.file_bytes() > 0


def test_slow_host_past_timeout_fails_over(cluster, make_syncer):
    cluster.publish("v1", seed=1)
    slow, fast = cluster.httpfs(2)
    slow.faults.delay = 3.0
    syncer = make_syncer(cluster.url("httpfs", [slow, fast]), ordered=True, timeout=0.5)
    t0 = time.monotonic()
    result = syncer.cycle()
    assert result.status == INSTALLED, result.message
    assert time.monotonic() - t0 < 3.0
    assert slow.served.file_bytes() == 0 and fast.served.file_bytes() > 0


def test_5xx_is_retried_with_backoff(cluster, make_syncer):
    cluster.publish("v1", seed=1)
    (gw,) = cluster.httpfs(1)
    gw.faults.errors_5xx = 2
    syncer = make_syncer(cluster.url("httpfs", [gw]), retries=3)
    result = syncer.cycle()
    assert result.status == INSTALLED, result.message
    assert result.attempts == 3


def test_dropped_connection_resumes_at_the_offset(cluster, make_syncer):
    cluster.publish("v1", seed=1)
    (gw,) = cluster.httpfs(1)
    gw.faults.drop["emb/ad_id.npy"] = 50_000
    syncer = make_syncer(cluster.url("httpfs", [gw]))
    result = syncer.cycle()
    assert result.status == INSTALLED, result.message
    assert result.attempts == 2
    opens = [r for r in gw.served.ops("OPEN") if r[1].endswith("emb/ad_id.npy")]
    assert len(opens) == 2
    assert "offset" not in opens[0][2] and int(opens[1][2]["offset"]) == 50_000
    load_package(syncer.repo.path("ctr", "v1"))


def test_corrupted_file_not_installed_alarm_raised_old_version_live(cluster, make_syncer, webhook):
    cluster.publish("v1", seed=1)
    gws = cluster.httpfs(2)
    syncer = make_syncer(cluster.url("httpfs", gws), alarm_webhook=webhook.url, retries=1)
    assert syncer.cycle().status == INSTALLED
    syncer.repo.promote("ctr", "v1", time.time())
    cluster.publish("v2", seed=2)
    for gw in gws:
        gw.faults.corrupt.add("mlp/w0.npy")
    result = syncer.cycle()
    assert result.status == FAILED
    assert "mlp/w0.npy: md5 mismatch" in result.message
    assert result.attempts == 2
    assert not syncer.repo.path("ctr", "v2").exists()
    assert syncer.repo.wanted("ctr") == "v1" and syncer.repo.state("ctr").live == "v1"
    assert staging_empty(syncer.repo)
    (alarm,) = webhook.wait_for(1)
    assert alarm["event"] == "ctr_sync_failed" and alarm["model"] == "ctr"
    assert alarm["live_version"] == "v1" and alarm["consecutive_failures"] == 1
    assert "md5 mismatch" in alarm["error"]
    assert syncer.status.consecutive_failures == 1

    # The source is fixed: the next cycle installs v2 and the alarm clears.
    for gw in gws:
        gw.faults.corrupt.clear()
    assert syncer.cycle().status == INSTALLED
    assert syncer.status.consecutive_failures == 0
    recovered = webhook.wait_for(2)[-1]
    assert recovered["event"] == "ctr_sync_recovered"


def test_invalid_package_rejected_once_not_downloaded_again(cluster, make_syncer, webhook):
    import numpy as np

    from scoring.model.checksums import format_checksums, md5_file, package_files

    pkg = cluster.publish("v1", seed=1)
    table = np.load(pkg / "mlp/w0.npy")
    table[0, 0] = np.nan
    np.save(pkg / "mlp/w0.npy", table)
    (pkg / CHECKSUMS).write_text(format_checksums({n: md5_file(pkg / n) for n in package_files(pkg)}))
    (gw,) = cluster.httpfs(1)
    syncer = make_syncer(cluster.url("httpfs", [gw]), alarm_webhook=webhook.url)
    result = syncer.cycle()
    assert result.status == FAILED and "mlp/w0.npy" in result.message and "non-finite" in result.message
    assert result.attempts == 1  # validation failures are final, not retried
    assert syncer.repo.versions("ctr") == []
    served = gw.served.file_bytes(exclude=(CHECKSUMS,))
    again = syncer.cycle()
    assert again.status == FAILED and "refused before and has not changed" in again.message
    assert "non-finite" in again.message
    assert gw.served.file_bytes(exclude=(CHECKSUMS,)) == served  # nothing downloaded again
    assert len(webhook.wait_for(2)) == 2
    # the refusal is in the repository, so another process (cron's next --once) skips it too
    later = make_syncer(cluster.url("httpfs", [gw]))
    assert later.cycle().status == FAILED
    assert gw.served.file_bytes(exclude=(CHECKSUMS,)) == served


def test_path_traversal_and_absolute_names_rejected(cluster, make_syncer, tmp_path):
    pkg = cluster.publish("v1", seed=1)
    (gw,) = cluster.httpfs(1)
    good = (pkg / CHECKSUMS).read_text()
    for evil in ("../../../outside.npy", "/etc/passwd", "emb/../../x.npy"):
        (pkg / CHECKSUMS).write_text(good + f"{'0' * 32}  {evil}\n")
        syncer = make_syncer(cluster.url("httpfs", [gw]), retries=0)
        result = syncer.cycle()
        assert result.status == FAILED and evil in result.message, result.message
        assert "relative path inside the package" in result.message
        assert syncer.repo.versions("ctr") == []
    assert not (tmp_path / "outside.npy").exists()


def test_symlink_on_the_source_rejected(cluster, make_syncer):
    pkg = cluster.publish("v1", seed=1)
    (pkg / "emb/ad_id.npy").unlink()
    (pkg / "emb/ad_id.npy").symlink_to("/etc/hostname")
    (gw,) = cluster.httpfs(1)
    syncer = make_syncer(cluster.url("httpfs", [gw]), retries=0)
    result = syncer.cycle()
    assert result.status == FAILED and "emb/ad_id.npy: is a symlink" in result.message
    assert gw.served.file_bytes(exclude=(CHECKSUMS,)) == 0


def test_file_above_size_limit_rejected_before_download(cluster, make_syncer):
    cluster.publish("v1", seed=1)
    (gw,) = cluster.httpfs(1)
    syncer = make_syncer(cluster.url("httpfs", [gw]), max_file_bytes=10_000)
    result = syncer.cycle()
    assert result.status == FAILED and "above the limit of 10000 bytes" in result.message
    assert gw.served.file_bytes(exclude=(CHECKSUMS,)) == 0


def test_an_oversized_manifest_is_refused_before_download(cluster, make_syncer):
    """The manifest is read whole before it is validated: more than 1 MiB is not a manifest."""
    import json

    from scoring.model.checksums import format_checksums, md5_file, package_files

    pkg = cluster.publish("v1", seed=1)
    manifest = json.loads((pkg / "manifest.json").read_text())
    manifest["notes"] = "x" * (2 << 20)
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    (pkg / CHECKSUMS).write_text(format_checksums({n: md5_file(pkg / n) for n in package_files(pkg)}))
    (gw,) = cluster.httpfs(1)
    result = make_syncer(cluster.url("httpfs", [gw]), retries=0).cycle()
    assert result.status == FAILED
    assert "manifest.json" in result.message and "above the limit of 1048576 bytes for a manifest" in result.message
    assert gw.served.file_bytes(exclude=(CHECKSUMS,)) == 0


def test_a_package_above_the_total_size_limit_is_refused_before_download(cluster, make_syncer):
    cluster.publish("v1", seed=1)
    (gw,) = cluster.httpfs(1)
    result = make_syncer(cluster.url("httpfs", [gw]), retries=0, max_package_bytes=20_000).cycle()
    assert result.status == FAILED and "above the limit of 20000 bytes (--max-package-size)" in result.message
    assert gw.served.file_bytes(exclude=(CHECKSUMS,)) == 0


def test_metadata_answers_larger_than_a_mebibyte_are_refused(cluster, make_syncer):
    cluster.publish("v1", seed=1)
    (gw,) = cluster.httpfs(1)
    gw.faults.json_padding = 3 << 20
    declared = make_syncer(cluster.url("httpfs", [gw]), retries=0).cycle()
    assert declared.status == FAILED and "a metadata answer may have" in declared.message
    gw.faults.hide_length = True  # streamed without a length: cut off while reading
    streamed = make_syncer(cluster.url("httpfs", [gw]), retries=0).cycle()
    assert streamed.status == FAILED and "larger than the 1048576 bytes a metadata answer" in streamed.message
    assert gw.served.file_bytes(exclude=(CHECKSUMS,)) == 0


def test_same_version_with_different_content_refused(cluster, make_syncer):
    cluster.publish("v1", seed=1)
    (gw,) = cluster.httpfs(1)
    syncer = make_syncer(cluster.url("httpfs", [gw]))
    assert syncer.cycle().status == INSTALLED
    cluster.publish("v1", seed=7)
    result = syncer.cycle()
    assert result.status == FAILED and "each export needs a new version" in result.message
    assert syncer.repo.versions("ctr") == ["v1"]


def test_user_name_sent_and_missing_path_is_a_clear_final_error(cluster, make_syncer):
    cluster.publish("v1", seed=1)
    (gw,) = cluster.httpfs(1)
    gw.faults.require_user = "mlops"
    denied = make_syncer(cluster.url("httpfs", [gw]), retries=2).cycle()
    assert denied.status == FAILED and "SecurityException" in denied.message and denied.attempts == 1
    ok = make_syncer(cluster.url("httpfs", [gw]) + "?user.name=mlops").cycle()
    assert ok.status == INSTALLED
    missing = make_syncer(cluster.url("httpfs", [gw], "/models/nope"), user="mlops", retries=2,
                          model="other").cycle()
    assert missing.status == FAILED and missing.attempts == 1
    assert "FileNotFoundException: File does not exist: /models/nope/checksums.md5" in missing.message
    assert "the package directory /models/nope does not exist" in missing.message


def test_missing_checksums_explained_by_getfilestatus(cluster, make_syncer):
    (cluster.root / "models/empty").mkdir(parents=True)
    (cluster.root / "models/file.npy").write_bytes(b"x")
    (gw,) = cluster.httpfs(1)
    empty = make_syncer(cluster.url("httpfs", [gw], "/models/empty")).cycle()
    assert empty.status == FAILED and "/models/empty exists but has no checksums.md5" in empty.message
    a_file = make_syncer(cluster.url("httpfs", [gw], "/models/file.npy"), repo=cluster.root.parent / "r2").cycle()
    assert a_file.status == FAILED and "/models/file.npy is a file; --source must name the package directory" \
        in a_file.message
    assert [r[0] for r in gw.served.requests].count("GETFILESTATUS") == 2


def test_backups_rotate_and_live_version_is_never_deleted(cluster, make_syncer):
    (gw,) = cluster.httpfs(1)
    syncer = make_syncer(cluster.url("httpfs", [gw]), keep=2)
    cluster.publish("v1", seed=1)
    assert syncer.cycle().status == INSTALLED
    syncer.repo.promote("ctr", "v1", time.time())
    for i in range(2, 6):  # the service never swaps away from v1 (say, an operator pinned it)
        cluster.publish(f"v{i}", seed=i)
        assert syncer.cycle().status == INSTALLED
        versions = syncer.repo.versions("ctr")
        assert "v1" in versions and f"v{i}" in versions
        assert versions == ["v1", f"v{i}"]  # keep=2 counts the live one
    # The service swaps to v5; v1 stays as the rollback target, and the next export rotates it out.
    syncer.repo.promote("ctr", "v5", time.time())
    assert syncer.cycle().status == UNCHANGED
    assert syncer.repo.versions("ctr") == ["v1", "v5"]
    cluster.publish("v6", seed=6)
    assert syncer.cycle().status == INSTALLED
    assert syncer.repo.versions("ctr") == ["v5", "v6"]


def test_keep_one_never_deletes_the_version_waiting_to_go_live(cluster, make_syncer):
    (gw,) = cluster.httpfs(1)
    syncer = make_syncer(cluster.url("httpfs", [gw]), keep=1)
    cluster.publish("v1", seed=1)
    syncer.cycle()
    syncer.repo.promote("ctr", "v1", time.time())
    cluster.publish("v2", seed=2)
    assert syncer.cycle().status == INSTALLED
    assert syncer.repo.versions("ctr") == ["v1", "v2"]
    syncer.repo.promote("ctr", "v2", time.time())
    syncer.cycle()
    assert syncer.repo.versions("ctr") == ["v2"]


def test_rolled_back_version_is_not_downloaded_again(cluster, make_syncer):
    (gw,) = cluster.httpfs(1)
    syncer = make_syncer(cluster.url("httpfs", [gw]))
    cluster.publish("v1", seed=1)
    syncer.cycle()
    syncer.repo.promote("ctr", "v1", time.time())
    cluster.publish("v2", seed=2)
    syncer.cycle()
    syncer.repo.promote("ctr", "v2", time.time())
    syncer.repo.rollback("ctr", expected="v2")
    before = gw.served.file_bytes(exclude=(CHECKSUMS,))
    result = syncer.cycle()
    assert result.status == UNCHANGED and "after a rollback" in result.message
    assert syncer.repo.wanted("ctr") == "v1"
    assert gw.served.file_bytes(exclude=(CHECKSUMS,)) == before


def test_only_one_process_syncs_a_model(cluster, make_syncer):
    cluster.publish("v1", seed=1)
    (gw,) = cluster.httpfs(1)
    a = make_syncer(cluster.url("httpfs", [gw]))
    b = make_syncer(cluster.url("httpfs", [gw]))
    with a._sync_lock(wait=False) as held:
        assert held
        assert b.cycle().status == SKIPPED
    assert b.cycle().status == INSTALLED
