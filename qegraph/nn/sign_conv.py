r"""Message passing on the canonical section: unconstrained on even rows, odd-equivariant on odd rows.

After the section (:mod:`qegraph.nn.section`) only the finite residual group acts: permutations, and
sign variables s on the odd rows (tanh/sin units, head coordinate pairs). With ev(x) the even view
(x, or |x| on odd rows), W bias-free channel maps, φ arbitrary MLPs (additive biases, any activation),
ρ the gauged weights of this layer (θ̃^ℓ, encoded bias-free) and [even] the indicator of even rows:

**Edge update** (u→v, residual):

.. math::
    z_{uv} = \mathrm{SiLU}\big(A\,\mathrm{ev}(e_{uv}) + P_u \mathrm{ev}(h_u) + P_v \mathrm{ev}(h_v) + b\big),
    \qquad
    e'_{uv} = e_{uv} + \rho_{uv} + W_e e_{uv} \odot \sigma(G z_{uv}) + [e_{uv}\ \text{even}]\ (A_2 z_{uv} + b_2)

**Node update** (messages along and against the edges, mean aggregation; the even edge states z are
aggregated too and mapped per node):

.. math::
    m_v = \frac{1}{|\mathcal N^-(v)|}\sum_{u \to v} e'_{uv} \odot W_f h_u
        + \frac{1}{|\mathcal N^+(v)|}\sum_{v \to w} e'_{vw} \odot W_b h_w, \qquad
    n_v = \Big[\frac{1}{|\mathcal N^-(v)|}\sum_{u \to v} z_{uv},\ \frac{1}{|\mathcal N^+(v)|}\sum_{v \to w} z_{vw}\Big]

.. math::
    h'_v = h_v + (W_s h_v + m_v) \odot \sigma\big(\phi_s[\mathrm{ev}(W_s h_v + m_v), n_v]\big)
           + [v\ \text{even}]\ \phi_n[h_v, m_v, n_v]

followed by an RMS normalization over channels without bias (x / rms(x) · γ, odd if x is odd).

Why it respects the residual group: e'_{uv} carries s_u s_v and W_f h_u carries s_u, so their
product carries s_v — the type of v — whatever the parities (the same for the backward message);
gates σ(·) and n_v are functions of even views only; additive terms φ_a, φ_n, biases and any
nonlinearity appear only on even rows, where they are unconstrained (the scale type of the strict
model no longer exists after the section). Sums and means over neighbours commute with permutations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qegraph.nn.encoders import mlp
from qegraph.nn.ops import gather_rows, scatter_sum
from qegraph.nn.section import SectionContext, even_view


class OddRMSNorm(nn.Module):
    """x / rms(x) · γ over channels (no bias, so odd rows stay odd); rows that are exactly 0 stay 0."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class SignEquivariantConv(nn.Module):
    """One layer of the section model (formulas in the module docstring): ``(h, e, ρ, ctx) -> (h', e')``.

    Per edge it costs four c×c matrix products (A, W_e, and G, A_2 as one); every MLP runs per node."""

    def __init__(self, channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        c = channels
        self.channels = c
        self.edge_in = nn.Linear(c, c)
        self.node_u = nn.Linear(c, c, bias=False)
        self.node_v = nn.Linear(c, c, bias=False)
        self.edge_out = nn.Linear(c, 2 * c)
        self.edge_lin = nn.Linear(c, c, bias=False)
        self.fwd_lin = nn.Linear(c, c, bias=False)
        self.bwd_lin = nn.Linear(c, c, bias=False)
        self.self_lin = nn.Linear(c, c, bias=False)
        self.node_gate = mlp([3 * c, c, c])
        self.node_add = mlp([4 * c, c, c])
        self.node_norm = OddRMSNorm(c)
        self.edge_norm = OddRMSNorm(c)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: Tensor, e: Tensor, rho: Tensor | None, ctx: SectionContext) -> tuple[Tensor, Tensor]:
        c = self.channels
        src, dst = ctx.edge_index
        n = ctx.num_nodes
        node_odd, edge_odd = (ctx.node_odd, ctx.edge_odd) if ctx.any_odd else (None, None)
        eh = even_view(h, node_odd)
        z = F.silu(self.edge_in(even_view(e, edge_odd)) + gather_rows(self.node_u(eh), src)
                   + gather_rows(self.node_v(eh), dst))
        gate, add = self.edge_out(z).split(c, dim=1)
        add = self.dropout(add)
        e_new = torch.addcmul(e + (add if edge_odd is None else (1 - edge_odd) * add), self.edge_lin(e),
                              torch.sigmoid(gate))
        if rho is not None:
            e_new = e_new + rho
        e_new = self.edge_norm(e_new)
        m = scatter_sum(e_new * gather_rows(self.fwd_lin(h), src), dst, n) * ctx.inv_in_deg
        m = m + scatter_sum(e_new * gather_rows(self.bwd_lin(h), dst), src, n) * ctx.inv_out_deg
        nz = torch.cat([scatter_sum(z, dst, n) * ctx.inv_in_deg, scatter_sum(z, src, n) * ctx.inv_out_deg], 1)
        zn = self.self_lin(h) + m
        gate_n = torch.sigmoid(self.node_gate(torch.cat([even_view(zn, node_odd), nz], 1)))
        add_n = self.dropout(self.node_add(torch.cat([h, m, nz], 1)))
        h_new = torch.addcmul(h + (add_n if node_odd is None else (1 - node_odd) * add_n), zn, gate_n)
        return self.node_norm(h_new), e_new


__all__ = ["OddRMSNorm", "SignEquivariantConv"]
