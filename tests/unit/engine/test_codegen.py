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
    bf_worst = 0.0
    for n in (1, 8, 13, 40):
        ctx, ads = random_request(rng, bf, n)
        bf_worst = max(bf_worst, float(np.abs(forced.score(ctx, ads) - reference_scores(bf, ctx, ads)).max()))
    asm = "".join(kernels.forward.inspect_asm().values())
    print(json.dumps({"mode": config.CODEGEN.mode, "bf16_worst": bf_worst,
                      "tm": cpu_target.target_context.codegen()._tm_features,
                      "worst": worst, "zmm": "zmm" in asm, "ymm": "ymm" in asm}))
""")


def _run_child(tmp_path, setting: str) -> dict:
    model = make_model(tmp_path / "model", hidden=(64, 32), dense_dim=0)
    env = dict(os.environ, CTR_CPU_FEATURES=setting, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("NUMBA_CPU_FEATURES", None)
    env.pop("NUMBA_CPU_NAME", None)
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
    assert r["bf16_worst"] < 1e-5  # the bf16 tiles' portable form (no AVX512-BF16 in the target)
