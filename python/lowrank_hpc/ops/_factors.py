"""Checks shared by the kernels that take factor matrices U (..., m, r) and V (..., n, r), and the
rule by which the frameworks' vmap broadcasts a shared factor to them."""
from __future__ import annotations

from typing import Any

from .._arrays import Call, count_nonfinite

# A vmapped top-k with one factor shared (lowrank_hpc.torch, lowrank_hpc.jax) is one batched call on
# that factor broadcast to the elements, copied once per element, while the copies stay within
# this many bytes or the batched factor's own; else one call per element. Memory decides, not time
# (a row's copy is r numbers, its product n r multiply-adds).
BROADCAST_COPY_LIMIT = 64 << 20


def broadcast_copy_is_small(copy_bytes: int, batched_bytes: int) -> bool:
    """Whether copies of a shared factor totalling ``copy_bytes`` fit BROADCAST_COPY_LIMIT or the
    batched factor's ``batched_bytes`` (at most doubling what the caller holds)."""
    return copy_bytes <= max(BROADCAST_COPY_LIMIT, batched_bytes)


def factor_pair(call: Call, U: Any, V: Any, *, check_finite: bool = True, names: tuple[str, str] = ("U", "V"),
                halves: bool = False):
    """Validated (U3, V3, batched): both viewed as (batch, rows, rank) without copying; with
    ``halves`` float16/bfloat16 factors are kept (the low-precision kernels)."""
    u_name, v_name = names
    U = call.float_array(u_name, U, (2, 3), check_finite=check_finite, halves=halves)
    V = call.float_array(v_name, V, (2, 3), check_finite=check_finite, halves=halves)
    if U.ndim != V.ndim:
        raise ValueError(f"{call.function}: {u_name} has shape {tuple(U.shape)} and {v_name} has shape "
                         f"{tuple(V.shape)}; both must be batched (3-D) or neither")
    batched = U.ndim == 3
    if batched and U.shape[0] != V.shape[0]:
        raise ValueError(f"{call.function}: batch sizes differ: {u_name} {tuple(U.shape)}, {v_name} {tuple(V.shape)}")
    if U.shape[-1] != V.shape[-1]:
        raise ValueError(f"{call.function}: rank mismatch: {u_name} has shape {tuple(U.shape)} (rank "
                         f"{U.shape[-1]}) and {v_name} has shape {tuple(V.shape)} (rank {V.shape[-1]})")
    # Any width r >= 1 is valid, r > max(m, n) included: over-parameterized factorizations are
    # legitimate, and the kernels loop over r independently of m and n.
    m, n, r = U.shape[-2], V.shape[-2], U.shape[-1]
    if not batched:
        U, V = U.reshape(1, m, r), V.reshape(1, n, r)
    return U, V, batched


def raise_index_error(call: Call, k: int, checks: list[tuple[str, Any, int]]) -> None:
    """Report entry k's first out-of-range index among (name, indices, bound) triples."""
    for name, indices, bound in checks:
        value = int(indices[k])
        if not 0 <= value < bound:
            raise IndexError(f"{call.function}: {name}[{k}] = {value} is out of range [0, {bound})")
    raise IndexError(f"{call.function}: entry {k} has an out-of-range index")


def checked_result(call: Call, out: Any, check_finite: bool) -> Any:
    """out, after (with check_finite, whose inputs were then found finite) a count of its
    NaN/inf entries: each one overflowed the dtype's range, which is raised, never returned
    (float16's range ends at 65504: products of moderate factors reach it)."""
    if check_finite:
        bad = count_nonfinite(call, out)
        if bad:
            raise FloatingPointError(f"{call.function}: {bad} entries of the result overflowed to inf in {out.dtype} "
                                     "(the inputs are finite); scale the inputs down or use a wider dtype")
    return out
