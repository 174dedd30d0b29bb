"""The C++ Philox/Gaussian header's own test program (known answers, accuracy, statistics,
a pinned checksum of 65,536 draws), compiled with the project's host flags and run."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from philox_reference import PINNED_DRAWS, standard_normal

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to build the C++ test program")
def test_philox_header_program(tmp_path):
    binary = tmp_path / "test_philox"
    subprocess.run(["g++", "-O2", "-std=c++17", "-ffp-contract=off", f"-I{ROOT / 'cpp' / 'include'}",
                    str(ROOT / "tests" / "cpp" / "test_philox.cpp"), "-o", str(binary)], check=True)
    result = subprocess.run([str(binary)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_numpy_reference_reproduces_pinned_draws():
    np.testing.assert_allclose(standard_normal(42, 3, np.arange(8)), PINNED_DRAWS, rtol=1e-15)
