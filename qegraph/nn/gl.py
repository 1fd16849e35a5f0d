r"""GL feature types of attention heads: index structure, invariants and the GL action (DESIGN §5).

The d nodes of one (head, role) form a *block* H ∈ R^{d×c} with H ↦ ρH, ρ = A (query), A^{-T} (key),
B (value). Edges into a block from a unit s form a *row* E[:, s] ↦ ρE[:, s]; edges from a value block
to a unit o form a row E[o, :] ↦ E[o, :] B^{-1}, i.e. ρ_out = B^{-T} acting on the row as a column.
Query→key pairing edges (parameter-free) would have to carry A^{-T}·E·A^{-1} with E supported on the
diagonal, so they stay exactly zero ("dead").

GL-invariant pairings (one vector in R^c per block or row, broadcast to its d members):

.. math::
    \iota(H_Q) = \iota(H_K) = \mathrm{asinh}\Big(\sum_i H_Q[i] \odot H_K[i]\Big), \quad
    \iota(H_V) = \mathrm{asinh}\Big(\sum_j H_V[j] \odot \delta_V[j]\Big), \quad
    \delta_V[j] = \sum_o E_O[o, j]

.. math::
    \iota(E_Q[:, s]) = \iota(E_K[:, s]) = \mathrm{asinh}\Big(\sum_i E_Q[i,s] \odot E_K[i,s]\Big), \quad
    \iota(E_V[:, s]) = \mathrm{asinh}\Big(\sum_j E_V[j,s] \odot \delta_V[j]\Big), \quad
    \iota(E_O[o, :]) = \mathrm{asinh}\Big(\sum_j E_O[o,j] \odot H_V[j]\Big)

(the diagonals of W_Q^T W_K, of 1ᵀW_O W_V and b_Q^T b_K-like products, channel by channel). Rows and
blocks are gathered as dense [rows, d·c] tensors (one gather of all block nodes, one of all row edges,
split by head dim; a loop only over the distinct head dims of the batch), so a GL matrix acts by one
batched matmul. Every pairing partner (the paired block or row, δ_V, or nothing) is one precomputed
row index into a stacked table, and the invariants are written into the feature table with one
:func:`~qegraph.nn.ops.replace_rows` of the GL-typed rows: no [N, c] / [E, c] temporaries per call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from qegraph.errors import QegraphError
from qegraph.graph.parameter_graph import ParameterGraph
from qegraph.graph.types import HEAD_KINDS, EdgeType, GLRole
from qegraph.nn.ops import gather_rows, replace_rows, scatter_sum


@dataclass
class GLRows:
    """All blocks and rows whose head dim is ``d``."""

    d: int
    node_idx: Tensor  # [B, d] nodes of each block, coordinate order
    role: Tensor  # [B] GLRole
    group: Tensor  # [B] unit group (HEADS)
    head: Tensor  # [B] head index (sym_member)
    partner: Tensor  # [B] block of the paired query/key block (-1: value or unpaired)
    in_idx: Tensor  # [R1, d] edges s→block (row = one source s)
    in_block: Tensor  # [R1]
    in_partner: Tensor  # [R1] row of the same source into the partner block (-1: none)
    out_idx: Tensor  # [R2, d] edges value block→o (row = one target o)
    out_block: Tensor  # [R2]
    node_other: Tensor  # [B] row of [blocks; δ_V] paired with each block in ι(H)
    in_other: Tensor  # [R1] row of [in rows; δ_V; 0] paired with each in row in ι(E[:, s])


@dataclass
class GLStructure:
    rows: list[GLRows]
    dead: Tensor  # [E] bool: query→key pairing edges (zero features)
    block_nodes: Tensor  # [Σ B·d] the nodes of every block (``rows`` order, each ``node_idx`` flattened)
    in_edges: Tensor  # [Σ R1·d] the edges of every in row (likewise)
    out_edges: Tensor  # [Σ R2·d] the edges of every out row
    row_edges: Tensor  # [in_edges; out_edges]
    node_ids: Tensor  # [n] GL-typed nodes (unit group of kind HEADS)
    node_src: Tensor  # [n] their block among all blocks (Σ B: none, invariant 0)
    edge_ids: Tensor  # [m] GL-typed edges (an endpoint of kind HEADS)
    edge_src: Tensor  # [m] their row among [all in rows; all out rows] (Σ R1 + Σ R2: none, invariant 0)

    @classmethod
    def from_graph(cls, graph: ParameterGraph, edge_index: Tensor | None = None,
                   edge_type: Tensor | None = None) -> GLStructure | None:
        """``edge_index``, ``edge_type``: the graph's, when already computed (they are derived)."""
        role = getattr(graph, "gl_role", None)
        if role is None or not bool((role > 0).any()):
            return None
        coord = graph.gl_coord
        ei = graph.edge_index if edge_index is None else edge_index
        dev = ei.device
        n = int(graph.num_nodes)
        gl_node = role > 0
        starts = torch.nonzero(gl_node & (coord == 0)).flatten()
        block_of = torch.full((n,), -1, dtype=torch.long, device=dev)
        gl_ids = torch.nonzero(gl_node).flatten()
        block_of[gl_ids] = torch.cumsum((coord[gl_ids] == 0).long(), 0) - 1
        dims = torch.bincount(block_of[gl_ids], minlength=starts.numel())
        partner = torch.full((starts.numel(),), -1, dtype=torch.long, device=dev)
        etype = graph.edge_type if edge_type is None else edge_type
        qk = etype == int(EdgeType.QK_PAIR)
        a, b = block_of[ei[0][qk]], block_of[ei[1][qk]]
        partner[a], partner[b] = b, a
        eid = torch.arange(ei.size(1), device=dev)
        dead = gl_node[ei[0]] & gl_node[ei[1]]
        nsrc = torch.repeat_interleave(graph.eblock_nsrc, graph.eblock_size)
        dense = torch.repeat_interleave(graph.eblock_groups == 1, graph.eblock_size)
        into = gl_node[ei[1]] & ~dead
        outof = gl_node[ei[0]] & ~dead
        if bool(((into | outof) & ~dense).any()):
            raise QegraphError("a grouped or diagonal edge block touches attention-head nodes; GL features need dense blocks")
        in_base = into & (coord[ei[1]] == 0)
        out_base = outof & (coord[ei[0]] == 0)
        rows = []
        for d in torch.unique(dims).tolist():
            blocks = torch.nonzero(dims == d).flatten()
            local = torch.full_like(dims, -1)
            local[blocks] = torch.arange(blocks.numel(), device=dev)
            ar = torch.arange(d, device=dev)
            node_idx = starts[blocks].unsqueeze(1) + ar
            r_in = eid[in_base & (dims[block_of[ei[1]].clamp(min=0)] == d)]
            in_idx = r_in.unsqueeze(1) + ar * nsrc[r_in].unsqueeze(1)
            in_block = local[block_of[ei[1][r_in]]]
            part = partner[blocks]
            part_local = torch.where(part >= 0, local[part.clamp(min=0)], part)
            # row of the same source into the partner block: match (source, block) keys
            nb = blocks.numel()
            keys = ei[0][r_in] * nb + in_block
            order = torch.argsort(keys)
            want = ei[0][r_in] * nb + part_local[in_block].clamp(min=0)
            pos = torch.searchsorted(keys[order], want).clamp(max=max(keys.numel() - 1, 0))
            found = (part_local[in_block] >= 0) & (keys[order][pos] == want) if keys.numel() else want < 0
            in_partner = torch.where(found, order[pos], torch.full_like(want, -1))
            r_out = eid[out_base & (dims[block_of[ei[0]].clamp(min=0)] == d)]
            out_idx = r_out.unsqueeze(1) + ar
            block_role = role[starts[blocks]]
            r1 = r_in.numel()
            value_in = block_role[in_block] == int(GLRole.VALUE)
            rows.append(GLRows(
                d=d, node_idx=node_idx, role=block_role, group=graph.sym_group[starts[blocks]],
                head=graph.sym_member[starts[blocks]], partner=part_local, in_idx=in_idx, in_block=in_block,
                in_partner=in_partner, out_idx=out_idx, out_block=local[block_of[ei[0][r_out]]],
                node_other=torch.where(part_local >= 0, part_local, nb + torch.arange(nb, device=dev)),
                in_other=torch.where(value_in, r1 + in_block,
                                     torch.where(in_partner >= 0, in_partner, torch.full_like(in_block, r1 + nb))),
            ))
        return cls(rows, dead, **_gl_index(graph, rows, ei))


def _gl_index(graph: ParameterGraph, rows: list[GLRows], ei: Tensor) -> dict[str, Tensor]:
    """The flat node / edge lists of :class:`GLStructure` (block and row members, GL-typed rows and the
    block or row each of them reads its invariant from)."""
    dev = ei.device
    block_nodes = torch.cat([r.node_idx.flatten() for r in rows])
    in_edges = torch.cat([r.in_idx.flatten() for r in rows])
    out_edges = torch.cat([r.out_idx.flatten() for r in rows])

    def members(counts: list[int], dims: list[int]) -> Tensor:
        """The row of every member (d consecutive members per row), rows numbered over all groups."""
        per_row = torch.repeat_interleave(torch.tensor(dims, device=dev), torch.tensor(counts, device=dev))
        return torch.repeat_interleave(torch.arange(sum(counts), device=dev), per_row)

    dims = [r.d for r in rows]
    n_blocks = sum(r.node_idx.size(0) for r in rows)
    n_in = sum(r.in_idx.size(0) for r in rows)
    n_out = sum(r.out_idx.size(0) for r in rows)
    heads = torch.isin(graph.sym_kind[graph.sym_group], torch.tensor(sorted(HEAD_KINDS), device=dev))
    node_src = torch.full((int(graph.num_nodes),), n_blocks, dtype=torch.long, device=dev)
    node_src[block_nodes] = members([r.node_idx.size(0) for r in rows], dims)
    edge_src = torch.full((ei.size(1),), n_in + n_out, dtype=torch.long, device=dev)
    edge_src[in_edges] = members([r.in_idx.size(0) for r in rows], dims)
    edge_src[out_edges] = n_in + members([r.out_idx.size(0) for r in rows], dims)
    node_ids = torch.nonzero(heads).flatten()
    edge_ids = torch.nonzero(heads[ei[0]] | heads[ei[1]]).flatten()
    return {"block_nodes": block_nodes, "in_edges": in_edges, "out_edges": out_edges,
            "row_edges": torch.cat([in_edges, out_edges]), "node_ids": node_ids,
            "node_src": node_src[node_ids], "edge_ids": edge_ids, "edge_src": edge_src[edge_ids]}


def _split(x: Tensor, shapes: list[tuple[int, int]]) -> list[Tensor]:
    """Gathered members ``x[Σ n·d, c]`` → one ``[n, d·c]`` view per (n, d) (backward: one concatenation)."""
    c = x.size(1)
    return [part.view(n, d * c) for part, (n, d) in zip(x.split([n * d for n, d in shapes]), shapes)]


def _pair(a: Tensor, b: Tensor, d: int) -> Tensor:
    """asinh(Σ_i a_i ⊙ b_i) over the d coordinates of ``[rows, d·c]`` tensors → ``[rows, c]``."""
    return torch.asinh((a * b).view(a.size(0), d, a.size(1) // d).sum(1))


def _blocks(h: Tensor, gls: GLStructure) -> list[Tensor]:
    """Per entry of ``gls.rows``: the blocks H ``[B, d·c]``."""
    return _split(gather_rows(h, gls.block_nodes), [tuple(r.node_idx.shape) for r in gls.rows])


def _rows(e: Tensor, gls: GLStructure, with_in: bool) -> tuple[list[Tensor], list[Tensor]]:
    """Per entry of ``gls.rows``: the in rows E ``[R1, d·c]`` (empty list unless ``with_in``) and the
    out rows E_O ``[R2, d·c]``, from one gather."""
    outs = [tuple(r.out_idx.shape) for r in gls.rows]
    if not with_in:
        return [], _split(gather_rows(e, gls.out_edges), outs)
    parts = _split(gather_rows(e, gls.row_edges), [tuple(r.in_idx.shape) for r in gls.rows] + outs)
    return parts[: len(gls.rows)], parts[len(gls.rows) :]


def _duals(outs: list[Tensor], gls: GLStructure) -> list[Tensor]:
    """δ_V = Σ_o E_O[o, :] per block ``[B, d·c]`` (zero for blocks without out rows)."""
    return [scatter_sum(o, r.out_block, r.node_idx.size(0)) for r, o in zip(gls.rows, outs)]


def gl_node_invariants(h: Tensor, e: Tensor, gls: GLStructure) -> Tensor:
    """``[len(gls.node_ids), c]``: ι of every GL-typed node (the block pairing of the module docstring,
    0 for a node outside any block)."""
    blocks, duals = _blocks(h, gls), _duals(_rows(e, gls, with_in=False)[1], gls)
    inv = [_pair(hb, gather_rows(torch.cat([hb, dual]), r.node_other), r.d)
           for r, hb, dual in zip(gls.rows, blocks, duals)]
    return gather_rows(torch.cat(inv + [h.new_zeros(1, h.size(1))]), gls.node_src)


def gl_edge_invariants(h: Tensor, e: Tensor, gls: GLStructure) -> Tensor:
    """``[len(gls.edge_ids), c]``: ι of every GL-typed edge (the row pairings of the module docstring,
    0 on dead edges)."""
    ins, outs = _rows(e, gls, with_in=True)
    blocks, duals = _blocks(h, gls), _duals(outs, gls)
    c = e.size(1)
    inv_in = [_pair(ein, gather_rows(torch.cat([ein, dual, e.new_zeros(1, r.d * c)]), r.in_other), r.d)
              for r, ein, dual in zip(gls.rows, ins, duals)]
    inv_out = [_pair(eo, gather_rows(hb, r.out_block), r.d) for r, eo, hb in zip(gls.rows, outs, blocks)]
    return gather_rows(torch.cat(inv_in + inv_out + [e.new_zeros(1, c)]), gls.edge_src)


def apply_gl_blocks(h: Tensor, e: Tensor, gls: GLStructure, mats: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Act with per-block matrices ``mats[k][B, d, d]`` (ρ of each block of ``gls.rows[k]``):
    H ↦ ρH, rows into a block E ↦ ρE, rows out of a value block E ↦ ρ^{-T}E (i.e. E[o,:] ↦ E[o,:]ρ^{-1})."""
    ch, ce = h.size(1), e.size(1)
    ins, outs = _rows(e, gls, with_in=True)
    new_h, new_in, new_out = [], [], []
    for r, m, hb, ein, eout in zip(gls.rows, mats, _blocks(h, gls), ins, outs):
        b, r1, r2, d = hb.size(0), ein.size(0), eout.size(0), r.d
        new_h.append((m @ hb.view(b, d, ch)).view(b * d, ch))
        new_in.append((m[r.in_block] @ ein.view(r1, d, ce)).view(r1 * d, ce))
        m_out = torch.linalg.inv(m).transpose(-2, -1)[r.out_block]
        new_out.append((m_out @ eout.view(r2, d, ce)).view(r2 * d, ce))
    return (replace_rows(h, gls.block_nodes, torch.cat(new_h)),
            replace_rows(e, gls.row_edges, torch.cat(new_in + new_out)))
