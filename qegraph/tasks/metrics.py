"""Metrics of weight-space prediction tasks, computed over a whole epoch."""

from __future__ import annotations

import torch
from torch import Tensor


def kendall_tau(pred: Tensor, target: Tensor) -> float:
    r"""Kendall's τ-b between two 1-d tensors (ties handled as in scipy's default).

    .. math::
        \tau_b = \frac{P - Q}{\sqrt{(P + Q + T_x)(P + Q + T_y)}}

    with P concordant and Q discordant pairs, T_x / T_y pairs tied only in ``pred`` / ``target``.
    O(n²) memory in chunks of rows; fine for the few thousand checkpoints of a test split.
    """
    x = pred.detach().double().flatten().cpu()
    y = target.detach().double().flatten().cpu()
    n = x.numel()
    if n < 2:
        return float("nan")
    s_num = 0.0
    n_x = 0.0  # pairs not tied in x
    n_y = 0.0
    for i in range(0, n, 1024):
        dx = torch.sign(x[i : i + 1024, None] - x[None, :])
        dy = torch.sign(y[i : i + 1024, None] - y[None, :])
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
