"""Coordinates sorted into CSR order by one kernel call (the sparse products and ALS build on it)."""
from __future__ import annotations

import numpy as np

from .._arrays import Call
from ._factors import raise_index_error


def csr_order(call: Call, keys, others, vals, offsets, n_key: int, key_name: str, keep_perm: bool = True,
              size_name: str = "n_rows"):
    """(indptr, perm, others, vals) in CSR order by (problem, key), from one kernel call on the
    call's backend: perm is None when the entries were already in order (then others and vals
    are the inputs), or when ``keep_perm`` is False (its 8 bytes an entry are never allocated
    on the host). Every key is range-checked here; IndexError names the first bad one.
    ``size_name``: the caller's argument that gave n_key, named when indptr cannot be allocated."""
    xp, nnz = call.xp, int(keys.shape[0])
    batch = int(offsets.shape[0]) - 1
    try:
        indptr = xp.empty(batch * n_key + 1, dtype=np.int64)
    except (ValueError, OverflowError, MemoryError) as error:  # numpy's own words name no argument
        count = f"{size_name} + 1" if batch == 1 else f"batch * {size_name} + 1"
        message = (f"{call.function}: {size_name} = {n_key} is too large: the row-pointer array of {count} "
                   f"int64 would need {8 * (batch * n_key + 1):,} bytes")
        raise (MemoryError if isinstance(error, MemoryError) else ValueError)(message) from None
    perm = xp.empty(nnz, dtype=np.int64) if keep_perm else None
    others_sorted = xp.empty(nnz, dtype=others.dtype)
    vals_sorted = None if vals is None else xp.empty_like(vals)
    status = call.status(nnz, 0)
    call.module.coo_to_csr(keys, others, vals, offsets, n_key, indptr, perm, others_sorted, vals_sorted, status,
                           call.stream())
    bad, already_sorted = call.read(status)
    if bad < nnz:
        raise_index_error(call, bad, [(key_name, keys, n_key)])
    if already_sorted:
        return indptr, None, others, vals
    return indptr, perm, others_sorted, vals_sorted
