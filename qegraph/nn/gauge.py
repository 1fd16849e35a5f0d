r"""The quasi gauge α: Θ → G_c, one continuous group element per unit (DESIGN §1, §5).

For every unit slot u of a SCALE or NONZERO group (both admit positive scalings):

.. math::
    s_u = 1 + \varepsilon \sin(\gamma_u), \qquad \varepsilon = \varepsilon_{max}\,\mathrm{sigmoid}(\rho)
    \in (0, \varepsilon_{max}) \subset (0, 1),

or, with a fixed ``epsilon``, ε = epsilon ∈ (0, 1) (no ρ is learned). So s_u ∈ (0, 2) is a positive
scale bounded away from 0. γ is a small MLP reading the unit's own
features a_v = asinh(h_v) and statistics of its layer (per-channel mean, variance and quantiles of a
over the nodes of the same graph and depth); it needs no invariance. Nodes tied into one unit (by
residual additions or norms) average their γ, so the whole slot gets one element, **shared by all c
channels**. Fixed, invariant-type (PERM) and sign-only (SIGN: no continuous part) units get s = 1.

α acts with the group-action formulas (PyTorch convention, DESIGN §4):

.. math::
    h_v \mapsto s_v h_v, \qquad e_{uv} \mapsto (s_v / s_u)\, e_{uv}.

For attention heads (kind HEADS), per head a query/key matrix A and a value matrix B:

.. math::
    A = I + \varepsilon_d \sin(\Gamma), \quad \Gamma = u w^\top, \quad
    \varepsilon_d = \varepsilon_{max}\,\mathrm{sigmoid}(\rho_{GL}) / d \ (\text{or } \varepsilon / d \text{ when fixed}),

so ‖ε_d sin Γ‖₂ ≤ ‖ε_d sin Γ‖_F ≤ ε_d·d < 1 and A is invertible; u (from the query block) and w (from
the key block) are per-coordinate outputs of the same small MLP (u, w from the value block for B).
It acts as H_Q ↦ A H_Q, H_K ↦ A^{-T} H_K, H_V ↦ B H_V, rows into a block E ↦ ρE, rows out of a value
block E[o, :] ↦ E[o, :] B^{-1} (:func:`qegraph.nn.gl.apply_gl_blocks`).

Composed with a strictly equivariant β, F = α(θ)·β(θ) satisfies F(gθ) = g′F(θ) with
g′ = α(gθ)·g·α(θ)^{-1} ∈ G for any α.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

from qegraph.errors import QegraphError
from qegraph.graph.types import GLRole, SymKind
from qegraph.nn.context import GraphContext
from qegraph.nn.encoders import mlp
from qegraph.nn.gl import apply_gl_blocks
from qegraph.nn.ops import gather_rows
from qegraph.nn.stats import segment_mean_var, segment_quantiles
from qegraph.nn.types import FeatureType, rowdot


class QuasiGauge(nn.Module):
    """Per-unit positive scales α(θ) (formula in the module docstring)."""

    def __init__(
        self, channels: int, hidden: int = 8, epsilon_max: float = 0.5, quantiles: Sequence[float] = (0.1, 0.5, 0.9),
        *, epsilon: float | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < epsilon_max <= 1.0:
            raise QegraphError(f"epsilon_max must lie in (0, 1] so that every scale is positive, got {epsilon_max}")
        if epsilon is not None and not 0.0 < epsilon < 1.0:
            raise QegraphError(f"a fixed epsilon must lie in (0, 1) so that every scale is positive, got {epsilon}")
        self.epsilon_max = float(epsilon_max)
        self.fixed_epsilon = None if epsilon is None else float(epsilon)
        self.quantiles = tuple(float(q) for q in quantiles)
        if self.fixed_epsilon is None:
            self.rho = nn.Parameter(torch.zeros(()))
            self.rho_gl = nn.Parameter(torch.zeros(()))
        # one small MLP: output 0 is γ (scales), outputs 1, 2 are u, w (GL matrices)
        self.gamma = mlp([(3 + len(self.quantiles)) * channels, hidden, 3])

    def epsilon(self) -> Tensor | float:
        """ε = ε_max · sigmoid(ρ) ∈ (0, ε_max), or the fixed ε."""
        if self.fixed_epsilon is not None:
            return self.fixed_epsilon
        return self.epsilon_max * torch.sigmoid(self.rho)

    def epsilon_gl(self) -> Tensor | float:
        """The GL gauge's ε (before division by the block size d): ε_max · sigmoid(ρ_GL), or the fixed ε."""
        if self.fixed_epsilon is not None:
            return self.fixed_epsilon
        return self.epsilon_max * torch.sigmoid(self.rho_gl)

    def _inputs(self, h: Tensor, ctx: GraphContext) -> Tensor:
        """γ's input per node: asinh(h_v) and its layer's mean, variance and quantiles of asinh(h)."""
        a = torch.asinh(h)
        mean, var = segment_mean_var(a, ctx.layer_seg, ctx.num_layer_seg)
        qs = segment_quantiles(a, ctx.layer_seg, ctx.num_layer_seg, self.quantiles)
        stats = torch.cat([mean, var, qs.flatten(1)], dim=1)
        return torch.cat([a, stats[ctx.layer_seg]], dim=1)

    def _gamma_out(self, h: Tensor, ctx: GraphContext) -> Tensor:
        """``self.gamma(self._inputs(h, ctx))`` without materialising the [N, 6c] input: the first linear
        map is split into a per-node part and a per-segment part (statistics projected once per
        segment, then gathered)."""
        a = torch.asinh(h)
        mean, var = segment_mean_var(a, ctx.layer_seg, ctx.num_layer_seg)
        qs = segment_quantiles(a, ctx.layer_seg, ctx.num_layer_seg, self.quantiles)
        stats = torch.cat([mean, var, qs.flatten(1)], dim=1)
        lin1 = self.gamma[0]
        c = h.size(1)
        seg_part = torch.addmm(lin1.bias, stats, lin1.weight[:, c:].t())
        pre = torch.addmm(gather_rows(seg_part, ctx.layer_seg), a, lin1.weight[:, :c].t())
        return self.gamma[1:](pre)

    def slot_scales(self, h: Tensor, ctx: GraphContext, inputs: Tensor | None = None) -> Tensor:
        """``[num_slots]`` s per unit slot (1 where the unit's group has no positive scalings)."""
        out = self._gamma_out(h, ctx) if inputs is None else self.gamma(inputs)
        return self._scales(out, ctx)

    def _scales(self, out: Tensor, ctx: GraphContext) -> Tensor:
        gamma = scatter(out[:, 0], ctx.slot, dim=0, dim_size=ctx.num_slots, reduce="mean")
        s = 1 + self.epsilon() * torch.sin(gamma)
        return torch.where(gauged_slots(ctx), s, torch.ones_like(s))

    def gl_matrices(self, h: Tensor, ctx: GraphContext, inputs: Tensor | None = None) -> list[Tensor]:
        """ρ per head block, one ``[B, d, d]`` tensor per entry of ``ctx.gl.rows``: A (query),
        A^{-T} (key), B (value); identity for a query/key block without partner."""
        if ctx.gl is None:
            return []
        out = self._gamma_out(h, ctx) if inputs is None else self.gamma(inputs)
        return self._gl(out, h, ctx)

    def _gl(self, out: Tensor, h: Tensor, ctx: GraphContext) -> list[Tensor]:
        assert ctx.gl is not None
        uw = out[:, 1:]
        mats = []
        for r in ctx.gl.rows:
            u, w = uw[r.node_idx].unbind(-1)  # [B, d]
            paired = r.partner >= 0
            qk = r.role != int(GLRole.VALUE)
            w = torch.where(paired.unsqueeze(1), w[r.partner.clamp(min=0)], w)
            eps = self.epsilon_gl() / r.d
            eye = torch.eye(r.d, dtype=h.dtype, device=h.device)
            m = eye + eps * torch.sin(u.unsqueeze(2) * w.unsqueeze(1))
            key = r.role == int(GLRole.KEY)
            m = torch.where(key.view(-1, 1, 1), torch.linalg.inv(m[r.partner.clamp(min=0)]).transpose(-2, -1), m)
            mats.append(torch.where((qk & ~paired).view(-1, 1, 1), eye, m))
        return mats

    def forward(self, h: Tensor, e: Tensor, ctx: GraphContext) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        """(α·h, α·e, s per node, GL matrix per head block)."""
        out = self._gamma_out(h, ctx)
        s = gather_rows(self._scales(out, ctx).unsqueeze(1), ctx.slot).squeeze(1)
        mats = self._gl(out, h, ctx) if ctx.gl is not None else []
        h, e = apply_node_scales(h, e, s, ctx)
        if mats:
            h, e = apply_gl_blocks(h, e, ctx.gl, mats)
        return h, e, s, mats


def gauged_slots(ctx: GraphContext) -> Tensor:
    """``[num_slots]`` True where the continuous part of the group contains positive scalings and the
    features have a scalar scaled type."""
    kind = ctx.slot_kind
    positive = (kind == int(SymKind.SCALE)) | (kind == int(SymKind.NONZERO))
    ftype = torch.zeros(ctx.num_slots, dtype=torch.long, device=kind.device)
    ftype[ctx.slot] = ctx.node_ftype
    return positive & ((ftype == FeatureType.SCALE) | (ftype == FeatureType.NONZERO))


def apply_node_scales(h: Tensor, e: Tensor, s: Tensor, ctx: GraphContext) -> tuple[Tensor, Tensor]:
    """The action of a per-node scaling ``s[N]`` (or ``[N, c]``): h_v ↦ s_v h_v, e_uv ↦ (s_v/s_u) e_uv."""
    s2 = s if s.dim() == 2 else s.unsqueeze(1)
    src, dst = ctx.edge_index
    ratio = gather_rows(s2, dst) / gather_rows(s2, src)
    return h * s2, _ScaleRows.apply(e, ratio) if ratio.size(1) == 1 else e * ratio


class _ScaleRows(torch.autograd.Function):
    """``e * r`` for ``r[E, 1]``; the gradient of r as a batched row dot product (no [E, c] temporary)."""

    @staticmethod
    def forward(ctx, e: Tensor, r: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(e, r)
        return e * r

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, Tensor | None]:  # type: ignore[override]
        e, r = ctx.saved_tensors
        ge = g * r if ctx.needs_input_grad[0] else None
        gr = rowdot(g.contiguous(), e) if ctx.needs_input_grad[1] else None
        return ge, gr
