r"""Transformer blocks of the Hugging Face layouts, planned with the shared head / stream planner.

Post-norm (BERT, RoBERTa, DistilBERT):

.. math::
    a = \mathrm{LN}_1(h + \mathrm{Attn}(h)), \qquad h' = \mathrm{LN}_2(a + \mathrm{FF}(a)),

γ, β in place on the residual sums. Pre-norm (GPT-2, ViT, Llama-style):

.. math::
    a = h + \mathrm{Attn}(\mathrm{N}_1(h)), \qquad h' = a + \mathrm{FF}(\mathrm{N}_2(a)),

with N a LayerNorm or an RMSNorm (γ only) on NORM units tied to the stream, and FF either
W₂ act(W₁ x + b₁) + b₂ or the gated W_down(act(W_gate x) ⊙ W_up x). The residual stream of the whole
stack is one unit group (residual sums and norms tie it); it is fixed when the model's output is the
stream itself (a base model's last hidden states) and free when a head reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

from qegraph.convert.hf.base import Conversion
from qegraph.convert.transformer import Heads, Proj
from qegraph.graph.builder import Scalars


@dataclass(frozen=True)
class Block:
    """The state_dict keys of one transformer block (full keys, prefix included)."""

    name: str  # the block's key prefix, e.g. "encoder.layer.3"
    attn: str  # unit-layer name of the attention
    qkv: Proj | tuple[Proj, Proj, Proj]
    out: Proj
    norm1: tuple[str, str | None]  # (γ key, β key)
    norm2: tuple[str, str | None]
    mlp: tuple[Proj, ...]  # (W₁, W₂) or (W_gate, W_up, W_down)
    heads: Heads
    scalars: Scalars  # the activation's scalars (plain feed-forward block)


def _ff(c: Conversion, blk: Block, src: int) -> int:
    if len(blk.mlp) == 3:
        return c.plan.gated_ffn(src, blk.name, *blk.mlp)
    return c.plan.ffn(src, blk.name, blk.mlp[0], blk.mlp[1], blk.scalars)


def post_norm_block(c: Conversion, s: int, blk: Block, add1: str, add2: str) -> int:
    """a = LN₁(h + Attn(h)), h' = LN₂(a + FF(a)); ``add1``/``add2`` name the residual sums."""
    p = c.plan
    o = p.attention(blk.attn, (s, s, s), blk.heads, blk.qkv, blk.out)
    s = p.norm(p.residual(s, o, add1), blk.norm1[0].rsplit(".", 1)[0], *blk.norm1, exclusive=True)
    f = _ff(c, blk, s)
    return p.norm(p.residual(s, f, add2), blk.norm2[0].rsplit(".", 1)[0], *blk.norm2, exclusive=True)


def pre_norm_block(c: Conversion, s: int, blk: Block, add1: str, add2: str) -> int:
    """a = h + Attn(N₁(h)), h' = a + FF(N₂(a))."""
    p = c.plan
    h = p.norm(s, blk.norm1[0].rsplit(".", 1)[0], *blk.norm1, exclusive=False)
    s = p.residual(s, p.attention(blk.attn, (h, h, h), blk.heads, blk.qkv, blk.out), add1)
    h = p.norm(s, blk.norm2[0].rsplit(".", 1)[0], *blk.norm2, exclusive=False)
    return p.residual(s, _ff(c, blk, h), add2)


__all__ = ["Block", "post_norm_block", "pre_norm_block"]
