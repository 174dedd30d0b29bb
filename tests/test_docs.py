"""The README's code and the examples run as written."""
from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("block", re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S))
def test_readme_python_blocks_run(block, capsys):
    exec(compile(block, "README.md", "exec"), {})


@pytest.mark.parametrize("script", sorted((ROOT / "examples").glob("*.py")), ids=lambda p: p.name)
def test_examples_run(script, monkeypatch, capsys):
    quick = ["--quick"] if "--quick" in script.read_text() else []  # examples at a paper's size
    monkeypatch.setattr(sys, "argv", [str(script), *quick])
    runpy.run_path(str(script), run_name="__main__")
    assert capsys.readouterr().out
