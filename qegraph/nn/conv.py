r"""Strictly equivariant message passing on parameter graphs (the β of DESIGN §1, §5).

One layer maps node features h ∈ R^{N×c} and edge features e ∈ R^{E×c} of the types of
:mod:`qegraph.nn.types` to new features of the same types. With ι(·) the canonicalization (an
invariant), σ the logistic function, W bias-free channel mixing and φ arbitrary MLPs:

**Edge update** (u→v):

.. math::
    e'_{uv} = W_e e_{uv} + e_{uv} \odot \sigma\big(\phi_g[\iota(e_{uv}), \iota(h_u), \iota(h_v)]\big)
              + [e_{uv}\ \text{invariant}]\ \phi_a[\iota(e_{uv}), \iota(h_u), \iota(h_v)]

**Node update** (messages along and against the edge direction, mean aggregation):

.. math::
    z_v = W_s h_v + \frac{1}{|\mathcal N^-(v)|}\sum_{u \to v} e'_{uv} \odot W_f h_u
          + (W_b h_v) \odot \frac{1}{|\mathcal N^+(v)|}\sum_{v \to w} \phi_b[\iota(e'_{vw}), \iota(h_w)]

.. math::
    h'_v = z_v \odot \sigma(\phi_n[\iota(z_v)]) + [v\ \text{invariant}]\ \phi_i[z_v]

Why it is equivariant: e'_{uv} ⊙ W_f h_u has type (q_v/q_u)·q_u = q_v, the type of v; the backward term
is v's own features times an invariant; every gate multiplies a feature by an invariant of the
action, channel mixing has no bias, and only invariant-type features get additive terms. Sum and mean
over neighbours commute with permutations. The same formulas hold for GL features of attention heads
(DESIGN §5): W acts on channels, i.e. H ↦ HΛ commutes with ρH; a message e'_{sv} ⊙ W_f h_s from a
stream unit is a ρ-vector over the head's coordinates, and Σ_j E_O[o, j] ⊙ W_f H_V[j] is invariant;
every gate is computed from block / row pairings (:mod:`qegraph.nn.gl`), so it is the same for all d
coordinates of a head; query→key pairing edges stay zero. SIGN features (h ↦ ±h) are treated like
every other scaled type: linear maps, messages and gates commute with a common sign flip, and their
gates read the magnitude-keeping invariant u ⊙ Sx of :mod:`qegraph.nn.types`, so they see the weight
values, not only their directions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing

from qegraph.nn.context import GraphContext
from qegraph.nn.encoders import mlp
from qegraph.nn.ops import gather_rows, scatter_sum
from qegraph.nn.types import Canonicalizer, FeatureType, edge_invariants, node_invariants


class EquivariantConv(MessagePassing):
    """Strictly G-equivariant edge and node update (formulas in the module docstring)."""

    def __init__(self, channels: int) -> None:
        super().__init__(aggr="sum", flow="source_to_target")
        c = channels
        self.channels = c
        self.canon = Canonicalizer(c)
        self.edge_lin = nn.Linear(c, c, bias=False)
        self.edge_mlp = mlp([3 * c, c, 2 * c])
        self.fwd_lin = nn.Linear(c, c, bias=False)
        self.self_lin = nn.Linear(c, c, bias=False)
        self.bwd_lin = nn.Linear(c, c, bias=False)
        self.bwd_mlp = mlp([2 * c, c, c])
        self.gate_mlp = mlp([c, c, c])
        self.inv_mlp = mlp([c, c, c])

    def forward(self, h: Tensor, e: Tensor, ctx: GraphContext) -> tuple[Tensor, Tensor]:
        # Computed as one fused pass per term (same function as ``edge_update`` / ``message`` with
        # ``propagate``): the first layer of every edge MLP is split into an edge part and node parts
        # projected once per node and gathered, instead of gathering and concatenating [E, 3c] inputs.
        ih = node_invariants(self.canon, h, e, ctx)
        ie = edge_invariants(self.canon, h, e, ctx)
        e = self._edge_step(e, ie, ih, ctx)
        ie = edge_invariants(self.canon, h, e, ctx)
        n, c = ctx.num_nodes, self.channels
        src, dst = ctx.edge_index
        fwd = scatter_sum(e * gather_rows(self.fwd_lin(h), src), dst, n) * ctx.inv_in_deg
        lin1, act, lin2 = self.bwd_mlp[0], self.bwd_mlp[1], self.bwd_mlp[2]
        w = lin1.weight  # input [ι(e'), ι(h_w)]
        node_part = torch.addmm(lin1.bias, ih, w[:, c:].t())
        gates = lin2(act(torch.addmm(gather_rows(node_part, dst), ie, w[:, :c].t())))
        bwd = scatter_sum(gates, src, n) * ctx.inv_out_deg
        z = self.self_lin(h) + fwd + self.bwd_lin(h) * bwd
        return self.node_update(z, e, ctx), e

    def _edge_step(self, e: Tensor, ie: Tensor, ih: Tensor, ctx: GraphContext) -> Tensor:
        """:meth:`edge_update` for all edges (``φ_a`` only evaluated on the invariant edges)."""
        c = self.channels
        src, dst = ctx.edge_index
        lin1, act, lin2 = self.edge_mlp[0], self.edge_mlp[1], self.edge_mlp[2]
        w = lin1.weight  # input [ι(e), ι(h_u), ι(h_v)]
        proj_u = torch.addmm(lin1.bias, ih, w[:, c : 2 * c].t())
        proj_v = ih @ w[:, 2 * c :].t()
        pre = torch.addmm(gather_rows(proj_u, src) + gather_rows(proj_v, dst), ie, w[:, :c].t())
        hidden = act(pre)
        g = F.linear(hidden, lin2.weight[:c], lin2.bias[:c])
        out = torch.addcmul(self.edge_lin(e), e, torch.sigmoid(g))
        if int(FeatureType.INVARIANT) not in ctx.edge_types:
            return out
        w_a, b_a = lin2.weight[c:], lin2.bias[c:]
        if len(ctx.edge_types) == 1:  # every edge invariant
            return out + F.linear(hidden, w_a, b_a)
        inv = ctx.edge_rows.invariant
        return out.index_add(0, inv, F.linear(gather_rows(hidden, inv), w_a, b_a))

    def edge_update(self, e: Tensor, ie: Tensor, ih_i: Tensor, ih_j: Tensor, inv_edge: Tensor) -> Tensor:
        """e' = W_e e + e ⊙ σ(φ_g) + [invariant] φ_a (``_j``: source u, ``_i``: target v)."""
        g, a = self.edge_mlp(torch.cat([ie, ih_j, ih_i], dim=1)).chunk(2, dim=1)
        return self.edge_lin(e) + e * torch.sigmoid(g) + inv_edge.unsqueeze(1) * a

    def message(self, x_j: Tensor | None, w: Tensor) -> Tensor:
        """Forward: e'_uv ⊙ W_f h_u. Backward (reversed index, ``x=None``): the invariant gate itself."""
        return w if x_j is None else w * x_j

    def node_update(self, z: Tensor, e: Tensor, ctx: GraphContext) -> Tensor:
        """h' = z ⊙ σ(φ_n(ι(z))) + [invariant] φ_i(z) (``e``: the updated edges, for GL pairings)."""
        iz = node_invariants(self.canon, z, e, ctx)
        inv = (ctx.node_ftype == FeatureType.INVARIANT).unsqueeze(1)
        return z * torch.sigmoid(self.gate_mlp(iz)) + inv * self.inv_mlp(z)
