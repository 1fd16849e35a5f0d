r"""The edge-block table of a ParameterGraph: ragged values and everything derived from it.

A graph's edges come in B *edge blocks*, one per weight tensor or parameter-free connection. Block b
has ``size`` edges with ``width`` values each, ``groups`` g, first source node s, ``nsrc`` source
units and first target node t; its target count is n_dst = size·g / n_src. With p = n_src / g
(sources per group) and r = n_dst / g (targets per group), edge k of the block joins

.. math::
    o = \lfloor k / p \rfloor, \quad i = k \bmod p, \qquad
    \mathrm{src} = s + \lfloor o / r \rfloor\, p + i, \quad \mathrm{dst} = t + o,

the layout of a grouped weight W[n_dst, n_src/g, …] (g = 1: a dense W[o, i], edge k = o·n_src + i;
g = n_src = n_dst: the diagonal i → i). Its values are the ``width`` consecutive entries

.. math::
    \mathrm{edge\_val}[v_b + k\,w_b \;:\; v_b + (k+1)\,w_b], \qquad v = \text{exclusive cumsum of size·width},

i.e. exactly the flat layout of the weight tensor (Linear W[o, i]; conv W[o, i, k_h, k_w] with
k_h·k_w slots; a flatten block W[o, c·HW + j] with HW slots). Edge ids are e_b + k with e the exclusive
cumsum of sizes. Both cumsums also hold on PyG batches, because batching concatenates the blocks and
the values graph by graph.

Nothing per edge is stored: ``edge_index``, the padded ``edge_attr [E, S]`` and the per-edge type and
width are computed here, vectorized over all blocks of a graph or a batch and in chunks of at most
:data:`CHUNK` values, so temporaries stay small even for a 100M-parameter network.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from qegraph.errors import QegraphError

#: Values (or edges) processed per vectorized step; bounds the index temporaries (a few ×8 MiB).
CHUNK = 1 << 19


@dataclass
class BlockTable:
    """The edge blocks of a graph or batch, with the derived per-block quantities (all ``[B]`` int64)."""

    size: Tensor
    width: Tensor
    groups: Tensor
    src: Tensor  # first source node
    dst: Tensor  # first target node
    nsrc: Tensor
    ndst: Tensor
    per: Tensor  # sources per group p = n_src / g
    rpg: Tensor  # targets per group r = n_dst / g
    eoff: Tensor  # first edge id
    voff: Tensor  # first value in edge_val

    @classmethod
    def of(cls, graph: Any) -> BlockTable:
        size = graph.eblock_size
        groups = graph.eblock_groups.clamp(min=1)
        nsrc = graph.eblock_nsrc.clamp(min=1)
        width = graph.eblock_width
        ndst = torch.div(size * groups, nsrc, rounding_mode="floor")
        return cls(
            size=size, width=width, groups=groups, src=graph.eblock_src, dst=graph.eblock_dst, nsrc=nsrc,
            ndst=ndst, per=torch.div(nsrc, groups, rounding_mode="floor").clamp(min=1),
            rpg=torch.div(ndst, groups, rounding_mode="floor").clamp(min=1),
            eoff=torch.cumsum(size, 0) - size, voff=torch.cumsum(size * width, 0) - size * width,
        )

    @property
    def num_blocks(self) -> int:
        return int(self.size.numel())

    @property
    def num_edges(self) -> int:
        return int(self.size.sum())

    @property
    def num_values(self) -> int:
        return int((self.size * self.width).sum())

    def max_width(self) -> int:
        """S: the largest width (at least 1, so that a padded table always has a column)."""
        return max(1, int(self.width.max())) if self.num_blocks else 1

    def endpoints(self, b: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """Source and target node of edge ``k`` of block ``b`` (elementwise)."""
        per = self.per[b]
        o = torch.div(k, per, rounding_mode="floor")
        i = k - o * per
        src = self.src[b] + torch.div(o, self.rpg[b], rounding_mode="floor") * per + i
        return src, self.dst[b] + o

    def edge_chunks(self, blocks: Tensor | None = None, chunk: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """(block, edge-in-block) for every edge of ``blocks`` (default: all, in edge order), in
        vectorized chunks of at most ``chunk`` edges."""
        blocks = torch.arange(self.num_blocks, device=self.size.device) if blocks is None else blocks
        for j, k in segment_chunks(self.size[blocks], chunk):
            yield blocks[j], k

    def widths(self) -> list[int]:
        """The distinct nonzero widths."""
        return [w for w in torch.unique(self.width).tolist() if w > 0]


def segment_chunks(sizes: Tensor, chunk: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """Enumerate the elements of consecutive segments of lengths ``sizes``: (segment, index inside it)
    for every element, in order, in vectorized chunks of at most ``chunk`` (default :data:`CHUNK`)
    elements."""
    cum = torch.cumsum(sizes, 0)
    total = int(cum[-1]) if cum.numel() else 0
    step = max(1, int(CHUNK if chunk is None else chunk))
    for c0 in range(0, total, step):
        t = torch.arange(c0, min(c0 + step, total), device=sizes.device)
        j = torch.searchsorted(cum, t, right=True)
        yield j, t - (cum[j] - sizes[j])


def edge_index(bt: BlockTable) -> Tensor:
    """``[2, E]`` int64: source and target node of every edge."""
    out = torch.empty(2, bt.num_edges, dtype=torch.long, device=bt.size.device)
    pos = 0
    for b, k in bt.edge_chunks():
        src, dst = bt.endpoints(b, k)
        out[0, pos : pos + k.numel()] = src
        out[1, pos : pos + k.numel()] = dst
        pos += k.numel()
    return out


def padded(bt: BlockTable, edge_val: Tensor, num_slots: int | None = None) -> Tensor:
    """``[E, S]`` edge features: row e holds its block's ``width`` values, zeros after them
    (differentiable w.r.t. ``edge_val``)."""
    s = bt.max_width() if num_slots is None else num_slots
    out = edge_val.new_zeros(bt.num_edges, s)
    for w in bt.widths():
        ar = torch.arange(w, device=edge_val.device)
        for b, k in bt.edge_chunks(torch.nonzero(bt.width == w).flatten(), max(1, CHUNK // w)):
            vals = edge_val[(bt.voff[b] + k * w).unsqueeze(1) + ar]
            out.index_put_(((bt.eoff[b] + k).unsqueeze(1), ar.unsqueeze(0)), vals)
    return out


def ragged(bt: BlockTable, table: Tensor) -> Tensor:
    """The inverse of :func:`padded`: ``table [E, S]`` (S ≥ every width) → ``edge_val [K]``; entries
    beyond a block's width are not part of the graph (the padding) and are not read."""
    if table.dim() != 2 or table.size(0) != bt.num_edges:
        raise QegraphError(f"edge features must be [num_edges={bt.num_edges}, slots], got {tuple(table.shape)}")
    if table.size(1) < bt.max_width() and bt.num_values:
        raise QegraphError(f"edge features have {table.size(1)} slots, the largest edge block needs {bt.max_width()}")
    out = table.new_empty(bt.num_values)
    for w in bt.widths():
        ar = torch.arange(w, device=table.device)
        for b, k in bt.edge_chunks(torch.nonzero(bt.width == w).flatten(), max(1, CHUNK // w)):
            vals = table[(bt.eoff[b] + k).unsqueeze(1), ar.unsqueeze(0)]
            out.index_put_(((bt.voff[b] + k * w).unsqueeze(1) + ar,), vals)
    return out


def value_offset(bt: BlockTable, edge: int, col: int = 0) -> int:
    """Position in ``edge_val`` of slot ``col`` of edge ``edge`` (edge ids as in ``edge_index``)."""
    b = int(torch.searchsorted(bt.eoff + bt.size, torch.tensor(edge), right=True))
    if b >= bt.num_blocks:
        raise QegraphError(f"edge {edge} is outside the graph's {bt.num_edges} edges")
    return int(bt.voff[b] + (edge - bt.eoff[b]) * bt.width[b] + col)


__all__ = ["CHUNK", "BlockTable", "edge_index", "padded", "ragged", "segment_chunks", "value_offset"]
