"""The sampler and the monitor's bookkeeping: one request in 1/rate, drops counted when the queue
is full, overflowing requests sampled too, the gate's ring bounded by rows, old versions
forgotten (windows and metric series)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from scoring.engine import Engine
from scoring.engine.scorer import NonFiniteOutput
from scoring.lifecycle.loader import LiveModel
from scoring.model.package import load_package
from scoring.model.quantize import generated_requests
from scoring.monitor import HealthMonitor, WindowStore
from scoring.monitor import monitor as monitor_mod
from scoring.monitor.metrics import HealthMetrics

from ...health_models import huge_weights, write


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return Engine(load_package(write(tmp_path_factory.mktemp("mon") / "m", "v1")))


def test_one_request_in_stride_is_sampled():
    m = HealthMonitor(WindowStore(100), rate=0.05)
    assert sum(m.due() for _ in range(1000)) == 50
    assert not any(HealthMonitor(WindowStore(100), rate=0.0).due() for _ in range(100))
    with pytest.raises(ValueError, match="sample rate"):
        HealthMonitor(WindowStore(100), rate=1.5)


def test_a_full_queue_drops_and_counts(engine):
    reg = CollectorRegistry()
    m = HealthMonitor(WindowStore(10**6), rate=1.0, queue=3, metrics=HealthMetrics(reg))
    live = LiveModel("ctr", "v1", engine)
    for ctx, ads in generated_requests(engine.package, 5, 10, seed=1):
        engine.score(ctx, ads, m.keeper(live))
    assert (m.sampled, m.dropped) == (3, 2)
    assert b"ctr_health_dropped_samples_total 2.0" in generate_latest(reg)
    m.drain()
    assert m.store.read("ctr", "v1")["current"]["rows"] == 30


def test_the_scanner_path_hands_over_a_copy(engine):
    m = HealthMonitor(WindowStore(10**6), rate=1.0)
    live = LiveModel("ctr", "v1", engine)
    (ctx, ads), = generated_requests(engine.package, 1, 7, seed=2)
    engine.score_json(orjson.dumps({"context": ctx, "ads": ads}), 100, 16, m.keeper(live))
    (_, batch, _), = list(m._queue)
    want = engine.layout.encode(ctx, ads)
    engine.score_json(orjson.dumps({"context": {}, "ads": ads[:1]}), 100, 16)  # reuses the buffers
    np.testing.assert_array_equal(batch.ad_ids, want.ad_ids)
    np.testing.assert_array_equal(batch.ctx_ids, want.ctx_ids)


def test_requests_the_net_overflows_on_are_sampled_and_counted(tmp_path):
    engine = Engine(load_package(write(tmp_path / "huge", "v9", huge_weights)))
    assert engine.warm_nonfinite
    m = HealthMonitor(WindowStore(10**6), rate=1.0)
    live = LiveModel("ctr", "v9", engine)
    (ctx, ads), = generated_requests(engine.package, 1, 20, seed=3)
    with pytest.raises(NonFiniteOutput):
        engine.score(ctx, ads, m.keeper(live))
    with pytest.raises(NonFiniteOutput):
        engine.score_json(orjson.dumps({"context": ctx, "ads": ads}), 100, 16, m.keeper(live))
    m.drain()
    current = m.store.read("ctr", "v9")["current"]
    assert current["nonfinite"] > 0 and current["rows"] + current["nonfinite"] == 40


def test_the_gate_ring_is_bounded_by_rows(engine, monkeypatch):
    monkeypatch.setattr(monitor_mod, "RECENT_ROWS", 100)
    m = HealthMonitor(WindowStore(10**6), rate=1.0)
    live = LiveModel("ctr", "v1", engine)
    for ctx, ads in generated_requests(engine.package, 12, 30, seed=4):
        m.offer(live, engine.layout.encode(ctx, ads))
    m.drain()
    assert sum(b.n_ads for b in m.recent("ctr")) == 90  # the newest three requests of 30


def test_old_versions_are_forgotten(engine):
    reg = CollectorRegistry()
    m = HealthMonitor(WindowStore(50), rate=1.0, metrics=HealthMetrics(reg))
    (ctx, ads), = generated_requests(engine.package, 1, 60, seed=5)
    for k in range(monitor_mod.VERSIONS_KEPT + 2):
        m.offer(LiveModel("ctr", f"v{k}", engine), engine.layout.encode(ctx, ads))
        m.drain()
    kept = [f"v{k}" for k in range(2, monitor_mod.VERSIONS_KEPT + 2)]
    assert m.store.versions("ctr") == kept
    text = generate_latest(reg).decode()
    assert 'version="v0"' not in text and 'version="v1"' not in text
    assert f'ctr_health_fluctuation{{layer="1",model="ctr",version="{kept[-1]}"}}' in text
