"""ALS's exact row solve against a numpy transcription of its arithmetic, bit for bit.

Every row's normal equations (ops/normal_equations.hpp) are summed entry by entry in CSR order,
factored by the square-root-free Cholesky G = L D L^T and solved forward then backward. The
host forms them per entry at ranks 1-4 and in register tiles above
(ops/register_tiles.hpp); both, and the device, must give these numbers exactly, so that the
CPU tests check the math the GPU runs. numpy's float32 and float64 ufuncs round each multiply
and each add, as the kernels do, except the tiles' Gram where the build has FMA (the avx2 and
avx512 levels): its multiply-adds are fused, one rounding each, transcribed here by an exact
emulation of the fused multiply-add."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

from lowrank_hpc import _backend, _cpu_isa
from conftest import skip_unless_a_lower_level

_INTEGER_OF = {np.dtype(np.float32): np.int32, np.dtype(np.float64): np.int64}
# Veltkamp's splitting constants, 2^ceil(p / 2) + 1 for p-bit significands.
_SPLITTER = {np.dtype(np.float32): 4097.0, np.dtype(np.float64): 134217729.0}


def _two_sum(a, b):
    """(s, e): s = a + b rounded, e its exact error (Knuth)."""
    s = a + b
    b_part = s - a
    return s, (a - (s - b_part)) + (b - b_part)


def _two_product(a, b):
    """(p, e): p = a b rounded, e its exact error (Dekker, Veltkamp's split; no overflow here)."""
    splitter = a.dtype.type(_SPLITTER[a.dtype])

    def split(x):
        t = splitter * x
        high = t - (t - x)
        return high, x - high

    p = a * b
    (a_high, a_low), (b_high, b_low) = split(a), split(b)
    return p, ((a_high * b_high - p) + a_high * b_low + a_low * b_high) + a_low * b_low


def fused_multiply_add(a, b, c):
    """a b + c rounded once, in the arrays' dtype: Boldo and Melquiond's emulation (IEEE Trans.
    Computers 57(4), 2008): the exact product as two numbers, an exact sum with c, the two
    errors added with rounding to odd, then one rounding to nearest."""
    a, b, c = np.broadcast_arrays(a, b, c)
    product, product_error = _two_product(a, b)
    high, low = _two_sum(c, product)
    rest, rest_error = _two_sum(low, product_error)
    # Rounding to odd: an inexact sum takes, of the two numbers around the exact one, the odd one.
    even = (rest.view(_INTEGER_OF[rest.dtype]) & 1) == 0
    toward = np.where(rest_error > 0, np.inf, -np.inf).astype(rest.dtype)
    rest = np.where((rest_error != 0) & even, np.nextafter(rest, toward), rest)
    return high + rest


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_multiply_add_emulation_rounds_once(dtype):
    """Against exact rationals: random triples, c cancelling the rounded product (the result is
    the product's rounding error), c far below the product (it only decides the rounding)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 4000)).astype(dtype)
    c = rng.standard_normal(4000).astype(dtype)
    c[:1500] = -(a[:1500] * b[:1500])  # the rounded product: the result is its rounding error
    c[1500:2500] = np.nextafter(c[1500:2500], dtype(0)) * dtype(2.0) ** -20  # far smaller than a b
    got = fused_multiply_add(a, b, c)
    for x, y, z, result in zip(a.tolist(), b.tolist(), c.tolist(), got.tolist()):
        exact = Fraction(x) * Fraction(y) + Fraction(z)
        rounded = dtype(float(exact)) if dtype == np.float64 else _nearest_float32(exact)
        assert result == rounded, (x, y, z)


def _nearest_float32(exact: Fraction):
    """exact rounded to the nearest float32 (ties to even), from its float64 neighbours."""
    candidate = np.float32(float(exact))
    neighbours = [candidate, np.nextafter(candidate, np.float32(np.inf)), np.nextafter(candidate, np.float32(-np.inf))]
    distances = [abs(Fraction(float(x)) - exact) for x in neighbours]
    best = min(distances)
    ties = [x for x, d in zip(neighbours, distances) if d == best]
    return min(ties, key=lambda x: int(np.array(x).view(np.int32)) & 1)


def transcribed_solve(F_rows, vals, weights, shared, shift, fused_gram=False):
    """The row's solution x (r,) and whether its system was numerically positive definite;
    fused_gram: G's multiply-adds rounded once (the register tiles where the build has FMA).
    A singular system's pivot may be exactly zero (its x is not compared): no warnings."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return _transcribed_solve(F_rows, vals, weights, shared, shift, fused_gram)


def _transcribed_solve(F_rows, vals, weights, shared, shift, fused_gram):
    dtype = F_rows.dtype.type
    r = F_rows.shape[1]
    G = shared.copy() if shared is not None else np.zeros((r, r), dtype=F_rows.dtype)
    g = np.zeros(r, dtype=F_rows.dtype)
    for f, v, w in zip(F_rows, vals, weights):
        g = g + v * f
        if fused_gram:
            G = fused_multiply_add((w * f)[:, None], f[None, :], G)
        else:
            G = G + np.outer(w * f, f)  # G[a, c] += (w f[a]) f[c]
    G[np.diag_indices(r)] += shift
    scale, noise = np.diag(G).copy(), dtype(r) * np.finfo(dtype).eps
    L, inverse, definite = np.zeros_like(G), np.zeros(r, dtype=G.dtype), True
    for k in range(r):
        pivot = G[k, k]
        definite = definite and np.isfinite(pivot) and pivot > noise * scale[k] and pivot > 0
        inverse[k] = dtype(1) / pivot
        L[k + 1:, k] = G[k + 1:, k] * inverse[k]
        G[k + 1:, k + 1:] -= np.outer(G[k + 1:, k], L[k + 1:, k])  # (i, c) minus (L D)[i, k] L[c, k]
    for k in range(r):  # L y = g: each y[i] subtracts k = 0, 1, ... in order
        g[k + 1:] -= L[k + 1:, k] * g[k]
    x = g * inverse
    for k in range(r - 1, 0, -1):  # L^T x = D^-1 y: each x[i] subtracts k = r - 1, r - 2, ... in order
        x[:k] -= L[k, :k] * x[k]
    return x, definite


def row_problem(rank, dtype, seed):
    """Rows of every kind: few entries, one heavier than a packed chunk, none, some."""
    rng = np.random.default_rng(seed)
    n_other, degrees = 900, [3, 700, 0, 57]
    others = np.concatenate([rng.choice(n_other, d, replace=False) for d in degrees]).astype(np.int32)
    indptr = np.concatenate([[0], np.cumsum(degrees)]).astype(np.int64)
    vals = rng.standard_normal(others.size).astype(dtype)
    F = rng.standard_normal((n_other, rank)).astype(dtype)
    return indptr, others, vals, F


# Per-entry form: ranks 1-4 (compiled: 1, 4); register tiles above, padded to whole vectors
# (5 and 12: one AVX-512 vector of floats or less; 8, 16 and 32 compiled; 20 padded to 32 with
# AVX-512 floats), with a remainder vector (40, 70, 100) and the padded row stride (64).
@pytest.mark.parametrize("rank", [1, 4, 5, 8, 12, 16, 20, 32, 40, 64, 70, 100])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "weights+shared"])
def test_exact_row_solve_is_the_transcribed_arithmetic(rank, dtype, implicit):
    indptr, others, vals, F = row_problem(rank, dtype, seed=rank)
    rng = np.random.default_rng(1)
    weights = rng.uniform(0.5, 3.0, others.size).astype(dtype) if implicit else None
    shared = None
    if implicit:
        half = rng.standard_normal((2 * rank, rank)).astype(dtype)
        shared = (half.T @ half).astype(dtype)
        shared = np.triu(shared) + np.triu(shared, 1).T  # exactly symmetric, as F^T F is
    reg = 0.1
    n_key = indptr.size - 1
    form = _backend.cpu_module().als_row_solve_form(rank, np.dtype(dtype).name)
    out = np.full((1, n_key, rank), np.nan, dtype=dtype)
    singular = np.zeros(1, dtype=np.int64)
    residuals = np.full(n_key, np.nan)
    _backend.cpu_module().als_update_rows(indptr, others, vals, F[None], n_key, reg, False, None, 0, out, singular,
                                          0, weights=weights, shared=None if shared is None else shared[None],
                                          residuals=residuals)
    assert singular[0] == 0
    # Each row's sum of squared residuals at its solution (explicit ALS's fit term), in float64
    # from the returned rows; float32 dots round differently from numpy's.
    fits = F.astype(np.float64)[others] * out[0].astype(np.float64)[np.repeat(np.arange(n_key), np.diff(indptr))]
    expected_fit = np.bincount(np.repeat(np.arange(n_key), np.diff(indptr)),
                               weights=(fits.sum(axis=1) - vals) ** 2, minlength=n_key)
    # Near an exact fit (the row of 3 entries) a residual is a difference of nearly equal numbers:
    # the bound is relative to the row's squared values too.
    scale = np.bincount(np.repeat(np.arange(n_key), np.diff(indptr)), weights=vals.astype(np.float64) ** 2,
                        minlength=n_key)
    tolerance = 1e-12 if dtype == np.float64 else 2e-5
    assert np.all(np.abs(residuals - expected_fit) <= tolerance * (expected_fit + scale)), (residuals, expected_fit)
    for row in range(n_key):
        entries = slice(indptr[row], indptr[row + 1])
        if indptr[row] == indptr[row + 1]:
            np.testing.assert_array_equal(out[0, row], 0)  # an empty row's solution is zero
            continue
        row_weights = weights[entries] if implicit else np.ones(entries.stop - entries.start, dtype=dtype)
        expected, definite = transcribed_solve(F[others[entries]], vals[entries], row_weights, shared, dtype(reg),
                                               fused_gram=form == "fused_tiles")
        assert definite
        np.testing.assert_array_equal(out[0, row], expected, err_msg=f"row {row}")


# Rows enough for several groups of systems factored side by side (one per vector lane, up to 16
# a group: ops/ldlt_lanes.hpp, ranks up to 96 with AVX-512 floats) and a partial last group, with
# empty rows and, without regularisation, rank-deficient rows among them: each row's solution
# must still be the transcribed one, and a singular row's zero, whatever its neighbours.
@pytest.mark.parametrize("rank", [5, 12, 16, 20, 40, 64, 96])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_solved_in_groups_keep_each_rows_arithmetic(rank, dtype):
    rng = np.random.default_rng(rank)
    n_other = 400
    degrees = rng.integers(rank, 3 * rank, 37)
    degrees[[3, 20]] = 0  # empty rows
    degrees[[5, 17, 33]] = rank // 2  # fewer observations than the rank: singular without reg
    others = np.concatenate([rng.choice(n_other, d, replace=False) for d in degrees]).astype(np.int32)
    indptr = np.concatenate([[0], np.cumsum(degrees)]).astype(np.int64)
    vals = rng.standard_normal(others.size).astype(dtype)
    F = rng.standard_normal((n_other, rank)).astype(dtype)
    module = _backend.cpu_module()
    form = module.als_row_solve_form(rank, np.dtype(dtype).name)
    assert form in ("tiles", "fused_tiles")
    n_key = degrees.size
    out = np.full((1, n_key, rank), np.nan, dtype=dtype)
    singular = np.zeros(1, dtype=np.int64)
    module.als_update_rows(indptr, others, vals, F[None], n_key, 0.0, False, None, 0, out, singular, 0)
    # Rank-deficient rows are singular; an empty row with reg == 0 is too (nothing makes it definite).
    assert singular[0] == 5
    for row in range(n_key):
        entries = slice(indptr[row], indptr[row + 1])
        expected, definite = (np.zeros(rank, dtype=dtype), False) if degrees[row] == 0 else transcribed_solve(
            F[others[entries]], vals[entries], np.ones(degrees[row], dtype=dtype), None, dtype(0),
            fused_gram=form == "fused_tiles")
        assert definite == (degrees[row] >= rank), row
        np.testing.assert_array_equal(out[0, row], expected if definite else 0, err_msg=f"row {row}")


def test_the_tiles_fuse_the_gram_exactly_where_the_level_has_fma():
    """The avx2 and avx512 levels fuse the tiles' Gram (x86-64-v3 and v4 have FMA), the baseline
    does not; the per-entry ranks (1-4) never do."""
    module = _backend.cpu_module()
    for dtype in ("float32", "float64"):
        assert module.als_row_solve_form(64, dtype) == ("tiles" if module.CPU_LEVEL == "baseline" else "fused_tiles")
        tiled = "tiles" if module.CPU_LEVEL == "baseline" else "fused_tiles"
        assert [module.als_row_solve_form(r, dtype) for r in (1, 2, 3, 4)] == ["entries"] * 4
        assert [module.als_row_solve_form(r, dtype) for r in (5, 7, 8, 12, 17, 20, 24, 33)] == [tiled] * 8


@pytest.mark.parametrize("level", ["baseline", "avx2"])
def test_the_lower_levels_solve_in_their_own_tiles(level):
    """The transcription tests again at each lower level this processor runs: the baseline's tiles
    round every multiply and add, avx2's are fused but half as wide (8 floats, 4 rows a tile);
    this process runs only the widest level (a process forced lower leaves the levels above it to
    the unforced run)."""
    skip_unless_a_lower_level(level)
    env = {**os.environ, _cpu_isa.ENVIRONMENT_VARIABLE: level}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                           "-k", "transcribed_arithmetic or exactly_where or in_groups"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # 48 transcriptions, the form test, 14 grouped solves
    assert "63 passed" in done.stdout, done.stdout[-3000:]


# Every level this processor runs, the widest first.
LEVEL_MODULES = [importlib.import_module(f"lowrank_hpc.{_cpu_isa.MODULES[level]}")
                 for level in reversed(_cpu_isa.built_levels()) if level in _cpu_isa.processor_levels()]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "weights+shared"])
def test_cg_row_solves_give_the_same_bits_at_every_level(dtype, implicit):
    """CG's steps at run-time ranks split each row into whole tiles and a rest of masked vectors
    at different points per level (64, 32 and 16 floats wide): every number must still add the
    same products in the same order, so every level gives the same bits (the compiled ranks 8, 16
    and 32 beside them)."""
    if len(LEVEL_MODULES) < 2:
        pytest.skip("one level runs here")
    for rank in [5, 8, 12, 16, 17, 20, 24, 32, 33, 40, 63, 65, 70, 100]:
        rng = np.random.default_rng(rank)
        n_key, n_other = 12, 60
        degrees = rng.integers(1, 30, n_key)
        degrees[2] = 0  # an empty row
        others = np.concatenate([rng.choice(n_other, d, replace=False) for d in degrees]).astype(np.int32)
        indptr = np.concatenate([[0], np.cumsum(degrees)]).astype(np.int64)
        vals = rng.uniform(1.0, 4.0, others.size).astype(dtype)
        F = rng.standard_normal((1, n_other, rank)).astype(dtype)
        extra = {}
        if implicit:
            extra = dict(weights=rng.uniform(0.5, 3.0, others.size).astype(dtype),
                         shared=np.einsum("bkr,bks->brs", F, F).astype(dtype))
        start = rng.standard_normal((1, n_key, rank)).astype(dtype)
        outs = []
        for module in LEVEL_MODULES:
            x = start.copy()
            module.als_update_rows(indptr, others, vals, F, n_key, 0.1, False, None, 3, x, np.zeros(1, np.int64),
                                   0, **extra)
            outs.append(x)
        assert np.all(np.isfinite(outs[0])) and not np.array_equal(outs[0], start)
        for module, out in zip(LEVEL_MODULES[1:], outs[1:]):
            np.testing.assert_array_equal(out, outs[0], err_msg=f"rank {rank} at {module.CPU_LEVEL}")
