"""Pinned versions for experiment arms: loaded beside the live one, failures remembered by the
files' fingerprint (a copy still under way is tried again once it is whole), cleared by an
operator's reload, the registry's overflow check applied, an abort dropped at once."""

from __future__ import annotations

import shutil

import pytest

from scoring.lifecycle.loader import LiveModel
from scoring.lifecycle.registry import Registry
from scoring.lifecycle.repo import ModelRepo
from scoring.upstream.layers import ModelRef
from scoring.upstream.pins import VersionPins
from tests.models import make_model


class Scorer:
    warm_nonfinite = False


def install(repo: ModelRepo, version: str, seed: int) -> None:
    staged = repo.staging_dir("ctr")
    make_model(staged, seed=seed, version=version)
    repo.install("ctr", staged, version)
    shutil.rmtree(staged, ignore_errors=True)


def setup(tmp_path):
    repo = ModelRepo(tmp_path / "repo")
    install(repo, "v1", 1)
    loads, broken, overflow = [], set(), set()

    def loader(name, version, path):
        loads.append(version)
        if version in broken:
            raise OSError(f"{version}: half copied")
        scorer = Scorer()
        scorer.warm_nonfinite = version in overflow
        return LiveModel(name=name, version=version, scorer=scorer)

    registry = Registry(repo, models=["ctr"], loader=loader)
    registry.sync_all()
    return repo, registry, loads, broken, overflow


PIN = ModelRef("ctr", "v2")


@pytest.mark.parametrize("how", ["reload", "files change"])
def test_a_failed_pin_is_tried_again_on_reload_or_when_its_files_change(tmp_path, how):
    repo, registry, loads, broken, _ = setup(tmp_path)
    pins = VersionPins(registry, [PIN])
    install(repo, "v2", 2)
    broken.add("v2")  # e.g. still being copied
    pins.refresh()
    pins.refresh()  # the same files: not loaded again
    assert loads.count("v2") == 1 and pins.get(PIN) is None
    assert "half copied" in pins.describe()[0]["error"]
    broken.clear()
    if how == "reload":
        registry.reload("ctr")  # POST /v1/models/ctr/reload clears the failure
    else:
        (repo.path("ctr", "v2") / "extra.txt").write_text("the copy went on")  # new fingerprint
    pins.refresh()
    assert loads.count("v2") == 2 and pins.get(PIN).version == "v2"


def test_a_pin_whose_net_overflows_does_not_serve_and_an_abort_drops_it_at_once(tmp_path):
    repo, registry, loads, _, overflow = setup(tmp_path)
    nxt = ModelRef("ctr", "next")
    pins = VersionPins(registry, [nxt])
    assert registry.canary == frozenset({"ctr"})
    install(repo, "v2", 2)
    overflow.add("v2")
    pins.refresh()
    assert pins.get(nxt) is None and "not a number" in pins.describe()[0]["error"]
    install(repo, "v3", 3)
    registry.sync_all()
    assert registry.live("ctr").version == "v1"  # the canary holds new versions back
    assert "'v3' waits for promotion" in registry.reload("ctr").reason
    pins.refresh()
    assert pins.get(nxt).version == "v3"
    registry.abort("ctr", "v3")
    assert pins.get(nxt) is None  # at once, before the next poll
    pins.refresh()
    assert pins.describe()[0]["version"] != "v3"
