r"""Symmetry-aware comparison of checkpoints: align canonical graphs to a reference, measure distances.

After :func:`~qegraph.symmetry.canonical.canonicalize`, two networks of one architecture differ by
their weights *and* by an element of the finite residual group (permutations; signs of sign-symmetric
units). :func:`align` finds π with π·θ̂_b ≈ θ̂_a greedily, unit group by unit group in order of depth
(weight matching, as in Git Re-Basin): for unit group j with members m (units, or whole heads),

.. math::
    C_{m m'} = \min_{s \in S_j} \big\lVert f_a(m) - s\, f_b(m') \big\rVert^2, \qquad
    \sigma_j = \arg\min_{\sigma} \sum_m C_{m\,\sigma(m)}

(Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``), where f(m) concatenates, over the
member's nodes, its node parameters, its incoming edges from units already aligned (or fixed), read in
a's labelling, and its outgoing edges to fixed units; S_j = {±1} for SIGN groups, {1} otherwise
(attention heads are matched whole; their coordinate signs are fixed by the section).
:func:`canonical_distance` is then ‖θ̂_a − π·θ̂_b‖ / max(‖θ̂_a‖, ‖θ̂_b‖): zero (to round-off) exactly when
the two checkpoints are related by the network's symmetry group, invariant to every continuous and
discrete symmetry of either input. The matching is exact for networks that differ by a group element;
for unrelated networks it is the usual greedy layer-wise approximation of the best permutation.

:func:`align_batch` aligns every graph of a PyG batch of one architecture to one reference at once (the
features and costs of all graphs in one tensor; only the assignment problems are solved one by one).
``π.act(θ̂)`` is then a *section of the residual group* too: it depends only on the orbit of θ (up to
ties in the assignment, which generic weights do not have), which :class:`qegraph.nn.QuasiGMN` uses
with ``align=True``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from qegraph.errors import QegraphError
from qegraph.graph.parameter_graph import ParameterGraph
from qegraph.graph.types import SymKind
from qegraph.symmetry.canonical import is_canonical
from qegraph.symmetry.group import GroupElement, SymmetryGroup


def _check_single(g: ParameterGraph, name: str) -> None:
    if isinstance(g.meta, list):
        raise QegraphError(f"align(): graph {name} is a batch; pass single graphs (or use align_batch)")
    if not is_canonical(g):
        raise QegraphError(f"align(): graph {name} is not canonical; call qegraph.canonicalize() first")


def _check_batch(ref: ParameterGraph, batch: ParameterGraph, b: int) -> None:
    metas = batch.meta if isinstance(batch.meta, list) else [batch.meta]
    if not all(m.get("canonical") is not None for m in metas):
        raise QegraphError("align_batch(): the graphs are not canonical; call qegraph.canonicalize() first")
    same = (batch.num_nodes == b * ref.num_nodes and batch.edge_val.numel() == b * ref.edge_val.numel()
            and torch.equal(batch.sym_kind, ref.sym_kind.repeat(b))
            and torch.equal(batch.eblock_size, ref.eblock_size.repeat(b))
            and torch.equal(batch.eblock_width, ref.eblock_width.repeat(b)))
    if not same:
        raise QegraphError("align(): the graphs have a different architecture than the reference (unit layers "
                           "or edge blocks differ)")


class _GroupLayout:
    """Where the features of unit group j live: its nodes (grouped by member), and its edges from
    aligned (or fixed) units and to fixed units, with the column (other endpoint) of each."""

    def __init__(self, ref: ParameterGraph, j: int, node_done: Tensor, fixed: Tensor, ei: Tensor) -> None:
        in_group = ref.sym_group == j
        nodes = torch.nonzero(in_group).flatten()
        member = ref.sym_member[nodes]
        n = int(member.max()) + 1
        order = torch.argsort(member * ref.num_nodes + nodes)
        counts = torch.bincount(member, minlength=n)
        local = torch.empty_like(nodes)
        local[order] = torch.arange(nodes.numel()) - (torch.cumsum(counts, 0) - counts)[member[order]]
        incoming = in_group[ei[1]] & node_done[ei[0]]
        outgoing = in_group[ei[0]] & fixed[ei[1]]
        edges = torch.nonzero(incoming | outgoing).flatten()
        other = torch.where(incoming[edges], ei[0][edges], ei[1][edges])
        inner = torch.where(incoming[edges], ei[1][edges], ei[0][edges])
        cols, col = torch.unique(other, return_inverse=True)
        pos = torch.full((ref.num_nodes,), -1, dtype=torch.long)
        pos[nodes] = local
        mem = torch.full((ref.num_nodes,), -1, dtype=torch.long)
        mem[nodes] = member
        self.n, self.per, self.num_cols = n, int(local.max()) + 1, int(cols.numel())
        self.nodes, self.node_mem, self.node_pos = nodes, member, local
        self.edges, self.edge_mem, self.edge_pos, self.edge_col = edges, mem[inner], pos[inner], col
        self.in_group = in_group

    def features(self, x: Tensor, ea: Tensor) -> Tensor:
        """``[B, n, F]`` from ``x [B, N, 5]`` and ``ea [B, E, S]`` (float64)."""
        b, s = x.size(0), ea.size(2)
        xf = x.new_zeros(b, self.n, self.per, x.size(2))
        xf[:, self.node_mem, self.node_pos] = x[:, self.nodes]
        ef = ea.new_zeros(b, self.n, self.per, self.num_cols, s)
        ef[:, self.edge_mem, self.edge_pos, self.edge_col] = ea[:, self.edges]
        return torch.cat([xf.reshape(b, self.n, -1), ef.reshape(b, self.n, -1)], dim=2)


def align_batch(reference: ParameterGraph, batch: ParameterGraph) -> GroupElement:
    """π in the residual group of ``batch`` (canonical graphs, all of ``reference``'s architecture) with
    ``π.act(batch)`` closest to ``reference`` graph by graph. Needs ``scipy``."""
    from scipy.optimize import linear_sum_assignment

    _check_single(reference, "reference")
    reference = reference.to(batch.x.device)
    b = int(batch.num_graphs) if getattr(batch, "batch", None) is not None else 1
    _check_batch(reference, batch, b)
    ref_group = SymmetryGroup.of(reference)
    group = SymmetryGroup.of(batch)
    t = int(ref_group.ptr[-1])
    ident = ref_group.identity().perm
    perm = ident.repeat(b, 1)
    scale = torch.ones(b, t, dtype=torch.float64)
    ei = reference.edge_index
    depth = torch.zeros(len(ref_group), dtype=torch.long).scatter_reduce(0, reference.sym_group, reference.layer,
                                                                        reduce="amin", include_self=False)
    kinds = ref_group.kinds
    done = kinds == int(SymKind.FIXED)  # fixed units are aligned by position
    fixed = done[reference.sym_group]
    node_done = fixed.clone()
    n_nodes, n_edges = reference.num_nodes, reference.num_edges
    xa = (reference.x * reference.x_mask).to(torch.float64).unsqueeze(0)
    ea = reference.edge_attr.to(torch.float64).unsqueeze(0)
    for j in torch.argsort(depth, stable=True).tolist():
        if bool(done[j]):
            continue
        lay = _GroupLayout(reference, j, node_done, fixed, ei)
        # the batch read in the reference's labelling of the aligned units: node u of a is node π(u) of b
        acted = GroupElement(group, perm.reshape(-1), scale.reshape(-1)).act(batch)
        xb = (acted.x * acted.x_mask).to(torch.float64).view(b, n_nodes, -1)
        eb = acted.edge_attr.to(torch.float64).view(b, n_edges, -1)
        s = min(eb.size(2), ea.size(2))
        fa = lay.features(xa, ea[:, :, :s])  # [1, n, F]
        fb = lay.features(xb, eb[:, :, :s])  # [B, n, F]
        cost = torch.cdist(fa.expand(b, -1, -1), fb) ** 2  # [B, n, n]
        signs = torch.ones_like(cost)
        if int(kinds[j]) in (int(SymKind.SIGN), int(SymKind.NONZERO)):
            flipped = torch.cdist(fa.expand(b, -1, -1), -fb) ** 2
            signs = torch.where(flipped < cost, -1.0, 1.0).to(cost.dtype)
            cost = torch.minimum(cost, flipped)
        lo = int(ref_group.ptr[j])
        for i, c in enumerate(cost.cpu().numpy()):
            rows, cols = linear_sum_assignment(c)
            sigma = torch.as_tensor(np.asarray(cols)[np.argsort(rows)], dtype=torch.long)
            perm[i, lo : lo + lay.n] = sigma
            scale[i, lo : lo + lay.n] = signs[i].cpu()[torch.arange(lay.n), sigma]
        done[j] = True
        node_done |= lay.in_group
    return GroupElement(group, perm.reshape(-1), scale.reshape(-1))


def align(a: ParameterGraph, b: ParameterGraph) -> GroupElement:
    """π in the residual group of ``b`` with ``π.act(b)`` closest to ``a`` (both canonical, one architecture).

    See the module docstring for the matching. Needs ``scipy``."""
    _check_single(a, "a")
    _check_single(b, "b")
    return align_batch(a, b)


def _flat(g: ParameterGraph) -> Tensor:
    parts = [g.x[g.x_mask], g.edge_val]
    emb = getattr(g, "emb_attr", None)
    if emb is not None:
        parts.append(emb)
    return torch.cat(parts).to(torch.float64)


def canonical_distance(a: ParameterGraph, b: ParameterGraph) -> float:
    """‖θ̂_a − π·θ̂_b‖ / max(‖θ̂_a‖, ‖θ̂_b‖) with π = :func:`align` (a, b canonical, one architecture)."""
    el = align(a, b)
    va, vb = _flat(a), _flat(el.act(b))
    denom = max(float(va.norm()), float(vb.norm()), 1e-300)
    return float((va - vb).norm()) / denom


__all__ = ["align", "align_batch", "canonical_distance"]
