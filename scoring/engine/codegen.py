"""Which machine code the kernels are compiled for: the host's own, tuned by the engine.

LLVM compiles for the host CPU. Its tuning for Intel's AVX-512 cores (Skylake-SP to Sapphire
Rapids, Rocket Lake) *prefers 256-bit vectors*: the loops it vectorises itself (the last layer's
dot products, leftovers of the register tiles, the scanner) get 256-bit code. On an Intel Xeon
(LLVM's ``rocketlake``) turning that preference off (``-prefer-256-bit``) made the MLP 12-14%
faster, one thread, demo net. AMD Zen 5 tuning has no such preference: there the choice
below compiles to the same code as LLVM's default (same instructions, same timings, checked on a
Zen 5). So where the host has AVX-512 the engine compiles with the host's features plus
``-prefer-256-bit``; elsewhere (AVX2 machines, ARM) it leaves LLVM's choice alone.

Operators choose with ``CTR_CPU_FEATURES``:

- ``auto`` (default): the rule above.
- ``host``: LLVM's own choice for the host, untouched.
- ``avx2``: the host's features without AVX-512 (nor AMX / AVX10): for a fleet that must run the
  same code on older machines, or to check the AVX2 path on an AVX-512 machine.
- anything else: an LLVM feature string, used as is (``+avx2,+fma,-avx512f``).

``NUMBA_CPU_FEATURES`` or ``NUMBA_CPU_NAME`` set by the operator win over all of this.

The choice must be made before the first kernel compiles (it is: ``scoring.engine.config`` applies
it on import). Compiled kernels cached on disk are keyed by the CPU name and the feature string,
so changing the choice compiles once more and never loads code built for other features.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

ENV = "CTR_CPU_FEATURES"
_WIDE_PREFIXES = ("avx512", "amx", "avx10", "evex512")


@dataclass(frozen=True)
class Choice:
    cpu: str           # LLVM's name for the host CPU (or NUMBA_CPU_NAME)
    mode: str          # auto-512, auto-host, host, avx2, explicit, numba-env, too-late
    features: str | None  # the feature string handed to Numba, None for LLVM's default
    reason: str

    def describe(self) -> str:
        return f"{self.cpu}: {self.mode} ({self.reason})"


def has_avx512(features: str) -> bool:
    return "+avx512f" in features.split(",")


def without_avx512(features: str) -> str:
    """``features`` with every AVX-512, AMX and AVX10 feature switched off."""
    out = []
    for f in features.split(","):
        name = f[1:]
        if f.startswith("+") and name.startswith(_WIDE_PREFIXES):
            out.append("-" + name)
        else:
            out.append(f)
    return ",".join(out)


def decide(cpu: str, host_features: str, setting: str | None) -> Choice:
    """The code generation for a host with LLVM name ``cpu`` and features ``host_features``
    (LLVM's flattened ``+a,-b`` string), given the operator's ``CTR_CPU_FEATURES``."""
    setting = (setting or "auto").strip()
    if setting == "auto":
        if has_avx512(host_features):
            return Choice(cpu, "auto-512", host_features + ",-prefer-256-bit",
                          "AVX-512 host: full-width vectors (-prefer-256-bit)")
        return Choice(cpu, "auto-host", None, "no AVX-512: LLVM's choice for the host")
    if setting == "host":
        return Choice(cpu, "host", None, f"{ENV}=host: LLVM's choice for the host")
    if setting == "avx2":
        return Choice(cpu, "avx2", without_avx512(host_features),
                      f"{ENV}=avx2: AVX-512 switched off")
    return Choice(cpu, "explicit", setting, f"{ENV} set by the operator")


_CHOICE: Choice | None = None


def apply() -> Choice:
    """Decide once per process and hand the result to Numba before anything compiles."""
    global _CHOICE
    if _CHOICE is not None:
        return _CHOICE
    import llvmlite.binding as ll
    from numba.core import config
    from numba.core.registry import cpu_target

    cpu = config.CPU_NAME or ll.get_host_cpu_name()
    if os.environ.get("NUMBA_CPU_FEATURES") or os.environ.get("NUMBA_CPU_NAME"):
        _CHOICE = Choice(cpu, "numba-env", config.CPU_FEATURES,
                         "NUMBA_CPU_* set by the operator or by the shipped kernels")
        return _CHOICE
    choice = decide(cpu, ll.get_host_cpu_features().flatten(), os.environ.get(ENV))
    if "_toplevel_target_context" in vars(cpu_target):  # a cached property, set once built
        # something compiled before the engine was imported: the target machine is fixed
        current = getattr(cpu_target.target_context.codegen(), "_tm_features", None)
        _CHOICE = Choice(cpu, "too-late", current,
                         "Numba compiled code before the engine was imported; its choice stands")
        return _CHOICE
    config.CPU_FEATURES = choice.features
    _CHOICE = choice
    return choice


def current() -> Choice:
    """The choice this process runs with (deciding it if nothing has yet)."""
    return apply()


def target_has(feature: str) -> bool:
    """Whether the code the kernels are compiled to may use ``feature`` (e.g. "avx512bf16")."""
    import llvmlite.binding as ll
    from numba.core import config

    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else \
        ll.get_host_cpu_features().flatten()
    return f"+{feature}" in features.split(",")
