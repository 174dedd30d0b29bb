"""``lowrank-hpc complete --scheduler ADDRESS``: the ALS solves of the fit on a Dask cluster.

The client reads the file, holds out the test entries and fits the offsets as without a cluster;
every ALS solve (the penalty path's and the final fit's rounds) runs as
:class:`lowrank_hpc.distributed.DistributedALS` on the cluster's workers, which gives the
factors recover.als gives, so the report matches a run without --scheduler.
"""
from __future__ import annotations

import argparse
import contextlib
import os
from typing import Any, Iterator, Optional

from .errors import DataError, UsageError

CONNECT_TIMEOUT = "10s"


def check_options(args: argparse.Namespace) -> None:
    """Usage errors of --scheduler, before any work; sets --method als when it was not given or auto."""
    if not args.scheduler:
        return
    if args.method in (None, "auto"):
        args.method = "als"
    elif args.method != "als":
        raise UsageError(f"--scheduler runs ALS on the cluster (DistributedALS); --method {args.method} runs on one "
                         "machine: drop --scheduler or use --method als")
    if args.checkpoint:
        raise UsageError("--checkpoint is not supported with --scheduler (the solver's state lives on the workers)")


@contextlib.contextmanager
def connect(args: argparse.Namespace) -> Iterator[Optional[dict[str, Any]]]:
    """With --scheduler: a Client to the cluster for the block, every ALS solve of the block's fits
    running on it; yields {"scheduler", "workers"} for the report. Without it: yields None."""
    if not args.scheduler:
        yield None
        return
    try:
        from distributed import Client
    except ImportError:
        raise DataError("--scheduler needs Dask's distributed scheduler, which is not installed: "
                        "pip install 'lowrank_hpc[dask]'") from None
    from ..distributed import DistributedALS
    from ..distributed._executor import worker_addresses
    from ..recover.completion_fit import als_solver

    address = args.scheduler
    where = {"scheduler_file": address} if os.path.isfile(address) else {"address": address}
    try:
        client = Client(**where, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as error:
        raise DataError(f"--scheduler {address}: cannot connect to a Dask scheduler there ({error})") from None
    with client:
        workers = len(worker_addresses(client))
        if workers == 0:
            raise DataError(f"--scheduler {address}: the cluster has no workers")
        from distributed import KilledWorker
        from distributed.comm import CommClosedError

        try:
            with als_solver(DistributedALS(1, client=client, backend=args.backend).als):
                yield {"scheduler": address, "workers": workers}
        except (KilledWorker, CommClosedError, TimeoutError) as error:
            raise DataError(f"--scheduler {address}: the cluster failed during the fit "
                            f"({type(error).__name__}: {error})") from None
