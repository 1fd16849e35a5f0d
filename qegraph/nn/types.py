r"""Feature types of hidden units and their canonicalization (DESIGN §5).

Every node carries ``c`` channels whose representation is fixed by its unit group's
:class:`~qegraph.graph.types.SymKind`:

* ``INVARIANT`` (FIXED, PERM): h_v is only relabelled by permutations;
* ``SCALE`` (SCALE): h_v ↦ q_v h_v with q_v > 0;
* ``NONZERO`` (SIGN, NONZERO): h_v ↦ λ_v h_v with λ_v ≠ 0 (contains the sign flips);
* ``GL`` (HEADS): the d nodes of one head and role form H ∈ R^{d×c}; H ↦ A H (query),
  A^{-T} H (key), B H (value).

An edge u→v carries ρ_v(g) e ρ_u(g)^{-1}; for scalar types that is e ↦ (q_v/q_u) e, so its scalar type
is the larger of its endpoints' (ordered INVARIANT < SCALE < NONZERO: a ratio of positive scales is
positive, any nonzero factor makes it nonzero).

Canonicalization maps a feature to an invariant of its type:

.. math::
    \mathrm{can}(x) = x \;(\text{invariant}), \quad u = x/\lVert x\rVert \;(\text{scale}), \quad
    u \odot (P u) \;(\text{nonzero-scale}),

with a learned P ∈ R^{c×c} (the products u_i u_j are invariant to λ ≠ 0 and keep relative signs).
Numerical stability: ``direction`` first divides x by its own largest magnitude m = max|x_i| (a
quotient in [-1, 1], exact up to one rounding whatever the size of m, so neither 1e-15 nor 1e15
features over- or underflow in the square), then by the norm of that vector, which lies in [1, √c].
No quantity is ever divided by a number that can be close to zero independently of its numerator; an
exactly zero vector (e.g. a bias-free unit before message passing) canonicalizes to 0.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from qegraph.graph.types import SymKind
from qegraph.nn.gl import gl_invariants

if TYPE_CHECKING:
    from qegraph.nn.context import GraphContext


class FeatureType(IntEnum):
    """Representation carried by a node's (or an edge's) hidden features."""

    INVARIANT = 0
    SCALE = 1
    NONZERO = 2
    GL = 3


_OF_KIND: dict[int, FeatureType] = {
    int(SymKind.FIXED): FeatureType.INVARIANT,
    int(SymKind.PERM): FeatureType.INVARIANT,
    int(SymKind.SCALE): FeatureType.SCALE,
    int(SymKind.SIGN): FeatureType.NONZERO,
    int(SymKind.NONZERO): FeatureType.NONZERO,
    int(SymKind.HEADS): FeatureType.GL,
}


def group_feature_types(sym_kind: Tensor, perm_only: bool = False) -> Tensor:
    """``[G]`` FeatureType of every unit group; ``perm_only`` makes every group INVARIANT (PermGMN)."""
    table = torch.zeros(max(_OF_KIND) + 1, dtype=torch.long, device=sym_kind.device)
    for kind, ftype in _OF_KIND.items():
        table[kind] = int(ftype)
    out = table[sym_kind]
    return torch.zeros_like(out) if perm_only else out


def direction(x: Tensor) -> Tensor:
    """x / ‖x‖ over the last dim, computed without over/underflow; 0 where x is exactly 0."""
    m = x.abs().amax(dim=-1, keepdim=True)
    nonzero = m > 0
    y = x / torch.where(nonzero, m, torch.ones_like(m))
    n = torch.linalg.vector_norm(y, dim=-1, keepdim=True)
    return y / torch.where(nonzero, n, torch.ones_like(n))


class Canonicalizer(nn.Module):
    """Invariant of a scalar-typed feature (formula in the module docstring): ``[*, c] -> [*, c]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pair = nn.Linear(channels, channels, bias=False)
        with torch.no_grad():
            self.pair.weight.copy_(torch.eye(channels) + 0.1 * torch.randn(channels, channels) / channels**0.5)

    def forward(self, x: Tensor, ftype: Tensor) -> Tensor:
        """``ftype[*]`` FeatureType per row. GL rows are returned unchanged: their invariants need the
        whole head block, see :func:`invariants`."""
        u = direction(x)
        nz = u * self.pair(u)
        t = ftype.unsqueeze(-1)
        return torch.where(t == FeatureType.SCALE, u, torch.where(t == FeatureType.NONZERO, nz, x))


def invariants(canon: Canonicalizer, h: Tensor, e: Tensor, ctx: GraphContext) -> tuple[Tensor, Tensor]:
    """ι of every node and edge feature: scalar types by ``canon``, GL blocks and rows by their
    pairings (:func:`qegraph.nn.gl.gl_invariants`)."""
    ih, ie = canon(h, ctx.node_ftype), canon(e, ctx.edge_ftype)
    if ctx.gl is None:
        return ih, ie
    gh, ge = gl_invariants(h, e, ctx.gl)
    gl = int(FeatureType.GL)
    return (torch.where((ctx.node_ftype == gl).unsqueeze(1), gh, ih),
            torch.where((ctx.edge_ftype == gl).unsqueeze(1), ge, ie))
