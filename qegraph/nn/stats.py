"""Vectorized per-segment statistics: mean, variance and quantiles of rows grouped by a segment id.

Used by the quasi gauge (per-layer feature statistics) and by StatNN (per-layer weight statistics).
Quantiles use two sorts (by value, then stably by segment) instead of a loop over segments:
after them, column j holds every segment's values in ascending order, segment s at rows
ptr[s] … ptr[s+1]-1, and the q-quantile is the row ptr[s] + round(q·(n_s − 1)) (nearest rank).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch_geometric.utils import scatter


def segment_mean_var(x: Tensor, seg: Tensor, num_seg: int) -> tuple[Tensor, Tensor]:
    """``x[n, c]`` → per-segment mean and (biased) variance ``[num_seg, c]``; 0 for empty segments."""
    mean = scatter(x, seg, dim=0, dim_size=num_seg, reduce="mean")
    var = scatter((x - mean[seg]) ** 2, seg, dim=0, dim_size=num_seg, reduce="mean")
    return mean, var


def segment_quantiles(x: Tensor, seg: Tensor, num_seg: int, qs: Sequence[float]) -> Tensor:
    """``x[n, c]`` → ``[num_seg, len(qs), c]`` nearest-rank quantiles per segment (0 for empty ones)."""
    n, c = x.shape
    out = x.new_zeros(num_seg, len(qs), c)
    if n == 0:
        return out
    vals, order = torch.sort(x, dim=0)
    seg_sorted = seg[order]  # [n, c]
    seg_order = torch.sort(seg_sorted, dim=0, stable=True).indices
    vals = vals.gather(0, seg_order)
    counts = torch.bincount(seg, minlength=num_seg)
    ptr = torch.cumsum(counts, 0) - counts
    q = torch.tensor(list(qs), dtype=x.dtype, device=x.device)
    pos = ptr.unsqueeze(1) + torch.round(q.unsqueeze(0) * (counts.unsqueeze(1) - 1).clamp(min=0).to(x.dtype)).long()
    nonempty = counts > 0
    rows = pos[nonempty].clamp(max=n - 1)  # [s', Q]
    out[nonempty] = vals[rows.reshape(-1)].reshape(rows.size(0), len(qs), c)
    return out
