"""The README's code runs as written (```py blocks, which need a cluster, compile); the examples
run as scripts in tests/test_examples.py."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from lowrank_hpc import _backend

ROOT = Path(__file__).resolve().parent.parent


README = (ROOT / "README.md").read_text()


@pytest.fixture(autouse=True)
def threads_put_back():
    """The README's code may set the process's threads (torch.set_num_threads(1)
    sets OpenMP's, which our kernels share; torch's autograd did so too under pytest): put them
    back, or every later test runs on one thread."""
    openmp_threads = _backend.cpu_module().max_threads()
    torch = sys.modules.get("torch")
    torch_threads = torch.get_num_threads() if torch is not None else None
    yield
    torch = sys.modules.get("torch")
    if torch is not None:  # imported by the code: its default, which is OpenMP's
        torch.set_num_threads(torch_threads or openmp_threads)
    _backend.cpu_module().set_num_threads(openmp_threads)


@pytest.mark.parametrize("block", re.findall(r"```python\n(.*?)```", README, re.S))
def test_readme_python_blocks_run(block, capsys):
    for module in re.findall(r"^(?:from|import) (dask|distributed)\b", block, re.M):
        pytest.importorskip(module)  # the [dask] extra's example
    exec(compile(block, "README.md", "exec"), {"__name__": "__main__"})


@pytest.mark.parametrize("block", re.findall(r"```py\n(.*?)```", README, re.S))
def test_readme_py_blocks_compile(block):
    """```py blocks need what no test machine has (a Slurm cluster, GPUs): they are compiled, not run."""
    compile(block, "README.md", "exec")
