"""Backend choice, info() and the command line."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import lowrank_hpc as lr
from lowrank_hpc import _backend


def test_info_reports_build_and_runtime():
    report = lr.info()
    assert report["version"] == lr.__version__
    assert report["backends_built"][0] == "cpu"
    assert report["float_dtypes"] == ["float32", "float64"]
    assert report["half_dtypes"] == ["float16", "bfloat16"]
    assert report["openmp_threads"] >= 1
    cuda = report["cuda"]
    assert cuda["available"] == _backend.HAS_CUDA
    if cuda["available"]:
        assert cuda["memory_bytes"] > 0 and cuda["device"]
    else:
        assert cuda["reason"]


def test_cuda_module_compiled_when_nvcc_was_present():
    """CI builds with nvcc on the PATH: the CUDA backend must have compiled (a GPU is optional)."""
    from lowrank_hpc import _build_info

    import shutil
    if shutil.which("nvcc") is None and not _build_info.CUDA_BUILT:
        pytest.skip("no nvcc on this machine: a CPU-only build is expected")
    assert _build_info.CUDA_BUILT and "cuda" in lr.info()["backends_built"]
    from lowrank_hpc import _cuda  # noqa: F401  (importable even without a GPU)


def test_cli_info_prints_json():
    out = subprocess.run([sys.executable, "-m", "lowrank_hpc", "info", "--compact"], check=True,
                         capture_output=True, text=True).stdout
    assert json.loads(out)["version"] == lr.__version__


def test_set_backend_validates_and_forced_cpu_runs_numpy():
    with pytest.raises(ValueError, match="backend must be one of"):
        lr.set_backend("tpu")
    with lr.use_backend("cpu"):
        assert lr.get_backend() == "cpu"
        U = np.ones((3, 2))
        np.testing.assert_array_equal(lr.ops.lowrank_product(U, U), np.full((3, 3), 2.0))
    assert lr.get_backend() == "auto"


@pytest.mark.skipif(_backend.HAS_CUDA, reason="checks the error on a machine without a GPU")
def test_asking_for_cuda_without_gpu_says_why():
    with pytest.raises(lr.BackendUnavailableError, match="backend 'cuda' is not available: .+"):
        lr.set_backend("cuda")
    with pytest.raises(lr.BackendUnavailableError, match="not available"):
        with lr.use_backend("cuda"):
            pass


def test_env_var_forces_backend_in_a_fresh_process():
    code = "import lowrank_hpc as lr; print(lr.get_backend())"
    env = {"LOWRANK_HPC_BACKEND": "cpu", "PATH": "", "PYTHONPATH": ":".join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env).stdout
    assert out.strip() == "cpu"
    env["LOWRANK_HPC_BACKEND"] = "gpu"
    failed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert failed.returncode != 0 and "backend must be one of" in failed.stderr


@pytest.mark.gpu
def test_mixing_host_and_device_arrays_is_a_type_error():
    cupy = _backend.cupy_module()
    U = np.ones((3, 2))
    with pytest.raises(TypeError, match="mix host and device arrays"):
        lr.ops.lowrank_product(U, cupy.asarray(U))
    with lr.use_backend("cpu"), pytest.raises(TypeError, match="backend 'cpu' is in force"):
        lr.ops.lowrank_product(cupy.asarray(U), cupy.asarray(U))
    with lr.use_backend("cuda"), pytest.raises(TypeError, match="backend 'cuda' is in force"):
        lr.ops.lowrank_product(U, U)


@pytest.mark.gpu
def test_gpu_results_stay_on_device_without_copies():
    cupy = _backend.cupy_module()
    U = cupy.random.standard_normal((40, 4))
    rows = cupy.arange(40, dtype=cupy.int64)
    vals = lr.ops.sampled_product(U, U, rows, rows)
    assert isinstance(vals, cupy.ndarray)
    np.testing.assert_allclose(vals.get(), (U * U).sum(axis=1).get(), rtol=1e-12)


def test_cli_complete_demo_and_input_file(tmp_path):
    """The main job: the built-in demo, then a CSV the user supplies."""
    demo = json.loads(subprocess.run([sys.executable, "-m", "lowrank_hpc", "demo", "--json", "--no-picture"],
                                     check=True, capture_output=True, text=True).stdout)
    n1, n2 = demo["shape"]
    assert abs(demo["observed_pixels"] / (n1 * n2) - 0.3) < 0.01
    assert demo["rmse_hidden"] < 0.5 * demo["rmse_mean_predictor"]
    # A planted rank-2 matrix, no offsets and a negligible penalty: the held-out entries are recovered.
    rng = np.random.default_rng(0)
    M = rng.standard_normal((40, 2)) @ rng.standard_normal((2, 30))
    rows, cols = np.nonzero(rng.random((40, 30)) < 0.6)
    csv = tmp_path / "ratings.csv"
    csv.write_text("row,col,value\n" + "".join(f"{i},{j},{float(M[i, j])!r}\n" for i, j in zip(rows, cols)))
    out = tmp_path / "model.npz"
    fitted = json.loads(subprocess.run([sys.executable, "-m", "lowrank_hpc", "complete", str(csv), "--method", "als",
                                        "--center", "none", "--rank", "2", "--reg", "1e-6", "--max-iter", "200",
                                        "--output", str(out), "--json"],
                                       check=True, capture_output=True, text=True).stdout)
    assert fitted["shape"] == [40, 30] and fitted["test_entries"] > 50
    assert fitted["test_rmse"] < 1e-3 and fitted["mean_predictor_rmse"] > 0.5
    with np.load(out) as model:
        assert model["U"].shape == (40, 2) and model["V"].shape == (30, 2)
    bad = subprocess.run([sys.executable, "-m", "lowrank_hpc", "complete", str(csv), "--test-fraction", "1.5"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--test-fraction must be in [0, 1)" in bad.stderr


def test_single_threaded_blas_nests_and_restores_the_callers_limit():
    """The outermost scope sets one BLAS thread, inner ones keep it, and the caller's own limit
    comes back only when the outermost scope closes (an inner one closing must not lift it)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from lowrank_hpc._backend import single_threaded_blas

    def blas_threads():
        return {info["num_threads"] for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"}

    if not blas_threads():
        pytest.skip("no BLAS library loaded that threadpoolctl can see")
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        assert blas_threads() == {2}
        with single_threaded_blas():
            assert blas_threads() == {1}
            with single_threaded_blas():
                assert blas_threads() == {1}
            assert blas_threads() == {1}
        assert blas_threads() == {2}
        with pytest.raises(RuntimeError), single_threaded_blas():
            raise RuntimeError("a solver that fails inside the scope")
        assert blas_threads() == {2}


def test_host_gemm_scope_routes_the_dense_products_and_restores_numpys():
    """Inside host_gemm(g) every host GEMM of the dense products (lowrank_product, kernel_product
    dense and in both top-k modes, batched or not) is g's, with the same results as numpy's; the
    enclosing scope's GEMM comes back when an inner one closes, numpy's after the outermost, and
    also when the body raises."""
    from lowrank_hpc import _backend, ops

    rng = np.random.default_rng(4)
    U, V = rng.standard_normal((2, 300, 5)), rng.standard_normal((2, 200, 5))
    calls = []

    def recording(label):
        def gemm(a, b, out=None):
            calls.append(label)
            return np.matmul(a, b, out=out)
        return gemm

    def products():
        return [ops.lowrank_product(U[0], V[0]), ops.lowrank_product(U, V), ops.kernel_product(U, V, "tanh"),
                *ops.kernel_product(U[0], V[0], "tanh", 3), *ops.kernel_product(U, V, "relu", 50, top_k_mode="global")]

    expected = products()
    assert calls == []
    with _backend.host_gemm(recording("outer")):
        got = products()
        outer_calls = len(calls)
        with _backend.host_gemm(recording("inner")):
            ops.lowrank_product(U[0], V[0])
        ops.lowrank_product(U[0], V[0])
    # lowrank 2-D and batched, dense kernel (one stacked GEMM), row top-k (one block), global (the
    # batch's two small problems in one block)
    assert outer_calls == 1 + 1 + 1 + 1 + 1 and calls[outer_calls:] == ["inner", "outer"]
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(RuntimeError), _backend.host_gemm(recording("failing")):
        raise RuntimeError("an operator that fails inside the scope")
    ops.lowrank_product(U[0], V[0])
    assert calls[-1] == "outer" and len(calls) == outer_calls + 2


def test_host_gemm_scope_that_takes_halves_gets_the_16_bit_factors():
    """lowrank_product hands a scope's GEMM float16 factors only when the scope says it takes
    them (and returns its 16-bit product as it is); otherwise, and for the dense kernel product
    (f of the float32 sum, rounded once), the GEMM gets float32 copies and the product is rounded
    after: the two routes agree here, where every float32 sum is exact."""
    from lowrank_hpc import _backend, ops

    rng = np.random.default_rng(5)
    # small integers: products and sums exact in float32, so both routes give the same float16
    U, V = rng.integers(-8, 8, (30, 4)).astype(np.float16), rng.integers(-8, 8, (20, 4)).astype(np.float16)
    seen = []

    def gemm(a, b, out=None):
        seen.append((a.dtype, b.dtype))
        return np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(a.dtype)

    expected = (U.astype(np.float64) @ V.astype(np.float64).T).astype(np.float16)
    for takes_halves, dtype in ((True, np.float16), (False, np.float32)):
        seen.clear()
        with _backend.host_gemm(gemm, takes_halves=takes_halves):
            got = ops.lowrank_product(U, V)
            assert _backend.gemm_takes_halves(np) is takes_halves
            ops.kernel_product(U, V, "tanh")
        assert got.dtype == np.float16
        np.testing.assert_array_equal(got, expected)
        assert seen == [(dtype, dtype), (np.float32, np.float32)]
    assert not _backend.gemm_takes_halves(np)


def test_nested_single_threaded_blas_scopes_set_the_limit_once(monkeypatch):
    """threadpoolctl's limit (about 0.1 ms each way) is set by the outermost scope only."""
    from lowrank_hpc import _backend

    controller, calls = _backend._blas_controller(), []

    class Counting:
        def limit(self, **kwargs):
            calls.append(kwargs)
            return controller.limit(**kwargs)

    monkeypatch.setattr(_backend, "_blas_controller", lambda: Counting())
    with _backend.single_threaded_blas():
        for _ in range(3):
            with _backend.single_threaded_blas():
                pass
    with _backend.single_threaded_blas():
        pass
    assert calls == [{"limits": 1, "user_api": "blas"}] * 2
