"""Metrics of weight-space prediction tasks, computed over a whole epoch."""

from __future__ import annotations

import torch
from torch import Tensor


def _signs(v: Tensor, rows: slice, rtol: float) -> Tensor:
    """sign(v_i − v_j) for i in ``rows``, with differences within rtol·max(|v_i|, |v_j|) counted as ties."""
    d = v[rows, None] - v[None, :]
    scale = torch.maximum(v[rows, None].abs(), v[None, :].abs())
    return torch.where(d.abs() <= rtol * scale, torch.zeros_like(d), torch.sign(d))


def _tie_rtol(t: Tensor) -> float:
    """16 units of round-off of ``t``'s dtype (0 for integers): values closer than that are equal."""
    return 16 * torch.finfo(t.dtype).eps if t.is_floating_point() else 0.0


def kendall_tau(pred: Tensor, target: Tensor) -> float:
    r"""Kendall's τ-b between two 1-d tensors (ties handled as in scipy's default).

    .. math::
        \tau_b = \frac{P - Q}{\sqrt{(P + Q + T_x)(P + Q + T_y)}}

    with P concordant and Q discordant pairs, T_x / T_y pairs tied only in ``pred`` / ``target``.
    Two values count as tied when they differ by at most 16 round-off units of their own dtype
    (relative): predictions that differ only by the order of a floating-point reduction (one process
    vs DDP, batch composition) are equal, and τ does not flip on them. O(n²) memory in chunks of
    rows; fine for the few thousand checkpoints of a test split. Computed on the device of ``pred``
    (pair counts are integers, exact in float64 on any device).
    """
    rx, ry = _tie_rtol(pred), _tie_rtol(target)
    x = pred.detach().double().flatten()
    y = target.detach().double().flatten().to(x.device)
    n = x.numel()
    if n < 2:
        return float("nan")
    s_num = 0.0
    n_x = 0.0  # pairs not tied in x
    n_y = 0.0
    for i in range(0, n, 1024):
        rows = slice(i, i + 1024)
        dx, dy = _signs(x, rows, rx), _signs(y, rows, ry)
        s_num += float((dx * dy).sum())
        n_x += float((dx != 0).sum())
        n_y += float((dy != 0).sum())
    if n_x == 0 or n_y == 0:
        return float("nan")
    return s_num / (n_x * n_y) ** 0.5


def r2_score(pred: Tensor, target: Tensor) -> float:
    """Coefficient of determination 1 − SS_res / SS_tot."""
    p, t = pred.detach().double().flatten(), target.detach().double().flatten()
    ss_tot = float(((t - t.mean()) ** 2).sum())
    return float("nan") if ss_tot == 0 else 1.0 - float(((t - p) ** 2).sum()) / ss_tot


def mean_absolute_error(pred: Tensor, target: Tensor) -> float:
    return float((pred.detach().double().flatten() - target.detach().double().flatten()).abs().mean())
