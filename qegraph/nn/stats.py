"""Vectorized per-segment statistics: mean, variance and quantiles of rows grouped by a segment id.

Used by the quasi gauge (per-layer feature statistics) and by StatNN (per-layer weight statistics).
Quantiles use two sorts (by value, then stably by segment) instead of a loop over segments:
after them, column j holds every segment's values in ascending order, segment s at rows
ptr[s] … ptr[s+1]-1, and the q-quantile is the row ptr[s] + round(q·(n_s − 1)) (nearest rank). In float32 the
two sorts are one flat sort of int64 keys (column, segment, order-preserving bits of the value).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from qegraph.nn.ops import gather_rows, scatter_sum


def segment_mean_var(x: Tensor, seg: Tensor, num_seg: int) -> tuple[Tensor, Tensor]:
    """``x[n, c]`` → per-segment mean and (biased) variance ``[num_seg, c]``; 0 for empty segments."""
    inv = 1 / torch.bincount(seg, minlength=num_seg).clamp(min=1).to(x.dtype).unsqueeze(1)
    mean = scatter_sum(x, seg, num_seg) * inv
    d = x - gather_rows(mean, seg)
    var = scatter_sum(d * d, seg, num_seg) * inv
    return mean, var


def segment_quantiles(x: Tensor, seg: Tensor, num_seg: int, qs: Sequence[float]) -> Tensor:
    """``x[n, c]`` → ``[num_seg, len(qs), c]`` nearest-rank quantiles per segment (0 for empty ones)."""
    n, c = x.shape
    out = x.new_zeros(num_seg, len(qs), c)
    if n == 0:
        return out
    counts = torch.bincount(seg, minlength=num_seg)
    ptr = torch.cumsum(counts, 0) - counts
    q = torch.tensor(list(qs), dtype=x.dtype, device=x.device)
    pos = ptr.unsqueeze(1) + torch.round(q.unsqueeze(0) * (counts.unsqueeze(1) - 1).clamp(min=0).to(x.dtype)).long()
    nonempty = counts > 0
    rows = pos[nonempty].clamp(max=n - 1)  # [s', Q]
    if x.dtype == torch.float32 and c * num_seg < 2**31:
        # one flat sort of int64 keys (column, segment, order-preserving bits of the value): column j,
        # segment s occupies positions j·n + ptr[s] … of the sorted order
        bits = x.detach().t().contiguous().view(torch.int32).to(torch.int64)
        bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits) + 2**31  # monotone in the value, in [0, 2^32)
        col = torch.arange(c, device=x.device).unsqueeze(1)
        order = torch.sort((((col * num_seg + seg.unsqueeze(0)) << 32) | bits).flatten()).indices
        flat = order[(col * n + rows.reshape(1, -1)).flatten()].view(c, -1)  # [c, s'Q] into x.t()
        picked = (flat - col * n).t()  # node ids [s'Q, c]
        out[nonempty] = x.gather(0, picked).reshape(rows.size(0), len(qs), c)
        return out
    vals, order = torch.sort(x, dim=0)
    seg_sorted = seg[order]  # [n, c]
    seg_order = torch.sort(seg_sorted, dim=0, stable=True).indices
    vals = vals.gather(0, seg_order)
    out[nonempty] = vals[rows.reshape(-1)].reshape(rows.size(0), len(qs), c)
    return out
