"""Many small sampled products under vmap (per-sample or per-problem gradients), lowrank_hpc.jax and
lowrank_hpc.torch, against the ways a user gets the same numbers otherwise, measured in the same run:
JAX: our FFI handler per element (vmap_method "sequential"), our host-callback path, jax.numpy
(and the top-k's one host call against one per element);
torch: torch's per-element vmap fallback over the operator, a loop of torch.autograd.grad calls
(and the dense products' and top-k's vmap rules, a factor shared or both batched, against the same
fallback).

    python bench/bench_vmap.py            # 1,000 problems of 30 x 30, r = 4, 300 entries each
    python bench/bench_vmap.py --quick
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import HEADER, Row, interleaved, median, timed  # noqa: E402


def _row(name, case, ours, peer_name, peer, repeats, reference=None):
    """A table row: ours against peer, alternated; ``reference`` (label, call): a third side in the
    same loop, its median in the note (what a user writes without lowrank_hpc)."""
    sides = {"ours": timed(ours), "peer": timed(peer)}
    if reference is not None:
        sides["reference"] = timed(reference[1])
    times = interleaved(sides, repeats)
    spread = "; ".join(f"{side} {min(t) * 1e3:.1f}-{max(t) * 1e3:.1f}" for side, t in times.items())
    note = f"median of {repeats}"
    if reference is not None:
        note += f"; {reference[0]} {median(times['reference']) * 1e3:.2f} ms"
    return Row(name, case, median(times["ours"]), peer_name, median(times["peer"]), f"{note}; {spread} ms")


def jax_rows(problems: int, m: int, r: int, nnz: int, repeats: int) -> list[Row]:
    import jax
    import jax.numpy as jnp

    import lowrank_hpc.jax as lj

    rng = np.random.default_rng(0)
    U = jnp.asarray(rng.standard_normal((problems, m, r), dtype=np.float32))
    V = jnp.asarray(rng.standard_normal((problems, m, r), dtype=np.float32))
    rows = jnp.asarray(rng.integers(0, m, (problems, nnz)).astype(np.int32))
    cols = jnp.asarray(rng.integers(0, m, (problems, nnz)).astype(np.int32))
    args = (U, V, rows, cols)
    case = f"{problems} x ({m}x{m}, r={r}, {nnz} entries) f32, vmap(grad)"

    def gradients(product):
        return jax.jit(jax.vmap(jax.grad(lambda U, V, r_, c_: (product(U, V, r_, c_) ** 2).sum(), argnums=(0, 1))))

    ours = gradients(lj.sampled_product)
    expected = ours(*args)
    peers = {"jax.numpy (U[rows] * V[cols]).sum(1)": gradients(lambda U, V, r_, c_: (U[r_] * V[c_]).sum(1))}
    if lj._FFI:
        real_ffi_call = jax.ffi.ffi_call
        jax.ffi.ffi_call = lambda *a, **k: real_ffi_call(*a, **{**k, "vmap_method": "sequential"})
        try:
            per_element = gradients(lambda *a: lj.sampled_product(*a))
            per_element(*args)  # traced now, with the per-element handler calls
        finally:
            jax.ffi.ffi_call = real_ffi_call
        peers["lowrank_hpc.jax, one handler call per element"] = per_element
    lj._FFI = False
    try:
        callback = gradients(lambda *a: lj.sampled_product(*a))
        callback(*args)
    finally:
        lj._FFI = bool(lj._FFI_PLATFORMS)
    peers["lowrank_hpc.jax, host callback per element"] = callback
    out = []
    for name, peer in peers.items():
        for a, b in zip(expected, peer(*args)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
        out.append(_row("sampled_product, JAX", case, lambda: jax.block_until_ready(ours(*args)), name,
                        lambda p=peer: jax.block_until_ready(p(*args)), repeats))
    return out + [jax_top_k_row(problems, m, r, repeats)]


def jax_top_k_row(problems: int, m: int, r: int, repeats: int, k: int = 5) -> Row:
    """vmap of the row top-k of tanh(U V^T): one host call against one per element and jax.numpy."""
    import jax
    import jax.numpy as jnp

    import lowrank_hpc.jax as lj

    rng = np.random.default_rng(1)
    U = jnp.asarray(rng.standard_normal((problems, m, r), dtype=np.float32))
    V = jnp.asarray(rng.standard_normal((problems, m, r), dtype=np.float32))
    case = f"{problems} x ({m}x{m}, r={r}) f32, vmap of row top-{k} of tanh(U V^T)"

    def top_k(U, V):
        return tuple(lj.kernel_product(U, V, "tanh", k))

    ours = jax.jit(jax.vmap(top_k))
    real_callback = jax.pure_callback
    jax.pure_callback = lambda *a, **kw: real_callback(*a, **{**kw, "vmap_method": "sequential"})
    try:
        per_element = jax.jit(jax.vmap(top_k))
        per_element(U, V)  # traced now, with one callback per element
    finally:
        jax.pure_callback = real_callback

    def reference(U, V):
        K = jnp.tanh(U @ V.T)
        _, indices = jax.lax.top_k(jnp.abs(K), k)
        return jnp.take_along_axis(K, indices, 1), indices

    numpy_peer = jax.jit(jax.vmap(reference))
    expected = ours(U, V)
    for a, b in zip(expected, per_element(U, V)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # magnitudes only: tanh saturates, so near-equal entries may swap places between the two GEMMs' roundings
    np.testing.assert_allclose(np.abs(np.asarray(expected[0])), np.abs(np.asarray(numpy_peer(U, V)[0])), atol=1e-6)
    return _row("kernel_product top-k, JAX", case, lambda: jax.block_until_ready(ours(U, V)),
                "host callback per element", lambda: jax.block_until_ready(per_element(U, V)), repeats,
                ("jax.numpy lax.top_k", lambda: jax.block_until_ready(numpy_peer(U, V))))


def torch_rows(problems: int, m: int, r: int, nnz: int, repeats: int) -> list[Row]:
    import torch

    import lowrank_hpc.torch as lt
    from lowrank_hpc.torch import _ops

    generator = torch.Generator().manual_seed(0)
    U = torch.randn(problems, m, r, generator=generator)
    V = torch.randn(problems, m, r, generator=generator)
    rows = torch.randint(0, m, (problems, nnz), generator=generator)
    cols = torch.randint(0, m, (problems, nnz), generator=generator)
    case = f"{problems} x ({m}x{m}, r={r}, {nnz} entries) f32"

    def loss(U, V, r_, c_):
        return lt.sampled_product(U, V, r_, c_).square().sum()

    per_sample = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1)))

    def autograd_loop():
        out = []
        for b in range(problems):
            u, v = U[b].clone().requires_grad_(), V[b].clone().requires_grad_()
            out.append(torch.autograd.grad(loss(u, v, rows[b], cols[b]), (u, v)))
        return out

    expected, looped = per_sample(U, V, rows, cols), autograd_loop()
    for b in (0, problems - 1):
        torch.testing.assert_close(expected[0][b], looped[b][0])
    forward, fallback = torch.func.vmap(lt.sampled_product), torch.func.vmap(_ops.sampled_product_op)
    dense_case = f"{problems} x ({m}x{m}, r={r}) f32"
    def plain_top_k(U, V):  # what a torch user writes instead: topk of |tanh(U V^T)|, values gathered back
        K = torch.tanh(U @ V.T)
        indices = K.abs().topk(4, dim=-1).indices
        return K.gather(-1, indices), indices

    def plain_global_top_k(U, V):  # the same over each element's whole product
        K = torch.tanh(U @ V.T).reshape(-1)
        flat = K.abs().topk(10).indices
        return K[flat], flat // V.shape[0], flat % V.shape[0]

    # name: (ours, the operator under torch's fallback, plain torch under vmap, operands)
    dense = {"lowrank_product, torch vmap": (torch.func.vmap(lt.lowrank_product),
                                             torch.func.vmap(_ops.lowrank_product_op),
                                             torch.func.vmap(lambda U, V: U @ V.T), (U, V)),
             "kernel_product tanh, torch vmap": (torch.func.vmap(lambda U, V: lt.kernel_product(U, V, "tanh")),
                                                 torch.func.vmap(lambda U, V: _ops.kernel_product_op(U, V, "tanh")),
                                                 torch.func.vmap(lambda U, V: torch.tanh(U @ V.T)), (U, V)),
             "kernel_product row top-4, V shared, torch vmap": (
                 torch.func.vmap(lambda U: tuple(lt.kernel_product(U, V[0], "tanh", 4))),
                 torch.func.vmap(lambda U: _ops.kernel_top_k_rows_op(U, V[0], "tanh", 4)),
                 torch.func.vmap(lambda U: plain_top_k(U, V[0])), (U,)),
             "kernel_product row top-4, U shared, torch vmap": (
                 torch.func.vmap(lambda V: tuple(lt.kernel_product(U[0], V, "tanh", 4))),
                 torch.func.vmap(lambda V: _ops.kernel_top_k_rows_op(U[0], V, "tanh", 4)),
                 torch.func.vmap(lambda V: plain_top_k(U[0], V)), (V,)),
             "kernel_product global top-10, both batched, torch vmap": (
                 torch.func.vmap(lambda U, V: tuple(lt.kernel_product(U, V, "tanh", 10, top_k_mode="global"))),
                 torch.func.vmap(lambda U, V: _ops.kernel_top_k_global_op(U, V, "tanh", 10)),
                 torch.func.vmap(plain_global_top_k), (U, V)),
             "kernel_product global top-10, U shared, torch vmap": (
                 torch.func.vmap(lambda V: tuple(lt.kernel_product(U[0], V, "tanh", 10, top_k_mode="global"))),
                 torch.func.vmap(lambda V: _ops.kernel_top_k_global_op(U[0], V, "tanh", 10)),
                 torch.func.vmap(lambda V: plain_global_top_k(U[0], V)), (V,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback's performance warning, which is the point here
        torch.testing.assert_close(forward(U, V, rows, cols), fallback(U, V, rows, cols))
        out = [_row("sampled_product, torch vmap", case, lambda: forward(U, V, rows, cols),
                    "torch's per-element vmap fallback over the operator", lambda: fallback(U, V, rows, cols),
                    repeats),
               _row("sampled_product, torch vmap(grad)", case, lambda: per_sample(U, V, rows, cols),
                    "loop of torch.autograd.grad", autograd_loop, max(3, repeats // 2))]
        for name, (ours, peer, plain, operands) in dense.items():
            torch.testing.assert_close(ours(*operands), peer(*operands))
            # magnitudes: tanh saturates, so near-equal entries may swap places between the two GEMMs' roundings
            torch.testing.assert_close(ours(*operands)[0].abs(), plain(*operands)[0].abs())
            out.append(_row(name, dense_case, lambda o=ours, a=operands: o(*a),
                            "torch's per-element vmap fallback over the operator", lambda p=peer, a=operands: p(*a),
                            repeats, ("plain torch under vmap", lambda p=plain, a=operands: p(*a))))
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 problems (a smoke run)")
    args = parser.parse_args()
    problems, m, r, nnz, repeats = (100, 30, 4, 300, 3) if args.quick else (1000, 30, 4, 300, 7)
    print(HEADER)
    try:
        for row in jax_rows(problems, m, r, nnz, repeats):
            print(row.markdown(), flush=True)
    except ImportError as error:
        print(f"(JAX rows skipped: {error})")
    for row in torch_rows(problems, m, r, nnz, repeats):
        print(row.markdown(), flush=True)


if __name__ == "__main__":
    main()
