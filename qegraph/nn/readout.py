r"""Strictly invariant readout (DESIGN §5).

Canonicalize every unit (ι of :mod:`qegraph.nn.types`: x/‖x‖, u ⊙ Pu, u ⊙ Sx for sign-only units, or
the feature itself),
pool over the permutable units of each layer, keep fixed units by position, then an MLP:

.. math::
    z_\ell = \phi_\ell\Big(\frac{1}{|L_\ell|}\sum_{v \in L_\ell} \phi_u(\iota(h_v))
                 + \mathrm{PE}(\ell)\Big), \qquad
    z_{fix} = \sum_{v\ \text{fixed}} \phi_f\big(\iota(h_v) + \mathrm{PE}(p_v) + E[t_v]\big)

.. math::
    y = \phi_{out}\Big[\textstyle\sum_\ell z_\ell,\ z_{fix}\Big]

With ``norm=True`` the readout vector [Σ_ℓ z_ℓ, z_fix] passes a ``BatchNorm1d(affine=False)`` before
φ_out. It acts on invariants only, so invariance stays exact (in eval mode it is a fixed affine map).
It matters when the networks of a zoo are close to each other (e.g. INRs fitted from one shared
initialisation): their readout vectors then differ by ~1e-5 of their common part, and φ_out at its
initial scale cannot separate them. Its running moments lag behind training; re-estimate them over
the training set (``momentum=None``, one pass in train mode) before evaluating.

L_ℓ is the set of non-fixed nodes of one graph at depth ℓ. Every term is a function of invariants, and
sums over permutable units are permutation invariant; fixed units are distinguished by their position
p_v and node type (input / output), so no information about their order is lost.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

from qegraph.nn.context import GraphContext
from qegraph.nn.encoders import NUM_NODE_TYPES, PositionEncoding, mlp
from qegraph.nn.types import Canonicalizer, node_invariants


class InvariantReadout(nn.Module):
    """``h[N, c] -> y[num_graphs, out_dim]``, exactly G-invariant."""

    def __init__(self, channels: int, out_dim: int, hidden: int | None = None, norm: bool = False) -> None:
        super().__init__()
        c, k = channels, hidden or channels
        self.norm: nn.Module = nn.BatchNorm1d(2 * k, affine=False) if norm else nn.Identity()
        self.canon = Canonicalizer(c)
        self.unit = mlp([c, k, k])
        self.layer = mlp([k, k, k])
        self.depth = PositionEncoding(k)
        self.fixed = mlp([c, k, k])
        self.pos = PositionEncoding(c)
        self.node_type = nn.Embedding(NUM_NODE_TYPES, c)
        self.out = mlp([2 * k, k, out_dim])

    def forward(self, h: Tensor, e: Tensor, ctx: GraphContext) -> Tensor:
        g = ctx.graph
        ih = node_invariants(self.canon, h, e, ctx)
        free = ~ctx.fixed
        seg = ctx.layer_seg[free]
        pooled = scatter(self.unit(ih[free]), seg, dim=0, dim_size=ctx.num_layer_seg, reduce="mean")
        present = torch.bincount(seg, minlength=ctx.num_layer_seg) > 0
        depth = scatter(g.layer[free], seg, dim=0, dim_size=ctx.num_layer_seg, reduce="max")
        z_layer = self.layer(pooled + self.depth(depth)) * present.unsqueeze(1)
        z_hidden = scatter(z_layer, ctx.layer_seg_graph, dim=0, dim_size=ctx.num_graphs, reduce="sum")
        fix = ctx.fixed
        zf = self.fixed(ih[fix] + self.pos(g.io_pos[fix]) + self.node_type(g.node_type[fix]))
        z_fixed = scatter(zf, ctx.batch[fix], dim=0, dim_size=ctx.num_graphs, reduce="sum")
        return self.out(self.norm(torch.cat([z_hidden, z_fixed], dim=1)))
