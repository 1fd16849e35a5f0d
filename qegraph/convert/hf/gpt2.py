r"""GPT-2 (``model_type`` ``gpt2``): a pre-norm causal decoder with ``Conv1D`` weights.

.. math::
    h_0 = E_{tok}[ids] + E_{pos}[t], \quad a = h + \mathrm{Attn}_{causal}(\mathrm{LN}_1(h)), \quad
    h' = a + W_2\,\mathrm{act}(W_1 \mathrm{LN}_2(a) + b_1) + b_2, \quad y = \mathrm{LN}_f(h_L).

``Conv1D`` computes x W + b with W stored [in, out], the transpose of a Linear weight; the fused
``c_attn`` [D, 3D] holds W_Q^T, W_K^T, W_V^T side by side (columns h·d … h·d+d−1 of each third are
head h). The graph stores each such weight in its Linear orientation (edge u → v holds W[v, u]) with a
recorded transposed layout, so ``to_state_dict()`` returns the [in, out] tensors bit for bit. The
causal mask, ``scale_attn_weights`` and ``scale_attn_by_inverse_layer_idx`` scale or mask the scores
q^T k, which every head symmetry keeps (A on q, A^{-T} on k); they are honoured by the rebuilt
``GPT2Model``. The output is the last hidden states: the stream is fixed.

Refused: ``add_cross_attention`` and ``activation_function`` values with parameters.
"""

from __future__ import annotations

from typing import Any

from qegraph.convert.hf.base import Conversion, KeyLayout
from qegraph.convert.hf.stack import Block, pre_norm_block
from qegraph.convert.transformer import Heads, Proj

_BODY = (r"(?:wte|wpe)\.weight", r"ln_f\.(?:weight|bias)",
         r"h\.\d+\.(?:ln_1|ln_2|attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.(?:weight|bias)")
LAYOUTS = {"gpt2": KeyLayout(_BODY, "wte.weight", ("", "transformer."), "GPT2Model")}
#: The config field holding the number of attention heads.
HEADS_FIELD = "n_head"
#: The library's defaults of the fields read here (tests compare them with ``GPT2Config()``).
DEFAULTS = {"gpt2": {"activation_function": "gelu_new", "add_cross_attention": False}}


def build(c: Conversion) -> dict[str, Any]:
    cfg, p = c.cfg, c.plan
    cfg.refuse_unless("add_cross_attention", lambda v: not v, "cross-attention layers are not modelled")
    scalars = cfg.activation("activation_function")
    wte = c.tensor("wte.weight")
    d = int(wte.shape[1])
    layers = c.count("h.{}.attn.c_attn.weight")
    heads = Heads(int(cfg.required("n_head", "pass --num-heads or a config.json")))
    cfg.shape("vocab_size", int(wte.shape[0]), c.prefix + "wte.weight")
    cfg.shape("n_embd", d, c.prefix + "wte.weight")
    cfg.shape("n_positions", int(c.tensor("wpe.weight").shape[0]), c.prefix + "wpe.weight")
    cfg.shape("n_layer", layers, c.prefix + "h.N.*")
    if layers and "n_inner" in cfg and cfg["n_inner"] is not None:
        cfg.shape("n_inner", int(c.tensor("h.0.mlp.c_fc.weight").shape[1]), c.prefix + "h.0.mlp.c_fc.weight")
    elif layers and int(c.tensor("h.0.mlp.c_fc.weight").shape[1]) != 4 * d:
        cfg.shape("n_inner", int(c.tensor("h.0.mlp.c_fc.weight").shape[1]), c.prefix + "h.0.mlp.c_fc.weight")

    s = c.stream("wte", d)
    p.table(c.key("wte.weight"), s)
    p.table(c.key("wpe.weight"), s)
    for i in range(layers):
        lp = f"h.{i}."

        def conv(name: str) -> Proj:
            return Proj(c.key(lp + name + ".weight"), c.key(lp + name + ".bias"), conv1d=True)

        blk = Block(
            name=c.prefix + lp + "mlp", attn=c.prefix + lp + "attn", qkv=conv("attn.c_attn"), out=conv("attn.c_proj"),
            norm1=(c.key(lp + "ln_1.weight"), c.key(lp + "ln_1.bias")),
            norm2=(c.key(lp + "ln_2.weight"), c.key(lp + "ln_2.bias")),
            mlp=(conv("mlp.c_fc"), conv("mlp.c_proj")), heads=heads, scalars=scalars,
        )
        s = pre_norm_block(c, s, blk, c.prefix + lp + "add1", c.prefix + lp + "add2")
    s = p.norm(s, c.prefix + "ln_f", c.key("ln_f.weight"), c.key("ln_f.bias"), exclusive=True)
    c.b.fix(s)
    return {}


__all__ = ["DEFAULTS", "HEADS_FIELD", "LAYOUTS", "build"]
