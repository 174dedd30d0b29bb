"""Elastic-binary proximal steps and Boolean matrix factorization (Elbmf): the prox against its
closed form, one fused half-step and whole iterations against a numpy transcription of
shared/specs/elbmf.md, planted tiles recovered with their rank, a real Boolean silhouette, sparse
== dense, batched == one at a time, the estimator, the ``bmf`` subcommand and the errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse

import lowrank_hpc as lr
from lowrank_hpc import ops
from lowrank_hpc.cli.main import main as cli_main
from lowrank_hpc.recover import batched_boolean_mf, binary_matrix, boolean_mf, boolean_product

# float32 results of a few roundings in a row; float64 ones of a k-term sum.
TOL = {np.float32: 1e-5, np.float64: 1e-12}


# ---------------------------------------------------------------------- numpy transcription of the spec
def prox_reference(x, l1, l2, nonnegative):
    """The spec's closed form, entry-wise, in float64."""
    x = np.asarray(x, dtype=np.float64)
    low = (x - l1 * np.sign(x)) / (1 + l2)
    high = (x - l1 * np.sign(x - 1) + l2) / (1 + l2)
    y = np.where(x <= 0.5, low, high)
    return np.maximum(y, 0) if nonnegative else y


def half_step_reference(U, U_prev, gram, cross, kappa, lam, beta, nonnegative):
    """One PALM / iPALM half-step as the spec writes it, in float64."""
    U, U_prev, gram, cross = (np.asarray(a, dtype=np.float64) for a in (U, U_prev, gram, cross))
    L = max(np.linalg.norm(gram), 1e-4)
    step = 2 * (1 - beta) / ((1 + 2 * beta) * L) if beta > 0 else 1 / (1.1 * L)
    Y = U + beta * (U - U_prev)
    return prox_reference(Y - step * (Y @ gram - cross), kappa * step, lam * step, nonnegative)


def elbmf_reference(A, U, V, iterations, kappa=0.01, lam=0.02, growth=1.02, beta=0.0, nonnegative=True):
    """The spec's loop: t = 0, 1, ...: U half-step, then V's (transposed), lambda_t = lam c^t."""
    A = np.asarray(A, dtype=np.float64)
    U, V = np.array(U, dtype=np.float64), np.array(V, dtype=np.float64)
    U_prev, V_prev = U.copy(), V.copy()
    losses = []
    for t in range(iterations):
        lam_t = lam * growth ** t
        U_next = half_step_reference(U, U_prev, V @ V.T, A @ V.T, kappa, lam_t, beta, nonnegative)
        U_prev, U = U, U_next
        Vt_next = half_step_reference(V.T, V_prev.T, U.T @ U, A.T @ U, kappa, lam_t, beta, nonnegative)
        V_prev, V = V, Vt_next.T
        losses.append(float(np.sum((A - U @ V) ** 2)))
    return U, V, np.asarray(losses)


def planted_tiles(n, m, k, noise, seed):
    """(clean, noisy, W, H): k random overlapping tiles (row set x column set, each a sixth to a
    third of the rows / columns) OR-ed together, and that matrix with a share ``noise`` of bits flipped."""
    rng = np.random.default_rng(seed)
    W = np.zeros((n, k), dtype=bool)
    H = np.zeros((k, m), dtype=bool)
    for c in range(k):
        W[rng.choice(n, size=int(rng.integers(n // 6, n // 3 + 1)), replace=False), c] = True
        H[c, rng.choice(m, size=int(rng.integers(m // 6, m // 3 + 1)), replace=False)] = True
    clean = (W.astype(np.int64) @ H.astype(np.int64)) > 0
    noisy = clean ^ (rng.random((n, m)) < noise)
    return clean, noisy, W, H


def f1(predicted, truth):
    predicted, truth = np.asarray(predicted, dtype=bool), np.asarray(truth, dtype=bool)
    tp = np.sum(predicted & truth)
    return 2 * tp / (predicted.sum() + truth.sum())


# ---------------------------------------------------------------------- the prox
GRID = np.concatenate([c + np.linspace(-0.35, 0.35, 71) for c in (0.0, 0.5, 1.0)] + [np.array([-3.0, 4.0])])


@pytest.mark.parametrize("nonnegative", [False, True])
@pytest.mark.parametrize("l1, l2", [(0.0, 0.0), (0.05, 0.1), (0.2, 1.5)])
def test_prox_matches_closed_form_on_a_grid(backend, dtype, nonnegative, l1, l2):
    x = GRID.astype(dtype)
    got = backend.get(ops.elastic_binary_prox(backend.put(x), l1, l2, nonnegative=nonnegative))
    assert got.dtype == dtype and got.shape == x.shape
    np.testing.assert_allclose(got, prox_reference(x, l1, l2, nonnegative), rtol=TOL[dtype], atol=TOL[dtype])


def test_prox_fixed_points_and_pull_towards_0_and_1():
    """Hand-checked values: 0 and 1 are fixed points for any weights; a point left of 1/2 moves
    towards 0 and one right of it towards 1, further for larger weights."""
    x = np.array([0.0, 1.0, 0.3, 0.7, 0.5])
    got = ops.elastic_binary_prox(x, 0.1, 0.5)
    np.testing.assert_allclose(got, [0.0, 1.0, 0.2 / 1.5, 1.3 / 1.5, 0.4 / 1.5])
    assert ops.elastic_binary_prox(np.array([-0.2]), 0.05, 0.0, nonnegative=True)[0] == 0.0


def test_prox_in_place_any_layout_and_list(dtype):
    x = np.asfortranarray(np.random.default_rng(0).uniform(-0.5, 1.5, (5, 4)).astype(dtype))
    expected = prox_reference(x, 0.1, 0.2, True)
    out = np.empty(x.shape, dtype=dtype)
    assert ops.elastic_binary_prox(x, 0.1, 0.2, nonnegative=True, out=out) is out
    np.testing.assert_allclose(out, expected, rtol=TOL[dtype], atol=TOL[dtype])
    y = np.ascontiguousarray(x)
    ops.elastic_binary_prox(y, 0.1, 0.2, nonnegative=True, out=y)
    np.testing.assert_allclose(y, expected, rtol=TOL[dtype], atol=TOL[dtype])
    np.testing.assert_allclose(ops.elastic_binary_prox([0.3, 0.7], 0.1, 0.0), [0.2, 0.8])


def test_prox_errors():
    with pytest.raises(ValueError, match="l1 must be a finite number >= 0"):
        ops.elastic_binary_prox(np.ones(3), -0.1, 0.0)
    with pytest.raises(TypeError, match="nonnegative must be True or False"):
        ops.elastic_binary_prox(np.ones(3), 0.1, 0.0, nonnegative="yes")
    with pytest.raises(ValueError, match="NaN/inf"):
        ops.elastic_binary_prox(np.array([0.1, np.nan]), 0.1, 0.0)
    with pytest.raises(ValueError, match="out has shape"):
        ops.elastic_binary_prox(np.ones(3), 0.1, 0.0, out=np.empty(4))


# ---------------------------------------------------------------------- the fused half-step
@pytest.mark.parametrize("beta", [0.0, 0.3])
@pytest.mark.parametrize("nonnegative", [False, True])
def test_half_step_matches_numpy_transcription(backend, dtype, beta, nonnegative):
    rng = np.random.default_rng(1)
    n, m, k = 37, 29, 5
    A = (rng.random((n, m)) < 0.3).astype(dtype)
    U, U_prev, V = (rng.random((n, k)).astype(dtype), rng.random((n, k)).astype(dtype),
                    rng.random((k, m)).astype(dtype))
    gram, cross = V @ V.T, A @ V.T
    got = backend.get(ops.elastic_binary_half_step(*map(backend.put, (U, U_prev, gram, cross)), 0.01, 0.5,
                                                   inertia=beta, nonnegative=nonnegative))
    expected = half_step_reference(U, U_prev, gram, cross, 0.01, 0.5, beta, nonnegative)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, expected, rtol=10 * TOL[dtype], atol=10 * TOL[dtype])


def test_half_step_batched_is_each_problem(dtype):
    rng = np.random.default_rng(2)
    U, P, C = (rng.random((3, 8, 4)).astype(dtype) for _ in range(3))
    G = rng.random((3, 4, 4)).astype(dtype) * np.array([1.0, 10.0, 0.01], dtype=dtype)[:, None, None]
    got = ops.elastic_binary_half_step(U, P, G, C, 0.02, 0.1, inertia=0.2)
    for b in range(3):
        np.testing.assert_allclose(got[b], half_step_reference(U[b], P[b], G[b], C[b], 0.02, 0.1, 0.2, False),
                                   rtol=10 * TOL[dtype], atol=10 * TOL[dtype])


@pytest.mark.parametrize("k", [1, 5, 10, 16, 17, 32, 33, 129])
def test_half_step_sums_the_new_factors_gram_in_the_same_pass(backend, dtype, k):
    # Ranks 1-16 and 32 run rows unrolled at compile time, 17, 33 and 129 read k at run time (33
    # past the rows kept on the GPU's threads, 129 past the host's); 2,500 rows are three blocks
    # of partial Grams, the last short; problem 1 is inactive (its rows are copied, its Gram is
    # of the copy).
    from lowrank_hpc.ops.elastic_binary import half_step

    rng = np.random.default_rng(k)
    batch, n = 3, 2500
    U, P, C = (rng.random((batch, n, k)).astype(dtype) for _ in range(3))
    G = np.stack([V @ V.T for V in rng.random((batch, k, 40))]).astype(dtype)
    call = resolve_call(backend)
    out, gram_out = backend.xp.empty((batch, n, k), dtype), backend.xp.full((batch, k, k), np.nan, dtype)
    active = backend.put(np.array([1, 0, 1], np.uint8))
    half_step(call, *map(backend.put, (U, P, G, C)), 0.01, 0.3, 0.2, True, out, active, gram_out)
    out, gram_out = backend.get(out), backend.get(gram_out)
    for b in range(batch):
        expected = U[b] if b == 1 else half_step_reference(U[b], P[b], G[b], C[b], 0.01, 0.3, 0.2, True)
        np.testing.assert_allclose(out[b], expected, rtol=100 * TOL[dtype], atol=100 * TOL[dtype])
        exact = out[b].astype(np.float64).T @ out[b].astype(np.float64)
        np.testing.assert_allclose(gram_out[b], exact, rtol=TOL[dtype])  # summed in float64, rounded once
        np.testing.assert_array_equal(gram_out[b], gram_out[b].T)


def resolve_call(backend):
    """A kernel call on the test's backend, as the solver loops hold one."""
    from lowrank_hpc._arrays import resolve

    return resolve("test", x=backend.put(np.zeros(1)))


def test_half_step_errors():
    U = np.ones((4, 2))
    with pytest.raises(ValueError, match=r"gram has shape \(3, 3\), expected \(2, 2\)"):
        ops.elastic_binary_half_step(U, U, np.ones((3, 3)), U, 0.1, 0.1)
    with pytest.raises(ValueError, match=r"inertia must be in \[0, 1\)"):
        ops.elastic_binary_half_step(U, U, np.ones((2, 2)), U, 0.1, 0.1, inertia=1.0)
    with pytest.raises(ValueError, match="separate array"):
        ops.elastic_binary_half_step(U, U.copy(), np.ones((2, 2)), U, 0.1, 0.1, out=U)
    with pytest.raises(TypeError, match="float32 but U is float64"):
        ops.elastic_binary_half_step(U, U, np.ones((2, 2), np.float32), U, 0.1, 0.1)


# ---------------------------------------------------------------------- products with A
@pytest.fixture(params=["gather", "scatter", "vendor"])
def products(request, monkeypatch):
    """On the CPU A is bit-packed (dense) or index-listed (sparse) and multiplied by the core,
    gathering the factor's rows (a factor that stays in cache) or scattering them; too large for
    that, by the vendor's GEMM (dense) or sparse products: the tests that take this run on all three."""
    if request.param == "vendor":
        monkeypatch.setattr(binary_matrix, "_PACKED_MAX_BYTES", 0)
    for limit in ("_GATHER_MAX_BYTES", "_INDEXED_GATHER_MAX_BYTES"):
        monkeypatch.setattr(binary_matrix, limit, 1 << 40 if request.param == "gather" else 0)
    return request.param


@pytest.mark.parametrize("k", [1, 8, 10, 70])
@pytest.mark.parametrize("shape", [(1, 1), (5, 64), (70, 130), (200, 129)])
def test_products_match_numpy(products, dtype, shape, k):
    """A @ F and A^T @ F for dense (one problem and a batch) and sparse A, against numpy in
    float64: sizes around the 64-bit words, ranks with a compiled width (1, 8), without (10) and
    past the 64 accumulated in registers (70)."""
    rng = np.random.default_rng(sum(shape) + k)
    stack = (rng.random((3, *shape)) < 0.3).astype(np.float64)
    stack[0, 0, 0] = 1.0  # no empty sparse matrix
    F = rng.standard_normal((3, shape[1], k)).astype(dtype)
    G = rng.standard_normal((3, shape[0], k)).astype(dtype)
    tol = 1e-12 if dtype == np.float64 else 1e-4
    for A, batch in ((binary_matrix.BinaryMatrix("t", "A", stack, dtype=dtype, batched=True), 3),
                     (binary_matrix.BinaryMatrix("t", "A", stack[0], dtype=dtype), 1),
                     (binary_matrix.BinaryMatrix("t", "A", scipy.sparse.csr_matrix(stack[0]), dtype=dtype), 1)):
        assert (A.packed is not None or A.indexed is not None) == (products != "vendor")
        expected = stack[:batch] @ F[:batch].astype(np.float64)
        np.testing.assert_allclose(A.times(F[:batch]), expected, rtol=tol, atol=tol * np.abs(expected).max())
        expected = stack[:batch].transpose(0, 2, 1) @ G[:batch].astype(np.float64)
        np.testing.assert_allclose(A.transpose_times(G[:batch]), expected, rtol=tol,
                                   atol=tol * np.abs(expected).max())


@pytest.mark.parametrize("k", [17, 40, 70])
def test_gathered_products_at_run_time_ranks_are_the_ordered_sums(monkeypatch, dtype, k):
    """The gather form at ranks without a compiled width (register tiles and a masked rest): each
    output row the sum, in the dtype and in increasing column order, of the factor rows of its
    ones, bit for bit, for packed (dense) and index-listed (sparse) A."""
    for limit in ("_GATHER_MAX_BYTES", "_INDEXED_GATHER_MAX_BYTES"):
        monkeypatch.setattr(binary_matrix, limit, 1 << 40)
    rng = np.random.default_rng(k)
    dense = (rng.random((90, 150)) < 0.3).astype(np.float64)
    F = rng.standard_normal((150, k)).astype(dtype)
    expected = np.zeros((90, k), dtype)
    for j in range(150):  # each row's ones in increasing j: one rounding per add
        ones = dense[:, j] == 1
        expected[ones] = expected[ones] + F[j]
    for A in (binary_matrix.BinaryMatrix("t", "A", dense, dtype=dtype),
              binary_matrix.BinaryMatrix("t", "A", scipy.sparse.csr_matrix(dense), dtype=dtype)):
        assert A.packed is not None or A.indexed is not None
        np.testing.assert_array_equal(A.times(F[None])[0], expected)


def test_tall_scatter_products_split_in_blocks_match_numpy_for_any_thread_count(monkeypatch):
    """A^T G for a tall G (it does not stay in cache: the core scatters its rows) is summed in
    fixed blocks of rows, then the blocks' partial outputs in order: 20,000 rows make several
    blocks on both the packed (dense A) and the indexed (sparse A) form, and one OpenMP thread
    gives the same bits as the default team."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    monkeypatch.setattr(binary_matrix, "_INDEXED_GATHER_MAX_BYTES", 1 << 19)  # as for the packed form
    rng = np.random.default_rng(12)
    dense = (rng.random((20000, 70)) < 0.05).astype(np.float64)
    G = rng.standard_normal((1, 20000, 10))
    expected = dense.T @ G[0]
    for A in (binary_matrix.BinaryMatrix("t", "A", dense), binary_matrix.BinaryMatrix("t", "A", scipy.sparse.csr_matrix(dense))):
        assert A.packed is not None or A.indexed is not None
        assert not A._packed_gathers(G)
        product = A.transpose_times(G)[0]
        np.testing.assert_allclose(product, expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())
        with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
            np.testing.assert_array_equal(A.transpose_times(G)[0], product)
        # And A @ F for a tall F (70 x 10 is small: gathered) against numpy.
        F = rng.standard_normal((1, 70, 10))
        np.testing.assert_allclose(A.times(F)[0], dense @ F[0], rtol=1e-12, atol=1e-12 * np.abs(dense @ F[0]).max())


# ---------------------------------------------------------------------- the solver against the spec
@pytest.mark.parametrize("beta", [0.0, 0.2])
def test_iterations_match_numpy_transcription(beta, products):
    """Five whole iterations (both half-steps, the growing lambda, the loss) against the spec's loop."""
    _, A, _, _ = planted_tiles(30, 24, 3, 0.05, seed=3)
    rng = np.random.default_rng(4)
    U0, V0 = rng.random((30, 4)), rng.random((4, 24))
    result = boolean_mf(A, 4, init=(U0, V0), max_iter=5, tol=0.0, inertia=beta, reg_growth=1.5)
    U, V, losses = elbmf_reference(A, U0, V0, 5, growth=1.5, beta=beta)
    np.testing.assert_allclose(result.U, U, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(result.V, V.T, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(result.history["loss"], losses, rtol=1e-10)
    np.testing.assert_array_equal(result.info["W"], U >= 0.5)
    np.testing.assert_array_equal(result.info["H"], V >= 0.5)
    assert np.array_equal(U0, np.random.default_rng(4).random((30, 4)))  # the caller's start is not overwritten


def test_seeded_start_is_documented_uniform_draw():
    A = np.eye(6, 5)
    result = boolean_mf(A, 2, max_iter=0, seed=7)
    rng = np.random.default_rng(7)
    np.testing.assert_array_equal(result.U, rng.random((6, 2)))
    np.testing.assert_array_equal(result.V, rng.random((2, 5)).T)
    assert result.info["seed"] == 7 and result.n_iter == 0


# ---------------------------------------------------------------------- recovery
@pytest.mark.parametrize("n, m, k, noise", [(60, 50, 3, 0.0), (120, 90, 4, 0.02), (200, 150, 5, 0.05),
                                         (300, 200, 6, 0.03)])
def test_planted_tiles_recovered_with_their_rank(n, m, k, noise):
    """Overlapping tiles under bit-flip noise. The rank is found by fitting r = 1 .. k + 2
    components and keeping the first r of least Boolean error against the noisy input (fewer
    components miss a tile, more only fit noise and land in worse minima); at that r the Boolean
    product's F1 against the clean matrix is >= 0.95 and every component is used. Measured
    (seed 0): errors fall to their minimum exactly at r = k in all four cases, F1 1.000, 0.999,
    0.980 and 0.999."""
    clean, noisy, _, _ = planted_tiles(n, m, k, noise, seed=10 + k)
    models = [lr.BooleanMF(n_components=r, random_state=0).fit(noisy) for r in range(1, k + 3)]
    errors = [model.reconstruction_scores()["boolean_error"] for model in models]
    found = int(np.argmin(errors)) + 1
    assert found == k, errors
    best = models[found - 1]
    assert f1(best.reconstruct(), clean) >= 0.95
    assert bool((best.W_.any(axis=0) & best.H_.any(axis=1)).all())


def test_boolean_silhouette_image():
    """scikit-image's horse (328 x 400 Boolean silhouette; the horse as ones, 33% of the pixels)
    with k = 4: the Boolean reconstruction's F1 was measured at 0.898 (seed 0, float64; seed 1:
    0.898; k = 6, 8, 10: 0.871-0.898), asserted >= 0.88. The simplest Boolean model, the horse's
    bounding box (one tile), scores 0.556 and is asserted to be far below. A rank-4 Boolean model
    of a free-form shape cannot be exact: the rows of a silhouette are intervals that shift."""
    data = pytest.importorskip("skimage.data")
    horse = ~data.horse()
    model = lr.BooleanMF(n_components=4, random_state=0).fit(horse)
    score = f1(model.reconstruct(), horse)
    box = np.zeros_like(horse)
    rows, cols = np.flatnonzero(horse.any(axis=1)), np.flatnonzero(horse.any(axis=0))
    box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    assert score >= 0.88
    assert f1(box, horse) < score - 0.2
    assert model.reconstruction_scores()["f1"] == pytest.approx(score)


def test_sparse_input_gives_the_dense_factors(products):
    _, noisy, _, _ = planted_tiles(80, 70, 3, 0.02, seed=5)
    dense = boolean_mf(noisy, 4, seed=1, max_iter=300)
    sparse = boolean_mf(scipy.sparse.csr_matrix(noisy.astype(np.int8)), 4, seed=1, max_iter=300)
    assert sparse.info["sparse"] and not dense.info["sparse"]
    np.testing.assert_allclose(sparse.U, dense.U, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(sparse.V, dense.V, rtol=1e-8, atol=1e-10)
    np.testing.assert_array_equal(sparse.info["W"], dense.info["W"])
    np.testing.assert_array_equal(sparse.info["H"], dense.info["H"])
    assert sparse.n_iter == dense.n_iter


def test_batched_problems_advance_like_single_ones(products):
    stack = np.stack([planted_tiles(30, 20, 2, 0.02, seed=s)[1] for s in range(4)])
    batched = batched_boolean_mf(stack, 3, seed=11, max_iter=400, tol=1e-6)
    for b in range(4):
        single = boolean_mf(stack[b], 3, seed=11 + b, max_iter=400, tol=1e-6)
        np.testing.assert_allclose(batched.U[b], single.U, rtol=1e-8, atol=1e-10)
        np.testing.assert_array_equal(batched.info["W"][b], single.info["W"])
        np.testing.assert_array_equal(batched.info["H"][b], single.info["H"])
        assert batched.info["n_iter"][b] == single.n_iter
        assert batched.stop_reason[b] == single.stop_reason


def test_checkpoint_resumes_to_the_uninterrupted_run(tmp_path):
    A = np.random.default_rng(0).random((40, 30)) < 0.3
    full = boolean_mf(A, 3, seed=1, max_iter=200, tol=0.0)
    path = str(tmp_path / "run.npz")
    assert boolean_mf(A, 3, seed=1, max_iter=120, tol=0.0, checkpoint=path, checkpoint_every=50).n_iter == 120
    resumed = boolean_mf(A, 3, seed=1, max_iter=200, tol=0.0, checkpoint=path, checkpoint_every=50)
    np.testing.assert_array_equal(resumed.U, full.U)
    np.testing.assert_array_equal(resumed.history["loss"], full.history["loss"])


# ---------------------------------------------------------------------- the estimator
def test_estimator_attributes_transform_and_reproducibility():
    clean, noisy, _, _ = planted_tiles(90, 60, 3, 0.0, seed=6)
    model = lr.BooleanMF(n_components=3, random_state=0, max_iter=2000)
    W = model.fit_transform(noisy)
    assert W is model.W_ and W.dtype == bool and W.shape == (90, 3)
    assert model.H_.dtype == bool and model.H_.shape == (3, 60) and model.components_ is model.H_
    assert model.loss_curve_.shape == (model.n_iter_,) and model.n_features_in_ == 60
    assert model.loss_curve_[-1] < model.loss_curve_[0]
    assert model.reconstruct().dtype == bool and model.reconstruct().shape == (90, 60)
    # New rows with H fixed: the training rows fold in to a reconstruction as good as the fit's.
    folded = model.transform(noisy[:30])
    assert f1(boolean_product(folded, model.H_), clean[:30]) >= f1(model.reconstruct()[:30], clean[:30]) - 0.01
    again = lr.BooleanMF(n_components=3, random_state=0, max_iter=2000).fit(noisy)
    np.testing.assert_array_equal(again.W_, model.W_)
    assert lr.BooleanMF(n_components=3, time_limit=0.0, random_state=0).fit(noisy).n_iter_ == 0


def test_estimator_params_and_import_paths():
    from lowrank_hpc.estimators import BooleanMF, MatrixCompletion, MatrixSensing, NotFittedError

    assert BooleanMF is lr.BooleanMF and MatrixCompletion is lr.MatrixCompletion
    assert MatrixSensing is lr.MatrixSensing and NotFittedError is lr.NotFittedError
    model = BooleanMF(n_components=4, inertia=0.1)
    assert model.get_params()["inertia"] == 0.1 and repr(model) == "BooleanMF(n_components=4, inertia=0.1)"
    assert model.set_params(l2=0.05).l2 == 0.05
    with pytest.raises(NotFittedError, match="not fitted yet"):
        model.reconstruct()


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize("A, error, message", [
    (np.array([[0, 1], [2, 0]]), ValueError, r"0/1 \(Boolean\) matrix; entry \(1, 0\) is 2"),
    (np.array([[0.0, 0.5, 1.0], [0.5, 1.0, 0.0]]), ValueError, r"entry \(0, 1\) is 0.5 \(and 1 more\)"),
    (np.array([[0.0, np.nan], [1.0, 0.0]]), ValueError, "contains 1 NaN"),
    (np.zeros((0, 3)), ValueError, "is empty"),
    (np.ones(4), ValueError, "must have 2 dimensions"),
    (np.array([["a", "b"]]), TypeError, "must hold numbers 0 and 1"),
    (np.ones((2, 2), dtype=complex), TypeError, "complex"),
    (scipy.sparse.csr_matrix(np.array([[0.0, 3.0], [1.0, 0.0]])), ValueError, r"entry \(0, 1\) is 3.0"),
    (scipy.sparse.coo_matrix((np.ones(2), ([0, 0], [1, 1])), shape=(2, 2)), ValueError, r"entry \(0, 1\) is 2.0"),
    (scipy.sparse.csr_matrix((3, 3)), ValueError, "no nonzero entry"),
    (np.zeros((3, 3)), ValueError, "no nonzero entry"),  # as the sparse one (it fitted, silently)
    (np.zeros((3, 3), dtype=bool), ValueError, "no nonzero entry"),
    (None, TypeError, "A is None"),
])
def test_bad_matrices_are_named(A, error, message):
    with pytest.raises(error, match=message):
        boolean_mf(A, 2)


def test_bad_settings_are_named():
    A = np.eye(4)
    with pytest.raises(ValueError, match="n_components must be >= 1, got 0"):
        boolean_mf(A, 0)
    with pytest.raises(TypeError, match="n_components must be an int"):
        boolean_mf(A, 2.0)
    with pytest.raises(ValueError, match="reg_growth must be a finite number >= 1"):
        boolean_mf(A, 2, reg_growth=0.5)
    with pytest.raises(TypeError, match="dtype must be None, float32 or float64"):
        boolean_mf(A, 2, dtype=np.int32)
    with pytest.raises(ValueError, match=r"init U0 has shape \(3, 2\), expected \(4, 2\)"):
        boolean_mf(A, 2, init=(np.ones((3, 2)), np.ones((2, 4))))
    with pytest.raises(ValueError, match="BooleanMF.fit: n_components must be >= 1"):
        lr.BooleanMF(n_components=0).fit(A)
    with pytest.raises(ValueError, match=r"BooleanMF.fit: X must be a 0/1"):
        lr.BooleanMF(n_components=2).fit(A * 3)
    model = lr.BooleanMF(n_components=2, max_iter=5).fit(A)
    with pytest.raises(ValueError, match="X has 3 features, but BooleanMF is expecting 4"):
        model.transform(np.eye(3))


def test_float32_and_list_input():
    result = boolean_mf([[1, 1, 0], [1, 1, 0], [0, 0, 1]], 2, seed=0, dtype=np.float32)
    assert result.U.dtype == np.float32
    np.testing.assert_array_equal(boolean_product(result.info["W"], result.info["H"]),
                                  [[1, 1, 0], [1, 1, 0], [0, 0, 1]])


# ---------------------------------------------------------------------- the command line
def test_bmf_subcommand_writes_factors_and_scores(tmp_path, capsys):
    clean, _, _, _ = planted_tiles(50, 40, 3, 0.0, seed=8)
    rows, cols = np.nonzero(clean)
    source = tmp_path / "ones.csv"
    source.write_text("user,item\n" + "".join(f"u{r},{c}\n" for r, c in zip(rows, cols)))
    out = tmp_path / "factors.npz"
    assert cli_main(["bmf", str(source), "-k", "3", "--seed", "0", "--output", str(out), "--json"]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert report["f1"] >= 0.95 and report["recall"] > 0 and report["precision"] > 0
    assert report["components_used"] == 3
    with np.load(out) as saved:
        W, H = saved["W"], saved["H"]
        assert W.dtype == bool and W.shape[1] == 3 and H.shape[0] == 3
        assert len(saved["row_ids"]) == W.shape[0] and len(saved["col_ids"]) == H.shape[1]
        # The report's scores are the reconstruction's against the file's ones.
        product = boolean_product(W, H)
        truth = np.zeros_like(product)
        truth[np.searchsorted(saved["row_ids"], [f"u{r}" for r in rows]),
              np.searchsorted(saved["col_ids"], cols)] = True
        assert f1(product, truth) == pytest.approx(report["f1"])


def test_bmf_subcommand_errors_are_one_line(tmp_path, capsys):
    source = tmp_path / "values.npz"
    np.savez(source, rows=np.array([0, 1]), cols=np.array([1, 0]), vals=np.array([1.0, 2.0]))
    assert cli_main(["bmf", str(source), "-k", "2", "-o", str(tmp_path / "f.npz")]) == 1
    err = capsys.readouterr().err
    # named by the file's ids (the estimator knows only matrix indices)
    assert err.count("\n") == 1 and "the entry at (row 1, col 0) is 2; a 0/1 matrix holds 0 or 1" in err
    assert cli_main(["bmf", str(source), "-k", "0"]) == 2
    assert cli_main(["bmf", str(tmp_path / "missing.csv")]) == 1
    capsys.readouterr()
    for option in (["--reg-growth", "0.5"], ["--inertia", "1.5"], ["--reg-growth", "nan"]):  # ranges: usage errors
        assert cli_main(["bmf", str(source), "-k", "2", *option]) == 2, option
        assert capsys.readouterr().err.startswith(f"lowrank-hpc: error: {option[0]} must be")


def test_bmf_subcommand_counts_ones_not_the_zeros_an_npz_lists(tmp_path, capsys):
    source = tmp_path / "zeros.npz"
    np.savez(source, rows=np.array([10, 10, 20, 30]), cols=np.array([5, 6, 5, 6]), vals=np.array([1.0, 0.0, 0.0, 1.0]))
    assert cli_main(["bmf", str(source), "-k", "1", "-o", str(tmp_path / "f.npz"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ones"] == 2 and report["shape"] == [3, 2]
    assert report["recall"] == 1.0 or report["precision"] == 1.0  # scored against the two ones only


@pytest.mark.gpu
def test_gpu_matches_cpu():
    cupy = pytest.importorskip("cupy")
    _, noisy, _, _ = planted_tiles(60, 50, 3, 0.02, seed=9)
    cpu = boolean_mf(noisy, 4, seed=2, max_iter=200)
    gpu = boolean_mf(cupy.asarray(noisy), 4, seed=2, max_iter=200)
    assert gpu.backend == "cuda"
    np.testing.assert_allclose(gpu.U.get(), cpu.U, rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(gpu.info["W"].get(), cpu.info["W"])


def test_a_batch_member_without_ones_is_named():
    """Only a batch whose every member was empty was refused: an empty member fitted silently."""
    A = np.zeros((2, 6, 5))
    A[0, :3, :2] = 1
    with pytest.raises(ValueError, match=r"A\[1\] has no nonzero entry; there is nothing to factor"):
        batched_boolean_mf(A, 2)
