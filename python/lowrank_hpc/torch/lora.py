"""KernelizedLoRA: the SNELL adapter (sparse tuning with kernelized LoRA) around an nn.Linear.

The update of the frozen weight W (out x in) is a kernel function of a low-rank product,
sparsified by competition at every step:

    D = scale * f(A B^T),  A (out, rank), B (in, rank) trainable,
    only the top_k entries of D by |D| are kept (recomputed from A and B at every forward),
    y = x W^T + b + x D_kept^T.

The nonlinear f raises the rank of the merged update above ``rank``; the competition keeps the
entries that matter without storing their indices (they are recomputed, never learned), so the
trainable state is that of LoRA: (out + in) * rank numbers. The kept entries come from the core's
fused top-k kernel (``kernel_product`` in top-k mode, which never forms the dense out x in
matrix) and the update is applied by its sparse-times-dense kernel, both differentiable.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .. import _checks
from ..ops import GlobalTopK
from ._ops import kernel_name, kernel_top_k_global_fn, kernel_top_k_rows_fn, sparse_times_dense_fn

_MODES = ("global", "row")


class KernelizedLoRA(nn.Module):
    """SNELL adapter wrapping ``base`` (an ``nn.Linear``, frozen here).

    Args:
        base: the linear layer to adapt; its weight and bias stop requiring gradients.
        rank: width of the factors A (out_features, rank) and B (in_features, rank).
        kernel: f, one of ``lowrank_hpc.ops.KERNELS`` ("piecewise_linear", "tanh", "relu",
            "identity", "exponential"/"exp").
        keep: fraction of the update's entries kept per step, in (0, 1]: over the whole matrix
            (``top_k_mode="global"``: round(keep * out * in) entries) or per output row ("row").
        scale: multiplies f(A B^T).
        init_scale: standard deviation of A at the start; B starts at N(0, 1 / in_features).
            A starts small but not zero: a zero A ties every entry of the competition, and the
            rows it drops at the first step would never be selected again.
        generator: a torch.Generator for the initialization (reproducible runs).

    ``merge()`` adds the kept update into ``base.weight`` (the forward then runs the plain layer)
    and records the entries it changed; ``unmerge()`` restores them bit for bit. The record is
    held in non-persistent buffers, so ``.to()``/``.double()``/``.half()`` move and cast it with
    the weight: after a dtype change ``unmerge()`` restores the original entries converted to the
    new dtype, the weight that unmerging before the conversion would have given.

    ``state_dict()`` always describes the unmerged module: while merged, ``base.weight``'s entry
    is the weight ``unmerge()`` would restore (a copy), with the same keys as ever, so a
    checkpoint of a merged module loads into a fresh module (merged or not) as the same function.
    ``load_state_dict()`` into a merged module unmerges it, loads, and merges again with the
    loaded A and B (the result is that of loading into the unmerged module, then ``merge()``).
    Loading ``base`` alone (``adapter.base.load_state_dict``) bypasses this: unmerge first.
    """

    def __init__(self, base: nn.Linear, rank: int = 8, *, kernel: str = "piecewise_linear", keep: float = 0.5,
                 top_k_mode: str = "global", scale: float = 1.0, init_scale: float = 1e-3,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        name = "KernelizedLoRA"
        if not isinstance(base, nn.Linear):
            raise TypeError(f"{name}: base must be an nn.Linear, got {type(base).__name__}")
        rank = _checks.positive_int(name, "rank", rank)
        keep = _checks.positive_float(name, "keep", keep)
        if keep > 1:
            raise ValueError(f"{name}: keep must be a fraction in (0, 1], got {keep}")
        if top_k_mode not in _MODES:
            raise ValueError(f"{name}: top_k_mode must be 'global' or 'row', got {top_k_mode!r}")
        self.kernel = kernel_name(name, kernel)
        self.base, self.rank, self.keep, self.top_k_mode = base, rank, keep, top_k_mode
        self.scale = _checks.real(name, "scale", scale)  # "2" or NaN were taken: NaN outputs, no error
        if not math.isfinite(self.scale):
            raise ValueError(f"{name}: scale must be a finite number, got {self.scale!r}")
        init_scale = _checks.nonnegative_float(name, "init_scale", init_scale)
        out_features, in_features = base.weight.shape
        per = out_features * in_features if top_k_mode == "global" else in_features
        self.top_k = max(1, min(per, round(keep * per)))
        base.requires_grad_(False)
        factory = dict(dtype=base.weight.dtype, device=base.weight.device)
        self.A = nn.Parameter(torch.randn(out_features, rank, generator=generator).to(**factory) * init_scale)
        self.B = nn.Parameter(torch.randn(in_features, rank, generator=generator).to(**factory)
                              / math.sqrt(in_features))
        # The merge record (rows, cols, original entries) as buffers: .to() must cast and move it
        # with the weight; non-persistent: the state_dict describes the unmerged module instead.
        for buffer in ("_merged_rows", "_merged_cols", "_merged_saved"):
            self.register_buffer(buffer, None, persistent=False)
        self._merge_after_load = False  # set by the load pre-hook for its post-hook
        self.register_state_dict_post_hook(_save_unmerged_weight)
        self.register_load_state_dict_pre_hook(_unmerge_before_load)
        self.register_load_state_dict_post_hook(_merge_again_after_load)

    @property
    def merged(self) -> bool:
        """Whether the kept update is currently added into ``base.weight``."""
        return self._merged_rows is not None

    def _unmerged_weight(self) -> torch.Tensor:
        """A copy of base.weight with the merged entries restored: what unmerge() would leave."""
        weight = self.base.weight.detach().clone()
        if self.merged:
            weight.index_put_((self._merged_rows, self._merged_cols), self._merged_saved)
        return weight

    def sparse_delta(self, order: str = "magnitude") -> GlobalTopK:
        """The kept entries of the update: values (scale * f, differentiable in A and B), rows and
        cols (int64), top_k of them (out_features * top_k in row mode), best first, or with
        ``order="position"`` row-major (rows, then columns ascending: CSR order)."""
        if self.top_k_mode == "global":
            values, rows, cols = kernel_top_k_global_fn(self.A, self.B, self.kernel, self.top_k, order)
        else:
            values, indices = kernel_top_k_rows_fn(self.A, self.B, self.kernel, self.top_k, order)
            rows = torch.arange(self.A.shape[0], device=self.A.device).repeat_interleave(self.top_k)
            values, cols = values.reshape(-1), indices.reshape(-1)
        return GlobalTopK(values * self.scale if self.scale != 1.0 else values, rows, cols)

    def delta_weight(self) -> torch.Tensor:
        """The kept update as a dense (out_features, in_features) tensor (differentiable)."""
        values, rows, cols = self.sparse_delta("position")
        dense = values.new_zeros(self.base.weight.shape)
        return dense.index_put((rows, cols), values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        out_features, in_features = self.base.weight.shape
        tokens = x.reshape(-1, in_features)
        if tokens.shape[0] == 0:
            # No token: the update adds nothing; A and B stay in the graph with zero gradients (as
            # nn.Linear's weight on an empty batch) and the kernels, which reject empty B, are skipped.
            return y + (self.A.sum() + self.B.sum()) * 0
        values, rows, cols = self.sparse_delta("position")  # CSR order: the product skips its sort
        # D_kept @ x^T by the sparse-times-dense kernel: (out, tokens), touching only kept entries.
        # x^T copied once here: the backward's product reads the same copy.
        delta = sparse_times_dense_fn(rows, cols, values, tokens.T.contiguous(), out_features, False)
        return y + delta.T.reshape(*x.shape[:-1], out_features)

    @torch.no_grad()
    def merge(self) -> None:
        """Add the kept update into base.weight; the forward then is the plain layer's."""
        if self.merged:
            raise RuntimeError("KernelizedLoRA.merge: already merged (unmerge first)")
        values, rows, cols = self.sparse_delta("position")
        weight = self.base.weight
        saved = weight[rows, cols].clone()
        weight.index_put_((rows, cols), values.to(weight.dtype), accumulate=True)
        self._merged_rows, self._merged_cols, self._merged_saved = rows, cols, saved

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the entries merge() changed, bit for bit (converted like the weight by any
        ``.to()`` in between: the weight unmerging before the conversion would have given)."""
        if not self.merged:
            raise RuntimeError("KernelizedLoRA.unmerge: not merged")
        self.base.weight.index_put_((self._merged_rows, self._merged_cols), self._merged_saved)
        self._merged_rows = self._merged_cols = self._merged_saved = None

    def extra_repr(self) -> str:
        return (f"rank={self.rank}, kernel={self.kernel!r}, keep={self.keep}, top_k_mode={self.top_k_mode!r}, "
                f"top_k={self.top_k}, scale={self.scale}")


# Module-level hooks (not bound methods): they receive the module, and pickle and deepcopy cleanly.
def _save_unmerged_weight(module: KernelizedLoRA, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """state_dict post-hook: a merged module saves the unmerged base weight under the usual key."""
    if module.merged:
        state_dict[prefix + "base.weight"] = module._unmerged_weight()


def _unmerge_before_load(module: KernelizedLoRA, state_dict: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: the loaded (unmerged) weight must not land under a stale merge
    record; the module is unmerged now and merged again by the post-hook."""
    module._merge_after_load = module.merged
    if module.merged:
        module.unmerge()
        # load_state_dict(assign=True) makes the loaded tensors the module's: merging in place
        # would then add the update into the caller's state_dict (and the module it came from).
        module._copy_before_merge = bool(args and args[0].get("assign_to_params_buffers", False))


def _merge_again_after_load(module: KernelizedLoRA, incompatible_keys: object) -> None:
    """load_state_dict post-hook: a module merged before the load is merged with the loaded A, B."""
    if getattr(module, "_merge_after_load", False):
        module._merge_after_load = False
        if getattr(module, "_copy_before_merge", False):
            module._copy_before_merge = False
            module.base.weight.data = module.base.weight.detach().clone()
        module.merge()
