"""The CPU's offset kernels (cpu::sums_by_index, cpu::offsets_at) behind OffsetFit and
Offsets.at: numpy's bincount and gathers, bit for bit, on every index and float type, sorted or
not, across the threads' split points; and the sweep through them equal to the numpy sweep."""
from __future__ import annotations

import numpy as np
import pytest

from lowrank_hpc import _backend
from lowrank_hpc.recover import offsets as offsets_module
from lowrank_hpc.recover.offsets import OffsetFit, Offsets, zero_offsets

MODULE = _backend.cpu_module()


@pytest.fixture(params=[1, 2, 3], ids=lambda t: f"{t} threads")
def threads(request):
    """The thread count, restored after: 3 threads split the sorted bins inside skewed_index's long run."""
    before = MODULE.max_threads()
    MODULE.set_num_threads(request.param)
    yield request.param
    MODULE.set_num_threads(before)


@pytest.fixture
def kernel_calls(monkeypatch):
    """The names of the CPU module's functions recover.offsets calls, in order (each still runs)."""
    calls = []
    monkeypatch.setattr(offsets_module, "cpu_module", lambda: _Recording(MODULE, calls))
    return calls


class _Recording:
    """The CPU module, noting each function taken from it."""

    def __init__(self, module, calls):
        self.module, self.calls = module, calls

    def __getattr__(self, name):
        self.calls.append(name)
        return getattr(self.module, name)


def skewed_index(n_out: int, nnz: int, seed: int, sort: bool) -> np.ndarray:
    """Indices into n_out bins: one bin holds 40% of the entries (sorted, a run from about 51% to
    91% of them at nnz = 200,001, where the split of 3 threads lands), a third of the bins none,
    the rest at random."""
    rng = np.random.default_rng(seed)
    used = rng.choice(n_out, size=max(1, 2 * n_out // 3), replace=False)
    index = used[rng.integers(0, used.size, nnz)]
    index[rng.random(nnz) < 0.4] = used[used.size // 2]
    return np.sort(index) if sort else index


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sort", [True, False], ids=["sorted", "shuffled"])
@pytest.mark.parametrize("nnz", [1, 777, 200_001])
def test_sums_by_index_is_numpys_bincount_bit_for_bit(index_dtype, dtype, sort, nnz, threads):
    rng = np.random.default_rng(nnz)
    n_out = 5_003
    index = skewed_index(n_out, nnz, nnz, sort).astype(index_dtype)
    values = (rng.standard_normal(nnz) * 10.0 ** rng.integers(-6, 6, nnz)).astype(dtype)
    out = np.full(n_out, np.nan)
    assert MODULE.sums_by_index(index, values, None, sort, out) == -1
    np.testing.assert_array_equal(out, np.bincount(index, weights=values, minlength=n_out))
    # Gathered: values[gather] from a short array, as b[cols] and a[rows].
    source = rng.standard_normal(301).astype(dtype)
    gather = rng.integers(0, source.size, nnz).astype(index_dtype)
    assert MODULE.sums_by_index(index, source, gather, sort, out) == -1
    np.testing.assert_array_equal(out, np.bincount(index, weights=source[gather], minlength=n_out))


@pytest.mark.parametrize("sort", [True, False], ids=["sorted", "shuffled"])
def test_sums_by_index_reports_the_first_bad_entry_and_never_writes_outside(sort, threads):
    nnz, n_out = 100_000, 50
    index = np.sort(np.random.default_rng(0).integers(0, n_out, nnz))
    for bad_at, bad in ((70_001, n_out), (10, -1), (99_999, 2 ** 40)):
        broken = index.copy()
        broken[bad_at] = bad
        if sort:  # kept sorted, as the flag promises: the bad value repeated to the end, or from the start
            if bad < 0:
                broken[:bad_at + 1], bad_at = bad, 0
            else:
                broken[bad_at:] = bad
            assert np.all(broken[1:] >= broken[:-1])
        guarded = np.full(n_out + 2, np.nan)  # a number on each side of out
        assert MODULE.sums_by_index(broken, np.ones(nnz), None, sort, guarded[1:-1]) == bad_at
        assert np.isnan(guarded[0]) and np.isnan(guarded[-1])
    gather = np.zeros(nnz, dtype=np.int64)
    gather[[500, 80_000]] = -3, 7
    assert MODULE.sums_by_index(index, np.ones(7), gather, sort, guarded[1:-1]) == 500
    assert np.isnan(guarded[0]) and np.isnan(guarded[-1])
    with pytest.raises(ValueError, match="values: length 3, expected 100000"):
        MODULE.sums_by_index(index, np.ones(3), None, sort, guarded[1:-1])


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_offsets_at_is_numpys_expression_bit_for_bit(index_dtype, dtype, kernel_calls):
    rng = np.random.default_rng(3)
    n1, n2, nnz = 400, 300, 100_003
    rows, cols = rng.integers(0, n1, nnz).astype(index_dtype), rng.integers(0, n2, nnz).astype(index_dtype)
    mu = 3.5123456789012345  # not a float32: numpy rounds it to the arrays' dtype first
    a, b = rng.standard_normal(n1).astype(dtype), (1e-3 * rng.standard_normal(n2)).astype(dtype)
    out = Offsets(mu, a, b).at(rows, cols)
    assert kernel_calls == ["offsets_at"]
    expected = mu + a[rows] + b[cols]
    assert out.dtype == expected.dtype == dtype
    np.testing.assert_array_equal(out, expected)
    # Where the kernel does not take the arrays as they are (a strided view, a numpy float64 mu
    # that numpy promotes with), numpy's own expression runs: its dtype and values.
    np.testing.assert_array_equal(Offsets(mu, a, b).at(rows[::2], cols[::2]), mu + a[rows[::2]] + b[cols[::2]])
    promoted = Offsets(np.float64(mu), a, b).at(rows, cols)
    assert promoted.dtype == np.result_type(np.float64(mu), a)
    np.testing.assert_array_equal(promoted, np.float64(mu) + a[rows] + b[cols])
    # Integer offsets, float indices, a masked array: numpy's results and errors, not the kernel's.
    as_int = Offsets(0.0, np.arange(n1), np.arange(n2)).at(rows, cols)
    np.testing.assert_array_equal(as_int, 0.0 + np.arange(n1)[rows] + np.arange(n2)[cols])
    with pytest.raises(IndexError):
        Offsets(mu, a, b).at(rows.astype(np.float64), cols.astype(np.float64))
    masked = Offsets(mu, np.ma.array(a, mask=np.arange(n1) == 0), b).at(rows, cols)
    assert np.ma.isMaskedArray(masked) and masked.mask.sum() == np.count_nonzero(rows == 0)
    assert kernel_calls == ["offsets_at"]  # none of these took it


def test_offsets_at_out_of_range_is_an_index_error_on_both_paths(kernel_calls):
    offsets = Offsets(1.0, np.zeros(3, np.float32), np.zeros(4, np.float32))
    rows, cols = np.array([0, 3], dtype=np.int64), np.array([0, 1], dtype=np.int64)
    with pytest.raises(IndexError, match="entry 1"):
        offsets.at(rows, cols)
    with pytest.raises(IndexError, match="entry 0"):  # refused, where numpy's gather wraps it
        offsets.at(np.array([-1]), np.array([0]))
    assert kernel_calls == ["offsets_at", "offsets_at"]
    with pytest.raises(IndexError):
        offsets.at(rows.astype(np.int16), cols.astype(np.int16))  # numpy's path
    assert kernel_calls == ["offsets_at", "offsets_at"]


def test_an_intercept_beyond_the_dtype_keeps_numpys_overflow_warning():
    with pytest.warns(RuntimeWarning, match="overflow"):
        out = Offsets(1e300, np.zeros(2, np.float32), np.zeros(2, np.float32)).at(np.array([0]), np.array([1]))
    assert out.dtype == np.float32 and np.isposinf(out[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sort", [True, False], ids=["row order", "shuffled"])
def test_the_sweeps_through_the_kernels_equal_the_numpy_sweeps(dtype, sort, kernel_calls):
    rng = np.random.default_rng(7)
    shape, nnz = (3_000, 800), 150_000
    keys = np.unique(rng.integers(0, shape[0] * shape[1], nnz))
    keys = keys if sort else rng.permutation(keys)
    rows, cols = keys // shape[1], keys % shape[1]
    residual = (3.5 + rng.standard_normal(rows.size)).astype(dtype)
    host = OffsetFit(rows, cols, shape, "both", 2.0)
    assert host.uses_cpu_kernels and host.rows_sorted == sort
    reference = OffsetFit(rows, cols, shape, "both", 2.0)
    reference.uses_cpu_kernels = False  # numpy's bincounts and gathers
    start = zero_offsets(np, shape, dtype)
    for sweeps in (1, 4):
        kernel_calls.clear()
        theirs = reference.sweep(residual, start, sweeps)
        assert kernel_calls == []
        ours = host.sweep(residual, start, sweeps)
        assert kernel_calls == ["sums_by_index"] * (2 + 2 * sweeps)
        assert ours.intercept == theirs.intercept
        np.testing.assert_array_equal(ours.row, theirs.row)
        np.testing.assert_array_equal(ours.col, theirs.col)
        np.testing.assert_array_equal(ours.at(rows, cols), theirs.intercept + theirs.row[rows] + theirs.col[cols])
