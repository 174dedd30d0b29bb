"""Guess & Check for matrix factorization (Alexander, Slutzky, Ran-Milo and Cohen, "Do neural
networks need gradient descent to generalize? A theoretical study", NeurIPS 2025, arXiv 2506.03931).

G&C draws weight settings from a prior until one fits the training data (training loss below
epsilon): a draw from the posterior P(. | L_train < epsilon), the "volume hypothesis" alternative
to gradient descent. The model is the deep matrix factorization W = W_d W_{d-1} ... W_1 with
W_1 (k, n2), W_j (k, k) for 1 < j < d, W_d (n1, k): width k, depth d >= 2. The prior draws every
entry of W_j iid N(0, prior_scale^2 / fan_in_j) (fan_in_1 = n2, else k): the product's entries have
variance about prior_scale^(2d) / n2 at every width and depth. The paper proves that G&C
generalizes worse as the width grows and better as the depth grows; gradient descent from a small
start generalizes well at every width.

Draws run in batches on the library's batched kernels: the (B, n1, k) products W_d ... W_2 by one
batched GEMM per layer, the training entries of the B products by the batched sampled product
(``lowrank_hpc.ops.sampled_product`` with offsets), and the full products of the accepted draws by
``lowrank_hpc.ops.lowrank_product``; numpy arrays run on the CPU, ``backend="cuda"`` on the GPU.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .. import _checks
from .._arrays import for_backend
from ..ops import lowrank_product, sampled_product

_FUNCTION = "guess_and_check"


@dataclass
class GuessAndCheckResult:
    """What :func:`guess_and_check` returns (numpy on the host).

    n_samples : draws made. n_accepted : draws whose training MSE fell below ``tol``.
    acceptance_rate : n_accepted / n_samples. samples_per_second : draws checked per second.
    train_loss : (n_accepted,) training MSE of each accepted draw. test_loss : (n_accepted,)
        test MSE of each (empty without test entries). products : (n_kept, n1, n2) the first
        ``keep`` accepted products W (float64).
    test_loss_mean : mean test MSE over the accepted draws (NaN when none was accepted or there
        is no test set). gd_test_loss : test MSE of ``recover.factored_gd`` (width k, depth 2, small
        start) on the same training entries (None unless ``compare_gd``); gd_train_loss its
        training MSE. baseline_test_loss : test MSE of the zero matrix (the "random guess" scale).
    seconds : wall time of the sampling. info : the settings (width, depth, tol, seed, backend).
    """

    n_samples: int
    n_accepted: int
    acceptance_rate: float
    samples_per_second: float
    train_loss: np.ndarray
    test_loss: np.ndarray
    products: np.ndarray
    test_loss_mean: float
    gd_test_loss: Optional[float]
    gd_train_loss: Optional[float]
    baseline_test_loss: float
    seconds: float
    info: dict = field(default_factory=dict)


def _entries(function: str, name: str, value: Any, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray,
                                                                                 np.ndarray]:
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        raise TypeError(f"{function}: {name} must be a triple (rows, cols, vals) of equal-length arrays")
    rows, cols, vals = (np.asarray(a) for a in value)
    for label, index in (("rows", rows), ("cols", cols)):
        if index.dtype.kind not in "iu":
            raise TypeError(f"{function}: {name} {label} must hold integers, got {index.dtype}")
    if vals.dtype.kind not in "iuf":
        raise TypeError(f"{function}: {name} vals must hold real numbers, got {vals.dtype}")
    if not (rows.ndim == cols.ndim == vals.ndim == 1) or not (rows.shape == cols.shape == vals.shape):
        raise ValueError(f"{function}: {name} rows, cols, vals must be 1-D of one length, got shapes "
                         f"{rows.shape}, {cols.shape}, {vals.shape}")
    if rows.size == 0:
        raise ValueError(f"{function}: {name} holds no entry")
    for label, index, bound in (("rows", rows, shape[0]), ("cols", cols, shape[1])):
        bad = np.flatnonzero((index < 0) | (index >= bound))
        if bad.size:
            raise IndexError(f"{function}: {name} {label}[{bad[0]}] = {int(index[bad[0]])} is out of range "
                             f"[0, {bound})")
    vals = vals.astype(np.float64)
    if not np.all(np.isfinite(vals)):
        raise ValueError(f"{function}: {name} vals contain NaN/inf")
    return rows.astype(np.int64), cols.astype(np.int64), vals


@_checks.constrained(shape=_checks.shape_2d, width=_checks.positive_int, depth=_checks.positive_int,
                     n_samples=_checks.positive_int, tol=_checks.positive_float, batch_size=_checks.positive_int,
                     prior_scale=_checks.positive_float, keep=_checks.nonnegative_int, compare_gd=_checks.flag,
                     gd_max_iter=_checks.positive_int, backend=_checks.one_of("cpu", "cuda"),
                     dtype=_checks.one_of("float32", "float64"), seed=_checks.seed_argument)
def guess_and_check(train: Any, shape: tuple[int, int], *, width: int, depth: int = 2, n_samples: int = 1_000_000,
                    tol: float = 1e-2, test: Any = None, batch_size: int = 65536, prior_scale: float = 1.0,
                    keep: int = 16, compare_gd: bool = True, gd_max_iter: int = 3000, backend: str = "cpu",
                    dtype: str = "float64", seed: Optional[int] = None) -> GuessAndCheckResult:
    """Guess & Check on a deep matrix factorization: draw ``n_samples`` factorizations
    W = W_d ... W_1 (width ``width``, depth ``depth``) from the Gaussian prior and keep those whose
    mean squared error on the training entries is below ``tol``; report their test error next to
    gradient descent's.

    Parameters
    ----------
    train : (rows, cols, vals): the observed entries, 1-D arrays of one length (integer indices,
        real values), 0 <= rows < n1, 0 <= cols < n2.
    shape : (n1, n2) of W.
    width : k >= 1. depth : d >= 2 (d = 2 is W = W_2 W_1, the usual U V^T).
    n_samples : draws in total (rounded up to whole batches of ``batch_size``; reported).
    tol : epsilon_train: a draw is accepted when mean_i (W[rows_i, cols_i] - vals_i)^2 < tol.
    test : None or (rows, cols, vals) held-out entries: the generalization loss is their MSE
        (for completion, the paper's L_gen over the unobserved entries).
    batch_size : draws per batch (memory: about batch_size * (n1 + n2 + (d - 2) k) * k numbers).
    prior_scale : s, the prior's scale: W_j entries iid N(0, s^2 / fan_in_j).
    keep : how many accepted products W to return. compare_gd : also run
        ``recover.factored_gd`` (rank ``width``, small start) on the training entries.
    gd_max_iter : its iteration limit. backend : "cpu" or "cuda" (the batches are drawn and
        checked there). dtype : "float64" or "float32" (the sampling precision).
    seed : None (fresh entropy) or an int: the draws (and GD's start) are reproducible.

    Returns
    -------
    :class:`GuessAndCheckResult`.

    Raises
    ------
    TypeError for non-int sizes, non-integer indices, non-numeric values; ValueError for shapes,
    depth < 2, NaN/inf; IndexError for an index out of range; BackendUnavailableError for
    backend="cuda" without a GPU.
    """
    if depth < 2:
        raise ValueError(f"{_FUNCTION}: depth must be >= 2 (W = W_d ... W_1 with d factors), got {depth}")
    rows, cols, vals = _entries(_FUNCTION, "train", train, shape)
    test_entries = None if test is None else _entries(_FUNCTION, "test", test, shape)
    seed = _checks.draw_seed() if seed is None else seed
    call = for_backend(_FUNCTION, backend)
    xp, float_dtype = call.xp, np.dtype(dtype)
    n1, n2 = shape
    nnz = rows.size
    batch_size = min(batch_size, n_samples)
    batches = -(-n_samples // batch_size)
    total = batches * batch_size

    # The training entries of every problem in a batch: the same (rows, cols), B times.
    batch_rows = xp.asarray(np.tile(rows, batch_size))
    batch_cols = xp.asarray(np.tile(cols, batch_size))
    offsets = xp.asarray(np.arange(batch_size + 1, dtype=np.int64) * nnz)
    target = xp.asarray(vals.astype(float_dtype))
    generator = _generator(xp, seed)

    accepted_loss, accepted_test, products = [], [], []
    test_rows = test_cols = test_vals = None
    if test_entries is not None:
        test_rows, test_cols, test_vals = (xp.asarray(a) for a in test_entries)
    start = time.perf_counter()
    for _ in range(batches):
        U, V, unit = _draw(xp, generator, batch_size, n1, n2, width, depth, float_dtype)
        scale = float_dtype.type(unit * prior_scale ** depth)
        predicted = sampled_product(U, V, batch_rows, batch_cols, offsets=offsets, check_finite=False)
        residual = scale * predicted.reshape(batch_size, nnz) - target
        loss = (residual * residual).mean(axis=1)
        hits = xp.flatnonzero(loss < tol)
        if int(hits.size) == 0:
            continue
        accepted_loss.append(call.to_host(loss[hits]).astype(np.float64))
        full = scale * lowrank_product(xp.ascontiguousarray(U[hits]), xp.ascontiguousarray(V[hits]),
                                       check_finite=False)
        if test_entries is not None:
            error = full[:, test_rows, test_cols].astype(np.float64) - test_vals
            accepted_test.append(call.to_host((error * error).mean(axis=1)))
        room = keep - sum(p.shape[0] for p in products)
        if room > 0:
            products.append(call.to_host(full[:room]).astype(np.float64))
    if call.on_device:
        xp.cuda.get_current_stream().synchronize()
    seconds = time.perf_counter() - start

    train_loss = np.concatenate(accepted_loss) if accepted_loss else np.zeros(0)
    test_loss = np.concatenate(accepted_test) if accepted_test else np.zeros(0)
    gd_test = gd_train = None
    if compare_gd:
        gd_train, gd_test = _gradient_descent(rows, cols, vals, shape, width, test_entries, gd_max_iter, seed)
    baseline = float(np.mean(test_entries[2] ** 2)) if test_entries is not None else float("nan")
    return GuessAndCheckResult(
        n_samples=total, n_accepted=int(train_loss.size), acceptance_rate=train_loss.size / total,
        samples_per_second=total / seconds if seconds > 0 else float("inf"), train_loss=train_loss,
        test_loss=test_loss, products=(np.concatenate(products) if products else np.zeros((0, n1, n2))),
        test_loss_mean=float(test_loss.mean()) if test_loss.size else float("nan"), gd_test_loss=gd_test,
        gd_train_loss=gd_train, baseline_test_loss=baseline, seconds=seconds,
        info={"width": width, "depth": depth, "tol": tol, "seed": seed, "backend": backend, "dtype": dtype,
              "batch_size": batch_size, "prior_scale": prior_scale})


def _generator(xp: Any, seed: int) -> Any:
    if xp is np:
        return np.random.default_rng(seed)
    return xp.random.RandomState(seed % 2**63)  # CuPy's generator (standard_normal takes a dtype)


def _draw(xp: Any, generator: Any, batch: int, n1: int, n2: int, k: int, depth: int,
          dtype: np.dtype) -> tuple[Any, Any, float]:
    """(U, V, c) with c U V^T = W_d ... W_1 for ``batch`` draws of the prior at scale 1: U = G_d ...
    G_2 (batch, n1, k), V = G_1^T (batch, n2, k) of standard normal G_j, C-contiguous, and
    c = prod_j 1 / sqrt(fan_in_j) (times prior_scale^d by the caller). The scales are applied to
    the few sampled values, not to every drawn number."""
    V = generator.standard_normal((batch, n2, k), dtype=dtype)   # G_1^T: G_1 is (k, n2), fan-in n2
    U = generator.standard_normal((batch, n1, k), dtype=dtype)   # G_d, fan-in k
    for _ in range(depth - 2):
        U = xp.matmul(U, generator.standard_normal((batch, k, k), dtype=dtype))
    return xp.ascontiguousarray(U), V, float(1.0 / np.sqrt(n2) / np.sqrt(k) ** (depth - 1))


def _gradient_descent(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int], width: int,
                      test: Optional[tuple], max_iter: int, seed: int) -> tuple[float, Optional[float]]:
    from ..recover import factored_gd
    from ..sensing import EntrySampling

    op = EntrySampling(rows, cols, shape)
    result = factored_gd(op, vals, width, init="small", init_scale=1e-3, max_iter=max_iter, tol=1e-8, seed=seed)
    W = np.asarray(result.U) @ np.asarray(result.V).T
    train = float(np.mean((W[rows, cols] - vals) ** 2))
    if test is None:
        return train, None
    return train, float(np.mean((W[test[0], test[1]] - test[2]) ** 2))
