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

A monotone map per column of invariant features keeps them invariant, and the map is continuous: knots
are kept strictly increasing (neighbours at least ``KNOT_GAP`` of the column's range apart), the knots stay
float64 whatever the module is cast to, and the map is evaluated in float64, so inputs that agree to
round-off give outputs that agree to round-off times the slope (2 / ((K − 1) · gap)). A column whose
fitting values agree to ``CONSTANT_RTOL`` of their magnitude — round-off, not a difference between
networks — maps to 0, so round-off is never stretched over [−1, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from qegraph.errors import QegraphError

#: the smallest gap between neighbouring knots, relative to the column's range over the fitting set
KNOT_GAP = 1e-4
#: columns whose range over the fitting set is at most this fraction of their magnitude are constant (→ 0)
CONSTANT_RTOL = 1e-8


class QuantileNorm(nn.Module):
    r"""Per-column empirical-CDF map to [−1, 1], fitted once with :meth:`fit` (details in the module docstring):

    .. math::
        \mathrm{QN}(x)_j = \frac{2\,(k + t)}{K - 1} - 1, \qquad
        t = \mathrm{clamp}\Big(\frac{x_j - q_{jk}}{q_{j,k+1} - q_{jk}}, 0, 1\Big), \quad q_{jk} < x_j \le q_{j,k+1}.

    Args:
        num_features: number of columns (``None``: taken from the data at :meth:`fit`, or from a state dict).
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

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> QuantileNorm:
        """``.to(device)`` moves the knots; dtype casts (``.float()``, ``.half()``, precision plugins) leave
        them float64 (rounded knots would merge and make the map jump)."""
        knots = self.knots
        super()._apply(fn, recurse)
        self.knots = knots.to(self.fitted.device)
        return self

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object, **kwargs: object) -> None:
        knots = state_dict.get(prefix + "knots")
        if knots is not None and self.knots.numel() == 0 and knots.numel():  # an unsized module takes the width
            self._resize(knots.size(0))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def fit(self, x: Tensor) -> None:
        """Set the knots to the quantiles of the rows of ``x`` ``[n ≥ 1, num_features]``."""
        width = self.num_features if self.num_features is not None else (x.size(1) if x.dim() == 2 else -1)
        if x.dim() != 2 or x.size(1) != width or x.size(0) == 0 or width < 1:
            raise QegraphError(f"QuantileNorm.fit needs a [n >= 1, {self.num_features or 'F >= 1'}] tensor, "
                               f"got {list(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise QegraphError("QuantileNorm.fit: the fitting features contain NaN or inf")
        if self.num_features is None:
            self._resize(width)
        x = x.detach().to(self.knots.device, torch.float64)
        # linear-interpolation quantiles of every column (torch.quantile refuses inputs over 2^24 values)
        srt = x.sort(dim=0).values
        pos = torch.linspace(0, x.size(0) - 1, self.num_knots, dtype=torch.float64, device=x.device)
        lo = pos.floor().long()
        hi = (lo + 1).clamp(max=x.size(0) - 1)
        frac = (pos - lo).unsqueeze(1)
        knots = (srt[lo] * (1 - frac) + srt[hi] * frac).t().contiguous()  # [F, K]
        span = knots[:, -1] - knots[:, 0]
        self.constant.copy_(span <= CONSTANT_RTOL * knots.abs().amax(dim=1))
        gap = (KNOT_GAP * span).unsqueeze(1)
        ramp = gap * torch.arange(self.num_knots, dtype=torch.float64, device=x.device)
        self.knots.copy_(torch.cummax(knots - ramp, dim=1).values + ramp)  # neighbours ≥ gap apart
        self.fitted.fill_(True)

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Within the block, forward calls record their input and pass it through unchanged (used by
        :func:`~qegraph.tasks.norm_stats.fit_quantile_norms`); :meth:`collected` returns what was recorded
        until the block ends, whatever ends it."""
        self._collected = []
        try:
            yield
        finally:
            self._collected = None

    def collected(self) -> Tensor:
        """The rows recorded so far inside :meth:`recording`."""
        if not self._collected:
            raise QegraphError("QuantileNorm recorded no input: run the model on the fitting data while recording")
        return torch.cat(self._collected)

    def forward(self, x: Tensor) -> Tensor:
        """``x [n, num_features]`` → QN(x) in [−1, 1], in ``x``'s dtype (computed in float64)."""
        if self._collected is not None:
            self._collected.append(x.detach())
            return x
        if not bool(self.fitted):
            raise QegraphError(
                "QuantileNorm is not fitted: train through a qegraph task with a datamodule (it fits on the "
                "training split at fit start) or call qegraph.tasks.fit_quantile_norms(model, batches) first")
        if x.dim() != 2 or x.size(1) != self.num_features:
            raise QegraphError(f"QuantileNorm was fitted to {self.num_features} columns, got input {list(x.shape)}")
        k = self.num_knots
        xt = x.t().to(torch.float64).contiguous()
        idx = torch.searchsorted(self.knots, xt).clamp(1, k - 1)  # [F, n]: knots[idx-1] < x <= knots[idx]
        lo, hi = self.knots.gather(1, idx - 1), self.knots.gather(1, idx)
        t = ((xt - lo) / (hi - lo).clamp(min=torch.finfo(torch.float64).tiny)).clamp(0, 1)
        u = ((idx - 1).to(torch.float64) + t) * (2 / (k - 1)) - 1
        return u.masked_fill(self.constant.unsqueeze(1), 0).t().to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_knots={self.num_knots}, fitted={bool(self.fitted)}"


__all__ = ["CONSTANT_RTOL", "KNOT_GAP", "QuantileNorm"]
