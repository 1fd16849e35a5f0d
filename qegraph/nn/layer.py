r"""A quasi-equivariant layer F(θ) = α(θ)·β(θ) (DESIGN §1).

β is the strictly equivariant :class:`~qegraph.nn.conv.EquivariantConv`, α the
:class:`~qegraph.nn.gauge.QuasiGauge` evaluated on β's output. For every g in the input's group,

.. math::
    F(g\theta) = g'\,F(\theta), \qquad g' = \alpha(g\theta)\, g\, \alpha(\theta)^{-1} \in G,

which :func:`qegraph.testing.assert_quasi_equivariant` checks with g′ built explicitly. With
``gauge=False`` the layer is β alone (strictly equivariant, g′ = g) with otherwise identical parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qegraph.graph.types import GLRole
from qegraph.nn.context import GraphContext
from qegraph.nn.conv import EquivariantConv
from qegraph.nn.gauge import QuasiGauge
from qegraph.symmetry.group import GroupElement


class QuasiLayer(nn.Module):
    """``(h, e) -> (h', e', gauge)``; gauge = (s per node, ρ per head block) applied by α, ``None``
    without gauge."""

    def __init__(self, channels: int, *, gauge: bool = True, epsilon_max: float = 0.5, gauge_hidden: int = 8,
                 epsilon: float | None = None) -> None:
        super().__init__()
        self.beta = EquivariantConv(channels)
        self.gauge = QuasiGauge(channels, gauge_hidden, epsilon_max, epsilon=epsilon) if gauge else None

    def forward(
        self, h: Tensor, e: Tensor, ctx: GraphContext
    ) -> tuple[Tensor, Tensor, tuple[Tensor, list[Tensor]] | None]:
        h, e = self.beta(h, e, ctx)
        if self.gauge is None:
            return h, e, None
        h, e, s, mats = self.gauge(h, e, ctx)
        return h, e, (s, mats)

    def alpha(self, h: Tensor, e: Tensor, ctx: GraphContext) -> GroupElement:
        """α(θ) for the layer input θ = (h, e), as an element of the batch's group (identity permutation)."""
        ident = ctx.group.identity()
        if self.gauge is None:
            return ident
        hb, _ = self.beta(h, e, ctx)
        scale = self.gauge.slot_scales(hb, ctx).detach().to(torch.float64).cpu()
        gl: dict[int, tuple[Tensor, Tensor]] = {}
        if ctx.gl is not None:
            for r, m in zip(ctx.gl.rows, self.gauge.gl_matrices(hb, ctx)):
                for b in range(r.role.numel()):
                    j, head, role = int(r.group[b]), int(r.head[b]), int(r.role[b])
                    if role == int(GLRole.KEY):
                        continue  # A^{-T} is determined by the query block's A
                    dims = ctx.group.head_dims[j]
                    a, bm = gl.setdefault(j, (_eyes(int(ctx.group.sizes[j]), dims, GLRole.QUERY, GLRole.KEY),
                                              _eyes(int(ctx.group.sizes[j]), dims, GLRole.VALUE, GLRole.VALUE)))
                    (a if role == int(GLRole.QUERY) else bm)[head] = m[b].detach().to(torch.float64).cpu()
        return GroupElement(ctx.group, ident.perm, scale, gl)


def _eyes(n: int, dims: dict[int, int], role: GLRole, alt: GLRole) -> Tensor:
    d = dims.get(int(role), dims.get(int(alt), 0))
    return torch.eye(d, dtype=torch.float64).repeat(n, 1, 1)
