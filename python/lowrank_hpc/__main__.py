"""Command line: ``python -m lowrank_hpc info`` prints what this installation can do."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="lowrank_hpc", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("info", help="backends, CUDA device, threads and dtypes, as JSON")
    show.add_argument("--compact", action="store_true", help="one line of JSON")
    args = parser.parse_args(argv)
    if args.command == "info":
        from . import info

        print(json.dumps(info(), indent=None if args.compact else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
