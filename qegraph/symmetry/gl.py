r"""The continuous part of an attention head's symmetry: per-head matrices (DESIGN §4).

For head h with A ∈ GL(d_k) and B ∈ GL(d_v), every node of the head carries ρ_v: A on query
coordinates, A^{-T} on key coordinates, B on value coordinates. The action on the graph is

.. math::
    X_{blk} \mapsto \rho\, X_{blk}, \qquad E_{u \to v} \mapsto \rho_v\, E_{u \to v}\, \rho_u^{-1},

where X_blk is the d×5 node-feature block of one head and role, and an edge block is multiplied on
the left where its targets are head nodes and on the right where its sources are. In parameter
terms: W_Q^h ↦ A W_Q^h, b_Q^h ↦ A b_Q^h, W_K^h ↦ A^{-T} W_K^h, b_K^h ↦ A^{-T} b_K^h,
W_V^h ↦ B W_V^h, b_V^h ↦ B b_V^h, W_O[:, h] ↦ W_O[:, h] B^{-1}; scores q^T k and the attention output
are unchanged because (A q)^T (A^{-T} k) = q^T k and softmax weights sum to one. For heads in
canonical form (kind ``HEAD_SIGNS``) A = diag(s_q), B = diag(s_v) with s ∈ {±1}^d, so A^{-T} = A.

Edge values are acted on in place of their flat table (the ragged ``edge_val``, a padded
``[E, S]`` table or hidden edge features ``[E, c]``: a table of ``width`` values per edge). For a dense
block into head nodes, head h's rows are one contiguous ``[d, n_src·width]`` matrix (one *piece*,
multiplied by ρ on the left); for a block out of head nodes, head h's columns are a strided
``[n_dst, d, width]`` piece (multiplied by ρ^{-1} on the right). Pieces of equal shape — across the
blocks of one graph and the graphs of a batch — are gathered and multiplied in one batched matmul,
in chunks of bounded size.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import Tensor

from qegraph.errors import QegraphError
from qegraph.graph import blocks as _blocks
from qegraph.graph.blocks import BlockTable
from qegraph.graph.parameter_graph import ParameterGraph
from qegraph.graph.types import GLRole

ALL_ROLES: frozenset[int] = frozenset({int(GLRole.QUERY), int(GLRole.KEY), int(GLRole.VALUE)})


def sample_gl(n: int, d: int, cond: float = 10.0, generator: torch.Generator | None = None) -> Tensor:
    """``[n, d, d]`` float64 matrices U diag(s) Vᵀ with random orthogonal U, V and singular values
    log-uniform in [cond^{-1/2}, cond^{1/2}], so every condition number is at most ``cond``."""
    if not cond >= 1.0:
        raise QegraphError(f"gl_cond must be >= 1, got {cond}")
    def orth() -> Tensor:
        q, r = torch.linalg.qr(torch.randn(n, d, d, generator=generator, dtype=torch.float64))
        return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    u = torch.rand(n, d, generator=generator, dtype=torch.float64) - 0.5
    s = torch.exp(u * torch.log(torch.tensor(cond, dtype=torch.float64)))
    return orth() @ torch.diag_embed(s) @ orth().transpose(-2, -1)


def sample_signs(n: int, d: int, generator: torch.Generator | None = None) -> Tensor:
    """``[n, d, d]`` float64 diagonal matrices diag(s), s uniform in {±1}^d (the HEAD_SIGNS gauges)."""
    s = torch.where(torch.rand(n, d, generator=generator, dtype=torch.float64) < 0.5, -1.0, 1.0)
    return torch.diag_embed(s.to(torch.float64))


def head_dims(graph: ParameterGraph) -> dict[int, dict[int, int]]:
    """For every unit group with head nodes: role → head dim (max ``gl_coord`` + 1)."""
    role = getattr(graph, "gl_role", None)
    if role is None:
        return {}
    out: dict[int, dict[int, int]] = {}
    sel = torch.nonzero(role > 0).flatten()
    if sel.numel() == 0:
        return out
    g, r, c = graph.sym_group[sel], role[sel], graph.gl_coord[sel]
    key = g * 4 + r
    uniq, inv = torch.unique(key, return_inverse=True)
    dmax = torch.zeros(uniq.numel(), dtype=torch.long, device=c.device).scatter_reduce(0, inv, c + 1, reduce="amax")
    for k, d in zip(uniq.tolist(), dmax.tolist()):
        out.setdefault(k // 4, {})[k % 4] = d
    return out


class HeadMatrices:
    """ρ and ρ^{-1} of every (unit group, role, head), stacked by head dim d: ``rho[d][offset[g, r] + h]``.

    ``mats[g] = (A [H, d_k, d_k], B [H, d_v, d_v])``; a group or role without matrices has offset −1
    (identity)."""

    def __init__(self, mats: dict[int, tuple[Tensor, Tensor]], num_groups: int) -> None:
        self.offset = torch.full((max(num_groups, 1), 4), -1, dtype=torch.long)
        by_d: dict[int, list[tuple[int, int, Tensor]]] = {}
        for g, (a, b) in mats.items():
            by_d.setdefault(a.size(-1), []).append((g, int(GLRole.QUERY), a))
            by_d.setdefault(b.size(-1), []).append((g, int(GLRole.VALUE), b))
        self.rho: dict[int, Tensor] = {}
        self.inv: dict[int, Tensor] = {}
        for d, items in by_d.items():
            base = torch.cat([m for _, _, m in items])
            base_inv = torch.linalg.inv(base)
            # rows [0, M): A (query) or B (value) of each item; rows [M, 2M): A^{-T} (key) of each item
            self.rho[d] = torch.cat([base, base_inv.transpose(-2, -1)])
            self.inv[d] = torch.cat([base_inv, base.transpose(-2, -1)])
            pos = 0
            for g, r, m in items:
                self.offset[g, r] = pos
                if r == int(GLRole.QUERY):
                    self.offset[g, int(GLRole.KEY)] = base.size(0) + pos
                pos += m.size(0)

    def lookup(self, d: int, group: Tensor, role: Tensor, head: Tensor, inverse: bool,
               dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(mask of pieces that have matrices, their ρ — or ρ^{-1} — ``[n, d, d]``)."""
        table = (self.inv if inverse else self.rho).get(d)
        off = self.offset.to(group.device)[group, role]
        ok = off >= 0
        if table is None:
            return torch.zeros_like(ok), torch.zeros(0, d, d, dtype=dtype, device=group.device)
        return ok, table.to(device=group.device, dtype=dtype)[(off + head)[ok]]


def _node_blocks(graph: ParameterGraph, roles: Collection[int]) -> dict[int, Tensor]:
    """First node of every head block (the d nodes of one head and role) by head dim d."""
    role = graph.gl_role
    sel = (role > 0) & (graph.gl_coord == 0)
    sel &= torch.isin(role, torch.tensor(sorted(roles), dtype=role.dtype, device=role.device))
    starts = torch.nonzero(sel).flatten()
    dims = graph.sym_stride[starts]
    return {d: starts[dims == d] for d in torch.unique(dims).tolist()}


def _act_nodes(graph: ParameterGraph, x: Tensor, hm: HeadMatrices, roles: Collection[int]) -> Tensor:
    """ρ applied to the node features of every head block whose role is in ``roles``."""
    x = x.clone()
    for d, starts in _node_blocks(graph, roles).items():
        ok, m = hm.lookup(d, graph.sym_group[starts], graph.gl_role[starts], graph.sym_member[starts], False, x.dtype)
        idx = starts[ok].unsqueeze(1) + torch.arange(d, device=starts.device)
        x[idx] = m @ x[idx]
    return x


def _head_blocks(graph: ParameterGraph, bt: BlockTable, first: Tensor, count: Tensor,
                 roles: Collection[int]) -> tuple[Tensor, Tensor]:
    """Edge blocks with parameters whose target (``first``/``count`` = eblock_dst/n_dst) or source
    (eblock_src/n_src) layer consists of head nodes of a role in ``roles``: (blocks, head dim)."""
    role = graph.gl_role
    if role.numel() == 0 or bt.num_blocks == 0:
        none = torch.zeros(0, dtype=torch.long, device=first.device)
        return none, none
    nonempty = (bt.size > 0) & (bt.width > 0)
    r_first = torch.where(nonempty, role[first.clamp(max=role.numel() - 1)], torch.zeros_like(first))
    touch = nonempty & (r_first > 0)
    if bool(touch.any()):
        last = (first + count - 1)[touch]
        d = graph.sym_stride[first[touch]]
        ok = (role[last] == r_first[touch]) & (graph.gl_coord[first[touch]] == 0) & (count[touch] % d == 0)
        ok &= graph.sym_group[last] == graph.sym_group[first[touch]]
        if not bool(ok.all()):
            raise QegraphError("an edge block with parameters touches only part of a head layer; cannot apply GL matrices")
        if bool((bt.groups[touch] != 1).any()):
            raise QegraphError("a grouped or diagonal edge block with parameters touches head nodes")
    want = torch.isin(r_first, torch.tensor(sorted(roles), dtype=r_first.dtype, device=r_first.device))
    blocks = torch.nonzero(touch & want).flatten()
    return blocks, graph.sym_stride[first[blocks]]


def _act_pieces(values: Tensor, starts: Tensor, shape: tuple[int, ...], strides: tuple[int, ...],
                mats: Tensor, left: bool) -> None:
    """In place: gather pieces of ``shape`` (element strides ``strides``) at ``starts`` and multiply each
    by its matrix, on the left (``[p, d, n]``, ρ·P) or on the right over the middle axis
    (``[p, o, d, w]``, P·ρ^{-1})."""
    numel = 1
    for n in shape:
        numel *= n
    step = max(1, _blocks.CHUNK // max(numel, 1))
    rel = torch.zeros(shape, dtype=torch.long, device=values.device)
    for axis, (n, st) in enumerate(zip(shape, strides)):
        view = [1] * len(shape)
        view[axis] = n
        rel = rel + (torch.arange(n, device=values.device) * st).view(view)
    rel = rel.flatten()
    for c0 in range(0, starts.numel(), step):
        idx = starts[c0 : c0 + step].unsqueeze(1) + rel
        piece = values[idx].view(-1, *shape)
        m = mats[c0 : c0 + step]
        new = m @ piece if left else torch.einsum("pojs,pjk->poks", piece, m)
        values.index_put_((idx,), new.reshape(idx.shape))


def _distinct(keys: Tensor) -> list[list[int]]:
    """The distinct columns of an integer ``[k, n]`` tensor."""
    return torch.unique(keys, dim=1).t().tolist() if keys.size(1) else []


def act_gl_edges(graph: ParameterGraph, values: Tensor, width: Tensor, hm: HeadMatrices,
                 roles_in: Collection[int] = ALL_ROLES, roles_out: Collection[int] = ALL_ROLES) -> Tensor:
    """A flat edge table with ``width[b]`` values per edge of block b (the ragged ``edge_val``, or
    ``c`` for every block for hidden features) acted on by the head matrices: ρ on the left of blocks
    into head nodes (roles ``roles_in``), ρ^{-1} on the right of blocks out of them (``roles_out``).
    Only blocks with parameters (``eblock_width > 0``) are touched: parameter-free q↔k pairings carry
    nothing."""
    bt = BlockTable.of(graph)
    voff = torch.cumsum(bt.size * width, 0) - bt.size * width
    values = values.clone()
    # into heads: head h of block b is the contiguous [d, n_src·w] matrix at voff + h·d·n_src·w
    blocks, dims = _head_blocks(graph, bt, bt.dst, bt.ndst, roles_in)
    ncol = bt.nsrc[blocks] * width[blocks]
    for d, n in _distinct(torch.stack([dims, ncol])):
        sel = blocks[(dims == d) & (ncol == n)]
        heads = torch.div(bt.ndst[sel], d, rounding_mode="floor")
        b = torch.repeat_interleave(sel, heads)
        h = torch.arange(b.numel(), device=b.device) - torch.repeat_interleave(torch.cumsum(heads, 0) - heads, heads)
        first = bt.dst[b] + h * d
        ok, m = hm.lookup(d, graph.sym_group[first], graph.gl_role[first], graph.sym_member[first], False, values.dtype)
        _act_pieces(values, (voff[b] + h * d * n)[ok], (d, n), (n, 1), m, left=True)
    # out of heads: head h of block b is the [n_dst, d, w] piece at voff + h·d·w, rows n_src·w apart
    blocks, dims = _head_blocks(graph, bt, bt.src, bt.nsrc, roles_out)
    keys = torch.stack([dims, bt.ndst[blocks], width[blocks], bt.nsrc[blocks]])
    for d, nd, w, ns in _distinct(keys):
        sel = blocks[(keys == torch.tensor([d, nd, w, ns], device=keys.device).unsqueeze(1)).all(0)]
        heads = ns // d
        b = sel.repeat_interleave(heads)
        h = torch.arange(heads, device=b.device).repeat(sel.numel())
        first = bt.src[b] + h * d
        ok, m = hm.lookup(d, graph.sym_group[first], graph.gl_role[first], graph.sym_member[first], True, values.dtype)
        _act_pieces(values, (voff[b] + h * d * w)[ok], (nd, d, w), (ns * w, w, 1), m, left=False)
    return values


def apply_gl(
    graph: ParameterGraph,
    x: Tensor,
    edge_attr: Tensor,
    mats: dict[int, tuple[Tensor, Tensor]],
    *,
    roles_in: Collection[int] = ALL_ROLES,
    roles_out: Collection[int] = ALL_ROLES,
) -> tuple[Tensor, Tensor]:
    """New (x, edge table): ρ applied to node features and incoming edges of head nodes whose role is
    in ``roles_in``, ρ^{-1} to outgoing edges of head nodes whose role is in ``roles_out``.

    The edge table is the ragged ``edge_val [K]`` or a per-edge table ``[E, c]`` (the padded
    ``edge_attr``, or hidden edge features); the result has the same form. ``mats[g] = (A [H, d_k, d_k],
    B [H, d_v, d_v])`` for each head group g (indexed by head position; missing groups: identity).
    The default roles give the group action; a smaller set (e.g. A on Q without A^{-T} on K) is not a
    symmetry, which tests use to check that a partial action is caught.
    """
    if not mats:
        return x, edge_attr
    hm = HeadMatrices(mats, int(graph.sym_kind.numel()))
    x = _act_nodes(graph, x, hm, roles_in)
    if edge_attr.dim() == 1:
        return x, act_gl_edges(graph, edge_attr, graph.eblock_width, hm, roles_in, roles_out)
    c = edge_attr.size(1)
    width = torch.full_like(graph.eblock_width, c)
    return x, act_gl_edges(graph, edge_attr.reshape(-1), width, hm, roles_in, roles_out).view(-1, c)


__all__ = ["ALL_ROLES", "HeadMatrices", "act_gl_edges", "apply_gl", "head_dims", "sample_gl", "sample_signs"]
