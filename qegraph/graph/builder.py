"""GraphBuilder: plan unit layers, edge blocks and parameter placements, then fill one ParameterGraph.

Converters (the fx converter, layout converters) describe a network in two steps:

1. *Plan*: ``add_units`` creates a layer of n unit nodes; ``add_edges`` a block of edges between two
   unit layers (``"dense"``: every src→dst pair, edge k = o·n_src + i, the row-major order of a weight
   W[o, i]; ``"diag"``: i→i); ``place_*`` records where each state_dict tensor goes; ``tie`` and
   ``constrain`` record the symmetry (see below).
2. *Build*: every tensor is allocated once at its final size and filled in place, so peak memory is
   the graph itself plus one layer's worth of temporaries.

Symmetry bookkeeping: each unit layer starts with the full scalar set (every nonzero λ) and each op
its units pass through narrows it (``constrain``), a meet in the lattice
``ALL ⊇ {POS, SIGN} ⊇ ONE``: ReLU keeps positive scalings, tanh/sin keep signs, GELU/norms keep only
λ = 1. Tied layers (residual sums, norms, flatten) form one unit group whose set is the meet of its
members'; a group containing an input or output layer is fixed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntFlag
from typing import Any

import torch
from torch import Tensor

from qegraph.errors import NonFiniteError, QegraphError
from qegraph.graph.parameter_graph import GraphMeta, ParameterGraph, fill_edge_index
from qegraph.graph.types import NODE_SLOTS, EdgeType, NodeType, SymKind

FORMAT_VERSION = 1


def _all_finite(t: Tensor) -> bool:
    """True if ``t`` has no NaN/inf (min/max propagate NaN; no full-size temporary)."""
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t.detach().reshape(-1))
    return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))


class Scalars(IntFlag):
    """Per-unit scalars λ that commute with the ops between the unit's producer and its consumers."""

    ONE = 0  # only λ = 1 (permutations only)
    POS = 1  # positive scalings (ReLU, LeakyReLU, max-pool)
    SIGN = 2  # λ = -1 (odd activations: tanh, sin)
    ALL = 3  # every nonzero λ (linear ops only)


_KIND_OF = {Scalars.ONE: SymKind.PERM, Scalars.POS: SymKind.SCALE, Scalars.SIGN: SymKind.SIGN, Scalars.ALL: SymKind.NONZERO}


@dataclass
class UnitLayer:
    name: str
    n: int
    node_type: NodeType
    depth: int
    start: int
    fixed: bool = False
    scalars: Scalars = Scalars.ALL
    norm_used: bool = False


@dataclass
class EdgeBlock:
    src: int
    dst: int
    pattern: str
    etype: EdgeType
    width: int
    start: int
    size: int


@dataclass
class Placement:
    key: str
    tensor: Tensor
    table: str  # "x" | "edge_attr" | "aux_int"
    start: int
    rows: int
    col: int = 0
    width: int = 1


@dataclass
class GraphBuilder:
    """Collects a network's structure; :meth:`build` turns it into a :class:`ParameterGraph`."""

    layers: list[UnitLayer] = field(default_factory=list)
    blocks: list[EdgeBlock] = field(default_factory=list)
    placements: list[Placement] = field(default_factory=list)
    _parent: list[int] = field(default_factory=list)
    _num_nodes: int = 0
    _num_edges: int = 0
    _num_aux: int = 0

    # ------------------------------------------------------------------ plan
    def add_units(self, name: str, n: int, node_type: NodeType, depth: int, fixed: bool = False) -> int:
        self.layers.append(UnitLayer(name, int(n), node_type, depth, self._num_nodes, fixed))
        self._parent.append(len(self._parent))
        self._num_nodes += int(n)
        return len(self.layers) - 1

    def add_edges(self, src: int, dst: int, etype: EdgeType, pattern: str = "dense", width: int = 1) -> int:
        ns, nd = self.layers[src].n, self.layers[dst].n
        if pattern == "dense":
            size = ns * nd
        elif pattern == "diag":
            if ns != nd:
                raise QegraphError(f"diagonal edges need equal sizes: {self.layers[src].name} ({ns}) vs {self.layers[dst].name} ({nd})")
            size = ns
        else:
            raise ValueError(pattern)
        self.blocks.append(EdgeBlock(src, dst, pattern, etype, width, self._num_edges, size))
        self._num_edges += size
        return len(self.blocks) - 1

    def place_edges(self, key: str, tensor: Tensor, block: int, col: int = 0) -> None:
        """``tensor`` viewed as ``[block.size, width]`` fills the block's rows (row k = edge k)."""
        b = self.blocks[block]
        if tensor.numel() != b.size * b.width:
            raise QegraphError(f"parameter {key!r} has {tensor.numel()} values, its edge block holds {b.size}×{b.width}")
        self.placements.append(Placement(key, tensor, "edge_attr", b.start, b.size, col, b.width))

    def place_nodes(self, key: str, tensor: Tensor, layer: int, slot: str) -> None:
        lay = self.layers[layer]
        if tensor.numel() != lay.n:
            raise QegraphError(f"parameter {key!r} has {tensor.numel()} values for {lay.n} units of {lay.name!r}")
        self.placements.append(Placement(key, tensor, "x", lay.start, lay.n, NODE_SLOTS.index(slot), 1))

    def place_aux(self, key: str, tensor: Tensor) -> None:
        if tensor.is_floating_point() or tensor.is_complex():
            raise QegraphError(f"{key!r}: only integer/bool tensors go to aux_int")
        self.placements.append(Placement(key, tensor, "aux_int", self._num_aux, tensor.numel()))
        self._num_aux += tensor.numel()

    def _find(self, i: int) -> int:
        while self._parent[i] != i:
            self._parent[i] = self._parent[self._parent[i]]
            i = self._parent[i]
        return i

    def tie(self, a: int, b: int) -> None:
        """Units of layers a and b must move together (same permutation and scalars)."""
        if self.layers[a].n != self.layers[b].n:
            raise QegraphError(f"cannot tie {self.layers[a].name} ({self.layers[a].n} units) to {self.layers[b].name} ({self.layers[b].n})")
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self._parent[max(ra, rb)] = min(ra, rb)

    def constrain(self, layer: int, scalars: Scalars) -> None:
        self.layers[layer].scalars &= scalars

    def fix(self, layer: int, node_type: NodeType | None = None) -> None:
        self.layers[layer].fixed = True
        if node_type is not None:
            self.layers[layer].node_type = node_type

    # ------------------------------------------------------------------ build
    def build(
        self,
        arch: dict[str, Any] | None,
        key_order: list[str],
        *,
        allow_nonfinite: bool = False,
        num_slots: int | None = None,
        source: str = "module",
    ) -> ParameterGraph:
        placed = [p.key for p in self.placements]
        dup = {k for k in placed if placed.count(k) > 1} if len(set(placed)) != len(placed) else set()
        if dup:
            raise QegraphError(f"{source}: parameter {sorted(dup)[0]!r} is used twice (weight sharing is not supported)")
        missing = [k for k in key_order if k not in set(placed)]
        if missing:
            raise QegraphError(
                f"{source}: state_dict key {missing[0]!r} is not used by the traced forward, so it has no place in "
                "the graph (remove it from the checkpoint or use it in forward)"
            )
        order = {k: i for i, k in enumerate(key_order)}
        self.placements.sort(key=lambda p: order[p.key])

        floats = [p.tensor for p in self.placements if p.tensor.is_floating_point()]
        for p in self.placements:
            if p.tensor.is_floating_point() and not allow_nonfinite and not _all_finite(p.tensor):
                raise NonFiniteError(
                    f"{source}: parameter {p.key!r} contains NaN or inf values "
                    "(pass --allow-nonfinite / allow_nonfinite=True to convert anyway)"
                )
        dtype = torch.float32
        if floats:
            dtype = floats[0].dtype
            for t in floats[1:]:
                dtype = torch.promote_types(dtype, t.dtype)

        widths = [b.width for b in self.blocks]
        s = max([1, *widths])
        if num_slots is not None:
            if num_slots < s:
                raise QegraphError(f"num_slots={num_slots} is smaller than the largest kernel/block ({s} slots)")
            s = num_slots

        n, e = self._num_nodes, self._num_edges
        x = torch.zeros(n, len(NODE_SLOTS), dtype=dtype)
        x_mask = torch.zeros(n, len(NODE_SLOTS), dtype=torch.bool)
        edge_attr = torch.empty(e, s, dtype=dtype)  # every block's slots are written below
        edge_index = torch.empty(2, e, dtype=torch.long)
        aux_int = torch.empty(self._num_aux, dtype=torch.long)

        for b in self.blocks:
            src, dst = self.layers[b.src], self.layers[b.dst]
            fill_edge_index(edge_index[:, b.start : b.start + b.size], src.start, src.n, dst.start, dst.n,
                            b.pattern == "dense")
            edge_attr[b.start : b.start + b.size, b.width :].zero_()
            if not any(p.table == "edge_attr" and p.start == b.start for p in self.placements):
                edge_attr[b.start : b.start + b.size, : b.width].zero_()

        params = []
        for p in self.placements:
            t = p.tensor.detach()
            if p.table == "aux_int":
                aux_int[p.start : p.start + p.rows] = t.reshape(-1).to(torch.long)
            elif p.table == "x":
                x[p.start : p.start + p.rows, p.col] = t.reshape(-1)
                x_mask[p.start : p.start + p.rows, p.col] = True
            else:
                edge_attr[p.start : p.start + p.rows, p.col : p.col + p.width] = t.reshape(p.rows, p.width)
            params.append(
                {"key": p.key, "table": p.table, "start": p.start, "rows": p.rows, "col": p.col,
                 "width": p.width, "shape": list(t.shape), "dtype": str(t.dtype)}
            )

        # unit groups: union-find roots → dense group ids in order of first appearance
        roots = [self._find(i) for i in range(len(self.layers))]
        gid: dict[int, int] = {}
        for r in roots:
            gid.setdefault(r, len(gid))
        g_fixed = [False] * len(gid)
        g_scalars = [Scalars.ALL] * len(gid)
        g_size = [0] * len(gid)
        for lay, r in zip(self.layers, roots):
            j = gid[r]
            g_fixed[j] |= lay.fixed
            g_scalars[j] &= lay.scalars
            g_size[j] = lay.n
        sym_kind = torch.tensor(
            [int(SymKind.FIXED) if f else int(_KIND_OF[sc]) for f, sc in zip(g_fixed, g_scalars)], dtype=torch.long
        )

        node_type = torch.empty(n, dtype=torch.long)
        depth = torch.empty(n, dtype=torch.long)
        io_pos = torch.full((n,), -1, dtype=torch.long)
        sym_group = torch.empty(n, dtype=torch.long)
        sym_member = torch.empty(n, dtype=torch.long)
        units = []
        for lay, r in zip(self.layers, roots):
            sl = slice(lay.start, lay.start + lay.n)
            node_type[sl] = int(lay.node_type)
            depth[sl] = lay.depth
            sym_group[sl] = gid[r]
            sym_member[sl] = torch.arange(lay.n)
            if g_fixed[gid[r]]:
                io_pos[sl] = torch.arange(lay.n)
            units.append(
                {"name": lay.name, "start": lay.start, "n": lay.n, "type": lay.node_type.name.lower(),
                 "depth": lay.depth, "group": gid[r]}
            )

        meta = {"version": FORMAT_VERSION, "arch": arch, "params": params, "units": units}
        return ParameterGraph(
            x=x,
            x_mask=x_mask,
            edge_index=edge_index,
            edge_attr=edge_attr,
            eblock_size=torch.tensor([b.size for b in self.blocks], dtype=torch.long),
            eblock_type=torch.tensor([int(b.etype) for b in self.blocks], dtype=torch.long),
            eblock_width=torch.tensor(widths, dtype=torch.long),
            eblock_dense=torch.tensor([b.pattern == "dense" for b in self.blocks], dtype=torch.bool),
            eblock_src=torch.tensor([self.layers[b.src].start for b in self.blocks], dtype=torch.long),
            eblock_dst=torch.tensor([self.layers[b.dst].start for b in self.blocks], dtype=torch.long),
            eblock_nsrc=torch.tensor([self.layers[b.src].n for b in self.blocks], dtype=torch.long),
            node_type=node_type,
            layer=depth,
            io_pos=io_pos,
            sym_group=sym_group,
            sym_member=sym_member,
            sym_kind=sym_kind,
            sym_size=torch.tensor(g_size, dtype=torch.long),
            aux_int=aux_int,
            meta=GraphMeta(meta),
        )
