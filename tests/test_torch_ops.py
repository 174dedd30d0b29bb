"""lowrank_hpc.torch's custom operators: values against the numpy kernels and dense references,
gradients by gradcheck (float64) and against plain-torch autograd of the same math, opcheck,
a torch.compile(fullgraph=True) trace, and the errors. Skipped without torch (optional extra)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (optional extra; in the test extra)")

import lowrank_hpc  # noqa: E402
import lowrank_hpc.torch as lt  # noqa: E402
from lowrank_hpc import ops  # noqa: E402
from lowrank_hpc.torch import _ops  # noqa: E402

import reference  # noqa: E402

DTYPES = {"float32": torch.float32, "float64": torch.float64}
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-12, atol=1e-13)}
# Plain-torch transcriptions of the kernels, the autograd references.
TORCH_KERNELS = {"identity": lambda x: x, "relu": torch.relu, "exponential": torch.exp, "tanh": torch.tanh,
                 "piecewise_linear": lambda x: torch.clamp(x, -1, 1)}


def problem(dtype=torch.float64, m=7, n=6, r=3, nnz=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    U = torch.randn(m, r, generator=generator, dtype=dtype)
    V = torch.randn(n, r, generator=generator, dtype=dtype)
    rows = torch.randint(0, m, (nnz,), generator=generator)
    cols = torch.randint(0, n, (nnz,), generator=generator)
    rows[1], cols[1] = rows[0], cols[0]  # a repeated position: its values add up
    vals = torch.randn(nnz, generator=generator, dtype=dtype)
    return U, V, rows, cols, vals


def leaves(*tensors):
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def grads_of(f, inputs):
    out = f(*inputs)
    seed = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    return torch.autograd.grad((out * seed).sum(), inputs)


@pytest.mark.parametrize("name", DTYPES)
def test_values_equal_the_numpy_kernels_and_the_references(name):
    dtype = DTYPES[name]
    U, V, rows, cols, vals = problem(dtype)
    Un, Vn, rn, cn, vn = (t.numpy() for t in (U, V, rows, cols, vals))
    np.testing.assert_array_equal(lt.sampled_product(U, V, rows, cols).numpy(), ops.sampled_product(Un, Vn, rn, cn))
    np.testing.assert_allclose(lt.sampled_product(U, V, rows, cols).numpy(), reference.sampled_product(Un, Vn, rn, cn),
                               **TOL[dtype])
    for transpose, B, n_rows in ((False, V, 7), (True, U, 6)):
        got = lt.sparse_times_dense(rows, cols, vals, B, n_rows, transpose=transpose).numpy()
        np.testing.assert_array_equal(got, ops.sparse_times_dense(rn, cn, vn, B.numpy(), n_rows, transpose=transpose))
        np.testing.assert_allclose(got, reference.sparse_times_dense(rn, cn, vn, B.numpy(), n_rows, transpose),
                                   **TOL[dtype])
    np.testing.assert_allclose(lt.lowrank_product(U, V).numpy(), reference.lowrank_product(Un, Vn), **TOL[dtype])
    for kernel in ops.KERNELS:
        dense = reference.kernel_product(Un, Vn, kernel)
        np.testing.assert_allclose(lt.kernel_product(U, V, kernel).numpy(), dense, **TOL[dtype])
        values, indices = lt.kernel_product(U, V, kernel, 2)
        ref_values, ref_indices = reference.top_k_rows(dense, 2)
        np.testing.assert_array_equal(indices.numpy(), ref_indices)
        np.testing.assert_allclose(values.numpy(), ref_values, **TOL[dtype])
        result = lt.kernel_product(U, V, kernel, 9, top_k_mode="global")
        ref = reference.top_k_global(dense, 9)
        np.testing.assert_array_equal(result.rows.numpy(), ref[1])
        np.testing.assert_array_equal(result.cols.numpy(), ref[2])
        np.testing.assert_allclose(result.values.numpy(), ref[0], **TOL[dtype])
        by_position = np.argsort(ref[1] * Vn.shape[0] + ref[2])
        result = lt.kernel_product(U, V, kernel, 9, top_k_mode="global", top_k_order="position")
        np.testing.assert_array_equal(result.rows.numpy(), ref[1][by_position])
        np.testing.assert_array_equal(result.cols.numpy(), ref[2][by_position])
        np.testing.assert_allclose(result.values.numpy(), ref[0][by_position], **TOL[dtype])
        values, indices = lt.kernel_product(U, V, kernel, 2, top_k_order="position")
        np.testing.assert_array_equal(indices.numpy(), np.sort(ref_indices, axis=1))


def test_batched_lowrank_and_kernel_products():
    generator = torch.Generator().manual_seed(3)
    U, V = torch.randn(2, 5, 3, generator=generator, dtype=torch.float64), torch.randn(2, 4, 3, generator=generator,
                                                                                          dtype=torch.float64)
    torch.testing.assert_close(lt.lowrank_product(U, V), U @ V.transpose(1, 2))
    torch.testing.assert_close(lt.kernel_product(U, V, "tanh"), torch.tanh(U @ V.transpose(1, 2)))
    assert torch.autograd.gradcheck(lambda U, V: lt.kernel_product(U, V, "tanh"), leaves(U, V))


def _cases(U, V, rows, cols, vals):
    """(label, lowrank_hpc function, plain-torch function, differentiable inputs)."""
    B_rows, B_cols = V, U  # S is m x n: S @ B takes B (n, r), S^T @ B takes (m, r)
    cases = [
        ("sampled_product", lambda U, V: lt.sampled_product(U, V, rows, cols),
         lambda U, V: (U[rows] * V[cols]).sum(1), (U, V)),
        ("sparse_times_dense", lambda v, B: lt.sparse_times_dense(rows, cols, v, B, U.shape[0]),
         lambda v, B: torch.zeros(U.shape[0], B.shape[1], dtype=B.dtype).index_add(0, rows, v[:, None] * B[cols]),
         (vals, B_rows)),
        ("sparse_times_dense_T", lambda v, B: lt.sparse_times_dense(rows, cols, v, B, V.shape[0], transpose=True),
         lambda v, B: torch.zeros(V.shape[0], B.shape[1], dtype=B.dtype).index_add(0, cols, v[:, None] * B[rows]),
         (vals, B_cols)),
        ("lowrank_product", lt.lowrank_product, lambda U, V: U @ V.T, (U, V)),
    ]
    for kernel in ops.KERNELS:
        f = TORCH_KERNELS[kernel]
        scale = 0.4  # keeps piecewise_linear's entries off its corners at +-1
        cases.append((f"kernel_{kernel}", lambda U, V, k=kernel: lt.kernel_product(U, V, k),
                      lambda U, V, f=f: f(U @ V.T), (U * scale, V)))
        cases.append((f"top_k_rows_{kernel}", lambda U, V, k=kernel: lt.kernel_product(U, V, k, 2).values,
                      lambda U, V, f=f, k=kernel: torch.gather(f(U @ V.T), 1, lt.kernel_product(U, V, k, 2).indices),
                      (U * scale, V)))
        cases.append((f"top_k_global_{kernel}",
                      lambda U, V, k=kernel: lt.kernel_product(U, V, k, 9, top_k_mode="global").values,
                      lambda U, V, f=f, k=kernel: f(U @ V.T)[_global(U, V, k)], (U * scale, V)))
    cases.append(("top_k_global_tanh_position",
                  lambda U, V: lt.kernel_product(U, V, "tanh", 9, top_k_mode="global", top_k_order="position").values,
                  lambda U, V: torch.tanh(U @ V.T)[_global(U, V, "tanh", "position")], (U * 0.4, V)))
    return cases


def _global(U, V, kernel, order="magnitude"):
    result = lt.kernel_product(U.detach(), V.detach(), kernel, 9, top_k_mode="global", top_k_order=order)
    return result.rows, result.cols


CASES = [case[0] for case in _cases(*problem())]


@pytest.mark.parametrize("label", CASES)
def test_gradcheck_and_gradients_equal_plain_torch(label):
    label_, ours, plain, inputs = next(case for case in _cases(*problem()) if case[0] == label)
    assert torch.autograd.gradcheck(ours, leaves(*inputs))
    for got, expected in zip(grads_of(ours, leaves(*inputs)), grads_of(plain, leaves(*inputs))):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("label", ["sampled_product", "sparse_times_dense", "kernel_tanh", "kernel_relu",
                                   "kernel_piecewise_linear", "top_k_global_exponential", "top_k_rows_tanh"])
def test_second_derivatives(label):
    _, ours, _, inputs = next(case for case in _cases(*problem()) if case[0] == label)
    assert torch.autograd.gradgradcheck(ours, leaves(*inputs))


def test_opcheck_every_operator():
    U, V, rows, cols, vals = problem()
    U, V, vals = leaves(U, V, vals)
    namespace = torch.ops.lowrank_hpc
    calls = [(namespace.sampled_product, (U, V, rows, cols)),
             (namespace.sparse_times_dense, (rows, cols, vals, V, 7, False)),
             (namespace.sparse_times_dense, (rows.to(torch.int32), cols.to(torch.int32), vals, U, 6, True)),
             (namespace.lowrank_product, (U, V)),
             (namespace.kernel_product, (U, V, "tanh")),
             (namespace.kernel_top_k_rows, (U, V, "relu", 2)),
             (namespace.kernel_top_k_global, (U, V, "exponential", 5))]
    for op, args in calls:
        result = torch.library.opcheck(op, args)
        assert set(result.values()) == {"SUCCESS"}, (op, result)


def test_compile_fullgraph_traces_every_operator():
    U, V, rows, cols, vals = problem()

    def loss(U, V, vals):
        sampled = lt.sampled_product(U, V, rows, cols)
        spmm = lt.sparse_times_dense(rows, cols, sampled * vals, V, U.shape[0])
        spmm_t = lt.sparse_times_dense(rows, cols, vals, U, V.shape[0], transpose=True)
        row_top = lt.kernel_product(U, V, "tanh", 2)
        global_top = lt.kernel_product(U, V, "relu", 5, top_k_mode="global")
        return (spmm.square().sum() + spmm_t.sum() + lt.kernel_product(U, V, "exp").sum()
                + lt.lowrank_product(U, V).square().sum() + row_top.values.sum() + global_top.values.sum())

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    eager_inputs, compiled_inputs = leaves(U, V, vals), leaves(U, V, vals)
    eager, traced = loss(*eager_inputs), compiled(*compiled_inputs)
    torch.testing.assert_close(traced, eager)
    eager.backward()
    traced.backward()
    for a, b in zip(eager_inputs, compiled_inputs):
        torch.testing.assert_close(b.grad, a.grad)


def test_cpu_tensors_reach_the_kernels_without_copies():
    U = torch.randn(5, 3, dtype=torch.float64)
    view = _ops._array(U)
    assert view.ctypes.data == U.data_ptr()
    view[0, 0] = 42.0
    assert U[0, 0] == 42.0
    out = _ops._tensor(view)
    assert out.data_ptr() == view.ctypes.data


def test_cpu_operators_multiply_by_torchs_gemm(monkeypatch):
    """CPU tensors' dense products run torch's GEMM, not numpy's (whose BLAS threads spun beside
    torch's): each dense operator calls it, and lowrank_product equals torch's U @ V^T bit for bit."""
    calls = []
    torch_gemm = _ops._torch_gemm
    monkeypatch.setattr(_ops, "_torch_gemm", lambda a, b, out=None: calls.append(a.shape) or torch_gemm(a, b, out))
    U, V, *_ = problem(torch.float32, m=40, n=30, r=5)
    assert torch.equal(lt.lowrank_product(U, V), U @ V.T)
    torch.testing.assert_close(lt.kernel_product(U, V, "tanh"), torch.tanh(U @ V.T), rtol=1e-6, atol=1e-7)
    lt.kernel_product(U, V, "relu", 3)
    lt.kernel_product(U, V, "tanh", 20, top_k_mode="global")
    assert len(calls) == 4


def test_errors_name_the_argument():
    U, V, rows, cols, vals = problem()
    with pytest.raises(TypeError, match="sampled_product: U must be a float32, float64, float16 or bfloat16 tensor, "
                                        "got torch.int32"):
        lt.sampled_product(U.int(), V.int(), rows, cols)
    with pytest.raises(TypeError, match="sampled_product: V is torch.float32 but U is torch.float64"):
        lt.sampled_product(U, V.float(), rows, cols)
    with pytest.raises(TypeError, match="sampled_product: rows must be an int32 or int64 tensor"):
        lt.sampled_product(U, V, rows.double(), cols)
    with pytest.raises(ValueError, match="sampled_product: V is on meta but U is on cpu"):
        lt.sampled_product(U, V.to("meta"), rows, cols)
    with pytest.raises(ValueError, match="sampled_product: cols is on meta"):
        lt.sampled_product(U, V, rows, cols.to("meta"))
    with pytest.raises(ValueError, match=r"sampled_product: U has shape \(7, 3\) and V has shape \(6, 2\)"):
        lt.sampled_product(U, V[:, :2], rows, cols)
    with pytest.raises(IndexError, match=r"sampled_product: rows\[3\] = 99 is out of range \[0, 7\)"):
        lt.sampled_product(U, V, torch.where(torch.arange(12) == 3, 99, rows), cols)
    with pytest.raises(TypeError, match="sparse_times_dense: B is torch.float32 but vals is torch.float64"):
        lt.sparse_times_dense(rows, cols, vals, V.float(), 7)
    with pytest.raises(TypeError, match="sparse_times_dense: vals must be a float32, float64, float16 or bfloat16 "
                                        "tensor, got torch.complex64"):
        lt.sparse_times_dense(rows, cols, vals.to(torch.complex64), V.to(torch.complex64), 7)
    with pytest.raises(ValueError, match="sparse_times_dense: vals has length 11 but rows has 12"):
        lt.sparse_times_dense(rows, cols, vals[:11], V, 7)
    with pytest.raises(ValueError, match="kernel_product: unknown kernel 'rbf'"):
        lt.kernel_product(U, V, "rbf")
    with pytest.raises(ValueError, match=r"kernel_product: top_k must satisfy 1 <= top_k <= 6 in row mode, got 7"):
        lt.kernel_product(U, V, "relu", 7)
    with pytest.raises(ValueError, match=r"kernel_product: top_k_mode must be one of \('row', 'global'\)"):
        lt.kernel_product(U, V, "relu", 2, top_k_mode="col")
    with pytest.raises(TypeError, match="lowrank_product: U must be a float32, float64, float16 or bfloat16 tensor, got torch.int64"):
        lt.lowrank_product(rows[:, None], cols[:, None])


def test_the_core_does_not_import_torch():
    code = "import sys, lowrank_hpc, lowrank_hpc.ops, lowrank_hpc.recover; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.gpu
def test_cuda_tensors_match_the_cpu():
    if not torch.cuda.is_available():
        pytest.skip("this torch build has no CUDA")
    U, V, rows, cols, vals = problem()
    U, V, vals = leaves(U, V, vals)
    cpu = lt.sampled_product(U, V, rows, cols)
    (cpu * cpu).sum().backward()
    gU, gV = U.grad.clone(), V.grad.clone()
    Uc, Vc = leaves(U.cuda(), V.cuda())
    gpu = lt.sampled_product(Uc, Vc, rows.cuda(), cols.cuda())
    (gpu * gpu).sum().backward()
    torch.testing.assert_close(gpu.cpu(), cpu)
    torch.testing.assert_close(Uc.grad.cpu(), gU)
    torch.testing.assert_close(Vc.grad.cpu(), gV)
    torch.testing.assert_close(lt.kernel_product(Uc, Vc, "tanh").cpu(), lt.kernel_product(U, V, "tanh"))
    assert lowrank_hpc.get_backend() in ("auto", "cuda")


def test_empty_index_tensors_give_torchs_empty_results_and_zero_gradients():
    U = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    V = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    empty = torch.zeros(0, dtype=torch.int64)
    out = lt.sampled_product(U, V, empty, empty)
    assert out.shape == (0,) and out.dtype == torch.float64
    grad_U, grad_V = torch.autograd.grad(out.sum(), (U, V))
    assert torch.equal(grad_U, torch.zeros_like(U)) and torch.equal(grad_V, torch.zeros_like(V))
    vals = torch.zeros(0, dtype=torch.float64, requires_grad=True)
    product = lt.sparse_times_dense(empty, empty, vals, V, 5)
    assert torch.equal(product, torch.zeros(5, 3, dtype=torch.float64))
    grad_vals, grad_B = torch.autograd.grad(product.sum(), (vals, V))
    assert grad_vals.shape == (0,) and torch.equal(grad_B, torch.zeros_like(V))


def test_sizes_and_flags_are_checked_not_truncated():
    U, V, rows, cols, vals = problem()
    with pytest.raises(TypeError, match="sparse_times_dense: n_rows must be an int, got float 7.9"):
        lt.sparse_times_dense(rows, cols, vals, V, 7.9)
    with pytest.raises(ValueError, match="sparse_times_dense: n_rows must be >= 1, got 0"):
        lt.sparse_times_dense(rows, cols, vals, V, 0)
    with pytest.raises(TypeError, match="sparse_times_dense: transpose must be True or False"):
        lt.sparse_times_dense(rows, cols, vals, V, 7, transpose="yes")


def _func_cases():
    U, V, rows, cols, vals = problem()
    m, n = U.shape[0], V.shape[0]
    return {
        "sampled_product": (lambda U, V, v: lt.sampled_product(U, V, rows, cols).square().sum(), (0, 1)),
        "sparse_times_dense": (lambda U, V, v: lt.sparse_times_dense(rows, cols, v, V, m).square().sum(), (1, 2)),
        "sparse_times_dense_T": (lambda U, V, v: lt.sparse_times_dense(rows, cols, v, U, n, transpose=True).sin().sum(),
                                 (0, 2)),
        "lowrank_product": (lambda U, V, v: lt.lowrank_product(U, V).square().sum(), (0, 1)),
        "kernel_tanh": (lambda U, V, v: lt.kernel_product(U, V, "tanh").square().sum(), (0, 1)),
        "top_k_row": (lambda U, V, v: lt.kernel_product(U, V, "tanh", 2).values.square().sum(), (0, 1)),
        "top_k_global": (lambda U, V, v: lt.kernel_product(U, V, "relu", 5, top_k_mode="global").values.square().sum(),
                         (0, 1)),
    }


@pytest.mark.parametrize("case", list(_func_cases()))
def test_torch_func_grad_matches_autograd(case):
    """torch.func.grad (which torch's register_autograd alone does not support: pytorch issue
    168393) gives torch.autograd's gradients for every operator, and grad of grad its second
    derivatives (a Hessian-vector product)."""
    loss, argnums = _func_cases()[case]
    U, V, rows, cols, vals = problem()
    by_func = torch.func.grad(loss, argnums=argnums)(U, V, vals)
    inputs = leaves(U, V, vals)
    by_autograd = torch.autograd.grad(loss(*inputs), [inputs[i] for i in argnums], create_graph=True)
    for a, b in zip(by_func, by_autograd):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
    direction = torch.linspace(-1, 1, by_autograd[0].numel(), dtype=torch.float64).reshape(by_autograd[0].shape)

    def directional(*args):
        return (torch.func.grad(loss, argnums=argnums[0])(*args) * direction).sum()

    second_by_func = torch.func.grad(directional, argnums=argnums[0])(U, V, vals)
    (second_by_autograd,) = torch.autograd.grad((by_autograd[0] * direction).sum(), inputs[argnums[0]])
    torch.testing.assert_close(second_by_func, second_by_autograd, **TOL[torch.float64])


def test_per_sample_gradients_by_vmap_of_grad():
    """The torch.func recipe for per-sample gradients: vmap(grad(loss)) over a batch of factor
    pairs equals one autograd pass per pair (the sparse products' own vmap rule: no per-element
    fallback, which would warn)."""
    generator = torch.Generator().manual_seed(4)
    U = torch.randn(5, 7, 3, generator=generator, dtype=torch.float64)
    V = torch.randn(5, 6, 3, generator=generator, dtype=torch.float64)
    rows, cols = problem()[2:4]

    def loss(U, V):
        return lt.sampled_product(U, V, rows, cols).square().sum()

    per_sample = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1)))(U, V)
    for b in range(5):
        U1, V1 = leaves(U[b], V[b])
        expected = torch.autograd.grad(loss(U1, V1), (U1, V1))
        torch.testing.assert_close(per_sample[0][b], expected[0], **TOL[torch.float64])
        torch.testing.assert_close(per_sample[1][b], expected[1], **TOL[torch.float64])


def test_vmap_of_the_sparse_products_is_one_call_per_batch(monkeypatch):
    """torch.func.vmap of the sparse products (one and two levels, batched or shared patterns, both
    transposes) equals a loop over the elements, runs one operator call per level instead of one
    per element, and names a bad index with its element."""
    generator = torch.Generator().manual_seed(6)
    outer, inner, m, n, r, nnz = 2, 3, 7, 6, 3, 12
    U = torch.randn(outer, inner, m, r, generator=generator, dtype=torch.float64)
    V = torch.randn(outer, inner, n, r, generator=generator, dtype=torch.float64)
    rows = torch.randint(0, m, (outer, inner, nnz), generator=generator)
    cols = torch.randint(0, n, (outer, inner, nnz), generator=generator)
    vals = torch.randn(outer, inner, nnz, generator=generator, dtype=torch.float64)
    calls = []
    for name in ("sampled_product", "sparse_times_dense"):  # the kernels the operators call
        original = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _f=original, **k: calls.append(_f.__name__) or _f(*a, **k))
    sampled = torch.func.vmap(torch.func.vmap(lt.sampled_product))(U, V, rows, cols)
    spmm = torch.func.vmap(torch.func.vmap(lambda r_, c_, v, B: lt.sparse_times_dense(r_, c_, v, B, m)))(
        rows, cols, vals, V)
    assert calls == ["sampled_product", "sparse_times_dense"]  # one kernel call for all 6 elements
    monkeypatch.undo()
    shared = torch.func.vmap(lambda U, V: lt.sampled_product(U, V, rows[0, 0], cols[0, 0]))(U[0], V[0])
    spmm_t = torch.func.vmap(lambda r_, c_, v, B: lt.sparse_times_dense(r_, c_, v, B, n, transpose=True))(
        rows[1], cols[1], vals[1], U[1])
    for a in range(outer):
        for b in range(inner):
            torch.testing.assert_close(sampled[a, b], lt.sampled_product(U[a, b], V[a, b], rows[a, b], cols[a, b]))
            torch.testing.assert_close(spmm[a, b],
                                       lt.sparse_times_dense(rows[a, b], cols[a, b], vals[a, b], V[a, b], m))
    for b in range(inner):
        torch.testing.assert_close(shared[b], lt.sampled_product(U[0, b], V[0, b], rows[0, 0], cols[0, 0]))
        torch.testing.assert_close(spmm_t[b], lt.sparse_times_dense(rows[1, b], cols[1, b], vals[1, b], U[1, b], n,
                                                                     transpose=True))
    bad = rows[0].clone()
    bad[2, 5] = m
    with pytest.raises(IndexError, match=rf"sampled_product: rows\[5\] = {m} is out of range \[0, {m}\) "
                                         r"\(vmapped element 2\)"):
        torch.func.vmap(lt.sampled_product)(U[0], V[0], bad, cols[0])
