"""Code generation chosen for the host: the rule, the operator's override, and the AVX2 path
compiled for real on whatever machine runs the tests (AVX-512 forced off)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from scoring.engine import codegen

from ...models import make_model

INTEL_AVX512 = "+64bit,+avx,+avx2,+fma,+avx512f,+avx512bw,+avx512vl,+avx512dq,+amx-tile,-avx512fp16"
AVX2_ONLY = "+64bit,+avx,+avx2,+fma,-avx512f,-avx512bw"


def test_avx512_hosts_get_full_width_vectors():
    c = codegen.decide("rocketlake", INTEL_AVX512, None)
    assert c.mode == "auto-512"
    assert c.features == INTEL_AVX512 + ",-prefer-256-bit"
    assert codegen.decide("znver5", INTEL_AVX512, "auto").features.endswith(",-prefer-256-bit")


def test_hosts_without_avx512_keep_llvms_choice():
    c = codegen.decide("znver3", AVX2_ONLY, None)
    assert (c.mode, c.features) == ("auto-host", None)


def test_operator_overrides():
    assert codegen.decide("x", INTEL_AVX512, "host").features is None
    forced = codegen.decide("x", INTEL_AVX512, "avx2").features.split(",")
    assert "-avx512f" in forced and "-avx512bw" in forced and "-amx-tile" in forced
    assert "+avx2" in forced and "+fma" in forced and not any(
        f.startswith("+avx512") or f.startswith("+amx") for f in forced)
    assert codegen.decide("x", INTEL_AVX512, " +avx2,-avx512f ").features == "+avx2,-avx512f"


def test_the_process_reports_its_choice():
    from scoring.engine import config
    assert config.CODEGEN is codegen.current()
    assert config.CODEGEN.describe().startswith(config.CODEGEN.cpu)


_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from numba.core.registry import cpu_target
    from scoring.engine import Engine, config, kernels
    from scoring.model.package import load_package
    from scoring.model.reference import reference_scores
    import orjson
    sys.path.insert(0, sys.argv[2])
    from tests.models import random_request
    pkg = load_package(sys.argv[1])
    engine = Engine(pkg)
    rng = np.random.default_rng(5)
    worst = 0.0
    for n in (1, 7, 40):
        ctx, ads = random_request(rng, pkg, n)
        want = reference_scores(pkg, ctx, ads)
        got = engine.score(ctx, ads)
        body = orjson.dumps({"context": ctx, "ads": ads})
        fast = engine.score_json(body, 1000, 64)
        assert fast is not None, "the scanner refused a well-formed body"
        worst = max(worst, float(np.abs(got - want).max()), float(np.abs(fast[0] - want).max()))
    # the bf16 tiles' portable IR (two float32 FMAs per pair), forced on where the target lacks
    # AVX512-BF16: same values as the reference's bf16 rounding
    from scoring.model.quantize import convert
    from scoring.engine.scorer import pack_layers
    bf = load_package(convert(sys.argv[1], sys.argv[3], mlp="bf16"))
    forced = Engine(bf, warm=False)
    forced.prec = kernels.PREC_BF16_NATIVE
    forced.wpack, forced.ptab = pack_layers([forced.w_ad] + [
        forced.params[o:o + k * n].reshape(k, n) for o, k, n, _, _ in forced.layers.tolist()])
    bf_err = []
    for n in (1, 8, 13, 40):
        ctx, ads = random_request(rng, bf, n)
        bf_err.append(np.abs(forced.score(ctx, ads) - reference_scores(bf, ctx, ads)))
    bf_err = np.concatenate(bf_err)
    bf_worst = float(bf_err.max())
    bf_close = float((bf_err <= 1e-5).mean())  # see tests.models.assert_bf16_close
    # float16 and int8 tables; and every float16 bit pattern widened by the row accumulator
    # (integer operations where the target has no F16C) against NumPy
    compact_worst = 0.0
    for tables in ("fp16", "int8"):
        cp = load_package(convert(sys.argv[1], sys.argv[3] + tables, tables=tables))
        ce = Engine(cp)
        for n in (1, 8, 40):
            ctx, ads = random_request(rng, cp, n)
            compact_worst = max(compact_worst, float(np.abs(ce.score(ctx, ads) - reference_scores(cp, ctx, ads)).max()))
    from numba import njit
    from scoring.engine.simd import make_row_accumulate
    acc16 = make_row_accumulate("float16")

    @njit(_nrt=False)
    def widen_all(out, addr):
        acc16(out, 0, 0, addr, out.shape[1], 1.0, 0.0)

    halves = np.arange(65536, dtype=np.uint16)
    got = np.zeros((1, 65536), np.float32)
    widen_all(got, halves.ctypes.data)
    want = halves.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    half_exact = bool((np.isnan(got[0]) == nan).all() and (got[0][~nan] == want[~nan]).all())
    asm = "".join(kernels.forward.inspect_asm().values())
    print(json.dumps({"mode": config.CODEGEN.mode, "bf16_worst": bf_worst, "bf16_close": bf_close,
                      "compact_worst": compact_worst, "half_exact": half_exact,
                      "tm": cpu_target.target_context.codegen()._tm_features,
                      "worst": worst, "zmm": "zmm" in asm, "ymm": "ymm" in asm}))
""")


def _run_child(tmp_path, setting: str, **extra_env: str) -> dict:
    model = make_model(tmp_path / "model", hidden=(64, 32), dense_dim=0)
    env = dict(os.environ, CTR_CPU_FEATURES=setting, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("NUMBA_CPU_FEATURES", None)
    env.pop("NUMBA_CPU_NAME", None)
    env.update(extra_env)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    out = subprocess.run([sys.executable, "-c", _CHILD, str(model), root, str(tmp_path / "bf16")],
                         env=env,
                         capture_output=True, text=True, timeout=600, cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_avx2_code_path_scores_exactly_on_this_machine(tmp_path):
    """Kernels compiled with AVX-512 switched off: no 512-bit register in the forward kernel,
    and the scores (decoded and scanned paths) still match the float64 reference."""
    r = _run_child(tmp_path, "avx2")
    assert r["mode"] == "avx2"
    assert "+avx512f" not in r["tm"].split(",")
    assert not r["zmm"], "AVX-512 registers in code compiled for AVX2"
    assert r["ymm"], "no 256-bit vectors: the kernels lost their SIMD"
    assert r["worst"] < 1e-5
    # the bf16 tiles' portable form (no AVX512-BF16 in the target); rounding ties aside, exact
    assert r["bf16_worst"] < 5e-3 and r["bf16_close"] >= 0.97
    assert r["compact_worst"] < 1e-5 and r["half_exact"]


def test_baseline_x86_64_target_without_f16c(tmp_path):
    """``NUMBA_CPU_NAME=generic`` (Numba's portable target: SSE2, no F16C, no FMA): every
    kernel still compiles and links (float16 rows widened with integer operations, not a
    libcall the JIT cannot resolve), every float16 bit pattern widens exactly, and float32,
    float16, int8 and bf16 models score like the reference."""
    r = _run_child(tmp_path, "auto", NUMBA_CPU_NAME="generic")
    assert r["mode"] == "numba-env"
    assert "+f16c" not in r["tm"].split(",")
    assert not r["zmm"]
    assert r["worst"] < 1e-5 and r["compact_worst"] < 1e-5
    assert r["bf16_worst"] < 5e-3 and r["bf16_close"] >= 0.97
    assert r["half_exact"]
