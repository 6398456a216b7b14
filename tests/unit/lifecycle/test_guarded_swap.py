"""The guarded swap in the registry and the repository state, with several worker processes
(registries over one repository): the first decision on a version stands for every worker, an
admin's forced promote reaches them all and is tied to the files, and a version whose net
overflowed on warm-up never serves unjudged."""

from __future__ import annotations

import numpy as np
import pytest

from scoring.errors import ScoringError
from scoring.lifecycle.loader import LiveModel
from scoring.lifecycle.registry import Registry
from scoring.monitor.gate import Decision
from scoring.serving.metrics import Metrics

from .test_registry import FakeLoader, FakeScorer, install


class Gate:
    """The registry's gate interface; holds the versions in ``hold``."""

    def __init__(self, hold=()) -> None:
        self.hold = set(hold)
        self.judged: list[str] = []

    def judge(self, candidate, current):
        self.judged.append(candidate.version)
        bad = candidate.version in self.hold
        return Decision(version=candidate.version, against=current.version if current else None,
                        passed=not bad, reasons=["mean log-odds shift +2"] if bad else [])

    def held(self, name, version, decision):
        pass

    def forced(self, name, version, current):
        return Decision(version=version, against=None, passed=True, result="forced")

    def last(self, name):
        return None


def worker(repo, hold=(), loader=None):
    reg = Registry(repo, loader=loader or FakeLoader(), metrics=Metrics())
    reg.gate = Gate(hold)
    reg.sync_all()
    return reg


def test_the_first_workers_hold_stands_for_every_worker(repo):
    a, b = worker(repo, hold={"v2"}), worker(repo)  # b's own judgement would pass v2
    install(repo, "v2")
    assert a.sync("ctr").held[0] == "v2"
    b.sync_all()
    assert a.get("ctr").version == b.get("ctr").version == "v1"
    assert "v2" not in b.gate.judged  # b never even loaded it
    assert repo.promote("ctr", "v2", 1e12) == "v1"  # nobody records a held version unforced
    assert b.describe("ctr")["held"] == {"v2": "mean log-odds shift +2"}


def test_a_version_live_elsewhere_is_followed_not_rejudged(repo):
    a, b = worker(repo), worker(repo, hold={"v2"})
    install(repo, "v2")
    a.sync_all()
    assert a.get("ctr").version == "v2"
    assert repo.hold("ctr", "v2", "late", repo.fingerprint("ctr", "v2")) is False
    b.sync_all()
    assert b.get("ctr").version == "v2" and "v2" not in b.gate.judged


def test_a_forced_promote_reaches_every_worker_and_is_tied_to_the_files(repo):
    a, b = worker(repo, hold={"v2"}), worker(repo, hold={"v2"})
    install(repo, "v2")
    a.sync_all()
    b.sync_all()
    with pytest.raises(ScoringError, match="is held back: mean log-odds shift"):
        a.promote("ctr", "v2")  # judged again, held again
    assert repo.state("ctr").live == "v1" and not repo.is_forced("ctr", "v2")
    result = a.promote("ctr", "v2", force=True)
    assert result.live == "v2" and result.changed
    b.sync_all()
    assert b.get("ctr").version == "v2"
    assert repo.is_forced("ctr", "v2") and not repo.state("ctr").held
    (repo.path("ctr", "v2") / "manifest.json").write_text('{"changed": 1}')  # other files now
    assert not repo.is_forced("ctr", "v2")


def test_promote_on_a_lagging_worker_records_the_version(repo):
    a, b = worker(repo), worker(repo)
    install(repo, "v2")
    a.sync_all()
    b.sync_all()
    a.rollback("ctr", to="v1")  # b still serves v2 until its next poll
    result = b.promote("ctr", "v2")
    assert result.live == "v2" and repo.state("ctr").live == "v2"  # recorded, not "already live"
    a.sync_all()
    assert a.get("ctr").version == "v2"


def test_a_rollback_to_a_held_version_clears_the_hold(repo):
    a = worker(repo, hold={"v2"})
    install(repo, "v2")
    a.sync_all()
    assert "v2" in repo.state("ctr").held
    a.rollback("ctr", to="v2")
    assert repo.state("ctr").live == "v2" and "v2" not in repo.state("ctr").held
    assert repo.wanted("ctr") == "v2"


class Overflowing(FakeLoader):
    def __call__(self, name, version, path):
        super().__call__(name, version, path)
        scorer = FakeScorer(version)
        scorer.warm_nonfinite = version == "v2"
        return LiveModel(name=name, version=version, scorer=scorer, path=path)


@pytest.mark.parametrize("gate", [None, "failing"])
def test_a_net_that_overflowed_on_warm_up_never_serves_unjudged(repo, gate):
    reg = Registry(repo, loader=Overflowing(), metrics=Metrics())
    if gate == "failing":
        class Broken(Gate):
            def judge(self, candidate, current):
                raise RuntimeError("a bug in the gate")
        reg.gate = Broken()
    reg.sync_all()
    install(repo, "v2")
    result = reg.sync("ctr")
    assert result.failed and "not a number on the warm-up requests" in result.failed[1]
    assert reg.get("ctr").version == "v1" and repo.is_rejected("ctr", "v2")
    assert np.isfinite(reg.get("ctr").scorer.score({}, [{}]).all())


def test_a_held_version_that_passes_when_judged_again_is_promoted(repo):
    a, b = worker(repo, hold={"v2"}), worker(repo)
    install(repo, "v2")
    a.sync_all()
    assert "v2" in repo.state("ctr").held
    a.gate.hold.clear()  # the traffic (or the limits) changed: it passes now
    assert a.promote("ctr", "v2").live == "v2"
    state = repo.state("ctr")
    assert state.live == "v2" and not state.held and "v2" not in state.forced
    b.sync_all()
    assert b.get("ctr").version == "v2"
