"""``python -m lowrank_hpc`` and the ``lowrank-hpc`` console script: see :mod:`lowrank_hpc.cli`.

    lowrank-hpc complete ratings.csv --rank 20 --output model.npz
    lowrank-hpc demo
    lowrank-hpc info
"""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
