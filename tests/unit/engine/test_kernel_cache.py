"""Shipped compiled kernels: which level a host picks and what is copied
(tests/integration/test_kernel_cache_start.py starts the service on them)."""

from __future__ import annotations

from scoring.engine.kernel_cache import LEVELS, MARKER, runs, select

V3_HOST = {f[1:]: True for f in LEVELS["x86-64-v3"][1].split(",") if f.startswith("+")}
V4_HOST = {**V3_HOST, **{f: True for f in ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")}}
BF16_HOST = {**V4_HOST, "avx512bf16": True}


def shipped(tmp_path, *levels):
    root = tmp_path / "shipped"
    for lv in levels:
        (root / lv / "engine_x").mkdir(parents=True)
        (root / lv / "engine_x" / "kernels.f-1.py311.nbi").write_text(lv)
        (root / lv / MARKER).write_text(lv)
    return root


def test_the_best_level_the_host_runs_is_picked(tmp_path):
    assert runs("x86-64-v3", V3_HOST) and not runs("x86-64-v4", V3_HOST)
    assert runs("x86-64-v4", V4_HOST) and not runs("x86-64-v4-bf16", V4_HOST)
    assert runs("x86-64-v4-bf16", BF16_HOST)
    root = shipped(tmp_path, *LEVELS)
    for host, level in ((V3_HOST, "x86-64-v3"), (V4_HOST, "x86-64-v4"), (BF16_HOST, "x86-64-v4-bf16")):
        env = {"NUMBA_CACHE_DIR": str(tmp_path / f"cache-{level}")}
        sel = select(root, env, host)
        assert sel.level == level and sel.copied == 1
        assert (env["NUMBA_CPU_NAME"], env["NUMBA_CPU_FEATURES"]) == LEVELS[level]
        copied = tmp_path / f"cache-{level}" / "engine_x" / "kernels.f-1.py311.nbi"
        assert copied.read_text() == level and not (tmp_path / f"cache-{level}" / MARKER).exists()
    # a level the image lacks is never borrowed from a better one
    only_v4 = shipped(tmp_path / "b", "x86-64-v4")
    assert select(only_v4, {}, V3_HOST).level is None


def test_restart_keeps_the_cache_and_the_operator_wins(tmp_path):
    root = shipped(tmp_path, "x86-64-v3")
    cache = tmp_path / "cache"
    env = {"NUMBA_CACHE_DIR": str(cache)}
    assert select(root, env, V3_HOST).copied == 1
    (cache / "engine_x" / "kernels.f-1.py311.nbi").write_text("newer, written by Numba")
    assert select(root, {"NUMBA_CACHE_DIR": str(cache)}, V3_HOST).copied == 0  # nothing overwritten
    assert (cache / "engine_x" / "kernels.f-1.py311.nbi").read_text() == "newer, written by Numba"
    env = {"NUMBA_CPU_NAME": "znver4"}
    sel = select(root, env, V3_HOST)
    assert sel.level is None and "operator" in sel.reason and env == {"NUMBA_CPU_NAME": "znver4"}
    assert select(tmp_path / "nothing", {}, V3_HOST).level is None
    assert select(root, {}, {}).level is None  # a host LLVM cannot describe (or another arch)


def test_build_compiles_each_level_the_machine_runs_with_its_target(tmp_path, monkeypatch):
    import scoring.engine.kernel_cache as kc

    calls = []
    monkeypatch.setattr(kc.subprocess, "run", lambda argv, env, check: calls.append(env))
    monkeypatch.setattr(kc, "host_features", lambda: BF16_HOST)
    kc.build(tmp_path / "all")
    assert [(e["NUMBA_CPU_NAME"], e["NUMBA_CPU_FEATURES"]) for e in calls] == list(LEVELS.values())
    assert [e["NUMBA_CACHE_DIR"] for e in calls] == [str(tmp_path / "all" / lv) for lv in LEVELS]
    assert all((tmp_path / "all" / lv / MARKER).read_text().strip() == lv for lv in LEVELS)
    calls.clear()
    monkeypatch.setattr(kc, "host_features", lambda: V3_HOST)
    kc.build(tmp_path / "v3")  # the levels this machine cannot run are skipped, not built broken
    assert [e["NUMBA_CPU_NAME"] for e in calls] == ["x86-64-v3"]
    assert sorted(p.name for p in (tmp_path / "v3").iterdir()) == ["x86-64-v3"]


def test_an_unusable_cache_directory_means_compiling_not_crashing(tmp_path):
    root = shipped(tmp_path, "x86-64-v3")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    env = {"NUMBA_CACHE_DIR": str(blocker / "cache")}
    sel = select(root, env, V3_HOST)
    assert sel.level is None and "cannot copy" in sel.reason
    assert "NUMBA_CPU_NAME" not in env and "NUMBA_CPU_FEATURES" not in env
    dry = select(root, {}, V3_HOST, dry_run=True)  # ctr-kernels show: says, copies nothing
    assert dry.level == "x86-64-v3" and dry.copied == 0
