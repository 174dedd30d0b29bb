"""Timing helpers shared by the benchmarks: best-of-N wall time, and the result rows they print."""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional


def best_time(fn: Callable[[], object], repeats: int = 5, sync: Optional[Callable[[], None]] = None) -> float:
    """Best wall-clock seconds over ``repeats`` calls after one warm-up (``sync`` waits for a GPU)."""
    fn()
    if sync:
        sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        best = min(best, time.perf_counter() - start)
    return best


def stream_bandwidth() -> float:
    """Bytes per second of a large numpy copy (read + write): the machine's practical bound."""
    import numpy as np

    src = np.ones(2**27, dtype=np.float32)  # 512 MiB
    dst = np.empty_like(src)
    seconds = best_time(lambda: np.copyto(dst, src), repeats=3)
    return 2 * src.nbytes / seconds


@dataclass
class Row:
    """One line of a benchmark table: our time, the peer's in the same run, and their ratio."""

    kernel: str
    case: str
    ours_s: float
    peer: str
    peer_s: float
    note: str = ""

    @property
    def speedup(self) -> float:
        return self.peer_s / self.ours_s

    def markdown(self) -> str:
        return (f"| {self.kernel} | {self.case} | {self.ours_s * 1e3:.2f} | {self.peer} | {self.peer_s * 1e3:.2f} "
                f"| {self.speedup:.2f}x | {self.note} |")


HEADER = ("| kernel | case | ours (ms) | peer | peer (ms) | speedup | note |\n"
          "|---|---|---|---|---|---|---|")


def machine_line(openmp_threads: int, extra: str = "") -> str:
    """The machine a table was measured on, as every report states it."""
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {openmp_threads} OpenMP threads"
            + (f", {extra}" if extra else ""))


def report(script: str, machine: str, versions: str, command: str, rows: list, output: str, write: bool) -> str:
    """Print a benchmark's markdown section and, when ``write``, append it to ``output``."""
    text = "\n".join([f"### {script}, {datetime.date.today().isoformat()}", f"Machine: {machine}. {versions}",
                      f"Command: `{command}`", "", HEADER, *[row.markdown() for row in rows], ""])
    print(text)
    if write:
        with open(output, "a", encoding="utf-8") as handle:
            handle.write("\n" + text)
    return text


BENCH = Path(__file__).resolve().parent
VENVS = BENCH / ".venvs"
PEERS = BENCH / "peers"
PEER_TIMEOUT_S = 900


def run_peer(venv: str, script: str, problem: Path, *args: Any) -> tuple[Optional[dict], str]:
    """Run bench/peers/<script> with bench/.venvs/<venv>'s python; (its JSON, "") or (None, why not)."""
    python = VENVS / venv / "bin" / "python"
    if not python.exists():
        return None, f"{venv} venv missing (run bench/setup_peers.sh)"
    try:
        done = subprocess.run([str(python), str(PEERS / script), str(problem), *map(str, args)],
                              capture_output=True, text=True, timeout=PEER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None, f"{script} ran past {PEER_TIMEOUT_S} s"
    if done.returncode != 0 or not done.stdout.strip():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"{script} failed: {last[:200]}"
    return json.loads(done.stdout.strip().splitlines()[-1]), ""
