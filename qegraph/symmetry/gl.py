r"""The continuous part of an attention head's symmetry: per-head GL matrices (DESIGN §4).

For head h with A ∈ GL(d_k) and B ∈ GL(d_v), every node of the head carries ρ_v: A on query
coordinates, A^{-T} on key coordinates, B on value coordinates. The action on the graph is

.. math::
    X_{blk} \mapsto \rho\, X_{blk}, \qquad E_{u \to v} \mapsto \rho_v\, E_{u \to v}\, \rho_u^{-1},

where X_blk is the d×5 node-feature block of one head and role, and an edge block is multiplied on
the left where its targets are head nodes and on the right where its sources are. In parameter
terms: W_Q^h ↦ A W_Q^h, b_Q^h ↦ A b_Q^h, W_K^h ↦ A^{-T} W_K^h, b_K^h ↦ A^{-T} b_K^h,
W_V^h ↦ B W_V^h, b_V^h ↦ B b_V^h, W_O[:, h] ↦ W_O[:, h] B^{-1}; scores q^T k and the attention output
are unchanged because (A q)^T (A^{-T} k) = q^T k and softmax weights sum to one.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import Tensor

from qegraph.errors import QegraphError
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
    dmax = torch.zeros(uniq.numel(), dtype=torch.long).scatter_reduce(0, inv, c + 1, reduce="amax")
    for k, d in zip(uniq.tolist(), dmax.tolist()):
        out.setdefault(k // 4, {})[k % 4] = d
    return out


class HeadMatrices:
    """ρ and ρ^{-1} per (group, role, head), from A, B per HEADS group."""

    def __init__(self, mats: dict[int, tuple[Tensor, Tensor]]) -> None:
        self.rho: dict[tuple[int, int], Tensor] = {}
        self.inv: dict[tuple[int, int], Tensor] = {}
        for g, (a, b) in mats.items():
            a_inv, b_inv = torch.linalg.inv(a), torch.linalg.inv(b)
            self.rho[g, int(GLRole.QUERY)], self.inv[g, int(GLRole.QUERY)] = a, a_inv
            self.rho[g, int(GLRole.KEY)], self.inv[g, int(GLRole.KEY)] = a_inv.transpose(-2, -1), a.transpose(-2, -1)
            self.rho[g, int(GLRole.VALUE)], self.inv[g, int(GLRole.VALUE)] = b, b_inv

    def get(self, g: int, role: int, heads: Tensor, inverse: bool, dtype: torch.dtype) -> Tensor:
        table = self.inv if inverse else self.rho
        if (g, role) not in table:
            raise QegraphError(f"no GL matrices for unit group {g} (role {GLRole(role).name})")
        return table[g, role][heads].to(dtype)


def _head_run(graph: ParameterGraph, start: int, n: int) -> tuple[int, int, int, Tensor] | None:
    """(group, role, d, heads) if nodes start … start+n−1 are whole head blocks of one role; None if
    no node is a head node; raises for a mixed range."""
    role = graph.gl_role[start : start + n]
    if not bool((role > 0).any()):
        return None
    r = int(role[0])
    coord = graph.gl_coord[start : start + n]
    group = graph.sym_group[start : start + n]
    d = int(coord.max()) + 1
    ok = (bool((role == r).all()) and n % d == 0 and bool((group == group[0]).all())
          and torch.equal(coord, torch.arange(n) % d))
    if not ok:
        raise QegraphError(f"nodes {start}…{start + n - 1} mix head and non-head units; cannot apply GL matrices")
    return int(group[0]), r, d, graph.sym_member[start : start + n : d]


def apply_gl(
    graph: ParameterGraph,
    x: Tensor,
    edge_attr: Tensor,
    mats: dict[int, tuple[Tensor, Tensor]],
    *,
    roles_in: Collection[int] = ALL_ROLES,
    roles_out: Collection[int] = ALL_ROLES,
) -> tuple[Tensor, Tensor]:
    """New (x, edge_attr): ρ applied to node features and incoming edges of head nodes whose role is in
    ``roles_in``, ρ^{-1} to outgoing edges of head nodes whose role is in ``roles_out``.

    ``mats[g] = (A [H, d_k, d_k], B [H, d_v, d_v])`` for each HEADS group g (indexed by head
    position). The default roles give the group action; a smaller set (e.g. A on Q without A^{-T} on
    K) is not a symmetry, which tests use to check that a partial action is caught.
    """
    if not mats:
        return x, edge_attr
    hm = HeadMatrices(mats)
    x = x.clone()
    edge_attr = edge_attr.clone()
    # node features, one run of head blocks per unit layer
    for u in _layers(graph):
        run = _head_run(graph, *u)
        if run is not None and run[1] in roles_in:
            g, r, d, heads = run
            blk = x[u[0] : u[0] + u[1]].view(-1, d, x.size(1))
            blk.copy_(hm.get(g, r, heads, False, x.dtype) @ blk)
    s = edge_attr.size(1)
    starts = torch.cumsum(graph.eblock_size, 0) - graph.eblock_size
    for i in range(graph.eblock_size.numel()):
        size, width = int(graph.eblock_size[i]), int(graph.eblock_width[i])
        src, nsrc, dst = int(graph.eblock_src[i]), int(graph.eblock_nsrc[i]), int(graph.eblock_dst[i])
        dense = bool(graph.eblock_dense[i])
        ndst = size // nsrc if dense else size
        src_run, dst_run = _head_run(graph, src, nsrc), _head_run(graph, dst, ndst)
        if (src_run is None and dst_run is None) or width == 0:
            continue
        if not dense:
            raise QegraphError(f"edge block {i}: a diagonal block with parameters touches head nodes")
        e = edge_attr[int(starts[i]) : int(starts[i]) + size].view(ndst, nsrc, s)
        if dst_run is not None and dst_run[1] in roles_in:
            g, r, d, heads = dst_run
            e.view(-1, d, nsrc * s).copy_(hm.get(g, r, heads, False, e.dtype) @ e.reshape(-1, d, nsrc * s))
        if src_run is not None and src_run[1] in roles_out:
            g, r, d, heads = src_run
            inv = hm.get(g, r, heads, True, e.dtype)
            e.copy_(torch.einsum("onis,nij->onjs", e.reshape(ndst, -1, d, s), inv).reshape(ndst, nsrc, s))
    return x, edge_attr


def _layers(graph: ParameterGraph) -> list[tuple[int, int]]:
    """(first node, count) of every maximal run of head nodes with the same group and role."""
    role = graph.gl_role
    sel = role > 0
    if not bool(sel.any()):
        return []
    key = torch.where(sel, graph.sym_group * 4 + role, -1)
    change = torch.ones_like(key, dtype=torch.bool)
    change[1:] = key[1:] != key[:-1]
    bounds = torch.nonzero(change).flatten().tolist() + [key.numel()]
    return [(a, b - a) for a, b in zip(bounds[:-1], bounds[1:]) if int(key[a]) >= 0]


__all__ = ["ALL_ROLES", "apply_gl", "head_dims", "sample_gl"]
