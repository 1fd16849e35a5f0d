r"""QuasiGMN: learned gauges on the canonical section, unconstrained message passing (DESIGN §1, §5).

.. math::
    \hat\theta = \mathrm{canonicalize}(\theta), \qquad
    h^0, e^0 = \mathrm{Enc}(\hat\theta), \qquad
    \tilde\theta^\ell = a_\ell(h^\ell)\cdot\hat\theta, \qquad
    (h^{\ell+1}, e^{\ell+1}) = \mathrm{Conv}_\ell\big(h^\ell, e^\ell, \mathrm{Enc}_\ell(\tilde\theta^\ell)\big),

.. math::
    y = \phi_{out}\big[\mathrm{Pool}(h^L)\big] + \psi\Big(N\big(\mathrm{stats}(\hat\theta)\big)\Big),

N a per-column standardization (BatchNorm moments) or the training CDF (``stats_transform="quantile"``).

The section (:func:`~qegraph.symmetry.canonical.canonicalize`) turns the group of the raw network into
the finite residual group; the learned gauges a_ℓ (:class:`~qegraph.nn.section.LearnedGauge`) pick,
per layer, which representative of the orbit the layer reads (``gauge="layers"``; ``"input"``: one
gauge before the first layer; ``"none"``: the section only); the layers
(:class:`~qegraph.nn.sign_conv.SignEquivariantConv`) are unconstrained MLP message passing on even
rows and odd-equivariant on the residual sign rows; the readout pools even views per layer, keeps
fixed units by position, and adds the per-layer statistics of θ̂ as a skip path straight to the head
(:mod:`qegraph.nn.canonical_stats`). Every piece respects the residual group, and canonicalize(g·θ) =
π(g)·θ̂, so the output is exactly invariant to the full group of the input (scalings, GL head gauges,
permutations, signs).

**Encoders** (even rows: unconstrained; odd rows: bias-free maps times even embeddings; P a learned
slot embedding so conv kernels keep their spatial layout, T an edge-type embedding):

.. math::
    h^0_v = \begin{cases} \phi_x[x_v, m_v] + E[t_v] + \mathrm{PE}(\ell_v) + [v\ \text{fixed}]\,\mathrm{PE}_p(p_v) & \text{even} \\
                          (W x_v) \odot (1 + E'[t_v] + \mathrm{PE}'(\ell_v)) & \text{odd} \end{cases}
    \qquad
    e^0_{uv} = (a_{uv} P) \odot T[\tau_{uv}] + [\text{even}]\big(\phi_e(a_{uv} P) + T'[\tau_{uv}]\big)

and the gauged weights of layer ℓ enter bias-free: ρ_uv = (ã_uv P) ⊙ T[τ_uv] ⊙ w_ℓ (ã = e^{λ_v−λ_u} â: the slot
map is linear, so one encoding of θ̂ serves every layer), plus W_ℓ x̃_v on nodes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

from qegraph.errors import QegraphError
from qegraph.graph.parameter_graph import ParameterGraph
from qegraph.graph.types import NODE_SLOTS
from qegraph.nn.alignment import AlignmentSection, FlatHead, architecture_key
from qegraph.nn.canonical_stats import STATS_PER_DEPTH, depth_statistics
from qegraph.nn.encoders import NUM_EDGE_TYPES, NUM_NODE_TYPES, PositionEncoding, mlp
from qegraph.nn.ops import gather_rows
from qegraph.nn.quantile_norm import QuantileNorm
from qegraph.nn.section import LearnedGauge, SectionContext, canonical_input, even_view
from qegraph.nn.sign_conv import SignEquivariantConv

GAUGES = ("none", "input", "layers")
STATS_TRANSFORMS = ("standardize", "quantile")


class SectionNodeEncoder(nn.Module):
    """``x[N, 5] -> h[N, c]`` on the section (formula in the module docstring)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        s = len(NODE_SLOTS)
        self.even = mlp([2 * s, channels, channels])
        self.type_add = nn.Embedding(NUM_NODE_TYPES, channels)
        self.depth_add = PositionEncoding(channels)
        self.pos_add = PositionEncoding(channels)
        self.coord_add = PositionEncoding(channels)
        self.unit_add = PositionEncoding(channels)
        self.odd = nn.Linear(s, channels, bias=False)
        self.type_mul = nn.Embedding(NUM_NODE_TYPES, channels)
        self.depth_mul = PositionEncoding(channels, bias=False)
        self.coord_mul = PositionEncoding(channels, bias=False)
        nn.init.normal_(self.type_mul.weight, std=0.1)

    def forward(self, g: ParameterGraph, ctx: SectionContext) -> Tensor:
        x, m = g.x, g.x_mask.to(g.x.dtype)
        # head coordinates are ordered by singular value on the section: their index is invariant
        coord = getattr(g, "gl_coord", None)
        coord = torch.zeros_like(g.layer) if coord is None else coord + 1
        even = (self.even(torch.cat([x, m], 1)) + self.type_add(g.node_type) + self.depth_add(g.layer)
                + self.coord_add(coord))
        even = even + ctx.fixed.unsqueeze(1) * self.pos_add(g.io_pos.clamp(min=0))
        if ctx.aligned:  # units have consistent identities across networks: their index is information
            even = even + (~ctx.fixed).unsqueeze(1) * self.unit_add(g.sym_member)
        odd = self.odd(x) * (1 + self.type_mul(g.node_type) + self.depth_mul(g.layer) + self.coord_mul(coord))
        return even + ctx.node_odd * (odd - even)


class SlotEncoder(nn.Module):
    """Bias-free slot map a ↦ (a P) ⊙ T[τ] (keeps the parity of an edge)."""

    def __init__(self, channels: int, max_slots: int) -> None:
        super().__init__()
        self.max_slots = max_slots
        self.slots = nn.Parameter(torch.randn(max_slots, channels) / math.sqrt(channels))
        self.type_mul = nn.Embedding(NUM_EDGE_TYPES, channels)
        nn.init.normal_(self.type_mul.weight, mean=1.0, std=0.1)

    def forward(self, a: Tensor, etype: Tensor) -> Tensor:
        s = a.size(1)
        if s > self.max_slots:
            raise QegraphError(f"edges have {s} slots (largest kernel / flattened block), the model was built for "
                               f"max_slots={self.max_slots}: construct it with max_slots >= {s}")
        return (a @ self.slots[:s]) * gather_rows(self.type_mul.weight, etype)


class SectionEdgeEncoder(nn.Module):
    """``edge_attr[E, S] -> e[E, c]`` on the section (formula in the module docstring)."""

    def __init__(self, channels: int, max_slots: int) -> None:
        super().__init__()
        self.slot = SlotEncoder(channels, max_slots)
        self.even = mlp([channels, channels, channels])
        self.type_add = nn.Embedding(NUM_EDGE_TYPES, channels)

    def forward(self, g: ParameterGraph, ctx: SectionContext) -> Tensor:
        et = ctx.edge_type
        e = self.slot(ctx.edge_attr, et)
        return e + (1 - ctx.edge_odd) * (self.even(e) + gather_rows(self.type_add.weight, et))


class BatchStandardize(nn.BatchNorm1d):
    """``BatchNorm1d(affine=False)`` that also accepts a training batch of one graph (it then uses, and
    does not update, the running moments: one sample has no variance to standardize by)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__(num_features, eps=eps, affine=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.size(0) == 1:
            return nn.functional.batch_norm(x, self.running_mean, self.running_var, training=False, eps=self.eps)
        return super().forward(x)


class SectionReadout(nn.Module):
    """Invariant readout: per-layer pooling of even views, fixed units by position, canonical statistics."""

    def __init__(self, channels: int, out_dim: int, hidden: int, *, stats: bool, stats_max_depth: int,
                 readout_norm: bool, dropout: float, stats_transform: str = "standardize") -> None:
        super().__init__()
        c, k = channels, hidden
        self.unit = mlp([c, k, k])
        self.layer = mlp([k, k, k])
        self.depth = PositionEncoding(k)
        self.fixed = mlp([c, k, k])
        self.pos = PositionEncoding(c)
        self.node_type = nn.Embedding(NUM_NODE_TYPES, c)
        self.norm: nn.Module = BatchStandardize(2 * k) if readout_norm else nn.Identity()
        self.stats_max_depth = stats_max_depth
        self.use_stats = stats
        if stats_transform not in STATS_TRANSFORMS:
            raise QegraphError(f"stats_transform must be one of {', '.join(STATS_TRANSFORMS)}, got {stats_transform!r}")
        if stats:  # a StatNN on the canonical weights, added to the output (a skip path to the head)
            width = stats_max_depth * STATS_PER_DEPTH
            self.stats_norm = (BatchStandardize(width, eps=1e-8) if stats_transform == "standardize"
                               else QuantileNorm(width))
            self.stats_head = nn.Sequential(nn.Linear(width, 2 * k), nn.ReLU(), nn.Dropout(dropout),
                                            nn.Linear(2 * k, k), nn.ReLU(), nn.Linear(k, out_dim))
        self.out = nn.Sequential(nn.Linear(2 * k, k), nn.SiLU(), nn.Dropout(dropout), nn.Linear(k, out_dim))

    def forward(self, h: Tensor, g: ParameterGraph, ctx: SectionContext) -> Tensor:
        eh = even_view(h, ctx.node_odd)
        free = ~ctx.fixed
        seg = ctx.layer_seg[free]
        pooled = scatter(self.unit(eh[free]), seg, dim=0, dim_size=ctx.num_layer_seg, reduce="mean")
        present = torch.bincount(seg, minlength=ctx.num_layer_seg) > 0
        z_layer = self.layer(pooled + self.depth(ctx.layer_seg_depth)) * present.unsqueeze(1)
        z_hidden = scatter(z_layer, ctx.layer_seg_graph, dim=0, dim_size=ctx.num_graphs, reduce="sum")
        fix = ctx.fixed
        zf = self.fixed(eh[fix] + self.pos(g.io_pos[fix]) + self.node_type(g.node_type[fix]))
        z_fixed = scatter(zf, ctx.batch[fix], dim=0, dim_size=ctx.num_graphs, reduce="sum")
        y = self.out(self.norm(torch.cat([z_hidden, z_fixed], dim=1)))
        if self.use_stats:
            st, _ = depth_statistics(g, ctx, self.stats_max_depth)
            y = y + self.stats_head(self.stats_norm(st.flatten(1)))
        return y


class SectionBackbone(nn.Module):
    """Encoders, learned gauges and message-passing layers on the section: ``(θ̂, ctx) -> (h, e, [λ_ℓ])``."""

    def __init__(self, hidden_dim: int, num_layers: int, gauge: str, max_slots: int, dropout: float) -> None:
        super().__init__()
        if gauge not in GAUGES:
            raise QegraphError(f"gauge must be one of {', '.join(GAUGES)}, got {gauge!r}")
        if hidden_dim < 1 or num_layers < 0:
            raise QegraphError(f"need hidden_dim >= 1 and num_layers >= 0, got {hidden_dim}, {num_layers}")
        c = hidden_dim
        self.node_encoder = SectionNodeEncoder(c)
        self.edge_encoder = SectionEdgeEncoder(c, max_slots)
        self.layers = nn.ModuleList(SignEquivariantConv(c, dropout) for _ in range(num_layers))
        n_gauges = {"none": 0, "input": min(1, num_layers), "layers": num_layers}[gauge]
        self.gauges = nn.ModuleList(LearnedGauge(c) for _ in range(n_gauges))
        # the gauged weights of layer ℓ, encoded bias-free: (ã P) ⊙ T[τ] ⊙ w_ℓ = e^{λ_v − λ_u} (â P) ⊙ T[τ] ⊙ w_ℓ
        # (the slot map is linear, so one encoding of θ̂ serves every layer); nodes: W_ℓ x̃_v
        self.gauge_edges = SlotEncoder(c, max_slots) if n_gauges else None
        self.gauge_mix = nn.Parameter(torch.ones(n_gauges, c))
        self.gauge_nodes = nn.ModuleList(nn.Linear(len(NODE_SLOTS), c, bias=False) for _ in range(n_gauges))

    def forward(self, g: ParameterGraph, ctx: SectionContext) -> tuple[Tensor, Tensor, list[Tensor]]:
        h, e = self.node_encoder(g, ctx), self.edge_encoder(g, ctx)
        base = self.gauge_edges(ctx.edge_attr, ctx.edge_type) if self.gauge_edges is not None else None
        src, dst = ctx.edge_index
        lams = []
        for i, layer in enumerate(self.layers):
            rho = None
            if i < len(self.gauges):
                lam = self.gauges[i](h, ctx)
                lams.append(lam)
                rho = torch.exp(lam[dst] - lam[src]) * base * self.gauge_mix[i]
                h = h + self.gauge_nodes[i](g.x * torch.exp(lam))
            h, e = layer(h, e, rho, ctx)
        return h, e, lams


class QuasiGMN(nn.Module):
    """Quasi-equivariant graph metanetwork on the canonical section (module docstring).

    Args:
        out_dim: outputs per graph.
        hidden_dim, num_layers: width and depth of the message passing.
        gauge: ``"layers"`` (a learned gauge per layer), ``"input"`` (one, before the first layer) or
            ``"none"`` (the section only).
        stats: add the per-layer statistics of the canonical weights as a skip path to the head.
        stats_max_depth: the deepest unit depth the statistics support.
        stats_transform: how the statistics enter the head: ``"standardize"`` (z-scores with the training
            moments) or ``"quantile"`` (through their training CDF, :class:`~qegraph.nn.quantile_norm.QuantileNorm`,
            fitted by the training task at fit start; the better choice for small zoos, see docs/results.md).
        readout_hidden: width of the readout (default ``hidden_dim``).
        readout_norm: standardize the pooled readout vector (BatchNorm; for zoos of near-identical nets).
        dropout: dropout on the additive updates and in the head.
        max_slots: the largest edge slot count (kernel size / flatten block) the encoders accept.
        align: also align every network to a reference network of its architecture
            (:mod:`qegraph.nn.alignment`): a section of the residual group, after which units have
            consistent identities (position embeddings) and no sign constraint is left.
        flat: with ``align``, add an MLP on the flattened aligned weights to the output (one
            architecture per model; e.g. INR zoos).
        flat_hidden: width of that MLP.
    """

    def __init__(
        self,
        *,
        out_dim: int = 1,
        hidden_dim: int = 64,
        num_layers: int = 3,
        gauge: str = "layers",
        stats: bool = True,
        stats_max_depth: int = 64,
        stats_transform: str = "standardize",
        readout_hidden: int | None = None,
        readout_norm: bool = False,
        dropout: float = 0.0,
        max_slots: int = 64,
        align: bool = False,
        flat: bool = False,
        flat_hidden: int = 256,
    ) -> None:
        super().__init__()
        if flat and not align:
            raise QegraphError("flat=True reads aligned weights: it needs align=True")
        self.alignment = AlignmentSection() if align else None
        self.flat = FlatHead(out_dim, flat_hidden, dropout) if flat else None
        self.backbone = SectionBackbone(hidden_dim, num_layers, gauge, max_slots, dropout)
        self.readout = SectionReadout(hidden_dim, out_dim, readout_hidden or hidden_dim, stats=stats,
                                      stats_max_depth=stats_max_depth, readout_norm=readout_norm, dropout=dropout,
                                      stats_transform=stats_transform)

    def set_references(self, graphs: list[ParameterGraph]) -> None:
        """With ``align=True``: the reference network of each architecture (the first of ``graphs`` of
        it); called by the training task with the first training graph of each architecture."""
        if self.alignment is not None:
            self.alignment.set_references([canonical_input(g) for g in graphs])

    def section(self, graph: ParameterGraph) -> tuple[ParameterGraph, SectionContext]:
        """θ̂ (and θ̄ with ``align``) and its context."""
        g = canonical_input(graph)
        if self.alignment is not None:
            g = self.alignment(g)
        return g, SectionContext.of(g, aligned=self.alignment is not None)

    def features(self, graph: ParameterGraph) -> tuple[Tensor, Tensor, ParameterGraph, SectionContext, list[Tensor]]:
        """(h, e, θ̂, context, λ of every learned gauge ``[N, 1]``) after the message-passing layers."""
        g, ctx = self.section(graph)
        h, e, lams = self.backbone(g, ctx)
        return h, e, g, ctx, lams

    def forward(self, graph: ParameterGraph) -> Tensor:
        h, _, g, ctx, _ = self.features(graph)
        y = self.readout(h, g, ctx)
        if self.flat is not None:
            metas = g.meta if isinstance(g.meta, list) else [g.meta]
            if len({architecture_key(m) for m in metas}) > 1:
                raise QegraphError("QuasiGMN(flat=True) reads one architecture's flat weights; this batch mixes "
                                   "architectures (use flat=False)")
            y = y + self.flat(g, ctx.num_graphs)
        return y


__all__ = ["BatchStandardize", "GAUGES", "STATS_TRANSFORMS", "QuasiGMN", "SectionBackbone", "SectionEdgeEncoder", "SectionNodeEncoder", "SectionReadout",
           "SlotEncoder"]
