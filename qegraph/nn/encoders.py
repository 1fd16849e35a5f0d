r"""Type-respecting node and edge encoders (DESIGN §5).

Node v with parameters x_v ∈ R^5 (bias, norm γ, norm β, running mean/var; zero where masked) and
structural invariants (node type t_v, depth ℓ_v, position p_v of fixed units, slot mask m_v):

.. math::
    h_v = (W x_v) \odot \big(1 + E_t[t_v] + \mathrm{PE}_\ell(\ell_v) + M m_v\big)
    \quad\text{(scaled types: bias-free, embeddings multiplied in)}

.. math::
    h_v = \mathrm{MLP}(x_v) + E'_t[t_v] + \mathrm{PE}'_\ell(\ell_v) + M' m_v
          + [v \text{ fixed}]\,\mathrm{PE}_p(p_v) \quad\text{(invariant types)}

Edge u→v with slots a_uv ∈ R^S (kernel, flattened block; zero padded to the batch's largest width S,
``GraphContext.edge_attr``):

.. math::
    e_{uv} = (a_{uv} P_{:S}) \odot T[\tau_{uv}]
             + [\text{parameter-free}]\, C[\tau_{uv}] + [\text{invariant}]\, T'[\tau_{uv}]

"Scaled types" are every type with a nontrivial action: SCALE, NONZERO, SIGN and GL. A SIGN feature
(h_v ↦ ±h_v) gets exactly the scaled-type formula: the only additive terms allowed on it would be odd
functions of its own parameters, so biases and embeddings are multiplied in, never added. Likewise an
edge gets the additive T' only when it is invariant (both endpoints fixed or permutation-only).

The edge map is a bias-free map of the slots (P ∈ R^{S_max×c} is a learned slot embedding, so conv
kernels keep their spatial layout) times an edge-type embedding. Parameter-free edges (residual, norm identity, embedding
identity) join tied units (ratio q_v/q_u = 1) and carry the invariant constant C. PE is a sinusoidal
encoding followed by a linear map, so depth and positions have no upper limit.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from qegraph.errors import QegraphError
from qegraph.graph.types import NODE_SLOTS, EdgeType, NodeType
from qegraph.nn.context import GraphContext
from qegraph.nn.ops import gather_rows
from qegraph.nn.types import FeatureType

NUM_NODE_TYPES = len(NodeType)
NUM_EDGE_TYPES = len(EdgeType)


def sinusoidal(k: Tensor, dim: int, dtype: torch.dtype) -> Tensor:
    """``[n]`` integers → ``[n, dim]`` sin/cos features (Transformer positional encoding)."""
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=k.device, dtype=dtype) / max(half, 1))
    ang = k.to(dtype).unsqueeze(1) * freq.unsqueeze(0)
    return torch.cat([torch.sin(ang), torch.cos(ang)], dim=1)


def mlp(dims: list[int], act: type[nn.Module] = nn.SiLU) -> nn.Sequential:
    """Linear layers with ``act`` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


class PositionEncoding(nn.Module):
    """PE(k) = Linear(sinusoidal(k)) (no table, hence no maximum k)."""

    def __init__(self, channels: int, bias: bool = True) -> None:
        super().__init__()
        self.dim = 2 * max(channels // 2, 4)
        self.lin = nn.Linear(self.dim, channels, bias=bias)

    def forward(self, k: Tensor) -> Tensor:
        return self.lin(sinusoidal(k, self.dim, self.lin.weight.dtype))


class NodeEncoder(nn.Module):
    """``x[N, 5] -> h[N, c]`` (formula in the module docstring)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        s = len(NODE_SLOTS)
        self.lin = nn.Linear(s, channels, bias=False)
        self.type_mul = nn.Embedding(NUM_NODE_TYPES, channels)
        self.depth_mul = PositionEncoding(channels, bias=False)
        self.mask_mul = nn.Linear(s, channels, bias=False)
        self.inv_mlp = mlp([s, channels, channels])
        self.type_add = nn.Embedding(NUM_NODE_TYPES, channels)
        self.depth_add = PositionEncoding(channels)
        self.mask_add = nn.Linear(s, channels, bias=False)
        self.pos_add = PositionEncoding(channels)
        nn.init.normal_(self.type_mul.weight, std=0.1)

    def forward(self, ctx: GraphContext) -> Tensor:
        g = ctx.graph
        x, m = g.x, g.x_mask.to(g.x.dtype)
        mult = 1 + self.type_mul(g.node_type) + self.depth_mul(g.layer) + self.mask_mul(m)
        scaled = self.lin(x) * mult
        inv = self.inv_mlp(x) + self.type_add(g.node_type) + self.depth_add(g.layer) + self.mask_add(m)
        inv = inv + torch.where(ctx.fixed.unsqueeze(1), self.pos_add(g.io_pos.clamp(min=0)), torch.zeros_like(inv))
        return torch.where((ctx.node_ftype == FeatureType.INVARIANT).unsqueeze(1), inv, scaled)


class EdgeEncoder(nn.Module):
    """``edge_attr[E, S] -> e[E, c]`` (formula in the module docstring); S ≤ ``max_slots``."""

    def __init__(self, channels: int, max_slots: int = 64) -> None:
        super().__init__()
        self.max_slots = max_slots
        self.slots = nn.Parameter(torch.randn(max_slots, channels) / math.sqrt(channels))
        self.type_mul = nn.Embedding(NUM_EDGE_TYPES, channels)
        self.free = nn.Embedding(NUM_EDGE_TYPES, channels)
        self.type_add = nn.Embedding(NUM_EDGE_TYPES, channels)
        nn.init.normal_(self.type_mul.weight, mean=1.0, std=0.1)

    def forward(self, ctx: GraphContext) -> Tensor:
        a = ctx.edge_attr
        s = a.size(1)
        if s > self.max_slots:
            raise QegraphError(
                f"edges have {s} slots (largest kernel / flattened block), the encoder was built for "
                f"max_slots={self.max_slots}: construct the model with max_slots >= {s}"
            )
        et = ctx.edge_type
        # the two additive terms in one gather from a table [0; C; T'; C + T'] (row by type and the flags)
        t = NUM_EDGE_TYPES
        zero = torch.zeros_like(self.free.weight)
        table = torch.cat([zero, self.free.weight, self.type_add.weight, self.free.weight + self.type_add.weight])
        key = et + t * ctx.param_free.long() + 2 * t * (ctx.edge_ftype == FeatureType.INVARIANT).long()
        return torch.addcmul(gather_rows(table, key), a @ self.slots[:s], gather_rows(self.type_mul.weight, et))
