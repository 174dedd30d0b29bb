"""The conftest's GPU guard: ``gpu`` tests skip without a CUDA backend, and fail under
LOWRANK_HPC_REQUIRE_GPU=1, so a GPU run cannot pass by skipping every GPU test.

Each case runs pytest in a subprocess on a generated test file next to a copy of this suite's
conftest.py, with and without the variable."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lowrank_hpc
from lowrank_hpc import _backend

SAMPLE = textwrap.dedent("""
    import pytest

    @pytest.mark.gpu
    def test_marked_gpu():
        pass

    def test_on_each_backend(backend):
        pass

    def test_cpu_only():
        pass
""")

CONFIG = textwrap.dedent("""
    [pytest]
    addopts = -ra --strict-markers
    markers =
        gpu: needs a CUDA device and CuPy
""")


def _run_sample(tmp_path: Path, require_gpu: bool) -> subprocess.CompletedProcess:
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text(CONFIG)
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {key: value for key, value in os.environ.items()
           if key not in ("LOWRANK_HPC_REQUIRE_GPU", "LOWRANK_HPC_BACKEND", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = str(Path(lowrank_hpc.__file__).resolve().parents[1])
    if require_gpu:
        env["LOWRANK_HPC_REQUIRE_GPU"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-c", str(tmp_path / "pytest.ini"),
                           "--rootdir", str(tmp_path), str(tmp_path / "test_sample.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(_backend.HAS_CUDA, reason="checks the guard on a machine without a usable CUDA backend")
def test_require_gpu_fails_every_gpu_test_without_a_gpu(tmp_path):
    run = _run_sample(tmp_path, require_gpu=True)
    output = run.stdout + run.stderr
    assert run.returncode == 1, output  # pytest's "some tests failed"
    assert "2 failed, 2 passed" in output, output
    assert "FAILED test_sample.py::test_marked_gpu" in output
    assert "FAILED test_sample.py::test_on_each_backend[cuda]" in output
    assert "LOWRANK_HPC_REQUIRE_GPU=1 but the CUDA backend is unavailable" in output


@pytest.mark.skipif(_backend.HAS_CUDA, reason="checks the guard on a machine without a usable CUDA backend")
def test_gpu_tests_skip_without_a_gpu_unless_required(tmp_path):
    run = _run_sample(tmp_path, require_gpu=False)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "2 passed, 2 skipped" in output, output
    assert "no CUDA backend" in output


@pytest.mark.gpu
def test_require_gpu_passes_with_a_gpu(tmp_path):
    run = _run_sample(tmp_path, require_gpu=True)
    assert run.returncode == 0 and "4 passed" in run.stdout, run.stdout + run.stderr
