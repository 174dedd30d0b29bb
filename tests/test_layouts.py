"""Every public entry point takes the arrays users have: strided views, Fortran order, read-only
arrays, lists, any integer dtype for indices. Each call must give exactly the result of the
same call on C-contiguous arrays of the canonical dtypes (the conversion happens once, at the
boundary; the kernels then see the same bytes)."""
from __future__ import annotations

import numpy as np
import pytest

import lowrank_hpc as lr
from lowrank_hpc import ops, recover, sensing

LAYOUTS = ["strided", "fortran", "readonly", "list", "small_int", "mixed_int"]


def _strided(x: np.ndarray) -> np.ndarray:
    """The same values as a view with gaps between elements along the last axis."""
    wide = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), dtype=x.dtype)
    wide[..., ::2] = x
    view = wide[..., ::2]
    assert not view.flags.c_contiguous and np.array_equal(view, x)
    return view


def _relayout(x, layout: str, backend, role: str):
    """x (numpy, canonical) in ``layout`` on the backend; ``role`` is "float" or "index"."""
    xp = backend.xp
    if layout == "list":
        return x.tolist() if backend.name == "cpu" else backend.put(x)
    if layout == "small_int":
        return backend.put(x.astype(np.int16 if x.max(initial=0) < 2**15 else np.int64)) if role == "index" \
            else backend.put(x)
    if layout == "mixed_int":
        # rows int32, cols uint32 (any pair of integer dtypes): marked by the caller's role names
        return backend.put(x.astype(np.uint32 if role == "index2" else np.int32)) if role.startswith("index") \
            else backend.put(x)
    y = backend.put(x)
    if layout == "strided":
        return _strided(y) if backend.name == "cpu" else xp.asarray(_strided(x))[..., :]
    if layout == "fortran":
        return xp.asfortranarray(y) if y.ndim >= 2 else _relayout(x, "strided", backend, role)
    if layout == "readonly":
        if backend.name == "cpu":
            y = y.copy()
            y.flags.writeable = False
        return y
    raise AssertionError(layout)


def _equal(actual, expected, backend) -> None:
    if isinstance(actual, tuple):
        for a, e in zip(actual, expected):
            _equal(a, e, backend)
        return
    np.testing.assert_array_equal(backend.get(actual), backend.get(expected))


@pytest.fixture
def problem(rng):
    m, n, r, nnz = 9, 7, 3, 30
    flat = rng.choice(m * n, nnz, replace=False)
    return {"U": rng.standard_normal((m, r)), "V": rng.standard_normal((n, r)),
            "rows": (flat // n).astype(np.int64), "cols": (flat % n).astype(np.int64),
            "vals": rng.standard_normal(nnz), "B": rng.standard_normal((n, r)), "Bt": rng.standard_normal((m, r)),
            "m": m, "n": n, "r": r}


# (name, call taking the arrays dict, roles of the arrays it takes)
ENTRY_POINTS = {
    "lowrank_product": (lambda a: ops.lowrank_product(a["U"], a["V"]), {"U": "float", "V": "float"}),
    "sampled_product": (lambda a: ops.sampled_product(a["U"], a["V"], a["rows"], a["cols"]),
                        {"U": "float", "V": "float", "rows": "index", "cols": "index2"}),
    "sparse_times_dense": (lambda a: ops.sparse_times_dense(a["rows"], a["cols"], a["vals"], a["B"], a["m"]),
                           {"rows": "index", "cols": "index2", "vals": "float", "B": "float"}),
    "sparse_times_dense_T": (lambda a: ops.sparse_times_dense(a["rows"], a["cols"], a["vals"], a["Bt"], a["n"],
                                                              transpose=True),
                             {"rows": "index", "cols": "index2", "vals": "float", "Bt": "float"}),
    "SparsePattern": (lambda a: ops.SparsePattern(a["rows"], a["cols"], (a["m"], a["n"])).times_dense(
        a["vals"], a["B"]), {"rows": "index", "cols": "index2", "vals": "float", "B": "float"}),
    "kernel_product": (lambda a: ops.kernel_product(a["U"], a["V"], "tanh"), {"U": "float", "V": "float"}),
    "kernel_product_top_k": (lambda a: tuple(ops.kernel_product(a["U"], a["V"], "relu", 2)),
                             {"U": "float", "V": "float"}),
    "EntrySampling": (lambda a: sensing.EntrySampling(a["rows"], a["cols"], (a["m"], a["n"])).adjoint(a["vals"]),
                      {"rows": "index", "cols": "index2", "vals": "float"}),
    "GaussianSensing.forward_factored": (
        lambda a: sensing.GaussianSensing(12, (a["m"], a["n"]), seed=3).forward_factored(a["U"], a["V"]),
        {"U": "float", "V": "float"}),
    "RankOneSensing.adjoint_times": (
        lambda a: sensing.RankOneSensing(30, (a["m"], a["n"]), seed=3).adjoint_times(a["vals"], a["B"]),
        {"vals": "float", "B": "float"}),
    "als": (lambda a: recover.als(a["rows"], a["cols"], a["vals"], (a["m"], a["n"]), 2, max_iter=3, seed=1).U,
            {"rows": "index", "cols": "index2", "vals": "float"}),
    "batched_als": (lambda a: recover.batched_als(a["rows"], a["cols"], a["vals"], np.array([0, 12, 30]),
                                                  (a["m"], a["n"]), 2, max_iter=3, seed=1).V,
                    {"rows": "index", "cols": "index2", "vals": "float"}),
    "batched_factored_gd": (lambda a: recover.batched_factored_gd(a["rows"], a["cols"], a["vals"],
                                                                  np.array([0, 12, 30]), (a["m"], a["n"]), 2,
                                                                  max_iter=3, seed=1).U,
                            {"rows": "index", "cols": "index2", "vals": "float"}),
    "factored_gd": (lambda a: recover.factored_gd(sensing.EntrySampling(a["rows"], a["cols"], (a["m"], a["n"])),
                                                  a["vals"], 2, max_iter=3, seed=1).U,
                    {"rows": "index", "cols": "index2", "vals": "float"}),
    "MatrixCompletion": (lambda a: lr.MatrixCompletion(rank=2, max_iter=3, random_state=0).fit(
        a["rows"], a["cols"], a["vals"], shape=(a["m"], a["n"])).predict(a["rows"], a["cols"]),
        {"rows": "index", "cols": "index2", "vals": "float"}),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_any_layout_gives_the_contiguous_result(backend, problem, entry, layout):
    call, roles = ENTRY_POINTS[entry]
    if backend.name == "cuda" and entry in ("MatrixCompletion",) and layout == "list":
        pytest.skip("lists are host data: the estimator puts them on the CPU")
    canonical = dict(problem)
    for name in roles:
        canonical[name] = backend.put(problem[name])
    expected = call(canonical)
    changed = dict(problem)
    for name, role in roles.items():
        changed[name] = _relayout(problem[name], layout, backend, role)
    _equal(call(changed), expected, backend)


def test_inputs_are_not_modified_and_read_only_outputs_are_refused(problem):
    rows, cols, vals = (problem[k].copy() for k in ("rows", "cols", "vals"))
    for x in (rows, cols, vals):
        x.flags.writeable = False
    ops.sparse_times_dense(rows, cols, vals, problem["B"], problem["m"])
    recover.als(rows, cols, vals, (problem["m"], problem["n"]), 2, max_iter=2, seed=0)
    np.testing.assert_array_equal(vals, problem["vals"])
    # The private kernels write only to writable outputs, and say which argument is wrong.
    out = np.zeros(rows.shape[0])
    out.flags.writeable = False
    U3, V3 = problem["U"][None], problem["V"][None]
    with pytest.raises(ValueError, match="out: output array is read-only"):
        lr._backend.cpu_module().sampled_product(U3, V3, rows, cols, np.array([0, rows.shape[0]]), out,
                                                 np.zeros(1, dtype=np.int64))
    with pytest.raises(ValueError, match="U: must be C-contiguous"):
        lr._backend.cpu_module().sampled_product(np.asfortranarray(np.ones((1, 9, 3)))[:, :, :2], V3[..., :2], rows,
                                                 cols, np.array([0, rows.shape[0]]), np.zeros(rows.shape[0]),
                                                 np.zeros(1, dtype=np.int64))


def test_index_dtypes_beyond_int64_are_refused_or_converted(problem):
    U, V, rows, cols = problem["U"], problem["V"], problem["rows"], problem["cols"]
    expected = ops.sampled_product(U, V, rows, cols)
    for dtype in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.uint64):
        np.testing.assert_array_equal(ops.sampled_product(U, V, rows.astype(dtype), cols.astype(dtype)), expected)
    with pytest.raises(TypeError, match="rows must hold integers"):
        ops.sampled_product(U, V, rows.astype(np.float32), cols)
    # uint64 beyond the int64 maximum: an index out of range (the value named), not a dtype error
    with pytest.raises(IndexError, match=r"rows\[0\] = 9223372036854775808 is out of range"):
        ops.sampled_product(U, V, np.full(3, 2**63, dtype=np.uint64), cols[:3])
    # np.nonzero's output, as it comes: a tuple of int64 arrays
    mask = np.zeros((problem["m"], problem["n"]), dtype=bool)
    mask[rows, cols] = True
    r, c = np.nonzero(mask)
    np.testing.assert_allclose(ops.sampled_product(U, V, r, c), (U @ V.T)[mask], rtol=1e-12)


class _HostDLPackOnly:
    """A host array that offers nothing but DLPack (as some libraries' tensors do)."""

    def __init__(self, array: np.ndarray):
        self._array = array

    def __dlpack__(self, **kwargs):
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()


def test_host_dlpack_arrays_are_read_without_a_copy(problem):
    U, V, rows, cols = problem["U"], problem["V"], problem["rows"], problem["cols"]
    expected = ops.sampled_product(U, V, rows, cols)
    got = ops.sampled_product(_HostDLPackOnly(U), _HostDLPackOnly(V), _HostDLPackOnly(rows), _HostDLPackOnly(cols))
    np.testing.assert_array_equal(got, expected)


def test_non_native_byte_order_keeps_its_precision(problem):
    # '>f4' is float32 to the kernels once swapped: float32 results, and it mixes with native float32.
    U, V, rows, cols = (problem[k] for k in ("U", "V", "rows", "cols"))
    swapped = {np.float32: ">f4", np.float64: ">f8"} if np.little_endian else {np.float32: "<f4", np.float64: "<f8"}
    for native, foreign in swapped.items():
        U_, V_ = U.astype(native), V.astype(native)
        expected = ops.sampled_product(U_, V_, rows, cols)
        got = ops.sampled_product(U_.astype(foreign), V_.astype(foreign), rows, cols)
        assert got.dtype == native
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(ops.sampled_product(U_.astype(foreign), V_, rows, cols), expected)
        x = U_.ravel()
        np.testing.assert_array_equal(ops.soft_threshold(x.astype(foreign), 0.5),
                                      (np.sign(x) * np.maximum(np.abs(x) - native(0.5), 0)).astype(native))
    # Indices too: '>i4' stays int32 beside int32, and a swapped uint64 beyond int64 is refused, not wrapped.
    order = ">" if np.little_endian else "<"
    np.testing.assert_array_equal(ops.sampled_product(U, V, rows.astype(order + "i4"), cols.astype(np.int32)),
                                  np.einsum("kr,kr->k", U[rows], V[cols]))
    with pytest.raises(IndexError, match=r"rows\[0\] = 9223372036854775808 is out of range"):
        ops.sampled_product(U, V, np.full(3, 2**63, dtype=order + "u8"), cols[:3])
