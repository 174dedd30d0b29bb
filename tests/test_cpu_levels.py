"""Runtime instruction-set dispatch of the CPU backend (lowrank_hpc._cpu_isa): the level chosen,
the environment variable that lowers it, and every built level computing the same kernels."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import lowrank_hpc as lr
from lowrank_hpc import _backend, _cpu_isa

# Run in a subprocess at a given level: the kernels' results on fixed seeded data, as lists.
KERNELS_SCRIPT = """
import json, numpy as np, lowrank_hpc as lr
from lowrank_hpc import _backend
rng = np.random.default_rng(7)
out = {"level": _backend.cpu_module().CPU_LEVEL}
for r in (1, 3, 8, 20, 37):
    U, V = rng.standard_normal((50, r)), rng.standard_normal((40, r))
    rows, cols = rng.integers(0, 50, 600), rng.integers(0, 40, 600)
    vals = rng.standard_normal(600)
    out[f"sampled_{r}"] = lr.ops.sampled_product(U, V, rows, cols).tolist()
    out[f"spmm_{r}"] = lr.ops.sparse_times_dense(rows, cols, vals, V, 50).ravel().tolist()
    out[f"spmm_t_{r}"] = lr.ops.sparse_times_dense(rows, cols, vals, U, 40, transpose=True).ravel().tolist()
    out[f"sampled32_{r}"] = lr.ops.sampled_product(U.astype(np.float32), V.astype(np.float32), rows,
                                                   cols).astype(np.float64).tolist()
# The selections' vectorised tests (16 magnitudes at a time; compressed stores on AVX-512): the
# kept positions, exactly. 200,007 float keys (a tail of 7) of unequal columns; row top-k of
# half-integer products (exact ties) on 203 columns (the chunk-bounded path).
values = (np.outer(rng.standard_normal(201), rng.gamma(0.5, size=1000)).ravel()[:200_007]).astype(np.float32)
for k in (1, 17, 20_000, 150_000):
    positions = np.empty(k, dtype=np.int64)
    _backend.cpu_module().select_top_magnitudes(values, np.arange(0, 200_007, 7), positions)
    out[f"select_{k}"] = positions.tolist()
U, V = rng.integers(-2, 3, (30, 4)) * 0.5, rng.integers(-2, 3, (203, 4)) * 0.5
for k in (1, 5, 14):
    out[f"top_rows_{k}"] = lr.ops.kernel_product(U, V, "tanh", k).indices.ravel().tolist()
print(json.dumps(out))
"""


def run_at(level: str) -> dict:
    env = {**os.environ, _cpu_isa.ENVIRONMENT_VARIABLE: level}
    done = subprocess.run([sys.executable, "-c", KERNELS_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def usable_levels() -> list[str]:
    return [level for level in _cpu_isa.built_levels() if level in _cpu_isa.processor_levels()]


def test_the_widest_usable_level_runs_and_info_says_which():
    expected = os.environ.get(_cpu_isa.ENVIRONMENT_VARIABLE) or max(usable_levels(), key=_cpu_isa.LEVELS.index)
    assert _backend.cpu_module().CPU_LEVEL == expected
    assert lr.info()["cpu_level"] == expected and lr.info()["cpu_levels_built"] == _cpu_isa.built_levels()
    assert "baseline" in _cpu_isa.built_levels() and _cpu_isa.processor_levels()[0] == "baseline"


def test_x86_64_builds_compile_every_level():
    """On x86-64 with g++ >= 11 or clang >= 12 (the compilers that know -march=x86-64-v3/v4)
    all three levels are built."""
    import platform

    from lowrank_hpc import _build_info

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the wider levels are x86-64 only")
    compiler, _, version = _build_info.CXX_COMPILER.partition(" ")
    major = int(version.split(".")[0]) if version[:1].isdigit() else 0
    if major < (11 if compiler == "GNU" else 12):
        pytest.skip(f"{_build_info.CXX_COMPILER} may not know -march=x86-64-v3/v4")
    assert _cpu_isa.built_levels() == ["baseline", "avx2", "avx512"]
    for level in _cpu_isa.built_levels():  # each module imports (on a processor that runs it)
        if level in _cpu_isa.processor_levels():
            module = importlib.import_module(f"lowrank_hpc.{_cpu_isa.MODULES[level]}")
            assert module.CPU_LEVEL == level


def test_the_environment_variable_picks_a_level_and_rejects_bad_ones(monkeypatch):
    monkeypatch.setenv(_cpu_isa.ENVIRONMENT_VARIABLE, "baseline")
    assert _cpu_isa.choose_level() == "baseline"
    monkeypatch.setenv(_cpu_isa.ENVIRONMENT_VARIABLE, "AVX9")
    with pytest.raises(ValueError, match="LOWRANK_HPC_CPU_LEVEL='avx9': expected one of baseline, avx2, avx512"):
        _cpu_isa.choose_level()
    monkeypatch.setattr(_cpu_isa, "processor_levels", lambda: ["baseline"])
    monkeypatch.setenv(_cpu_isa.ENVIRONMENT_VARIABLE, "avx512")
    with pytest.raises(ValueError, match="cannot run here \\(this processor lacks it\\); usable: baseline"):
        _cpu_isa.choose_level()
    monkeypatch.delenv(_cpu_isa.ENVIRONMENT_VARIABLE)
    assert _cpu_isa.choose_level() == "baseline"  # an old processor gets the baseline


def test_every_level_computes_the_same_kernels():
    """The wider builds differ from the baseline only by the rounding of their summation order."""
    levels = usable_levels()
    if len(levels) < 2:
        pytest.skip(f"only {levels} can run on this machine")
    results = {level: run_at(level) for level in levels}
    baseline = results["baseline"]
    for level, result in results.items():
        assert result["level"] == level
        for key, values in baseline.items():
            if key == "level":
                continue
            tolerance = 1e-5 if "32" in key else 1e-12
            np.testing.assert_allclose(result[key], values, rtol=tolerance, atol=tolerance, err_msg=f"{level} {key}")
