r"""QuantileNorm: every input column through the empirical distribution function of its training values.

.. math::
    \mathrm{QN}(x)_j = 2\,\tilde F_j(x_j) - 1, \qquad
    \tilde F_j(x) = \frac{k + (x - q_{jk}) / (q_{j,k+1} - q_{jk})}{K - 1} \quad \text{for } q_{jk} \le x \le q_{j,k+1},

clamped to [−1, 1] outside [q_{j0}, q_{j,K−1}]: q_{j0} ≤ … ≤ q_{j,K−1} are K evenly spaced quantiles of
column j over a fitting set (:meth:`QuantileNorm.fit`; the training split, fitted by the training task at
fit start), so F̃_j is the piecewise-linear empirical CDF. Statistics of a zoo's weights are skewed and
heavy-tailed (variances, extremes, norms that grow by orders of magnitude over training); standardizing
them leaves most networks in a narrow band and a few far out, where a small training set teaches an MLP
nothing. Mapping them through their CDF spreads the training networks evenly over [−1, 1] and bounds
unseen ones (the way decision trees see features, which is why trees beat MLPs on these statistics).

A monotone map per column of invariant features keeps them invariant. Knots are made strictly increasing
(a floor of ``1e-4`` of the column's range between neighbours), so F̃ is continuous and Lipschitz and
round-off of the input moves the output by round-off; columns constant over the fitting set map to 0.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qegraph.errors import QegraphError

#: the smallest gap between neighbouring knots, relative to the column's range over the fitting set
KNOT_GAP = 1e-4


class QuantileNorm(nn.Module):
    """Per-column empirical-CDF map to [−1, 1] (module docstring), fitted once with :meth:`fit`.

    Args:
        num_features: number of columns (``None``: taken from the data at :meth:`fit`).
        num_knots: quantiles per column (K ≥ 2).
    """

    def __init__(self, num_features: int | None = None, num_knots: int = 21) -> None:
        super().__init__()
        if (num_features is not None and num_features < 1) or num_knots < 2:
            raise QegraphError(f"QuantileNorm needs num_features >= 1 and num_knots >= 2, got {num_features}, {num_knots}")
        self.num_features, self.num_knots = num_features, num_knots
        self.register_buffer("knots", torch.zeros(num_features or 0, num_knots, dtype=torch.float64))
        self.register_buffer("constant", torch.ones(num_features or 0, dtype=torch.bool))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self._collected: list[Tensor] | None = None

    def _resize(self, num_features: int) -> None:
        self.num_features = num_features
        self.knots = self.knots.new_zeros(num_features, self.num_knots)
        self.constant = self.constant.new_ones(num_features)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object, **kwargs: object) -> None:
        knots = state_dict.get(prefix + "knots")
        if knots is not None and self.knots.numel() == 0 and knots.numel():  # an unsized module takes the width
            self._resize(knots.size(0))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def fit(self, x: Tensor) -> None:
        """Set the knots to the quantiles of the rows of ``x`` ``[n, num_features]`` (n ≥ 1)."""
        if self.num_features is None and x.dim() == 2:
            self._resize(x.size(1))
        if x.dim() != 2 or x.size(1) != self.num_features or x.size(0) == 0:
            raise QegraphError(f"QuantileNorm.fit needs a [n >= 1, {self.num_features}] tensor, got {list(x.shape)}")
        x = x.detach().to(self.knots.device, torch.float64)
        if not bool(torch.isfinite(x).all()):
            raise QegraphError("QuantileNorm.fit: the fitting features contain NaN or inf")
        # linear-interpolation quantiles of every column (torch.quantile refuses inputs over 2^24 values)
        srt = x.sort(dim=0).values
        pos = torch.linspace(0, x.size(0) - 1, self.num_knots, dtype=torch.float64, device=x.device)
        lo = pos.floor().long()
        hi = (lo + 1).clamp(max=x.size(0) - 1)
        frac = (pos - lo).unsqueeze(1)
        knots = (srt[lo] * (1 - frac) + srt[hi] * frac).t().contiguous()  # [F, K]
        span = knots[:, -1] - knots[:, 0]
        scale = torch.maximum(span, knots.abs().amax(dim=1))
        self.constant.copy_(span <= 1e-12 * scale)
        gap = (KNOT_GAP * span).unsqueeze(1)
        ramp = gap * torch.arange(self.num_knots, dtype=torch.float64, device=x.device)
        self.knots.copy_(torch.cummax(knots - ramp, dim=1).values + ramp)  # neighbours ≥ gap apart
        self.fitted.fill_(True)

    def collect(self, on: bool) -> None:
        """``on``: the following forward calls record their input and pass it through unchanged (used by
        :func:`~qegraph.tasks.norm_stats.fit_quantile_norms`); ``off``: stop and drop what was recorded."""
        self._collected = [] if on else None

    def collected(self) -> Tensor:
        """The rows recorded since ``collect(True)``."""
        if not self._collected:
            raise QegraphError("QuantileNorm recorded no input: run the model on the fitting data while collecting")
        return torch.cat(self._collected)

    def forward(self, x: Tensor) -> Tensor:
        if self._collected is not None:
            self._collected.append(x.detach())
            return x
        if not bool(self.fitted):
            raise QegraphError(
                "QuantileNorm is not fitted: train through a qegraph task (it fits on the training split at fit "
                "start) or call qegraph.tasks.fit_quantile_norms(model, batches) first")
        if x.dim() != 2 or x.size(1) != self.num_features:
            raise QegraphError(f"QuantileNorm was fitted to {self.num_features} columns, got input {list(x.shape)}")
        knots = self.knots.to(x.dtype)
        k = self.num_knots
        idx = torch.searchsorted(knots, x.t().contiguous()).clamp(1, k - 1)  # [F, n]: knots[idx-1] < x <= knots[idx]
        lo, hi = knots.gather(1, idx - 1), knots.gather(1, idx)
        t = ((x.t() - lo) / (hi - lo).clamp(min=torch.finfo(x.dtype).tiny)).clamp(0, 1)
        u = ((idx - 1).to(x.dtype) + t) * (2 / (k - 1)) - 1
        return u.masked_fill(self.constant.unsqueeze(1), 0).t()

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_knots={self.num_knots}, fitted={bool(self.fitted)}"


__all__ = ["KNOT_GAP", "QuantileNorm"]
