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
blocks are gathered as dense [rows, d, c] tensors (one gather each; a loop only over the distinct head
dims of the batch), so a GL matrix acts by one batched matmul.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from qegraph.errors import QegraphError
from qegraph.graph.parameter_graph import ParameterGraph
from qegraph.graph.types import EdgeType, GLRole


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


@dataclass
class GLStructure:
    rows: list[GLRows]
    dead: Tensor  # [E] bool: query→key pairing edges (zero features)

    @classmethod
    def from_graph(cls, graph: ParameterGraph) -> GLStructure | None:
        role = getattr(graph, "gl_role", None)
        if role is None or not bool((role > 0).any()):
            return None
        coord = graph.gl_coord
        ei = graph.edge_index
        dev = ei.device
        n = int(graph.num_nodes)
        gl_node = role > 0
        starts = torch.nonzero(gl_node & (coord == 0)).flatten()
        block_of = torch.full((n,), -1, dtype=torch.long, device=dev)
        gl_ids = torch.nonzero(gl_node).flatten()
        block_of[gl_ids] = torch.cumsum((coord[gl_ids] == 0).long(), 0) - 1
        dims = torch.bincount(block_of[gl_ids], minlength=starts.numel())
        partner = torch.full((starts.numel(),), -1, dtype=torch.long, device=dev)
        etype = graph.edge_type
        qk = etype == int(EdgeType.QK_PAIR)
        a, b = block_of[ei[0][qk]], block_of[ei[1][qk]]
        partner[a], partner[b] = b, a
        eid = torch.arange(ei.size(1), device=dev)
        dead = gl_node[ei[0]] & gl_node[ei[1]]
        nsrc = torch.repeat_interleave(graph.eblock_nsrc, graph.eblock_size)
        dense = torch.repeat_interleave(graph.eblock_dense, graph.eblock_size)
        into = gl_node[ei[1]] & ~dead
        outof = gl_node[ei[0]] & ~dead
        if bool(((into | outof) & ~dense).any()):
            raise QegraphError("a non-dense edge block touches attention-head nodes; GL features need dense blocks")
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
            rows.append(GLRows(
                d=d, node_idx=node_idx, role=role[starts[blocks]], group=graph.sym_group[starts[blocks]],
                head=graph.sym_member[starts[blocks]], partner=part_local, in_idx=in_idx, in_block=in_block,
                in_partner=in_partner, out_idx=out_idx, out_block=local[block_of[ei[0][r_out]]],
            ))
        return cls(rows, dead)


def gl_invariants(h: Tensor, e: Tensor, gls: GLStructure) -> tuple[Tensor, Tensor]:
    """``(node_inv[N, c], edge_inv[E, c])``: the pairings of the module docstring on GL nodes / edges,
    zero elsewhere (and on dead edges)."""
    node_inv, edge_inv = torch.zeros_like(h), torch.zeros_like(e)
    for r in gls.rows:
        hb = h[r.node_idx]  # [B, d, c]
        dual = torch.zeros_like(hb).index_add_(0, r.out_block, e[r.out_idx])
        paired = r.partner >= 0
        other = torch.where(paired.view(-1, 1, 1), hb[r.partner.clamp(min=0)], dual)
        node_inv[r.node_idx] = torch.asinh((hb * other).sum(1)).unsqueeze(1).expand_as(hb)
        if r.in_idx.numel():
            ein = e[r.in_idx]
            has = (r.in_partner >= 0).view(-1, 1, 1)
            other_in = torch.where(has, ein[r.in_partner.clamp(min=0)], torch.zeros_like(ein))
            value = (r.role[r.in_block] == int(GLRole.VALUE)).view(-1, 1, 1)
            other_in = torch.where(value, dual[r.in_block], other_in)
            edge_inv[r.in_idx] = torch.asinh((ein * other_in).sum(1)).unsqueeze(1).expand_as(ein)
        if r.out_idx.numel():
            eout = e[r.out_idx]
            edge_inv[r.out_idx] = torch.asinh((eout * hb[r.out_block]).sum(1)).unsqueeze(1).expand_as(eout)
    return node_inv, edge_inv


def apply_gl_blocks(h: Tensor, e: Tensor, gls: GLStructure, mats: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Act with per-block matrices ``mats[k][B, d, d]`` (ρ of each block of ``gls.rows[k]``):
    H ↦ ρH, rows into a block E ↦ ρE, rows out of a value block E ↦ ρ^{-T}E (i.e. E[o,:] ↦ E[o,:]ρ^{-1})."""
    h, e = h.clone(), e.clone()
    for r, m in zip(gls.rows, mats):
        h[r.node_idx] = m @ h[r.node_idx]
        if r.in_idx.numel():
            e[r.in_idx] = m[r.in_block] @ e[r.in_idx]
        if r.out_idx.numel():
            e[r.out_idx] = torch.linalg.inv(m).transpose(-2, -1)[r.out_block] @ e[r.out_idx]
    return h, e
