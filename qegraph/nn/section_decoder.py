r"""Weight-space output on the canonical section (issue 13): decode in the canonical frame, map back with κ.

.. math::
    \hat\theta, \kappa = \mathrm{canonicalize}(\theta), \qquad
    \Delta\hat x_v = m_v \odot \begin{cases} \phi_x(h_v) & v\ \text{even} \\ W_x h_v & v\ \text{odd} \end{cases},
    \qquad
    \Delta\hat a_{uv} = \mathrm{mask}_{uv} \odot \Big( (e_{uv} \odot T[\tau_{uv}])\, Q^\top
        + [\text{even}]\ \phi_e(e_{uv})\, Q'^\top \Big)_{:S}

.. math::
    F(\theta) = \kappa \cdot (\hat\theta + \Delta\hat\theta) \quad (\texttt{delta=True}), \qquad
    F(\theta) = \kappa \cdot \Delta\hat\theta \quad (\texttt{delta=False}).

m_v is ``x_mask``; odd rows (residual sign units) are decoded by bias-free linear maps, so Δθ̂ moves with
the residual group exactly like θ̂: for g in the input's group, θ̂(gθ) = π θ̂(θ), κ(gθ) = g κ(θ) π⁻¹ and
Δθ̂(gθ) = π Δθ̂(θ), hence F(gθ) = g·F(θ): functionally identical inputs give functionally identical
outputs (``qegraph.testing.assert_functional_identity_preserved``). The output is an ordinary graph of
the input's architecture and group (:func:`~qegraph.symmetry.canonical.from_canonical`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qegraph.errors import QegraphError
from qegraph.graph.parameter_graph import ParameterGraph
from qegraph.graph.types import NODE_SLOTS
from qegraph.nn.encoders import NUM_EDGE_TYPES, mlp
from qegraph.nn.ops import gather_rows
from qegraph.nn.quasi import SectionBackbone
from qegraph.nn.section import SectionContext
from qegraph.symmetry.canonical import canonicalize, from_canonical, is_canonical


class SectionDecoder(nn.Module):
    """``(h, e) -> (Δx [N, 5], Δa [E, S])`` in the canonical frame (formula in the module docstring)."""

    def __init__(self, channels: int, max_slots: int, init_scale: float = 0.01) -> None:
        super().__init__()
        s = len(NODE_SLOTS)
        self.max_slots = max_slots
        self.node_even = mlp([channels, channels, s])
        self.node_odd = nn.Linear(channels, s, bias=False)
        self.edge_type = nn.Embedding(NUM_EDGE_TYPES, channels)
        self.edge_even = mlp([channels, channels, channels])
        self.slots = nn.Parameter(init_scale * torch.randn(max_slots, channels) / channels**0.5)
        self.slots_even = nn.Parameter(init_scale * torch.randn(max_slots, channels) / channels**0.5)
        nn.init.normal_(self.edge_type.weight, mean=1.0, std=0.1)
        with torch.no_grad():
            self.node_odd.weight.mul_(init_scale)
            self.node_even[-1].weight.mul_(init_scale)
            self.node_even[-1].bias.zero_()

    def forward(self, h: Tensor, e: Tensor, g: ParameterGraph, ctx: SectionContext) -> tuple[Tensor, Tensor]:
        s = g.num_slots
        if s > self.max_slots:
            raise QegraphError(f"edges have {s} slots, the decoder was built for max_slots={self.max_slots}")
        dx = (self.node_even(h) + ctx.node_odd * (self.node_odd(h) - self.node_even(h))) * g.x_mask
        lin = (e * gather_rows(self.edge_type.weight, ctx.edge_type)) @ self.slots[:s].T
        even = self.edge_even(e) @ self.slots_even[:s].T
        mask = torch.arange(s, device=e.device).unsqueeze(0) < ctx.edge_width.unsqueeze(1)
        da = (lin + (1 - ctx.edge_odd) * even) * mask
        return dx, da


class WeightSpaceGMN(nn.Module):
    """Weight-space metanetwork on the section: ``model(graph) -> ParameterGraph`` (module docstring).

    Args: ``hidden_dim``, ``num_layers``, ``gauge`` (as :class:`~qegraph.nn.QuasiGMN`), ``delta``
    (return θ + Δ, else the decoded weights), ``max_slots``, ``dropout``."""

    def __init__(self, *, hidden_dim: int = 64, num_layers: int = 3, gauge: str = "layers", delta: bool = True,
                 max_slots: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        self.delta = delta
        self.backbone = SectionBackbone(hidden_dim, num_layers, gauge, max_slots, dropout)
        self.decoder = SectionDecoder(hidden_dim, max_slots)

    def forward(self, graph: ParameterGraph) -> ParameterGraph:
        if is_canonical(graph):
            raise QegraphError("WeightSpaceGMN takes raw graphs (it canonicalizes them and maps its output back)")
        with torch.no_grad():
            g, kappa = canonicalize(graph)
        ctx = SectionContext.of(g)
        h, e, _ = self.backbone(g, ctx)
        dx, da = self.decoder(h, e, g, ctx)
        out = g.with_features(x=g.x + dx, edge_attr=ctx.edge_attr + da) if self.delta else g.with_features(x=dx, edge_attr=da)
        return from_canonical(out, kappa)


__all__ = ["SectionDecoder", "WeightSpaceGMN"]
