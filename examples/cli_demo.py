"""The built-in demo, as ``lowrank-hpc demo`` runs it: complete a photograph from 30% of its
pixels and write observed | completed | truth side by side.

    python examples/cli_demo.py            (the picture goes to a temporary folder here)
"""
import tempfile
from pathlib import Path

from lowrank_hpc.cli import main

with tempfile.TemporaryDirectory() as folder:
    picture = Path(folder) / "demo.png"
    assert main(["demo", "--picture", str(picture)]) == 0
    print(f"the picture has {picture.stat().st_size:,} bytes")
