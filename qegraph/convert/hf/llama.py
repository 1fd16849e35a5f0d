r"""Llama-style decoders (``model_type`` ``llama``, ``qwen2``, ``mistral``): RMSNorm, SwiGLU, rotary
position embeddings, grouped-query attention.

.. math::
    h_0 = E[ids], \quad a = h + W_O\,\mathrm{Attn}_{causal}(R\,W_Q \bar h,\; R\,W_K \bar h,\; W_V \bar h), \quad
    h' = a + W_{down}\big(\mathrm{act}(W_{gate}\bar a) \odot W_{up}\bar a\big), \quad z = \mathrm{RMS}(h_L),

with \bar h = RMS_1(h) = γ ⊙ h / rms(h), R the rotary rotations of every head's coordinate pairs
(i, i + d/2), and H_kv key/value heads shared by H / H_kv query heads each. Output: the last hidden
states z (``XModel``: the stream is fixed) or the logits W_lm z of ``XForCausalLM`` with an untied
``lm_head`` (fixed vocabulary units; the stream is free).

Graph: ``embed_tokens`` is an EMBED layer tied to the stream; every layer as in
:func:`~qegraph.convert.hf.stack.pre_norm_block` with RMSNorm γ on NORM units and the gated feed-forward
block (gate, up and product units tied: permutations only). Heads (``qegraph.convert.transformer``):
the group's members are the key/value heads (a permutation moves one with its query heads), B ∈ GL(d)
per key/value head on V (and W_O's columns of its query heads); queries and keys carry no GL gauge
(rotary embeddings commute only with per-frequency-pair a·I + b·J blocks). Grouped-query W_Q and W_O
are stored regrouped by key/value head (a recorded layout).

``rms_norm_eps``, ``rope_theta`` / ``rope_scaling`` / ``rope_parameters``, ``sliding_window``,
``attention_bias``, ``mlp_bias`` and ``head_dim`` are honoured by the rebuilt library class (biases and
head_dim also fix the keys and shapes). Refused: ``tie_word_embeddings`` with an ``lm_head`` (weight
sharing), ``hidden_act`` values with parameters.
"""

from __future__ import annotations

from typing import Any

from qegraph.convert.hf.base import Conversion, Head, KeyLayout
from qegraph.convert.hf.stack import Block, pre_norm_block
from qegraph.convert.transformer import Heads, Proj
from qegraph.graph.builder import Scalars
from qegraph.graph.types import NodeType

_BODY = (r"embed_tokens\.weight", r"norm\.weight",
         r"layers\.\d+\.(?:self_attn\.(?:q|k|v|o)_proj|mlp\.(?:gate|up|down)_proj)\.(?:weight|bias)",
         r"layers\.\d+\.(?:input_layernorm|post_attention_layernorm)\.weight")
_CLASSES = {"llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral"}
LAYOUTS = {mt: KeyLayout(_BODY, "embed_tokens.weight", ("", "model."), f"{name}Model", (
    Head(f"{name}ForCausalLM", (r"lm_head\.weight",), "lm_head.weight"),)) for mt, name in _CLASSES.items()}
#: The library's defaults of the fields read here (tests compare them with the config classes).
_DEFAULTS = {"hidden_act": "silu", "tie_word_embeddings": False, "num_key_value_heads": None}
DEFAULTS = {mt: dict(_DEFAULTS) for mt in _CLASSES}


def build(c: Conversion) -> dict[str, Any]:
    cfg, p = c.cfg, c.plan
    cfg.activation("hidden_act")
    emb = c.tensor("embed_tokens.weight")
    d = int(emb.shape[1])
    layers = c.count("layers.{}.self_attn.q_proj.weight")
    h = int(cfg.required("num_attention_heads", "pass --num-heads or a config.json"))
    hk = cfg["num_key_value_heads"] if cfg["num_key_value_heads"] is not None else h
    heads = Heads(h, int(hk), rotary=True)
    cfg.shape("vocab_size", int(emb.shape[0]), c.prefix + "embed_tokens.weight")
    cfg.shape("hidden_size", d, c.prefix + "embed_tokens.weight")
    cfg.shape("num_hidden_layers", layers, c.prefix + "layers.N.*")
    if layers:
        q = c.tensor("layers.0.self_attn.q_proj.weight")
        cfg.shape("intermediate_size", int(c.tensor("layers.0.mlp.gate_proj.weight").shape[0]),
                  c.prefix + "layers.0.mlp.gate_proj.weight")
        if int(q.shape[0]) % h:
            raise cfg.error(f"{c.prefix}layers.0.self_attn.q_proj.weight has {q.shape[0]} rows, not a multiple of "
                            f"num_attention_heads={h}")
        cfg.shape("head_dim", int(q.shape[0]) // h, c.prefix + "layers.0.self_attn.q_proj.weight")

    s = c.stream("embed_tokens", d)
    p.table(c.key("embed_tokens.weight"), s)
    for i in range(layers):
        lp = f"layers.{i}."

        def proj(name: str) -> Proj:
            return Proj(c.key(lp + name + ".weight"), c.opt(lp + name + ".bias"))

        blk = Block(
            name=c.prefix + lp + "mlp", attn=c.prefix + lp + "self_attn",
            qkv=(proj("self_attn.q_proj"), proj("self_attn.k_proj"), proj("self_attn.v_proj")),
            out=proj("self_attn.o_proj"),
            norm1=(c.key(lp + "input_layernorm.weight"), None),
            norm2=(c.key(lp + "post_attention_layernorm.weight"), None),
            mlp=(proj("mlp.gate_proj"), proj("mlp.up_proj"), proj("mlp.down_proj")), heads=heads, scalars=Scalars.ONE,
        )
        s = pre_norm_block(c, s, blk, c.prefix + lp + "add1", c.prefix + lp + "add2")
    s = p.norm(s, c.prefix + "norm", c.key("norm.weight"), None, exclusive=True)
    if c.head is None:
        c.b.fix(s)
        return {}
    cfg.refuse_unless("tie_word_embeddings", lambda v: not v,
                      "lm_head shares the input embedding table (weight sharing is not modelled)")
    w = c.sd["lm_head.weight"]
    cfg.shape("vocab_size", int(w.shape[0]), "lm_head.weight")
    c.b.fix(p.linear(s, "lm_head", Proj("lm_head.weight"), NodeType.OUTPUT))
    return {}


__all__ = ["DEFAULTS", "LAYOUTS", "build"]
