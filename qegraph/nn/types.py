r"""Feature types of hidden units and their canonicalization (DESIGN §5).

Every node carries ``c`` channels whose representation is fixed by its unit group's
:class:`~qegraph.graph.types.SymKind`:

* ``INVARIANT`` (FIXED, PERM): h_v is only relabelled by permutations;
* ``SCALE`` (SCALE): h_v ↦ q_v h_v with q_v > 0;
* ``NONZERO`` (NONZERO): h_v ↦ λ_v h_v with λ_v ≠ 0 (contains the sign flips);
* ``SIGN`` (SIGN: odd activations such as tanh, sin): h_v ↦ σ_v h_v with σ_v ∈ {±1} only. A
  positive rescaling of such a unit is *not* a symmetry (it changes a SIREN's frequencies), so its
  invariant must keep the magnitude of h_v;
* ``GL`` (HEADS): the d nodes of one head and role form H ∈ R^{d×c}; H ↦ A H (query),
  A^{-T} H (key), B H (value).

An edge u→v carries ρ_v(g) e ρ_u(g)^{-1}; for scalar types that is e ↦ (q_v/q_u) e, so its type is the
*join* of its endpoints' types (:func:`join_feature_types`): the smallest type whose group contains
every factor q_v/q_u that can occur,

.. math::
    \mathrm{INV} \sqcup t = t, \quad t \sqcup t = t, \quad
    \mathrm{SCALE} \sqcup \mathrm{SIGN} = \mathrm{SCALE} \sqcup \mathrm{NONZERO}
    = \mathrm{SIGN} \sqcup \mathrm{NONZERO} = \mathrm{NONZERO}, \quad \mathrm{GL} \sqcup t = \mathrm{GL}

(a ratio of positive scales is positive, σ_v σ_u = ±1, a sign times a positive scale is a nonzero
scale). SCALE and SIGN are incomparable (neither group contains the other), so this is not the
maximum of a total order.

Canonicalization maps a feature to an invariant of its type:

.. math::
    \mathrm{can}(x) = x \;(\text{invariant}), \quad u = x/\lVert x\rVert \;(\text{scale}), \quad
    u \odot (P u) \;(\text{nonzero-scale}), \quad
    u \odot (S x) = \frac{x \odot S x}{\lVert x\rVert} \;(\text{sign}),

with learned P, S ∈ R^{c×c} (the products u_i u_j are invariant to λ ≠ 0 and keep relative signs).
The sign invariant is even (u and Sx both flip with σ) and positively homogeneous of degree 1, so it
keeps the magnitude of x: can(t x) = |t| can(x), on the same scale as x itself (unlike x ⊙ Sx, whose
square compresses small and inflates large features). It is smooth away from x = 0, continuous with
value 0 at x = 0, and its Jacobian diag(Sx)·∂u/∂x + diag(u)·S is bounded (‖Sx‖/‖x‖ cancels the 1/‖x‖
of ∂u/∂x), so gradients neither vanish nor blow up with the scale of the features.
Numerical stability: ``direction`` first divides x by its own largest magnitude m = max|x_i| (a
quotient in [-1, 1], exact up to one rounding whatever the size of m, so neither 1e-15 nor 1e15
features over- or underflow in the square), then by the norm of that vector, which lies in [1, √c].
No quantity is ever divided by a number that can be close to zero independently of its numerator; an
exactly zero vector (e.g. a bias-free unit before message passing) canonicalizes to 0. The sign
invariant multiplies that bounded u by S x, which is on the scale of x.

In a table mixing feature types (nodes or edges of a batch), only the rows of scaled types are
canonicalized (:class:`TypedRows` lists them once per batch) and written back together with the GL
pairings by one :func:`~qegraph.nn.ops.replace_rows`; every row keeps the value of the formula above.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from qegraph.graph.types import SymKind
from qegraph.nn.gl import gl_edge_invariants, gl_node_invariants
from qegraph.nn.ops import gather_rows, replace_rows

if TYPE_CHECKING:
    from qegraph.nn.context import GraphContext


class FeatureType(IntEnum):
    """Representation carried by a node's (or an edge's) hidden features."""

    INVARIANT = 0
    SCALE = 1
    NONZERO = 2
    GL = 3
    SIGN = 4


#: The scalar types with a nontrivial action (canonicalized by :class:`Canonicalizer`).
SCALED_TYPES = frozenset({int(FeatureType.SCALE), int(FeatureType.NONZERO), int(FeatureType.SIGN)})


_OF_KIND: dict[int, FeatureType] = {
    int(SymKind.FIXED): FeatureType.INVARIANT,
    int(SymKind.PERM): FeatureType.INVARIANT,
    int(SymKind.SCALE): FeatureType.SCALE,
    int(SymKind.SIGN): FeatureType.SIGN,
    int(SymKind.NONZERO): FeatureType.NONZERO,
    int(SymKind.HEADS): FeatureType.GL,
    # heads in canonical form: their group (diagonal ±1 per head) is a subgroup of GL, so GL-equivariant
    # features are equivariant to it
    int(SymKind.HEAD_SIGNS): FeatureType.GL,
}


def group_feature_types(sym_kind: Tensor, perm_only: bool = False) -> Tensor:
    """``[G]`` FeatureType of every unit group; ``perm_only`` makes every group INVARIANT (PermGMN)."""
    table = torch.zeros(max(_OF_KIND) + 1, dtype=torch.long, device=sym_kind.device)
    for kind, ftype in _OF_KIND.items():
        table[kind] = int(ftype)
    out = table[sym_kind]
    return torch.zeros_like(out) if perm_only else out


def _join(a: FeatureType, b: FeatureType) -> FeatureType:
    if FeatureType.GL in (a, b):
        return FeatureType.GL
    if a == FeatureType.INVARIANT or a == b:
        return b
    if b == FeatureType.INVARIANT:
        return a
    return FeatureType.NONZERO  # two distinct types among SCALE, SIGN, NONZERO


_JOIN = torch.tensor([[int(_join(a, b)) for b in sorted(FeatureType)] for a in sorted(FeatureType)])


def join_feature_types(a: Tensor, b: Tensor) -> Tensor:
    """Elementwise join a ⊔ b of two FeatureType tensors: the type of an edge between units of types
    a and b (table in the module docstring)."""
    return _JOIN.to(a.device)[a, b]


#: Largest factor 1/‖x‖ the backward of :func:`direction` applies (rows with ‖x‖ < 1e-4 get a damped
#: gradient; their forward value, and hence every invariance, is exact).
GRAD_SCALE_CAP = 1e4


class _Direction(torch.autograd.Function):
    """u = x/‖x‖ with the analytic backward ∂u/∂x·g = (g − u⟨u, g⟩)/‖x‖ (identity on exactly zero rows)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        m = x.abs().amax(dim=-1, keepdim=True)  # (vector_norm with ord=inf is ~10x slower on CPU)
        nonzero = m > 0
        one = torch.ones_like(m)
        m = torch.where(nonzero, m, one)
        y = x / m
        n = torch.where(nonzero, torch.linalg.vector_norm(y, dim=-1, keepdim=True), one)
        u = y.div_(n)
        # backward scales by 1/‖x‖; capped so that near-zero rows (e.g. weights decayed to 1e-22)
        # cannot overflow the gradient. The forward value is untouched: invariance stays exact.
        ctx.save_for_backward(u, torch.where(nonzero, ((1 / m) / n).clamp_(max=GRAD_SCALE_CAP), one))
        return u

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:  # type: ignore[override]
        u, r = ctx.saved_tensors
        dot = rowdot(u, g)
        return torch.addcmul(g, u, dot, value=-1).mul_(r)


def rowdot(a: Tensor, b: Tensor) -> Tensor:
    """``(a * b).sum(-1, keepdim=True)`` as one batched matmul (no [*, c] temporary)."""
    c = a.size(-1)
    return torch.bmm(a.reshape(-1, 1, c), b.reshape(-1, c, 1)).view(*a.shape[:-1], 1)


def direction(x: Tensor) -> Tensor:
    """x / ‖x‖ over the last dim, computed without over/underflow; 0 where x is exactly 0."""
    return _Direction.apply(x)


_ALL = frozenset(int(t) for t in FeatureType)


@dataclass
class TypedRows:
    """The rows of one feature table (the nodes or the edges of a batch) by feature type."""

    ftype: Tensor  # [n] FeatureType per row
    present: frozenset[int]  # the FeatureTypes occurring in ftype
    invariant: Tensor  # ids of the INVARIANT rows
    scale: Tensor  # ids of the SCALE rows
    nonzero: Tensor  # ids of the NONZERO rows
    sign: Tensor  # ids of the SIGN rows

    @classmethod
    def of(cls, ftype: Tensor) -> TypedRows:
        present = frozenset(torch.unique(ftype).tolist())
        kinds = (FeatureType.INVARIANT, FeatureType.SCALE, FeatureType.NONZERO, FeatureType.SIGN)
        ids = [torch.nonzero(ftype == t).flatten() for t in kinds]
        return cls(ftype, present, *ids)


class Canonicalizer(nn.Module):
    """Invariant of a scalar-typed feature (formula in the module docstring): ``[*, c] -> [*, c]``.

    ``pair`` is P (nonzero-scale types), ``sign`` is S (sign types)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pair = nn.Linear(channels, channels, bias=False)
        self.sign = nn.Linear(channels, channels, bias=False)
        with torch.no_grad():
            self.pair.weight.copy_(torch.eye(channels) + 0.1 * torch.randn(channels, channels) / channels**0.5)
            self.sign.weight.copy_(self.pair.weight)  # same start, no extra random draw

    def _canon(self, kind: int, x: Tensor, u: Tensor) -> Tensor:
        """The invariant of rows ``x`` of one scaled type, ``u = direction(x)``."""
        if kind == FeatureType.SCALE:
            return u
        if kind == FeatureType.NONZERO:
            return u * self.pair(u)
        return u * self.sign(x)

    def forward(self, x: Tensor, ftype: Tensor, present: frozenset[int] | None = None) -> Tensor:
        """``ftype[*]`` FeatureType per row. GL rows are returned unchanged: their invariants need the
        whole head block, see :func:`invariants`. ``present``: the feature types occurring in
        ``ftype`` (when known, only the canonicalizations of those are computed)."""
        present = _ALL if present is None else present
        kinds = sorted(present & SCALED_TYPES)
        if not kinds:
            return x
        u = direction(x)
        if len(kinds) == 1 and len(present) == 1:
            return self._canon(kinds[0], x, u)
        t = ftype.unsqueeze(-1)
        out = x
        for k in kinds:
            out = torch.where(t == k, self._canon(k, x, u), out)
        return out

    def table(self, x: Tensor, rows: TypedRows, ids: Tensor | None = None, values: Tensor | None = None) -> Tensor:
        """``forward(x, rows.ftype, rows.present)`` of a ``[n, c]`` table, with the rows ``ids`` (distinct
        from the scaled rows) set to ``values``. A table of one type goes through :meth:`forward`;
        otherwise only the SCALE / NONZERO / SIGN rows are canonicalized, and all replaced rows are
        written into a copy of ``x`` at once."""
        if ids is None and len(rows.present) <= 1:
            return self(x, rows.ftype, rows.present)
        idx, new = [], []
        for kind, r in ((FeatureType.SCALE, rows.scale), (FeatureType.NONZERO, rows.nonzero),
                        (FeatureType.SIGN, rows.sign)):
            if r.numel():
                xr = gather_rows(x, r)
                idx.append(r)
                new.append(self._canon(int(kind), xr, direction(xr)))
        if ids is not None and values is not None:
            idx.append(ids)
            new.append(values)
        if not idx:
            return x
        return replace_rows(x, torch.cat(idx), torch.cat(new))


def invariants(canon: Canonicalizer, h: Tensor, e: Tensor, ctx: GraphContext) -> tuple[Tensor, Tensor]:
    """ι of every node and edge feature: scalar types by ``canon``, GL blocks and rows by their
    pairings (:mod:`qegraph.nn.gl`)."""
    return node_invariants(canon, h, e, ctx), edge_invariants(canon, h, e, ctx)


def node_invariants(canon: Canonicalizer, h: Tensor, e: Tensor, ctx: GraphContext) -> Tensor:
    """``invariants(...)[0]`` without canonicalizing the edges (``e`` is read only for GL pairings)."""
    if ctx.gl is None:
        return canon.table(h, ctx.node_rows)
    return canon.table(h, ctx.node_rows, ctx.gl.node_ids, gl_node_invariants(h, e, ctx.gl))


def edge_invariants(canon: Canonicalizer, h: Tensor, e: Tensor, ctx: GraphContext) -> Tensor:
    """``invariants(...)[1]`` without canonicalizing the nodes (``h`` is read only for GL pairings)."""
    if ctx.gl is None:
        return canon.table(e, ctx.edge_rows)
    return canon.table(e, ctx.edge_rows, ctx.gl.edge_ids, gl_edge_invariants(h, e, ctx.gl))
