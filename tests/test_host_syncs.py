"""The GPU iterations of ALS and of the batched completion solver read the device once per
iteration: every value the loop needs comes back in one transfer through Call.to_host (the one
door from device to host). Counted on both backends (the same code runs on both); on the GPU,
CuPy's allow_synchronize(False) also proves that nothing else synchronizes in between."""
from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest

from lowrank_hpc import _arrays
from lowrank_hpc.recover import batched_als, batched_factored_gd


@contextlib.contextmanager
def _allow_synchronize(allow: bool):
    """cupyx.allow_synchronize without CuPy 14's warning that it may be removed (it still raises on
    a synchronization, which is what these tests need)."""
    import cupyx

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="cupyx.allow_synchronize will be removed", category=UserWarning)
        with cupyx.allow_synchronize(allow):
            yield


@pytest.fixture
def counted_reads(monkeypatch, backend):
    """A list that gets one entry per device-to-host read; on the GPU every other sync raises."""
    reads: list[int] = []
    original = _arrays.Call.to_host
    guard = contextlib.nullcontext
    if backend.name == "cuda":
        guard = _allow_synchronize

    def to_host(self, x):
        reads.append(1)
        with guard(True) if backend.name == "cuda" else contextlib.nullcontext():
            return original(self, x)

    monkeypatch.setattr(_arrays.Call, "to_host", to_host)
    return reads, (lambda: guard(False)) if backend.name == "cuda" else contextlib.nullcontext


def _problem(rng, batch, m, n, fraction):
    rows, cols, offsets = [], [], [0]
    for _ in range(batch):
        flat = np.flatnonzero(rng.random(m * n) < fraction)
        rows.append(flat // n)
        cols.append(flat % n)
        offsets.append(offsets[-1] + flat.size)
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    return rows, cols, rng.standard_normal(rows.size), np.array(offsets)


def _reads_per_iteration(reads, no_sync, run, iterations):
    """Reads between the ends of consecutive iterations, the iterations after the first run with
    every other sync refused (the setup may read as it likes)."""
    marks = {}
    guard = contextlib.ExitStack()

    def callback(iteration, _):
        marks[iteration] = len(reads)
        if iteration == 1:
            guard.enter_context(no_sync())
        if iteration == iterations:
            guard.close()

    with guard:
        run(callback)
    assert sorted(marks) == list(range(1, iterations + 1))
    return [marks[i + 1] - marks[i] for i in range(1, iterations)]


def test_als_rows_kernel_reads_the_device_once_per_iteration(backend, rng, counted_reads):
    reads, no_sync = counted_reads
    rows, cols, vals, offsets = _problem(rng, 2, 200, 150, 0.6)
    args = [backend.put(a) for a in (rows, cols, vals, offsets)]
    kernel = []

    def run(callback):
        result = batched_als(*args, (200, 150), 3, max_iter=5, tol=0.0, seed=1, callback=callback)
        kernel.append(result.info["kernel"])

    assert _reads_per_iteration(reads, no_sync, run, 5) == [1, 1, 1, 1]
    assert kernel == ["rows"]


def test_batched_factored_gd_reads_the_device_once_per_iteration(backend, rng, counted_reads):
    reads, no_sync = counted_reads
    rows, cols, vals, offsets = _problem(rng, 6, 12, 10, 0.5)
    args = [backend.put(a) for a in (rows, cols, vals, offsets)]

    def run(callback):
        batched_factored_gd(*args, (12, 10), 2, max_iter=5, tol=0.0, seed=1, callback=callback)

    assert _reads_per_iteration(reads, no_sync, run, 5) == [1, 1, 1, 1]
