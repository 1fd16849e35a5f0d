r"""DistilBERT (``model_type`` ``distilbert``): a post-norm encoder without token types.

.. math::
    h_0 = \mathrm{LN}(E_{word}[ids] + E_{pos}[t]), \quad a = \mathrm{LN}(h + \mathrm{MHA}(h)), \quad
    h' = \mathrm{LN}(a + W_2\,\mathrm{act}(W_1 a + b_1) + b_2)

(LayerNorm ε = 1e-12, fixed in the library). Graph as BERT's; outputs: the last hidden states (stream
fixed) or ``DistilBertForSequenceClassification``'s head, W_c ReLU(W_p h[:, 0] + b_p) + b_c, whose
``pre_classifier`` units keep positive scalings (ReLU) and whose logits are fixed.

``sinusoidal_pos_embds`` only initialises the position table, which the checkpoint holds. Refused:
``activation`` values with parameters (``prelu``, ``xielu``).
"""

from __future__ import annotations

from typing import Any

from qegraph.convert.hf.base import Conversion, Head, KeyLayout
from qegraph.convert.hf.stack import Block, post_norm_block
from qegraph.convert.transformer import Heads, Proj
from qegraph.graph.builder import Scalars
from qegraph.graph.types import NodeType

_BODY = (
    r"embeddings\.(?:word|position)_embeddings\.weight", r"embeddings\.LayerNorm\.(?:weight|bias)",
    r"embeddings\.position_ids",
    r"transformer\.layer\.\d+\.(?:attention\.(?:q_lin|k_lin|v_lin|out_lin)|sa_layer_norm|ffn\.lin1|ffn\.lin2|"
    r"output_layer_norm)\.(?:weight|bias)",
)
LAYOUTS = {"distilbert": KeyLayout(
    _BODY, "embeddings.word_embeddings.weight", ("", "distilbert."), "DistilBertModel",
    (Head("DistilBertForSequenceClassification", (r"(?:pre_classifier|classifier)\.(?:weight|bias)",),
          "classifier.weight"),))}
#: The config field holding the number of attention heads.
HEADS_FIELD = "n_heads"
#: The library's defaults of the fields read here (tests compare them with ``DistilBertConfig()``).
DEFAULTS = {"distilbert": {"activation": "gelu"}}


def build(c: Conversion) -> dict[str, Any]:
    cfg, p = c.cfg, c.plan
    scalars = cfg.activation("activation")
    e = "embeddings."
    word = c.tensor(e + "word_embeddings.weight")
    d = int(word.shape[1])
    layers = c.count("transformer.layer.{}.attention.q_lin.weight")
    heads = Heads(int(cfg.required("n_heads", "pass --num-heads or a config.json")))
    cfg.shape("vocab_size", int(word.shape[0]), c.prefix + e + "word_embeddings.weight")
    cfg.shape("dim", d, c.prefix + e + "word_embeddings.weight")
    cfg.shape("n_layers", layers, c.prefix + "transformer.layer.N.*")
    cfg.shape("max_position_embeddings", int(c.tensor(e + "position_embeddings.weight").shape[0]),
              c.prefix + e + "position_embeddings.weight")
    if layers:
        cfg.shape("hidden_dim", int(c.tensor("transformer.layer.0.ffn.lin1.weight").shape[0]),
                  c.prefix + "transformer.layer.0.ffn.lin1.weight")

    s = c.stream("embeddings", d)
    for t in ("word_embeddings", "position_embeddings"):
        p.table(c.key(f"{e}{t}.weight"), s)
    s = p.norm(s, c.prefix + e + "LayerNorm", c.key(e + "LayerNorm.weight"), c.key(e + "LayerNorm.bias"),
               exclusive=True)
    c.int_buffer(e + "position_ids")
    for i in range(layers):
        lp = f"transformer.layer.{i}."

        def proj(name: str) -> Proj:
            return Proj(c.key(lp + name + ".weight"), c.key(lp + name + ".bias"))

        blk = Block(
            name=c.prefix + lp.rstrip("."), attn=c.prefix + lp + "attention",
            qkv=(proj("attention.q_lin"), proj("attention.k_lin"), proj("attention.v_lin")),
            out=proj("attention.out_lin"),
            norm1=(c.key(lp + "sa_layer_norm.weight"), c.key(lp + "sa_layer_norm.bias")),
            norm2=(c.key(lp + "output_layer_norm.weight"), c.key(lp + "output_layer_norm.bias")),
            mlp=(proj("ffn.lin1"), proj("ffn.lin2")), heads=heads, scalars=scalars,
        )
        s = post_norm_block(c, s, blk, c.prefix + lp + "attention.add", c.prefix + lp + "add")
    if c.head is None:
        c.b.fix(s)
        return {}
    cfg.labels(int(c.sd["classifier.weight"].shape[0]), "classifier.weight")
    h = p.linear(s, "pre_classifier", Proj("pre_classifier.weight", "pre_classifier.bias"), NodeType.HIDDEN)
    c.b.constrain(h, Scalars.POS)  # ReLU
    c.b.fix(p.linear(h, "classifier", Proj("classifier.weight", "classifier.bias"), NodeType.OUTPUT))
    return {}


__all__ = ["DEFAULTS", "HEADS_FIELD", "LAYOUTS", "build"]
