"""Forward + backward of lowrank_hpc.torch's operators (and lowrank_hpc.jax's) against the same
math written in plain torch (jax.numpy under jit), measured in the same run, float32 on the CPU.

    python bench/bench_autograd.py            # SDDMM/SpMM with 1M entries, r = 32; 2000^2 dense
    python bench/bench_autograd.py --quick    # 100k entries; 500^2 dense
    python bench/bench_autograd.py --jax      # also the JAX rows (needs jax)

Each timed call is one forward and one backward: loss = sum(out * W) for a fixed random W, the
gradients of every float input. Peers: SDDMM as (U[rows] * V[cols]).sum(1); SpMM as
index_add of vals[:, None] * B[cols]; U @ V.T; f(U @ V.T); top-k as torch.topk of the dense
f(U V^T) then a gather; the SNELL adapter as the dense masked update of its definition.
The last rows time forward mode: a jvp of the sparse products (value and tangent) against the
same jvp of the peer's transcription.
Each row: medians of 9 alternated runs of each side (5 with --quick), the ranges in the note.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import HEADER, Row, interleaved, median, timed  # noqa: E402

import lowrank_hpc.torch as lt  # noqa: E402


# Top-k rows take one scalar weight: the order of near-equal magnitudes may differ between two
# GEMMs' roundings, and the loss must not depend on it.


def _fwd_bwd(function, inputs, weight):
    def run():
        for x in inputs:
            x.grad = None
        out = function(*inputs)
        out = out.values if isinstance(out, tuple) else out
        (out * weight).sum().backward()
    return run


def _check_gradients(name, ours, peers, top_k=False, rtol=1e-3):
    """Each of our gradients equals the peer's within rtol of its largest entry, or the timing
    compares different math. A top-k selection may keep a different entry where two magnitudes
    round apart differently in the two GEMMs (0.99361032 against 0.99361050 in one of 2,000
    rows): its gradient rows are then allowed to differ, in at most 0.1% of the rows."""
    for a, b in zip(ours, peers):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        bad_rows = int(np.count_nonzero((np.abs(a - b) > rtol * np.abs(b).max()).reshape(a.shape[0], -1).any(1)))
        allowed = a.shape[0] // 1000 if top_k else 0
        assert bad_rows <= allowed, f"{name}: gradients differ in {bad_rows} of {a.shape[0]} rows"


def _row(name, case, run_ours, peer_name, run_peer, repeats, note=""):
    """Medians of ``repeats`` alternated runs of each side (ours, peer, peer, ours, ...); the
    note gives each side's range, so the noise of a shared machine shows."""
    times = interleaved({"ours": timed(run_ours), "peer": timed(run_peer)}, repeats)
    spread = "; ".join(f"{side} {min(t) * 1e3:.1f}-{max(t) * 1e3:.1f}" for side, t in times.items())
    note = f"{note}; " if note else ""
    return Row(name, case, median(times["ours"]), peer_name, median(times["peer"]),
               f"{note}median of {repeats}, {spread} ms")


def _leaves(*tensors):
    return [t.clone().requires_grad_(True) for t in tensors]


def _compare(name, case, ours_fn, peer_name, peer_fn, inputs, weight_shape, repeats, note="", top_k=False):
    generator = torch.Generator().manual_seed(9)
    weight = torch.randn(weight_shape, generator=generator)
    ours_in, peer_in = _leaves(*inputs), _leaves(*inputs)
    run_ours, run_peer = _fwd_bwd(ours_fn, ours_in, weight), _fwd_bwd(peer_fn, peer_in, weight)
    run_ours()
    run_peer()
    _check_gradients(name, [x.grad for x in ours_in], [x.grad for x in peer_in], top_k)
    return _row(name, case, run_ours, peer_name, run_peer, repeats, note)


def torch_rows(quick: bool) -> list[Row]:
    rng = torch.Generator().manual_seed(0)
    nnz, size, r = (100_000, 2_000, 32) if quick else (1_000_000, 20_000, 32)
    dense, k_row = (500, 16) if quick else (2000, 16)
    repeats = 5 if quick else 9
    U = torch.randn(size, r, generator=rng) / r ** 0.25
    V = torch.randn(size, r, generator=rng) / r ** 0.25
    rows = torch.randint(0, size, (nnz,), generator=rng)
    cols = torch.randint(0, size, (nnz,), generator=rng)
    vals = torch.randn(nnz, generator=rng)
    sparse_case = f"{size}x{size}, {nnz:,} entries, r={r} f32"
    out = []
    out.append(_compare("sampled_product (SDDMM)", sparse_case, lambda U, V: lt.sampled_product(U, V, rows, cols),
                        "(U[rows] * V[cols]).sum(1)", lambda U, V: (U[rows] * V[cols]).sum(1), (U, V), (nnz,),
                        repeats, "backward: two SpMMs"))
    out.append(_compare("sparse_times_dense (SpMM)", sparse_case,
                        lambda v, B: lt.sparse_times_dense(rows, cols, v, B, size),
                        "zeros.index_add(0, rows, v[:, None] * B[cols])",
                        lambda v, B: torch.zeros(size, r).index_add(0, rows, v[:, None] * B[cols]), (vals, V),
                        (size, r), repeats, "backward: SDDMM + transposed SpMM"))
    Ud = torch.randn(dense, r, generator=rng) / r ** 0.25
    Vd = torch.randn(dense, r, generator=rng) / r ** 0.25
    dense_case = f"{dense}x{dense} r={r} f32"
    out.append(_compare("lowrank_product", dense_case, lt.lowrank_product, "U @ V.T", lambda U, V: U @ V.T, (Ud, Vd),
                        (dense, dense), repeats, "both BLAS"))
    out.append(_compare("kernel_product tanh", dense_case, lambda U, V: lt.kernel_product(U, V, "tanh"),
                        "torch.tanh(U @ V.T)", lambda U, V: torch.tanh(U @ V.T), (Ud, Vd), (dense, dense), repeats,
                        "f' from the output"))

    def torch_top_rows(U, V):
        K = torch.tanh(U @ V.T)
        return torch.gather(K, 1, torch.topk(K.detach().abs(), k_row, dim=1).indices)

    out.append(_compare(f"kernel_product tanh top_k={k_row} row", dense_case,
                        lambda U, V: lt.kernel_product(U, V, "tanh", k_row), "tanh(U @ V.T) + topk + gather",
                        torch_top_rows, (Ud, Vd), (), repeats, "backward sparse: SpMMs over m*k", top_k=True))
    keep = dense * dense // 10

    def torch_top_global(U, V):
        K = torch.tanh(U @ V.T).reshape(-1)
        return K[torch.topk(K.detach().abs(), keep).indices]

    def ours_global(U, V):
        return lt.kernel_product(U, V, "tanh", keep, top_k_mode="global").values

    out.append(_compare_global("kernel_product tanh top 10% global", dense_case, ours_global, torch_top_global,
                               (Ud, Vd), repeats))
    out.append(_snell_row(quick, repeats))
    return out


def _compare_global(name, case, ours_fn, peer_fn, inputs, repeats):
    ours_in, peer_in = _leaves(*inputs), _leaves(*inputs)
    weight = torch.tensor(0.5)
    run_ours, run_peer = _fwd_bwd(ours_fn, ours_in, weight), _fwd_bwd(peer_fn, peer_in, weight)
    run_ours()
    run_peer()
    _check_gradients(name, [x.grad for x in ours_in], [x.grad for x in peer_in], top_k=True)
    return _row(name, case, run_ours, "tanh(U @ V.T) + topk of all", run_peer, repeats, "SNELL's competition")


def _snell_row(quick: bool, repeats: int) -> Row:
    features, tokens = (256, 256) if quick else (1024, 512)
    base = torch.nn.Linear(features, features)
    adapter = lt.KernelizedLoRA(base, rank=16, kernel="piecewise_linear", keep=0.1, init_scale=0.05,
                                generator=torch.Generator().manual_seed(1))
    x = torch.randn(tokens, features, generator=torch.Generator().manual_seed(2))
    weight = torch.randn(tokens, features, generator=torch.Generator().manual_seed(3))

    def plain():
        D = torch.clamp(adapter.A @ adapter.B.T, -1, 1)
        kept = torch.zeros(D.numel(), dtype=torch.bool)
        kept[torch.topk(D.detach().abs().reshape(-1), adapter.top_k).indices] = True
        W = base.weight + D * kept.reshape(D.shape)
        return torch.nn.functional.linear(x, W, base.bias)

    def step(forward):
        def run():
            adapter.A.grad = adapter.B.grad = None
            (forward() * weight).sum().backward()
        return run

    run_ours, run_peer = step(lambda: adapter(x)), step(plain)
    run_ours()
    grads = adapter.A.grad.clone(), adapter.B.grad.clone()
    run_peer()
    _check_gradients("KernelizedLoRA", grads, (adapter.A.grad, adapter.B.grad), top_k=True)
    return _row("KernelizedLoRA (SNELL) layer", f"{features}x{features} r=16 keep 10%, {tokens} tokens f32",
                run_ours, "plain torch: dense f, topk mask, linear", run_peer, repeats,
                "sparse update: top-k kernel + SpMM")


def jax_rows(quick: bool) -> list[Row]:
    import jax
    import jax.numpy as jnp

    import lowrank_hpc.jax as lj

    nnz, size, r = (100_000, 2_000, 32) if quick else (1_000_000, 20_000, 32)
    repeats = 5 if quick else 9
    rng = np.random.default_rng(0)
    U = jnp.asarray(rng.standard_normal((size, r), dtype=np.float32))
    V = jnp.asarray(rng.standard_normal((size, r), dtype=np.float32))
    rows = jnp.asarray(rng.integers(0, size, nnz).astype(np.int32))
    cols = jnp.asarray(rng.integers(0, size, nnz).astype(np.int32))
    vals = jnp.asarray(rng.standard_normal(nnz, dtype=np.float32))
    W1 = jnp.asarray(rng.standard_normal(nnz, dtype=np.float32))
    W2 = jnp.asarray(rng.standard_normal((size, r), dtype=np.float32))
    case = f"{size}x{size}, {nnz:,} entries, r={r} f32"

    out = []
    callback = "pure_callback"
    host = "XLA FFI handler" if lj._FFI else callback
    pairs = [("sampled_product (SDDMM), JAX", lambda U, V: jnp.sum(lj.sampled_product(U, V, rows, cols) * W1),
              "jnp (U[rows] * V[cols]).sum(1), jit", lambda U, V: jnp.sum((U[rows] * V[cols]).sum(1) * W1), (U, V),
              host),
             ("sparse_times_dense (SpMM), JAX",
              lambda v, B: jnp.sum(lj.sparse_times_dense(rows, cols, v, B, size) * W2),
              "jnp .at[rows].add(v[:, None] * B[cols]), jit",
              lambda v, B: jnp.sum(jnp.zeros((size, r), jnp.float32).at[rows].add(v[:, None] * B[cols]) * W2),
              (vals, V), host)]
    dense, k_row = (500, 16) if quick else (2000, 16)
    keep = dense * dense // 10
    Ud = jnp.asarray(rng.standard_normal((dense, r), dtype=np.float32) / r ** 0.25)
    Vd = jnp.asarray(rng.standard_normal((dense, r), dtype=np.float32) / r ** 0.25)
    Wd = jnp.asarray(rng.standard_normal((dense, dense), dtype=np.float32))
    dense_case = f"{dense}x{dense} r={r} f32"

    def jnp_top_rows(U, V):
        K = jnp.tanh(U @ V.T)
        return jnp.take_along_axis(K, jax.lax.top_k(jax.lax.stop_gradient(jnp.abs(K)), k_row)[1], axis=1)

    def jnp_top_global(U, V):
        K = jnp.tanh(U @ V.T).reshape(-1)
        return K[jax.lax.top_k(jax.lax.stop_gradient(jnp.abs(K)), keep)[1]]

    pairs += [("lowrank_product, JAX", lambda U, V: jnp.sum(lj.lowrank_product(U, V) * Wd), "jnp U @ V.T, jit",
               lambda U, V: jnp.sum((U @ V.T) * Wd), (Ud, Vd), "XLA's GEMM on both sides"),
              ("kernel_product tanh, JAX", lambda U, V: jnp.sum(lj.kernel_product(U, V, "tanh") * Wd),
               "jnp tanh(U @ V.T), jit", lambda U, V: jnp.sum(jnp.tanh(U @ V.T) * Wd), (Ud, Vd),
               "XLA's GEMM with f fused on both sides"),
              (f"kernel_product tanh top_k={k_row} row, JAX",
               lambda U, V: 0.5 * jnp.sum(lj.kernel_product(U, V, "tanh", k_row).values),
               "jnp tanh(U @ V.T) + lax.top_k + gather, jit", lambda U, V: 0.5 * jnp.sum(jnp_top_rows(U, V)), (Ud, Vd),
               host),
              ("kernel_product tanh top 10% global, JAX",
               lambda U, V: 0.5 * jnp.sum(lj.kernel_product(U, V, "tanh", keep, top_k_mode="global").values),
               "jnp tanh(U @ V.T) + lax.top_k of all, jit", lambda U, V: 0.5 * jnp.sum(jnp_top_global(U, V)),
               (Ud, Vd), host)]
    if lj._FFI:  # the same functions through the host callback (traced with the handlers off)
        for name, ours, _, _, args, note in pairs:
            if note != host:
                continue
            by_ffi = jax.jit(jax.grad(ours, argnums=(0, 1)))
            expected = by_ffi(*args)  # traced (and compiled) now, with the handlers
            lj._FFI = False
            try:
                by_callback = jax.jit(jax.grad(lambda *a, f=ours: f(*a), argnums=(0, 1)))
                _check_gradients(name, expected, by_callback(*args))
            finally:
                lj._FFI = True
            out.append(_row(name.replace(", JAX", ", JAX FFI vs callback"), dense_case if args[0] is Ud else case,
                            lambda f=by_ffi, a=args: jax.block_until_ready(f(*a)), "lowrank_hpc.jax, host callback",
                            lambda f=by_callback, a=args: jax.block_until_ready(f(*a)), repeats))
    for name, ours, peer_name, peer, args, note in pairs:
        ours_grad, peer_grad = (jax.jit(jax.grad(loss, argnums=(0, 1))) for loss in (ours, peer))
        _check_gradients(name, ours_grad(*args), peer_grad(*args), top_k="top" in name)
        out.append(_row(name, dense_case if args[0] is Ud else case, lambda: jax.block_until_ready(ours_grad(*args)), peer_name,
                        lambda: jax.block_until_ready(peer_grad(*args)), repeats, note))
    return out


def forward_mode_rows(quick: bool, with_jax: bool) -> list[Row]:
    """Forward mode (a jvp: the value and its tangent along (dU, dV)) of the sparse products,
    against the same jvp of the plain-torch (jax.numpy) transcription, same run."""
    nnz, size, r = (100_000, 2_000, 32) if quick else (1_000_000, 20_000, 32)
    repeats = 5 if quick else 9
    generator = torch.Generator().manual_seed(4)
    U, V, dU, dV = (torch.randn(size, r, generator=generator) for _ in range(4))
    rows = torch.randint(0, size, (nnz,), generator=generator)
    cols = torch.randint(0, size, (nnz,), generator=generator)
    vals, dvals = torch.randn(nnz, generator=generator), torch.randn(nnz, generator=generator)
    case = f"{size}x{size}, {nnz:,} entries, r={r} f32, jvp"
    pairs = [("sampled_product (SDDMM), torch.func.jvp", lambda U, V: lt.sampled_product(U, V, rows, cols),
              "(U[rows] * V[cols]).sum(1)", lambda U, V: (U[rows] * V[cols]).sum(1), (U, V), (dU, dV)),
             ("sparse_times_dense (SpMM), torch.func.jvp", lambda v, B: lt.sparse_times_dense(rows, cols, v, B, size),
              "zeros.index_add(0, rows, v[:, None] * B[cols])",
              lambda v, B: torch.zeros(size, r).index_add(0, rows, v[:, None] * B[cols]), (vals, V), (dvals, dV))]
    out = []
    for name, ours, peer_name, peer, primals, tangents in pairs:
        got, expected = torch.func.jvp(ours, primals, tangents)[1], torch.func.jvp(peer, primals, tangents)[1]
        _check_gradients(name, [got], [expected])
        out.append(_row(name, case, lambda f=ours, p=primals, t=tangents: torch.func.jvp(f, p, t), peer_name,
                        lambda f=peer, p=primals, t=tangents: torch.func.jvp(f, p, t), repeats,
                        "tangent: two SDDMMs" if "SDDMM" in name else "tangent: two SpMMs"))
    if not with_jax:
        return out
    import jax
    import jax.numpy as jnp

    import lowrank_hpc.jax as lj

    U, V, dU, dV, vals, dvals = (jnp.asarray(x.numpy()) for x in (U, V, dU, dV, vals, dvals))
    rows, cols = jnp.asarray(rows.numpy().astype(np.int32)), jnp.asarray(cols.numpy().astype(np.int32))
    pairs = [("sampled_product (SDDMM), JAX jvp", lambda U, V: lj.sampled_product(U, V, rows, cols),
              "jnp (U[rows] * V[cols]).sum(1), jit", lambda U, V: (U[rows] * V[cols]).sum(1), (U, V), (dU, dV)),
             ("sparse_times_dense (SpMM), JAX jvp", lambda v, B: lj.sparse_times_dense(rows, cols, v, B, size),
              "jnp .at[rows].add(v[:, None] * B[cols]), jit",
              lambda v, B: jnp.zeros((size, r), jnp.float32).at[rows].add(v[:, None] * B[cols]), (vals, V),
              (dvals, dV))]
    for name, ours, peer_name, peer, primals, tangents in pairs:
        ours_jvp, peer_jvp = (jax.jit(lambda p, t, f=f: jax.jvp(f, p, t)) for f in (ours, peer))
        _check_gradients(name, [ours_jvp(primals, tangents)[1]], [peer_jvp(primals, tangents)[1]])
        out.append(_row(name, case, lambda f=ours_jvp, p=primals, t=tangents: jax.block_until_ready(f(p, t)),
                        peer_name, lambda f=peer_jvp, p=primals, t=tangents: jax.block_until_ready(f(p, t)), repeats,
                        "tangent: two SDDMMs" if "SDDMM" in name else "tangent: two SpMMs"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--jax", action="store_true", help="also the JAX rows")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} torch threads")
    print(HEADER)
    for row in torch_rows(args.quick):
        print(row.markdown(), flush=True)
    if args.jax:
        for row in jax_rows(args.quick):
            print(row.markdown(), flush=True)
    for row in forward_mode_rows(args.quick, args.jax):
        print(row.markdown(), flush=True)


if __name__ == "__main__":
    main()
