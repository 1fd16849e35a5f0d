"""GraphBuilder: plan unit layers, edge blocks and parameter placements, then fill one ParameterGraph.

Converters (the fx converter, layout converters) describe a network in two steps:

1. *Plan*: ``add_units`` creates a layer of n unit nodes; ``add_edges`` a block of edges between two
   unit layers (``"dense"``: every src→dst pair, edge k = o·n_src + i, the row-major order of a weight
   W[o, i]; ``"grouped"`` with ``groups`` = g: block-diagonal, edge k = o·(n_src/g) + i reads source
   (o // (n_dst/g))·(n_src/g) + i, the layout of a grouped conv weight W[n_dst, n_src/g, …];
   ``"diag"``: i→i); ``place_*`` records where each state_dict tensor goes; ``tie``, ``constrain`` and
   ``couple_blocks`` record the symmetry (see below).
2. *Build*: every tensor is allocated once at its final size and filled in place (edge values are
   ragged, one block's width per edge, so the graph costs about one value per parameter), and peak
   memory is the graph itself plus one layer's worth of temporaries.

Symmetry bookkeeping: each unit layer starts with the full scalar set (every nonzero λ) and each op
its units pass through narrows it (``constrain``), a meet in the lattice
``ALL ⊇ {POS, SIGN} ⊇ ONE``: ReLU keeps positive scalings, tanh/sin keep signs, GELU/norms keep only
λ = 1. Tied layers (residual sums, norms, flatten) form one unit group whose set is the meet of its
members'; a group containing an input or output layer is fixed.

Grouped convolutions (``couple_blocks(input_layer, output_layer, g)``): both unit groups are split
into g equal contiguous blocks of members, and a permutation may only move whole blocks, by the same
block permutation σ for every group of a *coupling class* (groups joined by grouped convs), plus any
permutation inside each block. Conservative fallback: a unit group asked for two different block
counts (e.g. read by convs with 4 and with 8 groups) gets no permutation at all, and neither does any
group of its coupling class (``sym_blocks = 0``); scalings are unaffected (they commute with grouped
convs).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from enum import IntFlag
from typing import Any

import torch
from torch import Tensor

from qegraph.errors import NonFiniteError, QegraphError
from qegraph.graph.parameter_graph import GraphMeta, ParameterGraph
from qegraph.graph.types import NODE_SLOTS, EdgeType, NodeType, SymKind

#: 2: ragged ``edge_val`` and grouped blocks (version 1 stored a padded ``edge_attr``; read on load).
FORMAT_VERSION = 2


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
    groups: int  # 1: dense; g: block-diagonal with g groups (diag: g = n_src = n_dst)
    etype: EdgeType
    width: int
    start: int  # first edge
    size: int
    voff: int  # first value in edge_val


@dataclass
class Placement:
    key: str
    tensor: Tensor
    table: str  # "x" | "edge_val" | "aux_int"
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
    _num_values: int = 0
    _num_aux: int = 0
    _couplings: list[tuple[int, int, int]] = field(default_factory=list)

    # ------------------------------------------------------------------ plan
    def add_units(self, name: str, n: int, node_type: NodeType, depth: int, fixed: bool = False) -> int:
        self.layers.append(UnitLayer(name, int(n), node_type, depth, self._num_nodes, fixed))
        self._parent.append(len(self._parent))
        self._num_nodes += int(n)
        return len(self.layers) - 1

    def add_edges(self, src: int, dst: int, etype: EdgeType, pattern: str = "dense", width: int = 1,
                  groups: int = 1) -> int:
        """A block of edges from unit layer ``src`` to ``dst`` with ``width`` values each; ``pattern``
        is ``"dense"``, ``"grouped"`` (``groups`` = g divides both sizes) or ``"diag"`` (equal sizes)."""
        ns, nd = self.layers[src].n, self.layers[dst].n
        names = f"{self.layers[src].name} ({ns}) → {self.layers[dst].name} ({nd})"
        if pattern == "dense" and groups == 1:
            g = 1
        elif pattern == "grouped":
            g = int(groups)
            if g < 1 or ns % g or nd % g:
                raise QegraphError(f"grouped edges {names}: {groups} groups must divide both sizes")
        elif pattern == "diag":
            if ns != nd:
                raise QegraphError(f"diagonal edges need equal sizes: {names}")
            g = max(ns, 1)
        elif pattern == "dense":
            raise QegraphError(f"dense edges {names} have one group; use pattern='grouped' for groups={groups}")
        else:
            raise QegraphError(f"unknown edge pattern {pattern!r} (dense, grouped, diag)")
        size = nd * (ns // g) if ns else 0
        self.blocks.append(EdgeBlock(src, dst, g, etype, int(width), self._num_edges, size, self._num_values))
        self._num_edges += size
        self._num_values += size * int(width)
        return len(self.blocks) - 1

    def place_edges(self, key: str, tensor: Tensor, block: int) -> None:
        """``tensor`` (flat layout ``[block.size, width]``, row k = edge k) holds the block's values."""
        b = self.blocks[block]
        if tensor.numel() != b.size * b.width:
            raise QegraphError(f"parameter {key!r} has {tensor.numel()} values, its edge block holds {b.size}×{b.width}")
        self.placements.append(Placement(key, tensor, "edge_val", b.voff, b.size, 0, b.width))

    def place_edge_span(self, key: str, tensor: Tensor, blocks: list[int]) -> None:
        """One tensor holding the values of several consecutive blocks of equal width (e.g. a fused
        q/k/v projection ``in_proj_weight`` over the query, key and value blocks)."""
        bs = [self.blocks[i] for i in blocks]
        if any(b.width != bs[0].width for b in bs) or any(int(j) != int(i) + 1 for i, j in zip(blocks, blocks[1:])):
            raise QegraphError(f"parameter {key!r}: a span needs consecutive edge blocks of equal width")
        total = sum(b.size for b in bs)
        if tensor.numel() != total * bs[0].width:
            raise QegraphError(f"parameter {key!r} has {tensor.numel()} values, its edge blocks hold {total}×{bs[0].width}")
        self.placements.append(Placement(key, tensor, "edge_val", bs[0].voff, total, 0, bs[0].width))

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

    def couple_blocks(self, layer_a: int, layer_b: int, groups: int) -> None:
        """Layers a (input) and b (output) of a grouped conv with ``groups`` groups: each is split into
        ``groups`` contiguous blocks, and permutations move their blocks by one shared σ."""
        na, nb = self.layers[layer_a].n, self.layers[layer_b].n
        if groups < 1 or na % groups or nb % groups:
            raise QegraphError(f"cannot split {self.layers[layer_a].name} ({na}) and {self.layers[layer_b].name} "
                               f"({nb}) into {groups} groups")
        if groups > 1:
            self._couplings.append((layer_a, layer_b, int(groups)))

    def constrain(self, layer: int, scalars: Scalars) -> None:
        self.layers[layer].scalars &= scalars

    def fix(self, layer: int, node_type: NodeType | None = None) -> None:
        self.layers[layer].fixed = True
        if node_type is not None:
            self.layers[layer].node_type = node_type

    # ------------------------------------------------------------------ build
    def _block_structure(self, layer_group: list[int], num_groups: int) -> tuple[Tensor, Tensor]:
        """``sym_blocks``, ``sym_couple`` per unit group from the grouped-conv couplings (rules in the
        module docstring)."""
        parent = list(range(num_groups))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        wanted: dict[int, set[int]] = {}
        for a, b, g in self._couplings:
            ga, gb = layer_group[a], layer_group[b]
            wanted.setdefault(ga, set()).add(g)
            wanted.setdefault(gb, set()).add(g)
            ra, rb = find(ga), find(gb)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
        conflict = {find(j) for j, counts in wanted.items() if len(counts) > 1}
        blocks = [0 if find(j) in conflict else next(iter(wanted.get(j, {1}))) for j in range(num_groups)]
        return torch.tensor(blocks, dtype=torch.long), torch.tensor([find(j) for j in range(num_groups)], dtype=torch.long)

    def build(
        self,
        arch: dict[str, Any] | None,
        key_order: list[str],
        *,
        allow_nonfinite: bool = False,
        source: str = "module",
    ) -> ParameterGraph:
        """The graph: parameters placed in ``key_order`` (the state_dict's), graph dtype = the promoted
        dtype of the float parameters (edges store their own widths; a padded view is derived when a
        model reads a batch)."""
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

        n = self._num_nodes
        x = torch.zeros(n, len(NODE_SLOTS), dtype=dtype)
        x_mask = torch.zeros(n, len(NODE_SLOTS), dtype=torch.bool)
        edge_val = torch.empty(self._num_values, dtype=dtype)
        aux_int = torch.empty(self._num_aux, dtype=torch.long)
        # values of blocks that no placement fills (none in converters' graphs) are zero
        covered = sorted((p.start, p.start + p.rows * p.width) for p in self.placements if p.table == "edge_val")
        pos = 0
        for lo, hi in covered + [(self._num_values, self._num_values)]:
            if lo > pos:
                edge_val[pos:lo].zero_()
            pos = max(pos, hi)

        valued = [i for i, b in enumerate(self.blocks) if b.size * b.width > 0]
        valued_voff = [self.blocks[i].voff for i in valued]
        params = []
        for p in self.placements:
            t = p.tensor.detach()
            entry = {"key": p.key, "table": p.table, "start": p.start, "rows": p.rows, "col": p.col,
                     "width": p.width, "shape": list(t.shape), "dtype": str(t.dtype)}
            if p.table == "aux_int":
                aux_int[p.start : p.start + p.rows] = t.reshape(-1).to(torch.long)
            elif p.table == "x":
                x[p.start : p.start + p.rows, p.col] = t.reshape(-1)
                x_mask[p.start : p.start + p.rows, p.col] = True
            else:
                edge_val[p.start : p.start + p.rows * p.width] = t.reshape(-1)
                i = bisect.bisect_right(valued_voff, p.start) - 1
                entry["block"] = valued[i]  # the edge block of its first value
            params.append(entry)

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
        sym_blocks, sym_couple = self._block_structure([gid[r] for r in roots], len(gid))

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
            edge_val=edge_val,
            eblock_size=torch.tensor([b.size for b in self.blocks], dtype=torch.long),
            eblock_type=torch.tensor([int(b.etype) for b in self.blocks], dtype=torch.long),
            eblock_width=torch.tensor([b.width for b in self.blocks], dtype=torch.long),
            eblock_groups=torch.tensor([b.groups for b in self.blocks], dtype=torch.long),
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
            sym_blocks=sym_blocks,
            sym_couple=sym_couple,
            aux_int=aux_int,
            meta=GraphMeta(meta),
        )
