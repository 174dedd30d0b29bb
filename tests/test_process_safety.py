"""The library in forked children and under concurrent Python threads: OpenMP kernels in a fork()ed
child, the single-threaded BLAS scope's lock across fork, and OpenBLAS's thread count after scopes
opened and closed by different threads. Fork checks run in a subprocess under a timeout, so a hang
fails the test instead of stalling the run."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import threadpoolctl

import lowrank_hpc
from lowrank_hpc import _backend

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX-only")

# The child imports the same lowrank_hpc as this test (the source tree under test, not an install).
# Two OpenMP threads there whatever this run has (CI's second run has one): a child's clamp to one
# thread can then be told from a child that kept its threads.
_ENV = {**os.environ, "PYTHONPATH": str(Path(lowrank_hpc.__file__).resolve().parents[1]), "OMP_NUM_THREADS": "2"}


def _run(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=90, env=_ENV)


FORK_SCRIPT = r"""
import faulthandler, multiprocessing, os
import numpy as np
import lowrank_hpc
from lowrank_hpc import ops

g = np.random.default_rng(0)
n1, n2, nnz = 3000, 2000, 200000  # large enough for the kernels' parallel regions
rows, cols = g.integers(0, n1, nnz), g.integers(0, n2, nnz)
U, V = g.standard_normal((n1, 16)), g.standard_normal((n2, 16))

def kernels(_=None):
    return ops.sampled_product(U, V, rows, cols), ops.sum_of_squares(U), lowrank_hpc.info()["openmp_threads"]

def same(a, b):
    return np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])

if __name__ == "__main__":
    before = lowrank_hpc.info()["openmp_threads"]
    parent = kernels()  # the parent's OpenMP thread pool exists from here on
    pid = os.fork()
    if pid == 0:
        faulthandler.dump_traceback_later(30, exit=True)  # a hang shows where, and exits 1
        child = kernels()
        print("os.fork child:", same(child, parent), child[2], flush=True)
        os._exit(0)
    print("os.fork child exit:", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
    with multiprocessing.get_context("fork").Pool(2) as pool:  # leaving the block kills the workers
        children = pool.map_async(kernels, range(2)).get(timeout=30)
    print("pool children:", all(same(c, parent) for c in children), [c[2] for c in children])
    print("parent threads:", parent[2] == before, kernels()[2] == before)
"""


@needs_fork
def test_openmp_kernels_run_in_forked_children_on_one_thread():
    """A child fork()ed after the parent ran an OpenMP kernel used to wait forever in its first
    parallel region (libgomp's pool is not fork-safe). The child now runs the kernels on one
    thread, says so in info(), and gets the parent's results; the parent keeps its threads."""
    result = _run(FORK_SCRIPT)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[:3] == ["os.fork child: True 1", "os.fork child exit: 0", "pool children: True [1, 1]"], result.stdout
    assert lines[3] == "parent threads: True True"  # the subprocess's own count (this one's may be set by other tests)


BLAS_SCOPE_LOCK_SCRIPT = r"""
import faulthandler, os
from lowrank_hpc import _backend

_backend._blas_scope_lock.acquire()  # as another thread of the parent holding it at the fork
pid = os.fork()
if pid == 0:
    faulthandler.dump_traceback_later(30, exit=True)
    with _backend.single_threaded_blas():
        pass
    print("child opened and closed a scope", flush=True)
    os._exit(0)
_backend._blas_scope_lock.release()
print("child exit:", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


@needs_fork
def test_single_threaded_blas_opens_in_a_child_forked_while_its_lock_was_held():
    """The scope's lock is a fresh one in the child: the parent's thread that held it at the fork
    is not there to release it, and the child's first scope used to wait for it forever."""
    result = _run(BLAS_SCOPE_LOCK_SCRIPT)
    assert result.stdout.splitlines() == ["child opened and closed a scope", "child exit: 0"], result.stderr


# ---------------------------------------------------------------------- BLAS scopes across threads
def _blas_threads() -> list:
    return [info["num_threads"] for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"]


@pytest.fixture
def original_blas_threads():
    """The BLAS thread counts before the test, at least one of them above 1 (else a scope's limit
    cannot be told from none); no thread holds threadpoolctl's OpenBLAS control (>= 3.8) at the start."""
    counts = _blas_threads()
    if not counts or max(counts) < 2:
        pytest.skip("needs a BLAS library on two or more threads")
    clear = getattr(getattr(threadpoolctl, "OpenBLASController", None), "clear_controlling_thread", None)
    if clear is not None:
        clear(force=True)
    yield counts
    # Put back what a failing test left, so the tests after it run with the process's own counts.
    if clear is not None:
        clear(force=True)
    for library, count in zip(threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers, counts):
        library.set_num_threads(count)
    if clear is not None:
        clear(force=True)


def _in_threads(*bodies) -> None:
    threads = [threading.Thread(target=body) for body in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)


def test_blas_limit_is_restored_when_another_thread_closes_the_last_scope(original_blas_threads):
    """Thread 1 opens the outermost scope and closes it first, thread 2 closes the last one while
    thread 1 still lives. threadpoolctl >= 3.8 ignored thread 2's restore (only the thread that
    set the limit may change it while it lives), and OpenBLAS stayed on one thread for good."""
    A = np.random.default_rng(0).standard_normal((200, 200))
    first_in, second_in, first_out, second_out = (threading.Event() for _ in range(4))
    seen = {}

    def first():
        with _backend.single_threaded_blas():
            first_in.set()
            A @ A
            second_in.wait(30)
        first_out.set()
        second_out.wait(30)  # alive until thread 2 has closed its scope

    def second():
        first_in.wait(30)
        with _backend.single_threaded_blas():
            second_in.set()
            first_out.wait(30)
            seen["inside"] = _blas_threads()
            A @ A
        seen["after"] = _blas_threads()
        second_out.set()

    _in_threads(first, second)
    assert seen == {"inside": [1] * len(original_blas_threads), "after": original_blas_threads}


def test_blas_limit_is_set_by_a_scope_opened_in_another_thread(original_blas_threads):
    """Thread 1 runs a whole scope and stays alive; thread 2's scope then runs BLAS on one thread
    (its limit was ignored while thread 1, which set the last one, lived)."""
    A = np.random.default_rng(0).standard_normal((200, 200))
    first_done, second_done = threading.Event(), threading.Event()
    seen = {}

    def first():
        with _backend.single_threaded_blas():
            A @ A
        first_done.set()
        second_done.wait(30)

    def second():
        first_done.wait(30)
        with _backend.single_threaded_blas():
            seen["inside"] = _blas_threads()
            A @ A
        seen["after"] = _blas_threads()
        second_done.set()

    _in_threads(first, second)
    assert seen == {"inside": [1] * len(original_blas_threads), "after": original_blas_threads}


def test_concurrent_scopes_with_blas_work_leave_the_original_counts(original_blas_threads):
    """Three threads open and close scopes around BLAS work (and run BLAS between them), as
    concurrent fits do: inside every scope BLAS is on one thread, and after they all finish,
    and after one more scope in this thread, the counts are the original ones."""
    A = np.random.default_rng(1).standard_normal((150, 150))
    controller = threadpoolctl.ThreadpoolController().select(user_api="blas")
    inside = []

    def work():
        for _ in range(40):
            with _backend.single_threaded_blas():
                inside.append([info["num_threads"] for info in controller.info()])
                np.linalg.svd(A[:, :20], full_matrices=False)
                A @ A
            A @ A

    _in_threads(work, work, work)
    assert all(counts == [1] * len(original_blas_threads) for counts in inside)
    assert _blas_threads() == original_blas_threads
    with _backend.single_threaded_blas():
        A @ A
    assert _blas_threads() == original_blas_threads


NO_KERNEL_PARENT_SCRIPT = r"""
import faulthandler, os
import lowrank_hpc
from lowrank_hpc import ops
import numpy as np

threads = lowrank_hpc.info()["openmp_threads"]  # asking info() starts no pool
pid = os.fork()  # as a forkserver that preloaded lowrank_hpc forks its children
if pid == 0:
    faulthandler.dump_traceback_later(30, exit=True)
    g = np.random.default_rng(0)
    U, V, rows, cols = g.standard_normal((3000, 16)), g.standard_normal((2000, 16)), g.integers(0, 3000, 200000), \
        g.integers(0, 2000, 200000)
    same = np.allclose(ops.sampled_product(U, V, rows, cols), np.einsum("ij,ij->i", U[rows], V[cols]))
    print("child threads:", lowrank_hpc.info()["openmp_threads"], same, flush=True)
    os._exit(0)
print("child exit:", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), "parent threads:", threads)
"""


@needs_fork
def test_a_child_of_a_parent_that_ran_no_kernel_keeps_its_threads():
    """Only a parent that ran kernels has an OpenMP pool the child cannot use: a forkserver that
    preloaded the library (and ran nothing) gives its children every thread, and they run."""
    result = _run(NO_KERNEL_PARENT_SCRIPT)
    lines = result.stdout.splitlines()
    threads = lines[-1].rsplit(" ", 1)[-1] if lines else None  # the subprocess's own count
    assert lines == [f"child threads: {threads} True", f"child exit: 0 parent threads: {threads}"], \
        result.stdout + result.stderr


SCOPE_HELD_AT_FORK_SCRIPT = r"""
import faulthandler, os, threading
import threadpoolctl
from lowrank_hpc import _backend

def blas():
    return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]

original = blas()
inside, leave = threading.Event(), threading.Event()

def hold():
    with _backend.single_threaded_blas():
        inside.set()
        leave.wait(60)

thread = threading.Thread(target=hold)
thread.start()
inside.wait(60)
pid = os.fork()  # another thread is inside a scope: BLAS is on one thread here
if pid == 0:
    faulthandler.dump_traceback_later(30, exit=True)
    after_fork = blas()
    with _backend.single_threaded_blas():
        inside_scope = blas()
    print("child:", after_fork == original, inside_scope == [1] * len(original), blas() == original, flush=True)
    os._exit(0)
leave.set()
thread.join()
print("child exit:", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), "parent back:", blas() == original)
"""


@needs_fork
def test_a_child_forked_while_another_thread_held_a_scope_gets_its_blas_threads_back():
    """The scope a thread of the parent held is not the child's (that thread did not come along):
    the child lifts its limit at once, and its own scopes limit and restore as usual."""
    counts = [info["num_threads"] for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"]
    if not counts or max(counts) < 2:
        pytest.skip("needs a BLAS library on two or more threads")
    result = _run(SCOPE_HELD_AT_FORK_SCRIPT)
    assert result.stdout.splitlines() == ["child: True True True", "child exit: 0 parent back: True"], \
        result.stdout + result.stderr


def test_a_callers_own_blas_limit_in_the_same_thread_survives_our_scope(original_blas_threads):
    """threadpoolctl (>= 3.8) gives OpenBLAS control to the thread that set a limit: a caller's own
    limit around our scope stays the caller's, so another thread cannot lift it meanwhile."""
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        with _backend.single_threaded_blas():
            pass
        _in_threads(lambda: threadpoolctl.threadpool_limits(limits=2, user_api="blas"))  # ignored: not in control
        assert _blas_threads() == [1] * len(original_blas_threads)
    assert _blas_threads() == original_blas_threads
