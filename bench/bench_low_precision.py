"""float16/bfloat16 forward + backward of lowrank_hpc.torch's operators against the same math in
plain torch in the same dtype on the CPU, measured in the same run (issue 16, low precision).

    python bench/bench_low_precision.py            # SDDMM/SpMM with 1M entries, r = 32; 2000^2 dense
    python bench/bench_low_precision.py --quick    # 100k entries; 500^2 dense
    python bench/bench_low_precision.py --jax      # also lowrank_hpc.jax against jax.numpy under jit

Each timed call is one forward and one backward: loss = sum(out * W) for a fixed random W, the
gradients of every float input. Peers as in bench_autograd.py, in the 16-bit dtype: SDDMM as
(U[rows] * V[cols]).sum(1); SpMM as index_add of vals[:, None] * B[cols]; U @ V.T; tanh(U @ V.T).
JAX rows: jax.grad of the same loss, both sides under jit, the peers the same formulas in
jax.numpy (.at[rows].add for SpMM). The note gives each side's largest gradient error against the float64 autograd of the same
(16-bit) inputs, relative to the largest gradient (ours sum in float32 and round once), then the
range of each side's runs. Each row: medians of 9 alternated runs of each side (5 with --quick).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import HEADER, Row, interleaved, median, timed  # noqa: E402

import lowrank_hpc.torch as lt  # noqa: E402


def _fwd_bwd(function, inputs, weight):
    def run():
        for x in inputs:
            x.grad = None
        (function(*inputs) * weight).sum().backward()
    return run


def _grads(function, inputs, weight):
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    (function(*leaves) * weight).sum().backward()
    return [x.grad for x in leaves]


def _compare(name, case, ours_fn, peer_name, peer_fn, inputs, weight_shape, repeats, exact_fn=None):
    weight = torch.randn(weight_shape, generator=torch.Generator().manual_seed(9)).to(inputs[0].dtype)
    exact = _grads(exact_fn or peer_fn, [x.double() for x in inputs], weight.double())
    errors = []
    for fn in (ours_fn, peer_fn):
        got = _grads(fn, inputs, weight)
        errors.append(max(float((g.double() - e).abs().max() / e.abs().max()) for g, e in zip(got, exact)))
    ours_in = [x.clone().requires_grad_(True) for x in inputs]
    peer_in = [x.clone().requires_grad_(True) for x in inputs]
    run_ours, run_peer = _fwd_bwd(ours_fn, ours_in, weight), _fwd_bwd(peer_fn, peer_in, weight)
    return _timed_row(name, case, run_ours, peer_name, run_peer, repeats, f"grad error ours {errors[0]:.1e}, "
                      f"torch {errors[1]:.1e}")


def _timed_row(name, case, run_ours, peer_name, run_peer, repeats, errors_note) -> Row:
    """Medians of ``repeats`` alternated runs of each side; the note: errors_note, the ranges."""
    times = interleaved({"ours": timed(run_ours), "peer": timed(run_peer)}, repeats)
    spread = "; ".join(f"{side} {min(t) * 1e3:.1f}-{max(t) * 1e3:.1f}" for side, t in times.items())
    note = f"{errors_note}; median of {repeats}, {spread} ms"
    return Row(name, case, median(times["ours"]), peer_name, median(times["peer"]), note)


def rows_for(dtype: torch.dtype, quick: bool) -> list[Row]:
    rng = torch.Generator().manual_seed(0)
    nnz, size, r = (100_000, 2_000, 32) if quick else (1_000_000, 20_000, 32)
    dense = 500 if quick else 2000
    repeats = 5 if quick else 9
    tag = str(dtype).replace("torch.", "")
    U = (torch.randn(size, r, generator=rng) / r ** 0.25).to(dtype)
    V = (torch.randn(size, r, generator=rng) / r ** 0.25).to(dtype)
    rows = torch.randint(0, size, (nnz,), generator=rng)
    cols = torch.randint(0, size, (nnz,), generator=rng)
    vals = torch.randn(nnz, generator=rng).to(dtype)
    case = f"{size}x{size}, {nnz:,} entries, r={r} {tag}"
    out = [_compare("sampled_product (SDDMM)", case, lambda U, V: lt.sampled_product(U, V, rows, cols),
                    "(U[rows] * V[cols]).sum(1)", lambda U, V: (U[rows] * V[cols]).sum(1), (U, V), (nnz,), repeats),
           _compare("sparse_times_dense (SpMM)", case, lambda v, B: lt.sparse_times_dense(rows, cols, v, B, size),
                    "zeros.index_add(0, rows, v[:, None] * B[cols])",
                    lambda v, B: torch.zeros(size, r, dtype=B.dtype).index_add(0, rows, v[:, None] * B[cols]),
                    (vals, V), (size, r), repeats)]
    Ud = (torch.randn(dense, r, generator=rng) / r ** 0.25).to(dtype)
    Vd = (torch.randn(dense, r, generator=rng) / r ** 0.25).to(dtype)
    dense_case = f"{dense}x{dense} r={r} {tag}"
    out.append(_compare("lowrank_product", dense_case, lt.lowrank_product, "U @ V.T", lambda U, V: U @ V.T,
                        (Ud, Vd), (dense, dense), repeats))
    out.append(_compare("kernel_product tanh", dense_case, lambda U, V: lt.kernel_product(U, V, "tanh"),
                        "torch.tanh(U @ V.T)", lambda U, V: torch.tanh(U @ V.T), (Ud, Vd), (dense, dense), repeats))
    return out


def jax_rows_for(name: str, quick: bool) -> list[Row]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import lowrank_hpc.jax as lj

    dtype = getattr(jnp, name)
    nnz, size, r = (100_000, 2_000, 32) if quick else (1_000_000, 20_000, 32)
    dense = 500 if quick else 2000
    repeats = 5 if quick else 9
    rng = np.random.default_rng(0)

    def array(shape, scale=1.0):
        return jnp.asarray(scale * rng.standard_normal(shape, dtype=np.float32), dtype)

    U, V, vals = array((size, r), r ** -0.25), array((size, r), r ** -0.25), array(nnz)
    rows, cols = (jnp.asarray(rng.integers(0, size, nnz).astype(np.int32)) for _ in range(2))
    W1, W2 = array(nnz), array((size, r))
    Ud, Vd, Wd = array((dense, r), r ** -0.25), array((dense, r), r ** -0.25), array((dense, dense))
    case, dense_case = f"{size}x{size}, {nnz:,} entries, r={r} {name}", f"{dense}x{dense} r={r} {name}"
    pairs = [("sampled_product (SDDMM), JAX", case, lambda U, V: lj.sampled_product(U, V, rows, cols) * W1,
              "jnp (U[rows] * V[cols]).sum(1)", lambda U, V: (U[rows] * V[cols]).sum(1) * W1, (U, V)),
             ("sparse_times_dense (SpMM), JAX", case, lambda v, B: lj.sparse_times_dense(rows, cols, v, B, size) * W2,
              "jnp zeros.at[rows].add(v[:, None] * B[cols])",
              lambda v, B: jnp.zeros((size, r), B.dtype).at[rows].add(v[:, None] * B[cols]) * W2, (vals, V)),
             ("lowrank_product, JAX", dense_case, lambda U, V: lj.lowrank_product(U, V) * Wd, "jnp U @ V.T",
              lambda U, V: (U @ V.T) * Wd, (Ud, Vd)),
             ("kernel_product tanh, JAX", dense_case, lambda U, V: lj.kernel_product(U, V, "tanh") * Wd,
              "jnp tanh(U @ V.T)", lambda U, V: jnp.tanh(U @ V.T) * Wd, (Ud, Vd))]
    out = []
    for label, this_case, ours, peer_name, peer, args in pairs:
        # against the float32 gradient of the same 16-bit inputs (float64 would need jax_enable_x64)
        reference = [np.asarray(g, np.float64) for g in jax.grad(lambda *a, f=peer: jnp.sum(f(*a)), argnums=(0, 1))(
            *(a.astype(jnp.float32) for a in args))]
        grads = [jax.jit(jax.grad(lambda *a, f=f: jnp.sum(f(*a).astype(jnp.float32)), argnums=(0, 1)))
                 for f in (ours, peer)]
        errors = [max(float(np.abs(np.asarray(g, np.float64) - e).max() / np.abs(e).max())
                      for g, e in zip(fn(*args), reference)) for fn in grads]  # relative to the largest
        out.append(_timed_row(label, this_case, lambda: jax.block_until_ready(grads[0](*args)), peer_name + ", jit",
                              lambda: jax.block_until_ready(grads[1](*args)), repeats,
                              f"grad error vs float32 ours {errors[0]:.1e}, jnp {errors[1]:.1e}"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--jax", action="store_true", help="also the JAX rows (needs jax)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} torch threads")
    print(HEADER)
    for dtype in (torch.float16, torch.bfloat16):
        for row in rows_for(dtype, args.quick):
            print(row.markdown(), flush=True)
    if args.jax:
        for name in ("float16", "bfloat16"):
            for row in jax_rows_for(name, args.quick):
                print(row.markdown(), flush=True)


if __name__ == "__main__":
    main()
