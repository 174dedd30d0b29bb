"""Each example runs as a user runs it, ``python examples/NAME.py`` from any folder (with --quick
when it offers that flag), and prints."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import lowrank_hpc

ROOT = Path(__file__).resolve().parent.parent
PYTHON_DIR = str(Path(lowrank_hpc.__file__).resolve().parents[1])


@pytest.mark.parametrize("script", sorted((ROOT / "examples").glob("*.py")), ids=lambda p: p.name)
def test_example_runs_as_a_script(script, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([PYTHON_DIR, os.environ.get("PYTHONPATH", "")]))
    # Examples at a paper's size offer --quick, a short run of the same code.
    quick = ["--quick"] if "--quick" in script.read_text() else []
    run = subprocess.run([sys.executable, str(script), *quick], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip()
    assert not list(tmp_path.iterdir()), "an example left files in the folder it ran from"
