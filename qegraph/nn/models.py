"""Strictly equivariant metanetworks and the paper's α·β construction: encoder → L × [β, α] → head.

* :class:`StrictGMN`: strictly G-equivariant layers β (every layer commutes with the whole group of the
  input: permutations, scalings, signs, per-head GL) and the invariant readout; exactly invariant.
* :class:`AlphaBetaGMN`: the construction of the Quasi-Equivariant Metanetworks paper, F = α(θ)·β(θ)
  with a learned gauge α after every β. Exactly invariant, but **inert** for an invariant head: α
  commutes through every later G-equivariant layer and the readout removes it, so it computes the
  same function class as StrictGMN (``docs/nn.md``; the ε ablation in ``docs/results.md``). Kept for
  ablations; the model of this package is :class:`qegraph.nn.QuasiGMN` (learned gauges on the
  canonical section, :mod:`qegraph.nn.quasi`).
* :class:`PermGMN`: every unit treated as invariant type (permutation equivariance only; the
  GMN-style baseline). It is *not* invariant to scalings or sign flips.
* :class:`AlphaBetaWeightSpaceGMN`: the α·β (``gauge=True``) or strict (``gauge=False``) backbone with
  the equivariant weight decoder, returning a ParameterGraph of the input's architecture
  (functionally identical outputs for functionally identical inputs).

All are configured by keyword arguments (Lightning CLI friendly) and take a ParameterGraph or a PyG
batch of any mix of architectures.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from qegraph.errors import QegraphError
from qegraph.graph.parameter_graph import ParameterGraph
from qegraph.nn.context import GraphContext
from qegraph.nn.decoder import WeightDecoder
from qegraph.nn.encoders import EdgeEncoder, NodeEncoder
from qegraph.nn.layer import QuasiLayer
from qegraph.nn.readout import InvariantReadout


@dataclass
class Features:
    """Backbone output: node / edge features, the batch context and the accumulated gauge
    A(θ) = α_L(θ)⋯α_1(θ): scale per node and ρ per head block (``None`` for a strict backbone)."""

    h: Tensor
    e: Tensor
    ctx: GraphContext
    gauge: tuple[Tensor, list[Tensor]] | None


class GMNBackbone(nn.Module):
    """Encoder and ``num_layers`` quasi-equivariant (or strict) message-passing layers."""

    def __init__(
        self,
        *,
        hidden_dim: int = 64,
        num_layers: int = 4,
        gauge: bool = True,
        perm_only: bool = False,
        epsilon_max: float = 0.5,
        gauge_hidden: int = 8,
        max_slots: int = 64,
        epsilon: float | None = None,
    ) -> None:
        super().__init__()
        if perm_only and gauge:
            raise QegraphError("perm_only treats every unit as invariant: there is no continuous group for a gauge")
        if hidden_dim < 1 or num_layers < 0:
            raise QegraphError(f"need hidden_dim >= 1 and num_layers >= 0, got {hidden_dim}, {num_layers}")
        self.perm_only = perm_only
        self.node_encoder = NodeEncoder(hidden_dim)
        self.edge_encoder = EdgeEncoder(hidden_dim, max_slots)
        self.layers = nn.ModuleList(
            QuasiLayer(hidden_dim, gauge=gauge, epsilon_max=epsilon_max, gauge_hidden=gauge_hidden, epsilon=epsilon)
            for _ in range(num_layers)
        )

    def forward(self, graph: ParameterGraph) -> Features:
        ctx = GraphContext.from_graph(graph, perm_only=self.perm_only)
        h, e = self.node_encoder(ctx), self.edge_encoder(ctx)
        total: tuple[Tensor, list[Tensor]] | None = None
        for layer in self.layers:
            h, e, a = layer(h, e, ctx)
            if a is not None:
                total = a if total is None else (a[0] * total[0], [m @ t for m, t in zip(a[1], total[1])])
        return Features(h, e, ctx, total)


class _InvariantGMN(nn.Module):
    """Backbone + invariant readout: ``model(batch) -> [num_graphs, out_dim]``."""

    def __init__(
        self,
        *,
        out_dim: int,
        hidden_dim: int,
        num_layers: int,
        gauge: bool,
        perm_only: bool,
        epsilon_max: float,
        gauge_hidden: int,
        readout_hidden: int | None,
        max_slots: int,
        epsilon: float | None = None,
        readout_norm: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = GMNBackbone(
            hidden_dim=hidden_dim, num_layers=num_layers, gauge=gauge, perm_only=perm_only,
            epsilon_max=epsilon_max, gauge_hidden=gauge_hidden, max_slots=max_slots, epsilon=epsilon,
        )
        self.readout = InvariantReadout(hidden_dim, out_dim, readout_hidden, norm=readout_norm)

    def forward(self, graph: ParameterGraph) -> Tensor:
        f = self.backbone(graph)
        return self.readout(f.h, f.e, f.ctx)


class AlphaBetaGMN(_InvariantGMN):
    """The paper's F = α·β construction with an exactly invariant head (inert for it: see the module
    docstring). ``gauge=False``: α off;
    ``epsilon``: a fixed gauge strength ε ∈ (0, 1) instead of the learned ε ∈ (0, ``epsilon_max``);
    ``readout_norm``: standardize the invariant readout vector (see :class:`InvariantReadout`)."""

    def __init__(
        self,
        *,
        out_dim: int = 1,
        hidden_dim: int = 64,
        num_layers: int = 4,
        gauge: bool = True,
        epsilon_max: float = 0.5,
        epsilon: float | None = None,
        gauge_hidden: int = 8,
        readout_hidden: int | None = None,
        max_slots: int = 64,
        readout_norm: bool = False,
    ) -> None:
        super().__init__(out_dim=out_dim, hidden_dim=hidden_dim, num_layers=num_layers, gauge=gauge, perm_only=False,
                         epsilon_max=epsilon_max, gauge_hidden=gauge_hidden, readout_hidden=readout_hidden,
                         max_slots=max_slots, epsilon=epsilon, readout_norm=readout_norm)


class StrictGMN(_InvariantGMN):
    """The strictly equivariant model: :class:`AlphaBetaGMN` with α off (same parameters otherwise)."""

    def __init__(self, *, out_dim: int = 1, hidden_dim: int = 64, num_layers: int = 4,
                 readout_hidden: int | None = None, max_slots: int = 64, readout_norm: bool = False) -> None:
        super().__init__(out_dim=out_dim, hidden_dim=hidden_dim, num_layers=num_layers, gauge=False, perm_only=False,
                         epsilon_max=0.5, gauge_hidden=8, readout_hidden=readout_hidden, max_slots=max_slots,
                         readout_norm=readout_norm)


class PermGMN(_InvariantGMN):
    """GMN-style baseline: every unit has invariant type (permutation-equivariant only)."""

    def __init__(self, *, out_dim: int = 1, hidden_dim: int = 64, num_layers: int = 4,
                 readout_hidden: int | None = None, max_slots: int = 64, readout_norm: bool = False) -> None:
        super().__init__(out_dim=out_dim, hidden_dim=hidden_dim, num_layers=num_layers, gauge=False, perm_only=True,
                         epsilon_max=0.5, gauge_hidden=8, readout_hidden=readout_hidden, max_slots=max_slots,
                         readout_norm=readout_norm)


class AlphaBetaWeightSpaceGMN(nn.Module):
    """Backbone + :class:`~qegraph.nn.decoder.WeightDecoder`: ``model(batch) -> ParameterGraph`` (θ + ΔW
    with ``delta=True``, new weights otherwise)."""

    def __init__(
        self,
        *,
        hidden_dim: int = 64,
        num_layers: int = 4,
        gauge: bool = True,
        delta: bool = True,
        epsilon_max: float = 0.5,
        epsilon: float | None = None,
        gauge_hidden: int = 8,
        max_slots: int = 64,
    ) -> None:
        super().__init__()
        self.backbone = GMNBackbone(hidden_dim=hidden_dim, num_layers=num_layers, gauge=gauge,
                                    epsilon_max=epsilon_max, gauge_hidden=gauge_hidden, max_slots=max_slots,
                                    epsilon=epsilon)
        self.decoder = WeightDecoder(hidden_dim, max_slots, delta=delta)

    def forward(self, graph: ParameterGraph) -> ParameterGraph:
        f = self.backbone(graph)
        return self.decoder(f.h, f.e, f.ctx, f.gauge)
