"""Row gathers and scatter-sums with cheap backward passes (the index kernels of every layer).

``gather_rows(x, idx) = x[idx]`` and ``scatter_sum(src, idx, n)`` (row i of the result is the sum of
``src[j]`` over ``idx[j] = i``) are each other's adjoint, so each one's backward is the other. On CPU
``F.embedding`` gathers rows several times faster than ``index_select`` / advanced indexing, and
``index_add_`` scatters rows faster than ``embedding``'s backward (which sorts the indices), so the
pair is implemented as two autograd functions using the fast kernel in both directions.
``replace_rows(x, idx, rows)`` (x with the rows ``idx`` overwritten) is the sparse counterpart of
``torch.where(mask, values, x)``: it touches only the replaced rows instead of building full-size
value and mask tensors, and its backward is a fill and a gather.

``torch_scatter`` (the optional extra) is used for the scatter-sum when
:func:`set_scatter_backend` selects it (benchmarks compare both); the default is native PyTorch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_BACKEND = "native"


def set_scatter_backend(name: str) -> str:
    """Select ``"native"`` (``index_add_``) or ``"torch_scatter"``; returns the previous backend."""
    global _BACKEND
    if name not in ("native", "torch_scatter"):
        raise ValueError(f"unknown scatter backend {name!r}")
    if name == "torch_scatter":
        import torch_scatter  # noqa: F401  (fail early when the extra is missing)
    prev, _BACKEND = _BACKEND, name
    return prev


def _scatter(src: Tensor, idx: Tensor, n: int) -> Tensor:
    if _BACKEND == "torch_scatter":
        import torch_scatter

        return torch_scatter.scatter_add(src, idx, dim=0, dim_size=n)
    return src.new_zeros((n,) + tuple(src.shape[1:])).index_add_(0, idx, src)


def _gather(x: Tensor, idx: Tensor) -> Tensor:
    return F.embedding(idx, x) if x.dim() == 2 else x.index_select(0, idx)


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, idx: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(idx)
        ctx.n = x.size(0)
        return _gather(x, idx)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (idx,) = ctx.saved_tensors
        return _scatter(g.contiguous(), idx, ctx.n), None


class _Scatter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, src: Tensor, idx: Tensor, n: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(idx)
        return _scatter(src.contiguous(), idx, n)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (idx,) = ctx.saved_tensors
        return _gather(g.contiguous(), idx), None, None


class _Replace(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, idx: Tensor, rows: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(idx)
        return x.index_copy(0, idx, rows)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, None, Tensor | None]:  # type: ignore[override]
        (idx,) = ctx.saved_tensors
        gx = g.index_fill(0, idx, 0) if ctx.needs_input_grad[0] else None
        grows = _gather(g.contiguous(), idx) if ctx.needs_input_grad[2] else None
        return gx, None, grows


def gather_rows(x: Tensor, idx: Tensor) -> Tensor:
    """``x[idx]`` along dim 0 (``idx`` int64)."""
    return _Gather.apply(x, idx)


def scatter_sum(src: Tensor, idx: Tensor, n: int) -> Tensor:
    """``out[i] = Σ_{j: idx[j]=i} src[j]``, ``out`` with ``n`` rows (``idx`` int64)."""
    return _Scatter.apply(src, idx, n)


def replace_rows(x: Tensor, idx: Tensor, rows: Tensor) -> Tensor:
    """A copy of ``x`` whose rows ``idx`` (distinct, int64) are ``rows``; ``x`` is not modified."""
    return _Replace.apply(x, idx, rows)
