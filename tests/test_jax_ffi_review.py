"""lowrank_hpc.jax's XLA FFI path where its review found it apart from the host callback path it
replaces (each test failed on c43dde0): empty operands, a jax without jax.ffi, an n_rows whose
result XLA cannot size. Skipped without jax."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="jax is not installed (optional extra: pip install lowrank_hpc[jax])")

import jax.numpy as jnp  # noqa: E402

import lowrank_hpc.jax as lj  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# The subprocesses import this lowrank_hpc (an in-tree build or an installed one).
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(lj.__file__).resolve().parents[2])]
                                                   + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
needs_ffi = pytest.mark.skipif(not lj._FFI, reason="this build has no JAX FFI handlers")


def _outcome(monkeypatch, ffi: bool, function, *args):
    """("ok", values) or ("error", lowrank_hpc's message) of jit(function)(*args) on one path."""
    with monkeypatch.context() as patch:
        patch.setattr(lj, "_FFI", ffi)
        try:
            return "ok", np.asarray(jax.jit(lambda *a: function(*a))(*args))
        except Exception as error:  # a trace-time ValueError, or XLA's JaxRuntimeError around the kernel's
            found = re.search(r"(sampled_product|sparse_times_dense): [^\n]*", str(error))
            return "error", found.group(0) if found else str(error)


def _empty_operand_cases():
    one = jnp.zeros(1, jnp.int32)
    two = jnp.asarray([0, 1], jnp.int32)
    empty = jnp.zeros(0, jnp.int32)
    return {
        # rank 0: the FFI handler returns zeros, the callback (ops) raises "U is empty"
        "sampled_rank_0": (lj.sampled_product, jnp.ones((5, 0)), jnp.ones((4, 0)), two, two),
        # no U rows: the handler names rows[0], the callback "U is empty (shape (0, 3))"
        "sampled_no_rows": (lj.sampled_product, jnp.ones((0, 3)), jnp.ones((4, 3)), one, one),
        # no B rows: the handler names cols[0], the callback "B is empty (shape (0, 2))"
        "spmm_empty_B": (lambda v, B: lj.sparse_times_dense(two, two, v, B, 3), jnp.ones(2), jnp.ones((0, 2))),
        # no entries and no B rows: the handler returns zeros, the callback raises "B is empty"
        "spmm_empty_B_no_entries": (lambda v, B: lj.sparse_times_dense(empty, empty, v, B, 3), jnp.ones(0),
                                    jnp.ones((0, 2))),
    }


@needs_ffi
@pytest.mark.parametrize("case", list(_empty_operand_cases()))
def test_empty_operands_same_outcome_on_both_paths(monkeypatch, case):
    """An empty factor or dense operand: the FFI path must give the callback path's outcome (the
    commit claims the same values and errors); it returns zeros or an index error instead of
    ops' "is empty" ValueError."""
    function, *args = _empty_operand_cases()[case]
    by_ffi = _outcome(monkeypatch, True, function, *args)
    by_callback = _outcome(monkeypatch, False, function, *args)
    assert by_ffi[0] == by_callback[0], f"FFI: {by_ffi}, callback: {by_callback}"
    if by_ffi[0] == "ok":
        np.testing.assert_array_equal(by_ffi[1], by_callback[1])
    else:
        assert by_ffi[1] == by_callback[1]


def _declared_jax_floor() -> tuple[int, ...]:
    text = (ROOT / "pyproject.toml").read_text()
    found = re.search(r'"jax>=([0-9.]+)"', text)
    if found is None:
        pytest.skip("pyproject.toml declares no jax>= floor")
    return tuple(int(part) for part in found.group(1).split("."))


@needs_ffi
def test_import_works_on_the_declared_oldest_jax():
    """pyproject.toml allows jax>=0.4.35, whose top level has no ``jax.ffi`` (added in jax 0.5.0;
    0.4.x has jax.extend.ffi with another ffi_call signature). With the handlers built,
    ``import lowrank_hpc.jax`` then raises AttributeError where it used to fall back on the host
    callback. Simulated by hiding jax.ffi; moot once the floor is >= 0.5."""
    if _declared_jax_floor() >= (0, 5):
        pytest.skip("the declared jax floor has jax.ffi")
    script = textwrap.dedent("""
        import jax, jax.numpy as jnp
        del jax.ffi  # as in jax 0.4.35-0.4.38
        import lowrank_hpc.jax as lj
        U = jnp.ones((4, 2))
        rows = jnp.arange(3)
        print(lj.sampled_product(U, U, rows, rows))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=str(ROOT), env=ENV)
    assert done.returncode == 0, done.stderr[-2000:]


@needs_ffi
def test_oversized_n_rows_raises_instead_of_aborting():
    """n_rows * r too large for a shape: the callback path raised a JaxRuntimeError when the call
    was lowered; the FFI path lowers and XLA's compiler then aborts the process (std::terminate,
    BadStatusOrAccess "overflow in static extent product"). lowrank_hpc.jax should refuse such an
    n_rows with an error naming it (jax.numpy is no better: jnp.zeros((2**60, 1)) aborts too)."""
    script = textwrap.dedent("""
        import jax, jax.numpy as jnp
        jax.config.update("jax_enable_x64", True)
        import lowrank_hpc.jax as lj
        rows = jnp.asarray([0, 1, 2]); cols = jnp.asarray([0, 1, 1])
        try:
            jax.jit(lambda v, B: lj.sparse_times_dense(rows, cols, v, B, 2**60))(jnp.ones(3), jnp.ones((2, 1)))
        except Exception as error:
            print("raised", type(error).__name__, str(error)[:200])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=str(ROOT), env=ENV)
    assert done.returncode == 0 and "raised" in done.stdout, (done.returncode, done.stderr[-1000:])
