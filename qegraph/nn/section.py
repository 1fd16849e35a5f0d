r"""The section and the learned gauge of :class:`~qegraph.nn.QuasiGMN` (DESIGN §1, issue 13).

**Section.** The model reads θ̂ = canonicalize(θ) (:mod:`qegraph.symmetry.canonical`, computed once per
checkpoint by ``ZooDataModule(canonical=True)``, else here, without gradient). For g in the input's
group, canonicalize(g·θ) = π(g)·θ̂ with π(g) in the finite *residual group*: permutations and signs.

**Parities.** Under the residual group a node feature either stays (*even*: every unit but those
below) or flips with a sign variable s (*odd*): a tanh/sin unit (its own s_v), a query/key coordinate
pair (q_i, k_i) of a head (one shared s), a value coordinate (s of (v_i, o_i)). An edge u→v carries
s_u s_v: it is even when both ends are even or share one sign variable (e.g. a residual edge inside a
tied tanh unit), odd otherwise. Every layer keeps these parities (:mod:`qegraph.nn.sign_conv`).

**Learned gauge.** After the section the continuous group G_c still acts, without changing the
function: a positive scale e^{λ_u} per unit that had positive scalings, and per head a positive
diagonal A = diag(e^{λ_i}) on (q_i, k_i) (A^{-T} = diag(e^{−λ_i}) on the keys) and B = diag(e^{μ_i}) on
the values. With λ per node (keys get −λ of their query coordinate),

.. math::
    \tilde x_v = e^{\lambda_v} \hat x_v, \qquad \tilde e_{uv} = e^{\lambda_v - \lambda_u}\, \hat e_{uv},
    \qquad \lambda_v = \lambda_{max} \tanh\big(\gamma(\mathrm{ev}(h_v))\big),

averaged over the nodes of a unit (one element per unit, shared by all channels), where ev(h) is the
even view of the node's features (h, or |h| on odd rows) and γ a small MLP. Since λ depends only on
even features, a(π·θ̂) = π·a(θ̂) and Q(θ) = a(θ̂)·θ̂ satisfies Q(g·θ) = π(g)·Q(θ): the quasi-equivariant
map of the paper's theorem, whose output moves only by the finite residual group. θ̃ computes the same
function as θ; the model chooses which representative it reads. With ``gauge="layers"`` every
message-passing layer ℓ computes its own λ^ℓ from its input features and re-reads the weights as θ̃^ℓ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

from qegraph.graph.parameter_graph import ParameterGraph
from qegraph.graph.types import GLRole, SymKind
from qegraph.symmetry.canonical import canonicalize, is_canonical


def canonical_input(graph: ParameterGraph) -> ParameterGraph:
    """θ̂: ``graph`` itself when it is canonical already (e.g. from ``ZooDataModule(canonical=True)``),
    else its canonical form (computed without gradient)."""
    if is_canonical(graph):
        return graph
    with torch.no_grad():
        return canonicalize(graph)[0]


@dataclass
class SectionContext:
    """Index bookkeeping of one canonical batch, computed once per forward pass."""

    graph: ParameterGraph
    num_nodes: int
    num_graphs: int
    edge_index: Tensor  # [2, E]
    edge_attr: Tensor  # [E, S] the graph's edge values, padded to the batch's widest block
    edge_type: Tensor  # [E] EdgeType
    edge_width: Tensor  # [E] number of values of every edge
    batch: Tensor  # [N]
    node_odd: Tensor  # [N, 1] float: 1 on odd rows
    edge_odd: Tensor  # [E, 1] float
    fixed: Tensor  # [N] bool: node of a FIXED unit group
    inv_in_deg: Tensor  # [N, 1]
    inv_out_deg: Tensor  # [N, 1]
    gauge_id: Tensor  # [N] gauge variable of every node (−1: not gauged)
    gauge_sign: Tensor  # [N, 1] ±1: keys read −λ of their query coordinate
    num_gauges: int
    layer_seg: Tensor  # [N] (graph, depth) segment
    num_layer_seg: int
    layer_seg_graph: Tensor  # [num_layer_seg]
    layer_seg_depth: Tensor  # [num_layer_seg]
    aligned: bool = False  # aligned to a reference: units have consistent positions, every row even
    any_odd: bool = True  # some row is odd (False: every parity operation is the identity and is skipped)

    @classmethod
    def of(cls, graph: ParameterGraph, aligned: bool = False) -> SectionContext:
        """``aligned``: the graph was also aligned to a reference (:mod:`qegraph.nn.alignment`), which
        fixes the residual signs too: every row is then even."""
        n = int(graph.num_nodes)
        ei = graph.edge_index
        dev = ei.device
        batch = getattr(graph, "batch", None)
        num_graphs = 1 if batch is None else int(graph.num_graphs)
        if batch is None:
            batch = torch.zeros(n, dtype=torch.long, device=dev)
        sizes = graph.sym_size
        ptr = torch.cumsum(sizes, 0) - sizes
        slot = ptr[graph.sym_group] + graph.sym_member
        kind = graph.sym_kind[graph.sym_group]
        role = getattr(graph, "gl_role", torch.zeros(n, dtype=torch.long, device=dev))
        coord = getattr(graph, "gl_coord", torch.full((n,), -1, dtype=torch.long, device=dev))
        head = (kind == int(SymKind.HEAD_SIGNS)) & (role > 0)
        # sign variable of every node: slot for SIGN units; (head slot, q/k or v, coordinate) for heads
        dmax = int(coord.max()) + 1 if n else 1
        pair = (role == int(GLRole.VALUE)).long()
        head_var = int(sizes.sum()) + (slot * 2 + pair) * dmax + coord.clamp(min=0)
        sign_var = torch.where(kind == int(SymKind.SIGN), slot, torch.where(head, head_var, -1))
        node_odd = (sign_var >= 0) & (not aligned)
        edge_odd = (sign_var[ei[0]] != sign_var[ei[1]]) & (not aligned)
        # gauge variables: units whose original group had positive scalings; head coordinates
        orig = getattr(graph, "sym_cont", graph.sym_kind)[graph.sym_group]
        scalable = (orig == int(SymKind.SCALE)) | (orig == int(SymKind.NONZERO))
        qk_var = int(sizes.sum()) + (slot * 2) * dmax + coord.clamp(min=0)
        gauged_head = head & (orig == int(SymKind.HEADS))
        gid = torch.where(scalable, slot, torch.where(gauged_head, torch.where(pair.bool(), head_var, qk_var), -1))
        used, gauge_id = torch.unique(gid, return_inverse=True)
        gauge_id = gauge_id - int((used < 0).sum())
        gauge_id = torch.where(gid >= 0, gauge_id, -1)
        gauge_sign = torch.where(role == int(GLRole.KEY), -1.0, 1.0).to(graph.x.dtype).unsqueeze(1)
        one = torch.ones(1, dtype=graph.x.dtype, device=dev)
        in_deg = torch.bincount(ei[1], minlength=n).to(graph.x.dtype)
        out_deg = torch.bincount(ei[0], minlength=n).to(graph.x.dtype)
        depth = graph.layer
        span = int(depth.max()) + 1 if n else 1
        seg_keys, layer_seg = torch.unique(batch * span + depth, return_inverse=True)
        dt = graph.x.dtype
        return cls(
            graph=graph, num_nodes=n, num_graphs=num_graphs, edge_index=ei, batch=batch,
            edge_attr=graph.edge_attr, edge_type=graph.edge_type, edge_width=graph.edge_width,
            node_odd=node_odd.to(dt).unsqueeze(1), edge_odd=edge_odd.to(dt).unsqueeze(1),
            fixed=graph.sym_kind[graph.sym_group] == int(SymKind.FIXED),
            inv_in_deg=(one / in_deg.clamp(min=1)).unsqueeze(1), inv_out_deg=(one / out_deg.clamp(min=1)).unsqueeze(1),
            gauge_id=gauge_id, gauge_sign=gauge_sign, num_gauges=int((used >= 0).sum()),
            layer_seg=layer_seg, num_layer_seg=int(seg_keys.numel()),
            layer_seg_graph=torch.div(seg_keys, span, rounding_mode="floor"), layer_seg_depth=seg_keys % span,
            aligned=aligned, any_odd=bool(node_odd.any()),
        )


def even_view(x: Tensor, odd: Tensor | None) -> Tensor:
    """ev(x): x on even rows, |x| on odd rows (``odd`` [n, 1] float 0/1, or None when no row is odd):
    invariant to the residual signs."""
    return x if odd is None else x + odd * (x.abs() - x)


class LearnedGauge(nn.Module):
    """λ per node from even features (formula in the module docstring): ``(h, ctx) -> λ [N, 1]``."""

    def __init__(self, channels: int, hidden: int = 16, lambda_max: float = 2.0) -> None:
        super().__init__()
        self.lambda_max = lambda_max
        self.gamma = nn.Sequential(nn.Linear(channels, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.gamma[-1].weight)
        nn.init.zeros_(self.gamma[-1].bias)  # starts at the identity gauge: θ̃ = θ̂

    def forward(self, h: Tensor, ctx: SectionContext) -> Tensor:
        if ctx.num_gauges == 0:
            return h.new_zeros(h.size(0), 1)
        raw = self.gamma(even_view(h, ctx.node_odd))  # [N, 1]
        sel = ctx.gauge_id >= 0
        # one value per gauge variable: mean over its nodes (keys enter with −1: λ_K = −λ_Q)
        g = scatter(raw[sel] * ctx.gauge_sign[sel], ctx.gauge_id[sel], dim=0, dim_size=ctx.num_gauges, reduce="mean")
        lam = self.lambda_max * torch.tanh(g)
        out = h.new_zeros(h.size(0), 1)
        out[sel] = lam[ctx.gauge_id[sel]] * ctx.gauge_sign[sel]
        return out


def gauge_weights(x: Tensor, edge_attr: Tensor, lam: Tensor, ctx: SectionContext) -> tuple[Tensor, Tensor]:
    """θ̃ = a·θ̂: x̃_v = e^{λ_v} x̂_v, ẽ_uv = e^{λ_v − λ_u} ê_uv (``lam`` [N, 1])."""
    src, dst = ctx.edge_index
    return x * torch.exp(lam), edge_attr * torch.exp(lam[dst] - lam[src])


__all__ = ["LearnedGauge", "SectionContext", "canonical_input", "even_view", "gauge_weights"]
