"""The symmetry group of a ParameterGraph and the action of its elements (DESIGN §4).

The group is the product over unit groups j of S_{n_j} ⋉ D_j, where D_j are the per-unit scalars
allowed by the group's :class:`SymKind` (none, q > 0, s = ±1, λ ≠ 0). An element (π_j, q_j) acts on
the parameters as (PyTorch convention y = W x + b)

.. math::
    W_{in}[i, :] \\mapsto q_i\\, W_{in}[\\pi(i), :], \\quad b[i] \\mapsto q_i\\, b[\\pi(i)], \\quad
    W_{out}[:, i] \\mapsto W_{out}[:, \\pi(i)] / q_i,

i.e. on the graph: node v ↦ q_v · x[π(v)], edge u→v ↦ (q_v / q_u) · e[π(u)→π(v)]. Parameter-free
edges carry no value. Embedding-table columns move like node features (E[:, c] ↦ q_c E[:, π(c)]).

Attention heads (kind HEADS, members = heads, ``sym_stride`` = head dim): π permutes whole head
blocks, then per-head matrices act, X ↦ ρ X on head nodes and E_{u→v} ↦ ρ_v E ρ_u^{-1} on edges,
ρ = A (query), A^{-T} (key), B (value) (see :mod:`qegraph.symmetry.gl`). The action works on single
graphs and on PyG batches (the group of a batch is the product of its graphs' groups).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from qegraph.errors import QegraphError
from qegraph.graph.parameter_graph import ParameterGraph
from qegraph.graph.types import GLRole, SymKind
from qegraph.symmetry.gl import apply_gl, head_dims, sample_gl


class SymmetryGroup:
    """The group detected for a graph (or a batch). ``kinds[j]`` is the SymKind of unit group j."""

    def __init__(self, kinds: Tensor, sizes: Tensor, head_dims: dict[int, dict[int, int]] | None = None) -> None:
        self.kinds = kinds.to(torch.long)
        self.sizes = sizes.to(torch.long)
        self.ptr = torch.cat([sizes.new_zeros(1), torch.cumsum(self.sizes, 0)])
        #: HEADS group → {GLRole: head dim}
        self.head_dims = head_dims or {}

    @classmethod
    def of(cls, graph: ParameterGraph) -> SymmetryGroup:
        return cls(graph.sym_kind, graph.sym_size, head_dims(graph))

    def __len__(self) -> int:
        return int(self.kinds.numel())

    def with_kinds(self, overrides: dict[int, SymKind]) -> SymmetryGroup:
        """A copy with some unit groups' kinds replaced (to test that a wrong claim is caught)."""
        kinds = self.kinds.clone()
        for j, k in overrides.items():
            kinds[j] = int(k)
        return SymmetryGroup(kinds, self.sizes, self.head_dims)

    def _slot_group(self) -> Tensor:
        return torch.repeat_interleave(torch.arange(len(self)), self.sizes)

    def identity(self) -> GroupElement:
        total = int(self.ptr[-1])
        starts = self.ptr[:-1].repeat_interleave(self.sizes)
        return GroupElement(self, torch.arange(total) - starts, torch.ones(total, dtype=torch.float64))

    def sample(
        self,
        generator: torch.Generator | None = None,
        scale_range: tuple[float, float] = (1.0, 10.0),
        permute: bool = True,
        rescale: bool = True,
        gl: bool = True,
        gl_cond: float = 10.0,
    ) -> GroupElement:
        """A random element: uniform permutations; scales log-uniform in ``scale_range`` (with a
        random sign for NONZERO groups); uniform signs for SIGN groups; for HEADS groups (when ``gl``)
        per-head A ∈ GL(d_k), B ∈ GL(d_v) with condition numbers at most ``gl_cond``
        (:func:`~qegraph.symmetry.gl.sample_gl`). Fixed groups get the identity."""
        lo, hi = float(scale_range[0]), float(scale_range[1])
        if not 0 < lo <= hi:
            raise QegraphError(f"scale_range must satisfy 0 < lo <= hi, got {scale_range}")
        total = int(self.ptr[-1])
        slot_group = self._slot_group()
        kind = self.kinds[slot_group]
        movable = kind != int(SymKind.FIXED)
        starts = self.ptr[:-1][slot_group]
        local = torch.arange(total) - starts
        if permute:
            noise = torch.rand(total, generator=generator, dtype=torch.float64)
            key = slot_group.to(torch.float64) + torch.where(movable, noise, local.to(torch.float64) / (total + 1))
            perm = torch.argsort(key) - starts
        else:
            perm = local
        scale = torch.ones(total, dtype=torch.float64)
        if rescale:
            u = torch.rand(total, generator=generator, dtype=torch.float64)
            mag = torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
            sign = torch.where(torch.rand(total, generator=generator) < 0.5, -1.0, 1.0).to(torch.float64)
            scale = torch.where(kind == int(SymKind.SCALE), mag, scale)
            scale = torch.where(kind == int(SymKind.NONZERO), mag * sign, scale)
            scale = torch.where(kind == int(SymKind.SIGN), sign, scale)
        mats: dict[int, tuple[Tensor, Tensor]] = {}
        if gl:
            for j in torch.nonzero(self.kinds == int(SymKind.HEADS)).flatten().tolist():
                dims, h = self.head_dims.get(j, {}), int(self.sizes[j])
                dk = dims.get(int(GLRole.QUERY), dims.get(int(GLRole.KEY), 0))
                dv = dims.get(int(GLRole.VALUE), 0)
                mats[j] = (sample_gl(h, dk, gl_cond, generator), sample_gl(h, dv, gl_cond, generator))
        return GroupElement(self, perm, scale, mats)

    def describe(self, graph: ParameterGraph) -> list[dict[str, object]]:
        """One row per unit layer: name, units, node type, unit group and its kind."""
        return [
            {"name": u["name"], "units": u["n"], "type": u["type"], "group": u["group"],
             "symmetry": SymKind(int(self.kinds[u["group"]])).name.lower()}
            for u in graph.units
        ]


@dataclass
class GroupElement:
    """(π, q) for every unit group: ``perm[ptr[j] + i]`` = π_j(i) (local index), ``scale`` likewise;
    ``gl[j] = (A [H, d_k, d_k], B [H, d_v, d_v])`` for HEADS groups (missing: identity)."""

    group: SymmetryGroup
    perm: Tensor
    scale: Tensor
    gl: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)

    def node_maps(self, graph: ParameterGraph) -> tuple[Tensor, Tensor]:
        """For every node v: the node it reads from, π(v), and its scalar q_v."""
        slot = self.group.ptr[graph.sym_group] + graph.sym_member
        step = self.perm[slot] - graph.sym_member
        stride = getattr(graph, "sym_stride", None)
        if stride is not None:
            step = step * stride
        src = torch.arange(graph.num_nodes) + step
        return src, self.scale[slot]

    def act(self, graph: ParameterGraph) -> ParameterGraph:
        """The acted graph g·θ (same structure, permuted and rescaled features)."""
        if graph.sym_kind.numel() != len(self.group) or int(graph.sym_size.sum()) != int(self.group.ptr[-1]):
            raise QegraphError("this group element belongs to a graph with a different structure")
        node_src, q = self.node_maps(graph)
        x = graph.x[node_src] * q.to(graph.x.dtype).unsqueeze(1)
        edge_src = edge_gather_index(graph, node_src)
        ei = graph.edge_index
        ratio = (q[ei[1]] / q[ei[0]]).to(graph.edge_attr.dtype)
        edge_attr = graph.edge_attr[edge_src] * ratio.unsqueeze(1)
        x, edge_attr = apply_gl(graph, x, edge_attr, self.gl)
        out = graph.with_features(x=x, edge_attr=edge_attr)
        if getattr(graph, "emb_attr", None) is not None and graph.emb_attr.numel():
            out.emb_attr = act_tables(graph, node_src, q)
        return out


def act_tables(graph: ParameterGraph, node_src: Tensor, q: Tensor) -> Tensor:
    """Embedding tables under a node map: E[:, c] ↦ q_c E[:, π(c)] (rows never move)."""
    emb = graph.emb_attr.clone()
    for start, rows, cols, node in zip(graph.etable_start.tolist(), graph.etable_rows.tolist(),
                                       graph.etable_cols.tolist(), graph.etable_node.tolist()):
        table = graph.emb_attr[start : start + rows * cols].view(rows, cols)
        nodes = slice(node, node + cols)
        emb[start : start + rows * cols].view(rows, cols).copy_(
            table[:, node_src[nodes] - node] * q[nodes].to(emb.dtype)
        )
    return emb


def edge_gather_index(graph: ParameterGraph, node_src: Tensor) -> Tensor:
    """For every edge u→v, the id of the edge node_src[u] → node_src[v] (same block)."""
    sizes = graph.eblock_size
    blk = torch.repeat_interleave(torch.arange(sizes.numel()), sizes)
    starts = torch.cumsum(sizes, 0) - sizes
    ei = graph.edge_index
    src_local = node_src[ei[0]] - graph.eblock_src[blk]
    dst_local = node_src[ei[1]] - graph.eblock_dst[blk]
    local = torch.where(graph.eblock_dense[blk], dst_local * graph.eblock_nsrc[blk] + src_local, src_local)
    return starts[blk] + local


def symmetry_group(graph: ParameterGraph) -> SymmetryGroup:
    """The symmetry group detected for ``graph`` at conversion (see DESIGN §4)."""
    return SymmetryGroup.of(graph)
