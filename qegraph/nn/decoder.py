r"""Equivariant weight-space decoder: hidden features → a ParameterGraph of the input's architecture.

.. math::
    \Delta x_v = m_v \odot \begin{cases} W_x h_v & \text{scaled types (bias-free)} \\
                                         \phi(h_v) & \text{invariant types} \end{cases}
    \qquad
    \Delta a_{uv} = \mathrm{mask}_{uv} \odot \big((e_{uv} \odot T[\tau_{uv}])\, Q_{:S}^\top\big)

(m_v = ``x_mask``; Δa is computed on the batch's padded slots and written back into the ragged edge values
by ``with_features``; "scaled types" are SCALE, NONZERO, SIGN and GL: a bias-free linear map commutes with
h_v ↦ λ_v h_v, so the decoded bias of a SIGN unit flips with σ_v and an edge's decoded weights flip with
σ_v σ_u, like the input's; invalid slots and parameter-free edges stay exactly zero.) Both are strictly
equivariant maps from features to parameters, so decoding the output of quasi-equivariant layers gives
D(F(gθ)) = g′·D(F(θ)): the decoded network is functionally identical to the one decoded from θ.

``delta=True`` returns θ + Δ. Adding θ (transformed by g) to Δ (transformed by g′) would break this, so
the accumulated gauge A(θ) = α_L(θ)⋯α_1(θ) is undone first: since g′ = A(gθ)·g·A(θ)^{-1},
Δ̃ = A(θ)^{-1}·Δ satisfies Δ̃(gθ) = g·Δ̃(θ) (strictly equivariant), and θ + Δ̃ ↦ g(θ + Δ̃).
``delta=False`` returns the decoded weights themselves (quasi-equivariant, g′); embedding tables,
which the decoder does not rewrite, are moved by A(θ) like biases, so they transform by g′ too.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qegraph.errors import QegraphError
from qegraph.graph.parameter_graph import ParameterGraph
from qegraph.graph.types import NODE_SLOTS
from qegraph.nn.context import GraphContext
from qegraph.nn.encoders import NUM_EDGE_TYPES, mlp
from qegraph.nn.gauge import apply_node_scales
from qegraph.nn.gl import apply_gl_blocks
from qegraph.nn.types import FeatureType


class WeightDecoder(nn.Module):
    """``(h, e) -> ParameterGraph`` with new weights (``delta=False``) or θ + ΔW (``delta=True``)."""

    def __init__(self, channels: int, max_slots: int = 64, delta: bool = True, init_scale: float = 0.01) -> None:
        super().__init__()
        s = len(NODE_SLOTS)
        self.delta = delta
        self.max_slots = max_slots
        self.node_lin = nn.Linear(channels, s, bias=False)
        self.node_inv = mlp([channels, channels, s])
        self.edge_type = nn.Embedding(NUM_EDGE_TYPES, channels)
        self.slots = nn.Parameter(init_scale * torch.randn(max_slots, channels) / channels**0.5)
        nn.init.normal_(self.edge_type.weight, mean=1.0, std=0.1)
        with torch.no_grad():
            self.node_lin.weight.mul_(init_scale)
            self.node_inv[-1].weight.mul_(init_scale)
            self.node_inv[-1].bias.zero_()

    def forward(
        self, h: Tensor, e: Tensor, ctx: GraphContext, gauge: tuple[Tensor, list[Tensor]] | None
    ) -> ParameterGraph:
        """``gauge``: the accumulated α (scale per node, ρ per head block; ``None`` for a strict backbone)."""
        g = ctx.graph
        num_slots = ctx.edge_attr.size(1)
        if num_slots > self.max_slots:
            raise QegraphError(f"edges have {num_slots} slots, the decoder was built for max_slots={self.max_slots}")
        inv = (ctx.node_ftype == FeatureType.INVARIANT).unsqueeze(1)
        dx = torch.where(inv, self.node_inv(h), self.node_lin(h)) * g.x_mask
        de = ((e * self.edge_type(ctx.edge_type)) @ self.slots[:num_slots].T) * ctx.edge_mask
        if not self.delta:
            out = g.with_features(x=dx, edge_attr=de)
            if gauge is not None and getattr(g, "emb_attr", None) is not None and g.emb_attr.numel():
                out.emb_attr = g.emb_attr * gauge[0][table_nodes(g)]  # tables move like biases: A(θ)·E
            return out
        if gauge is not None:
            scale, mats = gauge
            if mats:
                dx, de = apply_gl_blocks(dx, de, ctx.gl, [torch.linalg.inv(m) for m in mats])
            dx, de = apply_node_scales(dx, de, 1 / scale, ctx)
        return g.with_features(x=g.x + dx, edge_attr=ctx.edge_attr + de)


def table_nodes(g: ParameterGraph) -> Tensor:
    """``[K]`` the EMBED node of every entry of ``emb_attr`` (entry [r, c] of table t: etable_node + c)."""
    sizes = g.etable_rows * g.etable_cols
    t = torch.repeat_interleave(torch.arange(sizes.numel(), device=sizes.device), sizes)
    k = torch.arange(int(sizes.sum()), device=sizes.device)
    return g.etable_node[t] + (k - g.etable_start[t]) % g.etable_cols[t]
