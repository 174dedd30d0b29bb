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


# ---------------------------------------------------------------- interleaved runs against a peer
def timed(fn: Callable[[], object]) -> Callable[[], float]:
    """``fn`` as a side for ``interleaved``: one call, its wall seconds."""
    def side() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    return side


def interleaved(sides: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Seconds of ``repeats`` runs of every side, taken in turn (a, b, a, b, ...) after one warm-up
    run of each, so that a slow spell of a shared machine hits every side alike. A side returns
    its own seconds: a peer in another process times itself (``timed`` wraps a local call).
    Each round starts one side later (a, b, c; b, c, a; ...): a run finds the caches as the
    previous side left them (a peer in another process: its own copy of the data, so the side
    after it starts cold), and with a fixed order one side would always follow the peer (ours
    first after torch's server: 22 ms where ours second took 14, the same kernel and data)."""
    for side in sides.values():
        side()
    names = list(sides)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for round_ in range(repeats):
        for position in range(len(names)):
            name = names[(round_ + position) % len(names)]
            times[name].append(sides[name]())
    return times


def median(times: list[float]) -> float:
    ordered = sorted(times)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else 0.5 * (ordered[middle - 1] + ordered[middle])


def median_range(times: list[float], scale: float = 1e3, digits: int = 2) -> str:
    """"median (min-max)" of ``times`` times ``scale`` (1e3: milliseconds), so the noise shows."""
    low, mid, high = min(times) * scale, median(times) * scale, max(times) * scale
    return f"{mid:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def load_average() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


class PeerUnavailable(RuntimeError):
    """A peer could not be started or stopped answering; the message says why (printed as
    "not measured: ...")."""


class PeerServer:
    """bench/peers/<script> kept running in bench/.venvs/<venv>, answering one JSON request per
    line of its stdin with one JSON line, so its timed calls can alternate with ours in the same
    run (``run_peer`` starts a process per measurement). The first line it prints (read here as
    ``hello``) describes it; a reply holding "error" raises PeerUnavailable."""

    def __init__(self, venv: str, script: str, *args: Any):
        import tempfile

        python = VENVS / venv / "bin" / "python"
        if not python.exists():
            raise PeerUnavailable(f"{venv} venv missing (run bench/setup_peers.sh)")
        self.script = script
        self._stderr = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty peer cannot block
        self._process = subprocess.Popen([str(python), str(PEERS / script), *map(str, args)], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        self.hello = self._reply()

    def ask(self, **request: Any) -> dict:
        try:
            self._process.stdin.write(json.dumps(request) + "\n")
            self._process.stdin.flush()
        except BrokenPipeError:
            raise PeerUnavailable(self._exit_reason()) from None
        return self._reply()

    def _reply(self) -> dict:
        line = self._process.stdout.readline()
        if not line:
            raise PeerUnavailable(self._exit_reason())
        reply = json.loads(line)
        if "error" in reply:
            raise PeerUnavailable(f"{self.script}: {reply['error']}")
        return reply

    def _exit_reason(self) -> str:
        self._stderr.seek(0)
        last = (self._stderr.read().strip().splitlines() or ["no output"])[-1]
        return f"{self.script} exited: {last[:200]}"

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.stdin.close()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
        self._stderr.close()

    def __enter__(self) -> "PeerServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
