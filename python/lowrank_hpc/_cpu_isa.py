"""Which build of the CPU backend runs: runtime instruction-set dispatch.

The C++ kernels are compiled once per x86-64 level, as separate extension modules: ``_cpu``
(the baseline, SSE2), ``_cpu_avx2`` (x86-64-v3: AVX2 and FMA) and ``_cpu_avx512`` (x86-64-v4:
AVX-512 F/BW/CD/DQ/VL). The widest level that both this build and the processor have is
imported, so one wheel runs on any x86-64 machine at the vector width it offers. The
``LOWRANK_HPC_CPU_LEVEL`` environment variable ("baseline", "avx2" or "avx512") asks for a lower
level, for instance to test the baseline kernels on a newer machine; asking for one the processor
lacks is an error, not a crash on an illegal instruction.

The levels compute the same functions; results differ only by rounding where a wider vector sums
in a different order (the kernels keep a*b + c unfused at every level: -ffp-contract=off).
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType

LEVELS = ("baseline", "avx2", "avx512")
MODULES = {"baseline": "_cpu", "avx2": "_cpu_avx2", "avx512": "_cpu_avx512"}
# numpy's run-time CPU feature names (numpy._core._multiarray_umath.__cpu_features__): the
# psABI levels x86-64-v3 and x86-64-v4 that the modules are compiled for.
_FEATURES = {"avx2": "X86_V3", "avx512": "X86_V4"}
ENVIRONMENT_VARIABLE = "LOWRANK_HPC_CPU_LEVEL"


def _cpu_features() -> dict:
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy < 2
        try:
            from numpy.core._multiarray_umath import __cpu_features__
        except ImportError:
            return {}
    return dict(__cpu_features__)


def processor_levels() -> list[str]:
    """The levels this processor runs (always "baseline"), as numpy's CPU dispatch detects them
    (it checks the OS saves the wide registers too)."""
    features = _cpu_features()
    return ["baseline"] + [level for level in LEVELS[1:] if features.get(_FEATURES[level], False)]


def built_levels() -> list[str]:
    """The levels this installation compiled (one module each)."""
    try:
        from . import _build_info

        return list(getattr(_build_info, "CPU_LEVELS", ["baseline"]))
    except ImportError:
        return ["baseline"]


def choose_level() -> str:
    """The level to import: the widest both built and run here, unless LOWRANK_HPC_CPU_LEVEL
    names a lower one. ValueError for an unknown name or a level that cannot run here."""
    usable = [level for level in built_levels() if level in processor_levels()]
    requested = os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower()
    if not requested:
        return max(usable, key=LEVELS.index)
    if requested not in LEVELS:
        raise ValueError(f"{ENVIRONMENT_VARIABLE}={requested!r}: expected one of {', '.join(LEVELS)}")
    if requested not in usable:
        why = "this processor lacks it" if requested not in processor_levels() else "this build did not compile it"
        raise ValueError(f"{ENVIRONMENT_VARIABLE}={requested!r} cannot run here ({why}); usable: {', '.join(usable)}")
    return requested


def load() -> ModuleType:
    """The CPU backend module of the chosen level."""
    return importlib.import_module(f"{__package__}.{MODULES[choose_level()]}")
