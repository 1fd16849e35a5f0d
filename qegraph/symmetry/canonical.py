r"""Canonical sections: one function-preserving representative per orbit of the continuous symmetries.

``canonicalize(θ) = (θ̂, κ)`` with κ·θ̂ = θ, where θ̂ computes the same function as θ and depends only
on the orbit of θ under the continuous part G_c of its group (DESIGN §1):

**Positive scalings** (SCALE unit groups, and the |λ| part of NONZERO ones; tied units share one
scale). With t = log q per unit slot, the acted parameters have squared norm

.. math::
    f(t) = \sum_v \lVert x_v\rVert^2 e^{2 t_v} + \sum_{u \to v} \lVert e_{uv}\rVert^2 e^{2(t_v - t_u)}
           + \sum_c \lVert E_{:,c}\rVert^2 e^{2 t_c},

a sum of exponentials of linear forms: strictly convex when every scalable unit has nonzero incoming
(weights or bias) and outgoing weights, with a Hessian shaped like a graph Laplacian. θ̂ is the
*balanced* point, the unique minimiser t* (the minimum-ℓ2-norm point of the orbit; equivalently every
unit's incoming squared norm equals its outgoing one). It is found by damped Newton steps with dense
per-graph Hessians (all graphs of a batch at once), to machine precision in a few steps. Since
f(t; g·θ) = f(t + log q_g; θ), the minimiser moves with g and θ̂ does not. Edges that touch attention
heads are left out of f, so that the balance of scales does not depend on the heads' GL gauges.

**Attention heads** (HEADS groups). Query/key of head h: X = [W_Q^h | b_Q^h], Y = [W_K^h | b_K^h]
(d_k rows; all incoming edge slots and node columns), whose scores depend only on M = XᵀY. With the
thin QR factorizations Xᵀ = Q_x R_x, Yᵀ = Q_y R_y and the SVD R_x R_yᵀ = U Σ Vᵀ,

.. math::
    \hat X = \Sigma^{1/2} (Q_x U)^\top, \qquad \hat Y = \Sigma^{1/2} (Q_y V)^\top, \qquad
    \hat X^\top \hat Y = M,

the balanced (minimum-norm, ‖X̂‖ = ‖Ŷ‖ = ‖M‖_*) factorization; Ŷ = A^{-T} Y for X̂ = A X, so it is a
group element. Q_x is never formed where R_x comes from the Cholesky factorization of the Gram matrix
XXᵀ = R_xᵀR_x (X̂ = Σ^{1/2} Uᵀ R_x^{-T} X), which is used when X is well conditioned
(:data:`GRAM_MAX_COND`); other heads take Householder QR. Value/output: the same with
M = W_O^h [W_V^h | b_V^h] (W_O^h ↦ W_O^h B^{-1} on the left factor). Coordinates are sorted by singular
value; the sign of each coordinate pair (q_i, k_i), (v_i, o_i) is fixed by making the entry of largest
magnitude of row i of X̂ (resp. of the value block) positive (on an exact tie of +a and −a: +a), so the
output is deterministic.

**What remains** (the residual group recorded on θ̂, ``symmetry_group(θ̂)``): permutations; sign flips
of tanh/sin units (SIGN stays SIGN, NONZERO becomes SIGN: a sign canonicalization would be
discontinuous); head permutations with per-coordinate joint sign flips of (q_i, k_i) and (v_i, o_i)
(``SymKind.HEAD_SIGNS``); SCALE becomes PERM. Then canonicalize(g·θ) = π(g)·canonicalize(θ) with π(g)
the permutation (and residual-sign) part of g.

**Not unique** (deterministic, finite, never NaN): a scalable unit whose incoming weights and bias or
whose outgoing weights are all exactly zero keeps its input scale (its term of f is unbounded below);
heads with rank-deficient X, Y, value block or W_O^h, or with exactly repeated singular values, get a
canonical form that still computes the same function, but the rotation inside a repeated singular
value is arbitrary, and for a rank-deficient head the gauge κ is only the least-squares map (κ·θ̂ ≠ θ
in the directions the function does not read).

Factorizations (Gram matrices, Cholesky, QR, SVD, Newton) are in float64; the d×d head transforms are
applied in the graph's dtype (for float32, their rounding matches that of the float32 input itself).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from qegraph.errors import QegraphError
from qegraph.graph.blocks import BlockTable
from qegraph.graph.parameter_graph import ParameterGraph
from qegraph.graph.types import GLRole, SymKind
from qegraph.symmetry.group import GroupElement, SymmetryGroup

#: SymKind of a unit group after canonicalization (the residual group).
RESIDUAL_KIND: dict[int, int] = {
    int(SymKind.FIXED): int(SymKind.FIXED),
    int(SymKind.PERM): int(SymKind.PERM),
    int(SymKind.SCALE): int(SymKind.PERM),
    int(SymKind.SIGN): int(SymKind.SIGN),
    int(SymKind.NONZERO): int(SymKind.SIGN),
    int(SymKind.HEADS): int(SymKind.HEAD_SIGNS),
    int(SymKind.HEAD_SIGNS): int(SymKind.HEAD_SIGNS),
}

_SCALABLE = (int(SymKind.SCALE), int(SymKind.NONZERO))

#: Largest number of entries of the batched dense Newton Hessian [graphs, n, n]; larger problems use
#: matrix-free conjugate gradients.
DENSE_HESSIAN_ENTRIES = 2**24


@dataclass
class CanonicalStats:
    """Diagnostics of one canonicalization: Newton iterations, the final gradient norm of f (relative
    to f), the largest and smallest gauge factors (positive scales; singular values of the head
    gauges), and the number of degenerate units left at their input scale."""

    iterations: int
    grad_norm: float
    gauge_max: float
    gauge_min: float
    degenerate_units: int


def residual_kinds(sym_kind: Tensor) -> Tensor:
    """``[G]`` SymKind of every unit group after canonicalization (see :data:`RESIDUAL_KIND`)."""
    table = torch.arange(max(RESIDUAL_KIND) + 1, device=sym_kind.device)
    for k, v in RESIDUAL_KIND.items():
        table[k] = v
    return table[sym_kind]


def is_canonical(graph: ParameterGraph) -> bool:
    """True if every graph (of a batch) was produced by :func:`canonicalize`."""
    metas = graph.meta if isinstance(graph.meta, list) else [graph.meta]
    return all(m.get("canonical") is not None for m in metas)


# ----------------------------------------------------------------------------------- scales
def _slots(graph: ParameterGraph) -> tuple[Tensor, Tensor]:
    """Global unit slot of every node and the SymKind of every slot."""
    sizes = graph.sym_size
    ptr = torch.cumsum(sizes, 0) - sizes
    return ptr[graph.sym_group] + graph.sym_member, torch.repeat_interleave(graph.sym_kind, sizes)


def _edge_sq_norms(graph: ParameterGraph) -> Tensor:
    """``[E]`` float64 squared norm of every edge's values (0 for parameter-free edges)."""
    width = graph.edge_width
    edge_of_value = torch.repeat_interleave(torch.arange(width.numel(), device=width.device), width)
    return torch.zeros(width.numel(), dtype=torch.float64, device=width.device).index_add_(
        0, edge_of_value, graph.edge_val.to(torch.float64) ** 2)


def _table_sq_norms(graph: ParameterGraph) -> tuple[Tensor, Tensor]:
    """(EMBED node, Σ_r E[r, c]²) for every column c of every embedding table."""
    emb = getattr(graph, "emb_attr", None)
    dev = graph.x.device
    if emb is None or emb.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=dev), torch.zeros(0, dtype=torch.float64, device=dev)
    sizes = graph.etable_rows * graph.etable_cols
    t = torch.repeat_interleave(torch.arange(sizes.numel(), device=dev), sizes)
    k = torch.arange(int(sizes.sum()), device=dev)
    node = graph.etable_node[t] + (k - graph.etable_start[t]) % graph.etable_cols[t]
    sq = torch.zeros(graph.num_nodes, dtype=torch.float64, device=dev).index_add_(0, node, emb.to(torch.float64) ** 2)
    cols = torch.unique(node)
    return cols, sq[cols]


@dataclass
class _Terms:
    """f(t) = Σ_k c_k exp(2(t[plus_k] − t[minus_k])) with t[−1] = 0, over variables of several graphs."""

    c: Tensor  # [K] float64 > 0
    plus: Tensor  # [K] variable or −1
    minus: Tensor  # [K] variable or −1
    num_vars: int
    var_graph: Tensor  # [V] graph of each variable
    var_local: Tensor  # [V] index of the variable inside its graph
    num_graphs: int
    max_local: int


def _scale_terms(graph: ParameterGraph, slot: Tensor, slot_kind: Tensor) -> tuple[_Terms, Tensor, int]:
    """The terms of f, the variable of every slot (−1: not scaled) and the number of degenerate slots."""
    dev = graph.x.device
    num_slots = slot_kind.numel()
    head = graph.gl_role > 0 if hasattr(graph, "gl_role") else torch.zeros(graph.num_nodes, dtype=torch.bool, device=dev)
    scalable = torch.zeros(num_slots, dtype=torch.bool, device=dev)
    for k in _SCALABLE:
        scalable |= slot_kind == k
    if not bool(scalable.any()):
        empty = torch.zeros(0, dtype=torch.long, device=dev)
        terms = _Terms(torch.zeros(0, dtype=torch.float64, device=dev), empty, empty, 0, empty, empty, 1, 0)
        return terms, torch.full((num_slots,), -1, dtype=torch.long, device=dev), 0
    ei = graph.edge_index
    node_c = (graph.x.to(torch.float64) * graph.x_mask).pow(2).sum(1)
    cols, col_c = _table_sq_norms(graph)
    node_c = node_c.index_add(0, cols, col_c)
    edge_c = _edge_sq_norms(graph)
    keep = (edge_c > 0) & ~head[ei[0]] & ~head[ei[1]]
    e_src, e_dst, e_c = ei[0][keep], ei[1][keep], edge_c[keep]

    def var_terms(var_of_slot: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        node_var = var_of_slot[slot]
        n_sel = (node_var >= 0) & (node_c > 0)
        plus = torch.cat([node_var[n_sel], node_var[e_dst]])
        minus = torch.cat([torch.full((int(n_sel.sum()),), -1, dtype=torch.long, device=dev), node_var[e_src]])
        c = torch.cat([node_c[n_sel], e_c])
        live = ((plus >= 0) | (minus >= 0)) & (plus != minus)
        return c[live], plus[live], minus[live]

    var_of_slot = torch.where(scalable, torch.arange(num_slots, device=dev), -1)
    c, plus, minus = var_terms(var_of_slot)
    has_in = torch.zeros(num_slots + 1, dtype=torch.bool, device=dev)
    has_out = torch.zeros(num_slots + 1, dtype=torch.bool, device=dev)
    has_in[plus.clamp(min=-1)] = True  # index −1 writes the spare last entry
    has_out[minus.clamp(min=-1)] = True
    ok = scalable & has_in[:-1] & has_out[:-1]
    degenerate = int((scalable & ~ok).sum())
    var_of_slot = torch.where(ok, torch.cumsum(ok.long(), 0) - 1, -1)
    c, plus, minus = var_terms(var_of_slot)
    num_vars = int(ok.sum())
    # graph of every variable: the graph of any node of its slot
    batch = getattr(graph, "batch", None)
    node_graph = batch if batch is not None else torch.zeros(graph.num_nodes, dtype=torch.long, device=dev)
    slot_graph = torch.zeros(num_slots, dtype=torch.long, device=dev).index_put_((slot,), node_graph)
    var_graph = slot_graph[ok]
    num_graphs = int(graph.num_graphs) if batch is not None else 1
    counts = torch.bincount(var_graph, minlength=num_graphs)
    first = torch.cumsum(counts, 0) - counts
    var_local = torch.arange(num_vars, device=dev) - first[var_graph]
    terms = _Terms(c, plus, minus, num_vars, var_graph, var_local, num_graphs, int(counts.max()) if num_vars else 0)
    return terms, var_of_slot, degenerate


def _lin(t: Tensor, plus: Tensor, minus: Tensor) -> Tensor:
    """a_k·t for every term (t[−1] = 0)."""
    tp = torch.cat([t, t.new_zeros(1)])
    return tp[plus] - tp[minus]


def _term_graph(terms: _Terms) -> Tensor:
    v = torch.where(terms.plus >= 0, terms.plus, terms.minus)
    return terms.var_graph[v]


def _newton(terms: _Terms, max_iter: int = 100, tol: float = 1e-24) -> tuple[Tensor, int, float]:
    """Minimise f with damped Newton steps, all graphs at once (dense Hessian per graph, backtracking
    per graph). A graph is done after a full step taken once its Newton decrement −∇f·δ is below
    ``tol``·f (then |δ| ≈ 1e-12 and the step lands at machine precision). Returns t*, the number of
    iterations and the largest final ‖∇f‖/f."""
    dev = terms.c.device
    t = torch.zeros(terms.num_vars, dtype=torch.float64, device=dev)
    if terms.num_vars == 0:
        return t, 0, 0.0
    log_c = torch.log(terms.c)
    tg = _term_graph(terms)
    b, n = terms.num_graphs, terms.max_local
    plus, minus = terms.plus, terms.minus
    has_p, has_m = plus >= 0, minus >= 0
    both = has_p & has_m
    pv, mv = plus[has_p], minus[has_m]
    lp, lm = terms.var_local[plus.clamp(min=0)], terms.var_local[minus.clamp(min=0)]
    vg, vl = terms.var_graph, terms.var_local
    counts = torch.bincount(vg, minlength=b)
    pad = torch.arange(n, device=dev).unsqueeze(0) >= counts.unsqueeze(1)
    done = counts == 0
    dense = b * n * n <= DENSE_HESSIAN_ENTRIES

    def per_graph(w: Tensor) -> Tensor:
        return torch.zeros(b, dtype=torch.float64, device=dev).index_add_(0, tg, w)

    gnorm = 0.0
    it = 0
    for it in range(1, max_iter + 1):
        w = torch.exp(log_c + 2 * _lin(t, plus, minus))  # [K]
        f0 = per_graph(w)
        grad = torch.zeros(terms.num_vars, dtype=torch.float64, device=dev)
        grad.index_add_(0, pv, 2 * w[has_p]).index_add_(0, mv, -2 * w[has_m])
        g_pad = torch.zeros(b, n, dtype=torch.float64, device=dev)
        g_pad[vg, vl] = grad
        gnorm = float((g_pad.norm(dim=1) / f0.clamp(min=1e-300)).max())
        h4 = 4 * w
        if dense:
            hess = torch.zeros(b, n, n, dtype=torch.float64, device=dev)
            hess.index_put_((tg[has_p], lp[has_p], lp[has_p]), h4[has_p], accumulate=True)
            hess.index_put_((tg[has_m], lm[has_m], lm[has_m]), h4[has_m], accumulate=True)
            hess.index_put_((tg[both], lp[both], lm[both]), -h4[both], accumulate=True)
            hess.index_put_((tg[both], lm[both], lp[both]), -h4[both], accumulate=True)
            diag = torch.diagonal(hess, dim1=1, dim2=2)
            diag += torch.where(pad, 1.0, 1e-14 * diag.abs().amax(1, keepdim=True))  # padding rows: identity
            step_pad = -torch.linalg.solve(hess, g_pad.unsqueeze(2)).squeeze(2)
        else:
            step = -_cg(h4, plus, minus, grad, terms.num_vars)
            step_pad = torch.zeros(b, n, dtype=torch.float64, device=dev)
            step_pad[vg, vl] = step
        dec = -(g_pad * step_pad).sum(1)
        final = dec <= tol * f0
        step = step_pad[vg, vl] * (~done)[vg]
        # backtracking on graphs that are not converged (f is convex: a full step is accepted near t*)
        alpha = torch.ones(b, dtype=torch.float64, device=dev)
        search = ~final & ~done
        for _ in range(60):
            if not bool(search.any()):
                break
            f1 = per_graph(torch.exp(log_c + 2 * _lin(t + alpha[vg] * step, plus, minus)))
            bad = search & ~(f1 <= f0 - 1e-4 * alpha * dec + 1e-13 * f0)  # Armijo, round-off slack
            alpha = torch.where(bad, alpha / 2, alpha)
            search = bad
        t = t + alpha[vg] * step
        done = done | final
        if bool(done.all()):
            break
    return t, it, gnorm


def _cg(h4: Tensor, plus: Tensor, minus: Tensor, rhs: Tensor, num_vars: int, rtol: float = 1e-14,
        max_iter: int = 2000) -> Tensor:
    """Solve H δ = rhs by Jacobi-preconditioned conjugate gradients with the matrix-free product
    H v = Σ_k h_k (v[plus_k] − v[minus_k]) a_k (h_k = 4 c_k e^{2 a_k·t}; v[−1] = 0)."""
    dev = rhs.device
    has_p, has_m = plus >= 0, minus >= 0
    pv, mv = plus[has_p], minus[has_m]
    diag = torch.zeros(num_vars, dtype=torch.float64, device=dev).index_add_(0, pv, h4[has_p]).index_add_(0, mv, h4[has_m])
    diag = diag + 1e-14 * diag.max()

    def matvec(v: Tensor) -> Tensor:
        r = h4 * _lin(v, plus, minus)
        return torch.zeros(num_vars, dtype=torch.float64, device=dev).index_add_(0, pv, r[has_p]).index_add_(0, mv, -r[has_m])

    x = torch.zeros_like(rhs)
    r = rhs.clone()
    z = r / diag
    p = z.clone()
    rz = torch.dot(r, z)
    stop = rtol * float(rhs.norm())
    for _ in range(max_iter):
        if float(r.norm()) <= stop:
            break
        hp = matvec(p) + 1e-14 * diag * p
        alpha = rz / torch.dot(p, hp)
        x += alpha * p
        r -= alpha * hp
        z = r / diag
        rz_new = torch.dot(r, z)
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x


# ----------------------------------------------------------------------------------- heads
@dataclass
class _Blocks:
    """Head blocks of one role and head dim d: first node of each block, its (group, head)."""

    start: Tensor  # [B] first node
    group: Tensor  # [B]
    head: Tensor  # [B]
    d: int


def _head_blocks(graph: ParameterGraph, role: int) -> list[_Blocks]:
    """The blocks of one GL role, grouped by head dim d (d = ``max(gl_coord) + 1`` over the nodes of
    that role in the block's unit group; the d nodes of a block are consecutive)."""
    sel = graph.gl_role == role
    if not bool(sel.any()):
        return []
    g = graph.sym_group
    dmax = torch.zeros(int(graph.sym_kind.numel()), dtype=torch.long, device=g.device)
    dmax.scatter_reduce_(0, g[sel], graph.gl_coord[sel] + 1, reduce="amax")
    starts = torch.nonzero(sel & (graph.gl_coord == 0)).flatten()
    d_all = dmax[g[starts]]
    out = []
    for d in torch.unique(d_all).tolist():
        st = starts[d_all == d]
        out.append(_Blocks(st, g[st], graph.sym_member[st], int(d)))
    return out


def _pair_blocks(q: _Blocks, k: _Blocks) -> tuple[_Blocks, _Blocks]:
    """The query and key blocks of the same (group, head), in matching order (unpaired ones dropped)."""
    big = int(max(q.head.max(), k.head.max())) + 1
    kq, kk = q.group * big + q.head, k.group * big + k.head
    order = torch.argsort(kk)
    pos = torch.searchsorted(kk[order], kq).clamp(max=kk.numel() - 1)
    match = kk[order][pos] == kq
    ki = order[pos][match]
    return (_Blocks(q.start[match], q.group[match], q.head[match], q.d),
            _Blocks(k.start[ki], k.group[ki], k.head[ki], k.d))


@dataclass
class _Uniform:
    """Every node's values are ``first[n] + (j·step + i)`` for j < ``deg``, i < ``width``."""

    first: Tensor  # [n]
    deg: int
    width: int
    step: int

    def positions(self) -> Tensor:
        """``[n, deg·width]`` value positions."""
        dev = self.first.device
        pattern = (torch.arange(self.deg, device=dev).unsqueeze(1) * self.step
                   + torch.arange(self.width, device=dev)).reshape(-1)
        return self.first.unsqueeze(1) + pattern

    def view(self, shape: tuple[int, int]) -> tuple[tuple[int, ...], tuple[int, ...], int] | None:
        """``(size, stride, offset)`` of one strided ``[B, d, deg, width]`` array holding the values of
        the nodes arranged as ``shape`` = (B, d), when ``first`` is affine in (block, row); else ``None``.
        (The arrays of distinct nodes never overlap: every value belongs to one node on a side.)"""
        f = self.first.view(shape)
        sb = int(f[1, 0] - f[0, 0]) if shape[0] > 1 else 0
        si = int(f[0, 1] - f[0, 0]) if shape[1] > 1 else 0
        ar = lambda m: torch.arange(m, device=f.device)  # noqa: E731
        if sb < 0 or si < 0 or not torch.equal(f, f[0, 0] + ar(shape[0]).unsqueeze(1) * sb + ar(shape[1]) * si):
            return None  # (as_strided takes no negative strides)
        return (*shape, self.deg, self.width), (sb, si, self.step, 1), int(f[0, 0])


def _uniform_positions(bt: BlockTable, nodes: Tensor, side: str) -> _Uniform | None:
    """The value positions of :func:`_value_positions` (validity aside) when every node lies in exactly one block with
    values (on ``side``; parameter-free blocks hold none) and all of them have the same degree, width and
    stride (attention projections: a row, or a column, of one weight matrix): ``first[n] + pattern``, no
    per-edge arithmetic. ``None`` otherwise.

    In block b, target t_b + o holds the values v_b + (o·p + [0, p))·w (contiguous); source
    s_b + g·p + i holds v_b + ((g·r + j)·p + i)·w + [0, w), j ∈ [0, r) (stride p·w)."""
    lo, cnt = (bt.dst, bt.ndst) if side == "dst" else (bt.src, bt.nsrc)
    lo_n, hi_n = torch.aminmax(nodes)
    cand = torch.nonzero((lo <= hi_n) & (lo + cnt > lo_n) & (bt.size > 0) & (bt.width > 0)).flatten()  # [B']
    rel = nodes.unsqueeze(1) - lo[cand].unsqueeze(0)  # [n, B']
    inside = (rel >= 0) & (rel < cnt[cand].unsqueeze(0))
    if not bool((inside.sum(1) == 1).all()):
        return None
    pick = inside.to(torch.uint8).argmax(1)
    blk = cand[pick]
    r = rel.gather(1, pick.unsqueeze(1)).squeeze(1)
    per, rpg, w = bt.per[blk], bt.rpg[blk], bt.width[blk]
    deg, step = (per, w) if side == "dst" else (rpg, per * w)
    key = torch.stack([deg, w, step])
    if not bool((key == key[:, :1]).all()):
        return None
    if side == "dst":
        first = bt.voff[blk] + r * per * w
    else:
        g = torch.div(r, per, rounding_mode="floor")
        first = bt.voff[blk] + (g * rpg * per + r - g * per) * w
    d0, w0, s0 = (int(v) for v in key[:, 0])
    return _Uniform(first, d0, w0, s0)


def _incident(bt: BlockTable, nodes: Tensor, side: str) -> tuple[Tensor, Tensor]:
    """``[len(nodes), max_deg]`` ids of the edges entering (``side="dst"``) or leaving (``"src"``) every
    node, in edge-id order (−1 padding), and the block of each (broadcastable to the ids), from the
    block table alone (no per-edge index is built).

    In block b (module docstring of :mod:`qegraph.graph.blocks`), target t = t_b + o receives the
    contiguous edges k = o·p + [0, p); source s = s_b + g·p + i (group g, position i) sends the edges
    k = (g·r + [0, r))·p + i."""
    dev = nodes.device
    if nodes.numel() == 0 or bt.num_blocks == 0:
        empty = torch.full((nodes.numel(), 0), -1, dtype=torch.long, device=dev)
        return empty, empty
    lo, n = (bt.dst, bt.ndst) if side == "dst" else (bt.src, bt.nsrc)
    rel = nodes.unsqueeze(1) - lo.unsqueeze(0)  # [n, B]
    inside = (rel >= 0) & (rel < n.unsqueeze(0)) & (bt.size > 0).unsqueeze(0)
    cnt = torch.where(inside, (bt.per if side == "dst" else bt.rpg).unsqueeze(0), 0)
    cum = torch.cumsum(cnt, 1)
    deg = cum[:, -1:]
    j = torch.arange(int(deg.max()), device=dev).unsqueeze(0).expand(nodes.numel(), -1).contiguous()
    blk = torch.searchsorted(cum, j, right=True).clamp(max=bt.num_blocks - 1)  # [n, k]
    off = j - (cum.gather(1, blk) - cnt.gather(1, blk))
    r = rel.gather(1, blk)
    per = bt.per[blk]
    if side == "dst":
        edge = bt.eoff[blk] + r * per + off
    else:
        g = torch.div(r, per, rounding_mode="floor")
        edge = bt.eoff[blk] + (g * bt.rpg[blk] + off) * per + (r - g * per)
    return torch.where(j < deg, edge, -1), blk


def _value_positions(bt: BlockTable, nodes: Tensor, side: str) -> tuple[Tensor, Tensor]:
    """``[len(nodes), L]`` positions in ``edge_val`` of the values of the edges entering (``"dst"``) or
    leaving (``"src"``) every node (edges in id order, each edge's slots in order, padded to the largest
    width and degree) and their validity (invalid positions are 0), for any block layout."""
    edges, blk = _incident(bt, nodes, side)
    width = bt.width[blk]
    w = max(1, int(width.max())) if width.numel() else 1
    ar = torch.arange(w, device=nodes.device)
    pos = (bt.voff[blk] + (edges - bt.eoff[blk]) * width).unsqueeze(-1) + ar
    valid = ((ar < width.unsqueeze(-1)) & (edges >= 0).unsqueeze(-1)).reshape(nodes.numel(), -1)
    return torch.where(valid, pos.reshape(valid.shape), 0), valid


@dataclass
class _Rows:
    """The feature rows of some head nodes: where their incident edges' values lie in ``edge_val``
    (one strided array, or positions and validity) and whether their node columns follow."""

    nodes: Tensor
    length: int  # L: values per row
    pos: Tensor | None = None  # [n, L]; None: ``strided`` holds the values
    valid: Tensor | None = None  # [n, L]; None: all valid
    strided: tuple[tuple[int, ...], tuple[int, ...], int] | None = None  # as_strided (size, stride, offset)
    with_nodes: bool = False


class _Features:
    """Read the rows of head blocks from a graph's (x, edge_val) as dense matrices (incident edges' values
    from the ragged ``edge_val``, then node columns) and write balanced rows into new tables.

    Every value belongs to at most one written row (one side of one head node), and values are read from
    the input, so the output ``edge_val`` is never a full copy first: rows that are one dense range of
    ``edge_val`` are written in place, everything else is copied from the input by :meth:`finish`, after
    which the rows of other layouts are scattered."""

    def __init__(self, graph: ParameterGraph) -> None:
        self.bt = graph.block_table
        self.x, self.x_mask, self.src = graph.x.clone(), graph.x_mask, graph.edge_val
        self.val = torch.empty_like(self.src)
        self.dense: list[tuple[int, int]] = []  # written ranges [start, end) of val
        self.deferred: list[tuple[_Rows, Tensor]] = []

    def rows(self, nodes: Tensor, shape: tuple[int, int], side: str, with_nodes: bool) -> _Rows:
        """The rows of ``nodes`` (arranged as ``shape`` = (blocks, d)) with the edges of ``side``: one
        strided view of ``edge_val`` when the layout allows it (attention projections of one weight
        matrix), else value positions (see :func:`_value_positions`)."""
        if nodes.numel() > 0 and self.bt.num_blocks > 0:
            uniform = _uniform_positions(self.bt, nodes, side)
            if uniform is not None:
                length = uniform.deg * uniform.width
                strided = uniform.view(shape)
                if strided is not None:
                    return _Rows(nodes, length, strided=strided, with_nodes=with_nodes)
                return _Rows(nodes, length, pos=uniform.positions(), with_nodes=with_nodes)
        pos, valid = _value_positions(self.bt, nodes, side)
        return _Rows(nodes, pos.size(1), pos=pos, valid=valid, with_nodes=with_nodes)

    @staticmethod
    def _view(val: Tensor, rows: _Rows) -> Tensor:
        size, stride, offset = rows.strided  # type: ignore[misc]
        return val.as_strided(size, stride, val.storage_offset() + offset)

    def read(self, rows: _Rows) -> Tensor:
        """``[n, F]`` in the dtype of ``edge_val``: per node its incident edges' values, then
        (``with_nodes``) its node columns; zeros where invalid."""
        n, length = rows.nodes.numel(), rows.length
        out = torch.empty(n, length + (self.x.size(1) if rows.with_nodes else 0), dtype=self.src.dtype,
                          device=self.src.device)
        if rows.pos is None:
            view = self._view(self.src, rows)
            out.view(view.shape[:2] + (-1,))[:, :, :length].view(view.shape).copy_(view)
        else:
            out[:, :length] = self.src.index_select(0, rows.pos.view(-1)).view(n, length)
            if rows.valid is not None:
                out[:, :length].masked_fill_(~rows.valid, 0.0)
        if rows.with_nodes:
            out[:, length:] = self.x[rows.nodes] * self.x_mask[rows.nodes]
        return out

    def write(self, rows: _Rows, values: Tensor) -> None:
        """Inverse of :meth:`read` for the valid entries (``values`` [n, F'] with F' ≥ F), into the new
        tables."""
        length = rows.length
        if rows.with_nodes:
            m = self.x_mask[rows.nodes]
            xv = values[:, length : length + self.x.size(1)].to(self.x.dtype)
            self.x[rows.nodes] = torch.where(m, xv, self.x[rows.nodes])
        if rows.pos is None:
            size, stride, offset = rows.strided  # type: ignore[misc]
            extent = 1 + sum((a - 1) * b for a, b in zip(size, stride))
            if extent == rows.nodes.numel() * length:  # distinct values filling [offset, offset + extent)
                view = self._view(self.val, rows)
                view.copy_(values.view(view.shape[:2] + (-1,))[:, :, :length].view(view.shape))
                self.dense.append((offset, offset + extent))
                return
        self.deferred.append((rows, values[:, :length].to(self.val.dtype)))

    def finish(self) -> tuple[Tensor, Tensor]:
        """The new (x, edge_val): values no dense row wrote are copied from the input, then the other rows
        are written."""
        end = 0
        for lo, hi in sorted(self.dense) + [(self.src.numel(), self.src.numel())]:
            if lo < end:
                raise QegraphError("canonicalize: two head blocks write the same values of edge_val (a "
                                   "graph whose attention heads share parameters is not supported)")
            if lo > end:
                self.val[end:lo].copy_(self.src[end:lo])
            end = hi
        for rows, ev in self.deferred:
            if rows.pos is None:
                view = self._view(self.val, rows)
                view.copy_(ev.view(view.shape))
            elif rows.valid is None:
                self.val.scatter_(0, rows.pos.view(-1), ev.reshape(-1))
            else:
                self.val.scatter_(0, rows.pos[rows.valid], ev[rows.valid])
        return self.x, self.val


def _stack(feat: _Features, blocks: _Blocks, side: str, with_nodes: bool) -> tuple[Tensor, _Rows]:
    """X of every block: ``[B, d, F]`` (the graph's dtype; row i: the features of the block's node i) and
    its rows."""
    shape = (blocks.start.numel(), blocks.d)
    nodes = (blocks.start.unsqueeze(1) + torch.arange(blocks.d, device=blocks.start.device)).reshape(-1)
    rows = feat.rows(nodes, shape, side, with_nodes)
    return feat.read(rows).view(*shape, -1), rows


#: Largest bound ‖G‖_F^{1/2}·‖R⁻¹‖_F (≥ κ₂(X)) for which a head block X is triangularized through its
#: Gram matrix G = XXᵀ = RᵀR (Cholesky; its error grows like κ₂(X)²·ε). Others, rank-deficient ones
#: included, use Householder QR of Xᵀ.
GRAM_MAX_COND = 1e3


def _gram_factor(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Upper triangular R with RᵀR = XXᵀ (Cholesky, float64) of every block X = ``x`` [B, d, F], R⁻¹, and
    whether it is well enough conditioned (:data:`GRAM_MAX_COND`) to be used."""
    x = x.double()
    gram = x @ x.transpose(1, 2)
    low, info = torch.linalg.cholesky_ex(gram)
    r = low.transpose(1, 2)
    eye = torch.eye(x.size(1), dtype=x.dtype, device=x.device).expand_as(r)
    r_inv = torch.linalg.solve_triangular(r, eye, upper=True)
    cond = torch.linalg.matrix_norm(gram).sqrt() * torch.linalg.matrix_norm(r_inv)
    return r, r_inv, (info == 0) & torch.isfinite(cond) & (cond <= GRAM_MAX_COND)


@dataclass
class _Factor:
    """R [B, d, d] upper triangular with RᵀR = XXᵀ for blocks X [B, d, F]: R⁻¹ where the Gram route is
    taken, and for the other blocks ``qr`` ([B] bool) Q of the Householder QR Xᵀ = QR (Xᵀ padded with
    zero features to at least d rows), ``[#qr, max(F, d), d]`` (all float64)."""

    r: Tensor
    r_inv: Tensor
    q: Tensor
    qr: Tensor


def _factor(x: Tensor) -> _Factor:
    """The :class:`_Factor` of X = ``x`` [B, d, F]."""
    r, r_inv, ok = _gram_factor(x)
    qr = ~ok
    if not bool(qr.any()):
        return _Factor(r, r_inv, r.new_zeros(0, max(x.size(2), x.size(1)), x.size(1)), qr)
    xt = x[qr].double().transpose(1, 2)
    if xt.size(1) < xt.size(2):  # fewer features than coordinates: pad with zero features
        xt = torch.cat([xt, xt.new_zeros(xt.size(0), xt.size(2) - xt.size(1), xt.size(2))], dim=1)
    q, r_qr = torch.linalg.qr(xt)
    r = torch.where(qr.view(-1, 1, 1), 0.0, r)  # no NaN of a failed Cholesky survives
    r[qr] = r_qr
    return _Factor(r, r_inv, q, qr)


def _rotated(x: Tensor, f: _Factor, c: Tensor) -> Tensor:
    """cᵀ R⁻ᵀ X (= (Q c)ᵀ) of every block X = ``x`` (``f = _factor(x)``; c [B, d, d]): ``[B, d, F]`` in
    the dtype of ``x``. The d×d transform is formed in float64 and applied in that dtype: for a float32
    X its rounding is that of the float32 input itself (X's own rounding error goes through the same
    transform)."""
    if not bool(f.qr.any()):
        return (f.r_inv @ c).transpose(1, 2).to(x.dtype) @ x
    out = torch.empty_like(x)
    ok = ~f.qr
    if bool(ok.any()):
        out[ok] = (f.r_inv[ok] @ c[ok]).transpose(1, 2).to(x.dtype) @ x[ok]
    out[f.qr] = (f.q @ c[f.qr]).transpose(1, 2)[:, :, : x.size(2)].to(x.dtype)
    return out


#: Largest σ_max/σ_min of a d×d balancing matrix M whose SVD is taken from the eigendecomposition of MᵀM
#: (MV = UΣ; relative error ~ ε·cond², half the time of LAPACK's SVD for d = 64); others, singular ones
#: included, use :func:`torch.linalg.svd`.
EIGH_MAX_COND = 1e2


def _svd(m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """U, σ (descending), Vᵀ of every ``m`` [B, d, d] (float64; see :data:`EIGH_MAX_COND`)."""
    w, v = torch.linalg.eigh(m.transpose(1, 2) @ m)
    v = v.flip(-1)
    mv = m @ v
    s = torch.linalg.vector_norm(mv, dim=1)  # [B, d], = σ up to the order of w
    ok = (w[:, 0] > 0) & (s.amax(1) <= EIGH_MAX_COND * s.amin(1)) & torch.isfinite(s).all(1)
    ok &= (s[:, 1:] <= s[:, :-1]).all(1)  # eigenvalue order agrees with the computed σ
    u = mv / s.clamp(min=1e-300).unsqueeze(1)
    vh = v.transpose(1, 2)
    if not bool(ok.all()):
        bad = ~ok
        u_b, s_b, vh_b = torch.linalg.svd(m[bad])
        u, s, vh = u.clone(), s.clone(), vh.clone()
        u[bad], s[bad], vh[bad] = u_b, s_b, vh_b
    return u, s, vh


def _balanced(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """For X = ``x`` [B, d, F1] and Y = ``y`` [B, d, F2]: (X̂, Ŷ, κ_X, σ) with X̂ᵀŶ = XᵀY balanced,
    X̂ = Σ^{1/2}(Q_x U)ᵀ = Σ^{1/2} Uᵀ R_x⁻ᵀ X, and κ_X [B, d, d] with κ_X X̂ = X (least squares if
    singular). Signs: the entry of largest magnitude of every row of X̂ is positive (the largest entry,
    on an exact tie with the most negative one). X̂, Ŷ in the dtype of X, Y; κ, σ float64."""
    fx, fy = _factor(x), _factor(y)
    u, s, vh = _svd(fx.r @ fy.r.transpose(1, 2))
    sq = s.sqrt()
    xh = _rotated(x, fx, u * sq.unsqueeze(1))
    lo, hi = torch.aminmax(xh, dim=2)
    sign = torch.where(hi >= -lo, 1.0, -1.0).to(torch.float64)  # [B, d]
    xh.mul_(sign.unsqueeze(2).to(xh.dtype))
    yh = _rotated(y, fy, vh.transpose(1, 2) * (sq * sign).unsqueeze(1))
    inv_sq = torch.where(sq > 0, 1 / sq.clamp(min=1e-300), torch.zeros_like(sq))
    kappa = fx.r.transpose(1, 2) @ (u * (sign * inv_sq).unsqueeze(1))  # R_xᵀ U S Σ^{+1/2}
    return xh, yh, kappa, s


def _canonical_heads(graph: ParameterGraph) -> tuple[Tensor, Tensor, dict[int, dict[int, Tensor]], list[Tensor]]:
    """Balanced head blocks in new (x, edge_val) tables; returns the new tables, the gauge matrices κ per
    (group → role → [H, d, d]) and the singular values of every block."""
    if not hasattr(graph, "gl_role") or not bool((graph.gl_role > 0).any()):
        return graph.x, graph.edge_val, {}, []
    feat = _Features(graph)
    kappas: dict[int, dict[int, Tensor]] = {}
    sigmas: list[Tensor] = []

    def record(blocks: _Blocks, role: int, kappa: Tensor) -> None:
        for j in torch.unique(blocks.group).tolist():
            m = blocks.group == j
            h = int(graph.sym_size[j])
            table = kappas.setdefault(j, {})
            if role not in table:
                table[role] = torch.eye(blocks.d, dtype=torch.float64, device=graph.x.device).repeat(h, 1, 1)
            table[role][blocks.head[m]] = kappa[m]

    def store(rows: _Rows, xh: Tensor) -> None:
        feat.write(rows, xh.reshape(rows.nodes.numel(), -1))

    def balance(left: tuple[Tensor, _Rows], right: tuple[Tensor, _Rows], blocks: _Blocks, role: int) -> None:
        """Balance the pairs (X, Y) of ``blocks``, write X̂ and Ŷ back and record κ and σ."""
        xh, yh, kappa, s = _balanced(left[0], right[0])
        store(left[1], xh)
        store(right[1], yh)
        record(blocks, role, kappa)
        sigmas.append(s.flatten())

    bt = feat.bt
    width = int((bt.per * bt.width.clamp(min=1)).max()) if bt.num_blocks else 1  # features per row, roughly
    # query / key: pair each query block with the key block of the same (group, head)
    kb = {b.d: b for b in _head_blocks(graph, int(GLRole.KEY))}
    for q_all in _head_blocks(graph, int(GLRole.QUERY)):
        if q_all.d not in kb:
            continue
        for q, k in _chunks(*_pair_blocks(q_all, kb[q_all.d]), width=width):
            balance(_stack(feat, q, "dst", True), _stack(feat, k, "dst", True), q, int(GLRole.QUERY))
    # value / output: M = W_O^h [W_V^h | b_V^h]; the left factor is the out rows (E ↦ E B^{-1})
    for v_all in _head_blocks(graph, int(GLRole.VALUE)):
        for (v,) in _chunks(v_all, width=width):
            balance(_stack(feat, v, "dst", True), _stack(feat, v, "src", False), v, int(GLRole.VALUE))
    x, val = feat.finish()
    return x, val, kappas, sigmas


#: Values of one side of the head blocks processed at once (at most, estimated with the widest row of the
#: graph): bounds the temporaries while keeping the heads of one layer together in graphs of BERT size.
HEAD_CHUNK = 1 << 23


def _chunks(*blocks: _Blocks, width: int) -> Iterator[tuple[_Blocks, ...]]:
    """Consecutive slices of aligned block lists (the same slice of each), at least one block and about
    :data:`HEAD_CHUNK` values (``width`` per node) per slice, never across unit groups (the heads of one
    attention layer usually form one dense range of ``edge_val``, written in place: :class:`_Features`)."""
    n = max(1, HEAD_CHUNK // (blocks[0].d * max(width, 1)))
    group = blocks[0].group
    cuts = (torch.nonzero(group[1:] != group[:-1]).flatten() + 1).tolist()
    for lo, hi in zip([0, *cuts], [*cuts, group.numel()]):
        for i in range(lo, hi, n):
            j = min(i + n, hi)
            yield tuple(_Blocks(b.start[i:j], b.group[i:j], b.head[i:j], b.d) for b in blocks)


# ----------------------------------------------------------------------------------- API
def canonicalize(graph: ParameterGraph, *, max_iter: int = 100) -> tuple[ParameterGraph, GroupElement]:
    """The canonical representative θ̂ of ``graph``'s orbit and the gauge κ with ``κ.act(θ̂) == graph``.

    Works on a single graph or a PyG batch of any mix of architectures (all graphs at once). θ̂ has the
    same structure and computes the same function; its unit groups carry the residual group
    (:data:`RESIDUAL_KIND`), so ``symmetry_group(θ̂)`` samples only permutations and residual signs, and
    ``meta["canonical"]`` records the diagnostics (:class:`CanonicalStats`) and ``sym_cont[G]`` keeps the
kinds of the unit groups before the section (the continuous gauges a model may still apply). κ is an element of
    ``symmetry_group(graph)`` (positive scales, GL matrices per head, identity permutation). See the
    module docstring for the math and for what is not unique on degenerate inputs.
    """
    if is_canonical(graph):
        raise QegraphError("this graph is already canonical (canonicalize it once; its gauge is the identity)")
    group = SymmetryGroup.of(graph)
    slot, slot_kind = _slots(graph)
    terms, var_of_slot, degenerate = _scale_terms(graph, slot, slot_kind)
    t, iterations, gnorm = _newton(terms, max_iter=max_iter)
    q = torch.ones(slot_kind.numel(), dtype=torch.float64, device=graph.x.device)
    has_var = var_of_slot >= 0
    q[has_var] = torch.exp(t[var_of_slot[has_var]])
    ident = group.identity()
    scaled = GroupElement(group, ident.perm, q).act(graph) if bool(has_var.any()) else graph
    x, ev, kappas, sigmas = _canonical_heads(scaled)
    out = scaled.with_features(x=x, edge_val=ev)
    out.sym_kind = residual_kinds(graph.sym_kind)
    out.sym_cont = graph.sym_kind.clone()  # the kinds before the section: which gauges the model may learn
    gl: dict[int, tuple[Tensor, Tensor]] = {}
    dims = group.head_dims
    for j, roles in kappas.items():
        h = int(group.sizes[j])
        dk = dims.get(j, {}).get(int(GLRole.QUERY), 0)
        dv = dims.get(j, {}).get(int(GLRole.VALUE), 0)
        eye = lambda d: torch.eye(d, dtype=torch.float64, device=graph.x.device).repeat(h, 1, 1)  # noqa: E731
        a = roles.get(int(GLRole.QUERY), eye(dk))
        b = roles.get(int(GLRole.VALUE), eye(dv))
        gl[j] = (a, b)
    gauge = GroupElement(group, ident.perm, 1 / q, gl)
    factors = [q[has_var]] + sigmas
    allf = torch.cat([f.flatten() for f in factors]) if factors else q.new_ones(1)
    pos = allf[allf > 0]
    stats = CanonicalStats(iterations, gnorm, float(pos.max()) if pos.numel() else 1.0,
                           float(pos.min()) if pos.numel() else 1.0, degenerate)
    metas = out.meta if isinstance(out.meta, list) else [out.meta]
    new_metas = []
    for m in metas:
        m2 = copy.copy(m)
        m2.data = dict(m.data)
        m2.data["canonical"] = {"version": 1, **stats.__dict__}
        new_metas.append(m2)
    out.meta = new_metas if isinstance(out.meta, list) else new_metas[0]
    return out, gauge


def from_canonical(graph: ParameterGraph, gauge: GroupElement) -> ParameterGraph:
    """The inverse of :func:`canonicalize` on a graph in the canonical frame (θ̂, or a network decoded
    there): ``gauge.act(graph)`` with the original symmetry metadata restored (``sym_kind`` from
    ``sym_cont``, no ``canonical`` record), so the result is an ordinary graph of the input's group."""
    if not is_canonical(graph):
        raise QegraphError("from_canonical() takes a graph in the canonical frame (from canonicalize())")
    out = gauge.act(graph)
    out.sym_kind = graph.sym_cont.clone()
    del out.sym_cont
    metas = out.meta if isinstance(out.meta, list) else [out.meta]
    new_metas = []
    for m in metas:
        m2 = copy.copy(m)
        m2.data = {k: v for k, v in m.data.items() if k != "canonical"}
        new_metas.append(m2)
    out.meta = new_metas if isinstance(out.meta, list) else new_metas[0]
    return out


def describe_canonical(graph: ParameterGraph) -> str:
    """Lines for ``qegraph canonicalize`` / ``qegraph inspect``: the residual group of a canonical graph
    and the diagnostics of its section (gauge factors, Newton iterations, degenerate units)."""
    if not is_canonical(graph) or isinstance(graph.meta, list):
        return "canonical  : no"
    info = graph.meta["canonical"]
    kinds = torch.bincount(graph.sym_kind, minlength=len(SymKind))
    names = {SymKind.PERM: "permutations", SymKind.SIGN: "permutations × signs",
             SymKind.HEAD_SIGNS: "head permutations × per-coordinate signs (q_i, k_i), (v_i, o_i)"}
    parts = [f"{int(kinds[k])} unit group(s): {text}" for k, text in names.items() if int(kinds[k])]
    lines = ["canonical  : yes (balanced scales, balanced SVD heads; qegraph.canonicalize)",
             "residual   : " + ("; ".join(parts) if parts else "trivial (every unit fixed)")]
    if "gauge_min" in info:
        lines.append(f"gauge      : factors in [{info['gauge_min']:.3g}, {info['gauge_max']:.3g}] "
                     f"(scales and head singular values), {info['iterations']} Newton step(s)")
    if info.get("degenerate_units"):
        lines.append(f"degenerate : {info['degenerate_units']} unit(s) with all-zero incoming or outgoing weights "
                     "kept their scale (not unique; see qegraph.symmetry.canonical)")
    return "\n".join(lines)


__all__ = ["CanonicalStats", "RESIDUAL_KIND", "canonicalize", "describe_canonical", "from_canonical", "is_canonical",
           "residual_kinds"]
