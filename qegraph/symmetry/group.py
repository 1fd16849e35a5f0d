r"""The symmetry group of a ParameterGraph and the action of its elements (DESIGN §4).

The group is the product over unit groups j of (permutations of j's members) ⋉ D_j, where D_j are the
per-unit scalars allowed by the group's :class:`SymKind` (none, q > 0, s = ±1, λ ≠ 0). An element
(π_j, q_j) acts on the parameters as (PyTorch convention y = W x + b)

.. math::
    W_{in}[i, :] \mapsto q_i\, W_{in}[\pi(i), :], \quad b[i] \mapsto q_i\, b[\pi(i)], \quad
    W_{out}[:, i] \mapsto W_{out}[:, \pi(i)] / q_i,

i.e. on the graph: node v ↦ q_v · x[π(v)], edge u→v ↦ (q_v / q_u) · e[π(u)→π(v)]. Parameter-free
edges carry no value. Embedding-table columns move like node features (E[:, c] ↦ q_c E[:, π(c)]).
In a grouped block (weight W[o, i_local] of a conv with g groups) the edge (o, i) reads the edge
(π(o), π(src) mod n_src/g): the formula above on the weight tensor's own layout.

**Permutations.** A unit group with ``sym_blocks`` = b ≥ 1 is split into b equal contiguous blocks
of s = n/b members, and its permutations are

.. math::
    \pi(i) = \sigma(\lfloor i/s \rfloor)\, s + \tau_{\lfloor i/s \rfloor}(i \bmod s),

with one block permutation σ per *coupling class* (``sym_couple``: the input and output channels of
grouped convolutions, which must move their groups together) and an independent permutation τ_β
inside every block β. b = 1 is the unstructured S_n. Classes containing a fixed group have σ = id;
``sym_blocks`` = 0 means no permutation at all (the conservative fallback of
:mod:`qegraph.graph.builder`). For a grouped conv y_o = Σ_{i ∈ group(o)} W[o, i] x_i, a coupled σ
keeps every output channel with the input channels of its group, so the function is unchanged; a
permutation that moves a channel to another group changes it (tested).

Attention heads (kinds HEADS and HEAD_SIGNS, members = heads, ``sym_stride`` = head dim): π permutes
whole head blocks, then per-head matrices act, X ↦ ρ X on head nodes and E_{u→v} ↦ ρ_v E ρ_u^{-1} on
edges, ρ = A (query), A^{-T} (key), B (value) (see :mod:`qegraph.symmetry.gl`); for HEAD_SIGNS the
matrices are diagonal ±1. The action works on single graphs and on PyG batches (the group of a batch
is the product of its graphs' groups), vectorized over the graphs of a batch and in bounded chunks
over the values of one large graph (:mod:`qegraph.graph.blocks`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from qegraph.errors import QegraphError
from qegraph.graph import blocks as _blocks
from qegraph.graph.blocks import BlockTable, segment_chunks
from qegraph.graph.parameter_graph import ParameterGraph
from qegraph.graph.types import HEAD_KINDS, GLRole, SymKind
from qegraph.symmetry.gl import apply_gl, head_dims, sample_gl, sample_signs


class SymmetryGroup:
    """The group detected for a graph (or a batch). ``kinds[j]`` is the SymKind of unit group j,
    ``blocks[j]`` / ``couple[j]`` its block structure and coupling class (module docstring)."""

    def __init__(self, kinds: Tensor, sizes: Tensor, head_dims: dict[int, dict[int, int]] | None = None,
                 blocks: Tensor | None = None, couple: Tensor | None = None) -> None:
        # the group's bookkeeping lives on the CPU (elements are drawn there); act() moves what it needs
        self.kinds = kinds.to("cpu", torch.long)
        self.sizes = sizes.to("cpu", torch.long)
        self.ptr = torch.cat([self.sizes.new_zeros(1), torch.cumsum(self.sizes, 0)])
        #: head group → {GLRole: head dim}
        self.head_dims = head_dims or {}
        g = self.kinds.numel()
        self.blocks = torch.ones(g, dtype=torch.long) if blocks is None else blocks.to("cpu", torch.long)
        self.couple = torch.arange(g) if couple is None else couple.to("cpu", torch.long)
        if bool((self.sizes % self.blocks.clamp(min=1) != 0).any()):
            raise QegraphError("sym_blocks must divide sym_size for every unit group")

    @classmethod
    def of(cls, graph: ParameterGraph) -> SymmetryGroup:
        """The group of a graph or batch. Unit groups beyond the graph's ``sym_blocks`` /
        ``sym_couple`` (appended by hand, e.g. to untie units in a test) are unstructured."""
        g = int(graph.sym_kind.numel())
        blocks, couple = getattr(graph, "sym_blocks", None), getattr(graph, "sym_couple", None)
        if blocks is not None and couple is not None:
            blocks, couple = blocks.cpu(), couple.cpu()
            if blocks.numel() > g or couple.numel() != blocks.numel():
                raise QegraphError(f"sym_blocks / sym_couple describe {blocks.numel()} / {couple.numel()} unit groups, "
                                   f"sym_kind {g}")
            extra = torch.arange(blocks.numel(), g)
            blocks, couple = torch.cat([blocks, torch.ones_like(extra)]), torch.cat([couple, extra])
        return cls(graph.sym_kind, graph.sym_size, head_dims(graph), blocks, couple)

    def __len__(self) -> int:
        return int(self.kinds.numel())

    def with_kinds(self, overrides: dict[int, SymKind]) -> SymmetryGroup:
        """A copy with some unit groups' kinds replaced (to test that a wrong claim is caught)."""
        kinds = self.kinds.clone()
        for j, k in overrides.items():
            kinds[j] = int(k)
        return SymmetryGroup(kinds, self.sizes, self.head_dims, self.blocks, self.couple)

    def unstructured(self) -> SymmetryGroup:
        """A copy without block structure (every group permuted freely): for a grouped conv this is *not*
        a symmetry, which tests use to check that the structure is needed."""
        return SymmetryGroup(self.kinds, self.sizes, self.head_dims)

    def _slot_group(self) -> Tensor:
        return torch.repeat_interleave(torch.arange(len(self)), self.sizes)

    def identity(self) -> GroupElement:
        total = int(self.ptr[-1])
        starts = self.ptr[:-1].repeat_interleave(self.sizes)
        return GroupElement(self, torch.arange(total) - starts, torch.ones(total, dtype=torch.float64))

    def block_size(self) -> Tensor:
        """``[G]`` members per block s = n / b (n for b = 0)."""
        return torch.where(self.blocks > 0, torch.div(self.sizes, self.blocks.clamp(min=1), rounding_mode="floor"),
                           self.sizes).clamp(min=1)

    def frozen_classes(self) -> Tensor:
        """``[G]`` True for coupling classes (by representative) whose σ must be the identity: a member
        is fixed or has no permutation."""
        frozen = ((self.kinds == int(SymKind.FIXED)) | (self.blocks == 0)).long()
        return torch.zeros(len(self), dtype=torch.long).index_add_(0, self.couple, frozen) > 0

    def _sample_perm(self, generator: torch.Generator | None) -> Tensor:
        total = int(self.ptr[-1])
        slot_group = self._slot_group()
        local = torch.arange(total) - self.ptr[:-1][slot_group]
        s = self.block_size()[slot_group]
        blk = torch.div(local, s, rounding_mode="floor")
        offset = local - blk * s
        nb = self.blocks.clamp(min=1)
        gblk = (torch.cumsum(nb, 0) - nb)[slot_group] + blk
        kind = self.kinds[slot_group]
        movable = (kind != int(SymKind.FIXED)) & (self.blocks[slot_group] > 0)
        # τ: a uniform permutation inside every block (the slots of block β are contiguous, so the
        # argsort of β + noise maps each slot to a random slot of its own block)
        noise = torch.rand(total, generator=generator, dtype=torch.float64)
        key = gblk.to(torch.float64) + torch.where(movable, noise, offset.to(torch.float64) / (int(s.max()) + 1 if total else 1))
        tau = torch.argsort(key) - self.ptr[:-1][slot_group] - blk * s
        # σ: one uniform block permutation per coupling class (drawn only where a class has > 1 block)
        rep = self.couple
        cblocks = torch.where(rep == torch.arange(len(self)), nb, torch.zeros_like(nb))
        cptr = torch.cumsum(cblocks, 0) - cblocks
        entries = int(cblocks.sum())
        sigma = torch.arange(entries)
        if bool((cblocks > 1).any()):
            ent_class = torch.repeat_interleave(torch.arange(len(self)), cblocks)
            ent_local = sigma - cptr[ent_class]
            free = ~self.frozen_classes()[ent_class]
            noise2 = torch.rand(entries, generator=generator, dtype=torch.float64)
            key2 = ent_class.to(torch.float64) + torch.where(free, noise2, ent_local.to(torch.float64) / (entries + 1))
            sigma = torch.argsort(key2)
        new_blk = sigma[cptr[rep[slot_group]] + blk] - cptr[rep[slot_group]]
        return torch.where(movable, new_blk * s + tau, local)

    def sample(
        self,
        generator: torch.Generator | None = None,
        scale_range: tuple[float, float] = (1.0, 10.0),
        permute: bool = True,
        rescale: bool = True,
        gl: bool = True,
        gl_cond: float = 10.0,
    ) -> GroupElement:
        """A random element: uniform permutations of the allowed form (module docstring); scales
        log-uniform in ``scale_range`` (with a random sign for NONZERO groups); uniform signs for SIGN
        groups; when ``gl``, per head A ∈ GL(d_k), B ∈ GL(d_v) with condition numbers at most
        ``gl_cond`` for HEADS groups (:func:`~qegraph.symmetry.gl.sample_gl`) and uniform diagonal
        ±1 matrices for HEAD_SIGNS groups. Fixed groups get the identity."""
        lo, hi = float(scale_range[0]), float(scale_range[1])
        if not 0 < lo <= hi:
            raise QegraphError(f"scale_range must satisfy 0 < lo <= hi, got {scale_range}")
        total = int(self.ptr[-1])
        slot_group = self._slot_group()
        kind = self.kinds[slot_group]
        perm = self._sample_perm(generator) if permute else torch.arange(total) - self.ptr[:-1][slot_group]
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
            heads = torch.isin(self.kinds, torch.tensor(sorted(HEAD_KINDS)))
            for j in torch.nonzero(heads).flatten().tolist():
                dims, h = self.head_dims.get(j, {}), int(self.sizes[j])
                dk = dims.get(int(GLRole.QUERY), dims.get(int(GLRole.KEY), 0))
                dv = dims.get(int(GLRole.VALUE), 0)
                if int(self.kinds[j]) == int(SymKind.HEAD_SIGNS):
                    mats[j] = (sample_signs(h, dk, generator), sample_signs(h, dv, generator))
                else:
                    mats[j] = (sample_gl(h, dk, gl_cond, generator), sample_gl(h, dv, gl_cond, generator))
        return GroupElement(self, perm, scale, mats)

    def describe(self, graph: ParameterGraph) -> list[dict[str, object]]:
        """One row per unit layer: name, units, node type, unit group, its kind and block structure."""
        return [
            {"name": u["name"], "units": u["n"], "type": u["type"], "group": u["group"],
             "symmetry": SymKind(int(self.kinds[u["group"]])).name.lower(),
             "blocks": int(self.blocks[u["group"]]), "coupled_with": int(self.couple[u["group"]])}
            for u in graph.units
        ]


@dataclass
class GroupElement:
    """(π, q) for every unit group: ``perm[ptr[j] + i]`` = π_j(i) (local index), ``scale`` likewise;
    ``gl[j] = (A [H, d_k, d_k], B [H, d_v, d_v])`` for head groups (missing: identity)."""

    group: SymmetryGroup
    perm: Tensor
    scale: Tensor
    gl: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)

    def node_maps(self, graph: ParameterGraph) -> tuple[Tensor, Tensor]:
        """For every node v: the node it reads from, π(v), and its scalar q_v (on the graph's device)."""
        dev = graph.sym_group.device
        slot = self.group.ptr.to(dev)[graph.sym_group] + graph.sym_member
        step = self.perm.to(dev)[slot] - graph.sym_member
        stride = getattr(graph, "sym_stride", None)
        if stride is not None:
            step = step * stride
        src = torch.arange(graph.num_nodes, device=dev) + step
        return src, self.scale.to(dev)[slot]

    def _check(self, graph: ParameterGraph) -> None:
        if graph.sym_kind.numel() != len(self.group) or int(graph.sym_size.sum()) != int(self.group.ptr[-1]):
            raise QegraphError("this group element belongs to a graph with a different structure")

    def act(self, graph: ParameterGraph) -> ParameterGraph:
        """The acted graph g·θ (same structure, permuted and rescaled values)."""
        self._check(graph)
        node_src, q = self.node_maps(graph)
        x = graph.x[node_src] * q.to(graph.x.dtype).unsqueeze(1)
        edge_val = act_edge_table(graph, graph.edge_val, graph.eblock_width, node_src, q)
        x, edge_val = apply_gl(graph, x, edge_val, self.gl)
        out = graph.with_features(x=x, edge_val=edge_val)
        if getattr(graph, "emb_attr", None) is not None and graph.emb_attr.numel():
            out.emb_attr = act_tables(graph, node_src, q)
        return out

    def act_features(self, graph: ParameterGraph, h: Tensor, e: Tensor) -> tuple[Tensor, Tensor]:
        """The action on hidden features of the graph's types, c channels per node and per edge:
        h_v ↦ q_v h_{π(v)}, e_uv ↦ (q_v/q_u) e_{π(u)π(v)}, and the per-head matrices on head blocks
        (H ↦ ρH; edges with parameters into / out of a head ↦ ρE / Eρ^{-1}) — the formulas that act on
        the parameters, applied channel by channel."""
        self._check(graph)
        if h.size(0) != graph.num_nodes or e.dim() != 2 or e.size(0) != graph.num_edges:
            raise QegraphError(f"features must be [{graph.num_nodes}, c] and [{graph.num_edges}, c], "
                               f"got {tuple(h.shape)} and {tuple(e.shape)}")
        node_src, q = self.node_maps(graph)
        h = h[node_src] * q.to(h.dtype).unsqueeze(1)
        c = e.size(1)
        width = torch.full_like(graph.eblock_width, c)
        e = act_edge_table(graph, e.reshape(-1), width, node_src, q).view(-1, c)
        return apply_gl(graph, h, e, self.gl)


def act_edge_table(graph: ParameterGraph, values: Tensor, width: Tensor, node_src: Tensor, q: Tensor) -> Tensor:
    """A flat edge table (``width[b]`` values per edge of block b, edge-major) under a node map:
    the values of edge u→v become (q_v / q_u) × those of edge π(u)→π(v) of the same block.

    Dense blocks of at least :data:`~qegraph.graph.blocks.CHUNK` / 4 values (the weight matrices of a
    large network) are processed one by one as W' = (q_dst q_srcᵀ⁻¹) ⊙ W[π_dst][:, π_src], a row and a
    column gather, in row chunks; every other block (grouped, diagonal, and all blocks of a batch of
    small networks) goes through one vectorized per-edge pass per width, in chunks of at most
    ``CHUNK`` values. Both compute the same products, so results do not depend on the split."""
    bt = BlockTable.of(graph)
    voff = torch.cumsum(bt.size * width, 0) - bt.size * width
    out = values.new_empty(values.shape)
    big = (bt.groups == 1) & (bt.size * width >= max(1, _blocks.CHUNK // 4))
    for b in torch.nonzero(big).flatten().tolist():
        _act_dense_block(bt, b, int(voff[b]), int(width[b]), values, out, node_src, q)
    for w in [w for w in torch.unique(width[~big]).tolist() if w > 0]:
        ar = torch.arange(w, device=values.device)
        for b, k in bt.edge_chunks(torch.nonzero((width == w) & ~big).flatten(), max(1, _blocks.CHUNK // w)):
            src, dst = bt.endpoints(b, k)
            per = bt.per[b]
            k_from = (node_src[dst] - bt.dst[b]) * per + torch.remainder(node_src[src] - bt.src[b], per)
            ratio = (q[dst] / q[src]).to(values.dtype)
            if w == 1:
                out[voff[b] + k] = values[voff[b] + k_from] * ratio
            else:
                out[(voff[b] + k * w).unsqueeze(1) + ar] = values[(voff[b] + k_from * w).unsqueeze(1) + ar] * ratio.unsqueeze(1)
    return out


def _act_dense_block(bt: BlockTable, b: int, voff: int, w: int, values: Tensor, out: Tensor, node_src: Tensor,
                     q: Tensor) -> None:
    """One dense block W[n_dst, n_src, w] ↦ (q_o / q_i) W[π(o), π(i)], written into ``out``."""
    s0, ns, d0, nd = int(bt.src[b]), int(bt.nsrc[b]), int(bt.dst[b]), int(bt.ndst[b])
    weight = values[voff : voff + nd * ns * w].view(nd, ns, w)
    target = out[voff : voff + nd * ns * w].view(nd, ns, w)
    ps, qs = node_src[s0 : s0 + ns] - s0, q[s0 : s0 + ns]
    step = max(1, _blocks.CHUNK // max(ns * w, 1))
    for r0 in range(0, nd, step):
        rows = slice(r0, min(r0 + step, nd))
        ratio = (q[d0 + r0 : d0 + rows.stop].unsqueeze(1) / qs.unsqueeze(0)).to(values.dtype)
        part = weight.index_select(0, node_src[d0 + r0 : d0 + rows.stop] - d0).index_select(1, ps)
        target[rows] = part * ratio.unsqueeze(2)


def act_tables(graph: ParameterGraph, node_src: Tensor, q: Tensor) -> Tensor:
    """Embedding tables under a node map: E[:, c] ↦ q_c E[:, π(c)] (rows never move). Tables of at least
    ``CHUNK`` / 4 entries (a vocabulary) one by one as a column gather in row chunks, all others
    vectorized over the tables of a batch in bounded chunks."""
    emb = graph.emb_attr
    sizes = graph.etable_rows * graph.etable_cols
    out = emb.clone() if int(sizes.sum()) != emb.numel() else torch.empty_like(emb)
    big = sizes >= max(1, _blocks.CHUNK // 4)
    for t in torch.nonzero(big).flatten().tolist():
        start, rows, cols, node = (int(v[t]) for v in (graph.etable_start, graph.etable_rows, graph.etable_cols,
                                                        graph.etable_node))
        table = emb[start : start + rows * cols].view(rows, cols)
        target = out[start : start + rows * cols].view(rows, cols)
        pc, qc = node_src[node : node + cols] - node, q[node : node + cols].to(emb.dtype)
        step = max(1, _blocks.CHUNK // max(cols, 1))
        for r0 in range(0, rows, step):
            target[r0 : r0 + step] = table[r0 : r0 + step].index_select(1, pc) * qc
    small = torch.where(big, torch.zeros_like(sizes), sizes)
    for t, local in segment_chunks(small):
        cols = graph.etable_cols[t]
        row = torch.div(local, cols, rounding_mode="floor")
        node = graph.etable_node[t] + (local - row * cols)
        start = graph.etable_start[t] + row * cols
        out[start + local - row * cols] = emb[start + node_src[node] - graph.etable_node[t]] * q[node].to(emb.dtype)
    return out


def symmetry_group(graph: ParameterGraph) -> SymmetryGroup:
    """The symmetry group detected for ``graph`` at conversion (see DESIGN §4)."""
    return SymmetryGroup.of(graph)
