"""Shared fixtures: every kernel test body runs on each available backend and both dtypes.

GPU cases carry the ``gpu`` marker and skip without a device, unless LOWRANK_HPC_REQUIRE_GPU=1,
which turns that skip into a failure so a GPU run cannot pass by skipping everything.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

# JAX takes 75% of GPU memory at its first use unless told not to: with several test processes
# on one GPU that left the others (CuPy, torch, our kernels) out of memory.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import numpy as np
import pytest

import lowrank_hpc
from lowrank_hpc import _backend

REQUIRE_GPU = os.environ.get("LOWRANK_HPC_REQUIRE_GPU", "") not in ("", "0")

# Tolerances of the issue: relative error below 1e-5 (float32) and 1e-12 (float64).
RTOL = {np.float32: 1e-5, np.float64: 1e-12}


_MISSING_GPU = pytest.StashKey[str]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Skip a ``gpu`` test without a usable CUDA backend, or fail it under LOWRANK_HPC_REQUIRE_GPU=1.

    Decided when the test is set up, before its fixtures run: a marker or fixture added after
    collection would never be seen (the fixtures of an item are fixed when it is collected).
    """
    if item.get_closest_marker("gpu") is None or _backend.HAS_CUDA:
        return
    reason = _backend.CUDA_UNAVAILABLE_REASON
    if REQUIRE_GPU:
        item.stash[_MISSING_GPU] = reason
        pytest.fail(f"LOWRANK_HPC_REQUIRE_GPU=1 but the CUDA backend is unavailable: {reason}", pytrace=False)
    pytest.skip(f"no CUDA backend: {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Count a required-but-missing GPU as a failed test (F), not as an error in its setup (E)."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "setup" and report.failed and _MISSING_GPU in item.stash:
        report.when = "call"


class Backend:
    """Moves test data to one backend and back, so one test body serves CPU and GPU."""

    def __init__(self, name: str):
        self.name = name
        self.xp = _backend.cupy_module() if name == "cuda" else np

    def put(self, x):
        return self.xp.asarray(x) if self.name == "cuda" else x

    def get(self, x):
        return x.get() if self.name == "cuda" else np.asarray(x)

    def __repr__(self) -> str:
        return self.name


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def backend(request) -> Backend:
    return Backend(request.param)


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
    return request.param


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261123)


def rel_error(actual, expected) -> float:
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    scale = max(np.linalg.norm(expected), np.finfo(np.float64).tiny)
    return float(np.linalg.norm(actual - expected) / scale)


@pytest.fixture(autouse=True)
def _restore_backend():
    before = lowrank_hpc.get_backend()
    yield
    lowrank_hpc.set_backend(before)


@contextlib.contextmanager
def cpu_threads(threads: int):
    """The CPU kernels on ``threads`` OpenMP threads inside the block, the count before put back
    after it (a failing assertion included)."""
    module = _backend.cpu_module()
    before = module.max_threads()
    module.set_num_threads(threads)
    try:
        yield
    finally:
        module.set_num_threads(before)


def skip_unless_a_lower_level(level: str) -> None:
    """Skip a test that reruns tests in a subprocess at CPU level ``level`` unless that level is
    built, runs here and is below this process's: the process runs its own level, and one forced
    lower (LOWRANK_HPC_CPU_LEVEL) leaves the levels above it to the unforced run."""
    from lowrank_hpc import _cpu_isa

    current = _backend.cpu_module().CPU_LEVEL
    if current == level or level not in _cpu_isa.built_levels() or level not in _cpu_isa.processor_levels():
        pytest.skip(f"this process already runs {level}, or it is not built or not runnable here")
    if _cpu_isa.LEVELS.index(level) > _cpu_isa.LEVELS.index(current):
        pytest.skip(f"{level} is above this process's forced {current}: the unforced run covers it")


def run_until_checkpoint_then_kill(script: Path, args: list[str], checkpoint: Path, timeout: float = 60) -> None:
    """Start ``python script *args`` and kill it as soon as it has written ``checkpoint``: a run
    that dies mid-way, as a node failure would end it."""
    env = dict(os.environ, PYTHONPATH=str(Path(lowrank_hpc.__file__).resolve().parents[1]))
    child = subprocess.Popen([sys.executable, str(script), *args], env=env)
    try:
        deadline = time.monotonic() + timeout
        while not checkpoint.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert checkpoint.exists(), "the child run wrote no checkpoint"
    finally:
        child.kill()
        child.wait()


@pytest.fixture
def jax_x64():
    """float64 JAX arrays for the test (the JAX tests' references are in float64); restored after."""
    jax = pytest.importorskip("jax")
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)
