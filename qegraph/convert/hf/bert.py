r"""BERT and RoBERTa (``model_type`` ``bert``, ``roberta``): post-norm encoders with learned absolute
positions.

.. math::
    h_0 = \mathrm{LN}(E_{word}[ids] + E_{pos}[p] + E_{type}[tt]), \quad
    a = \mathrm{LN}(h + \mathrm{MHA}(h)), \quad h' = \mathrm{LN}(a + W_2\,\mathrm{act}(W_1 a + b_1) + b_2),

pooler tanh(W_P h[:, 0] + b_P). Positions p are 0, 1, … for BERT; RoBERTa counts from
``pad_token_id`` + 1 and gives padding tokens the position ``pad_token_id`` (modelled by the rebuilt
``RobertaModel``; the graph is the same: position rows are fixed coordinates).

Graph: the word / position / token-type tables are EMBED layers tied to the first stream layer (which
carries the embedding LayerNorm); every layer as in :func:`~qegraph.convert.hf.stack.post_norm_block`.
Outputs: the pooler (tanh units, fixed as the model's output; the stream is then free), a
sequence-classification head (BERT: classifier on the pooler, whose tanh units keep sign flips;
RoBERTa: dense → tanh → out_proj on the first token), or the last hidden states (no pooler: the
stream is fixed).

Refused: ``add_cross_attention``, ``position_embedding_type`` other than ``absolute``, RoBERTa without
``pad_token_id``, and ``hidden_act`` values with parameters (``prelu``, ``xielu``).
"""

from __future__ import annotations

from typing import Any

from qegraph.convert.hf.base import Conversion, Head, KeyLayout
from qegraph.convert.hf.stack import Block, post_norm_block
from qegraph.convert.transformer import Heads, Proj
from qegraph.graph.builder import Scalars
from qegraph.graph.types import NodeType

_LAYER = (r"encoder\.layer\.\d+\.(?:attention\.self\.(?:query|key|value)|attention\.output\.dense|"
          r"attention\.output\.LayerNorm|intermediate\.dense|output\.dense|output\.LayerNorm)\.(?:weight|bias)")
_BODY = (r"embeddings\.(?:word|position|token_type)_embeddings\.weight", r"embeddings\.LayerNorm\.(?:weight|bias)",
         r"embeddings\.position_ids", _LAYER, r"pooler\.dense\.(?:weight|bias)")
_ANCHOR = "embeddings.word_embeddings.weight"

LAYOUTS = {
    "bert": KeyLayout(_BODY, _ANCHOR, ("", "bert."), "BertModel", (
        Head("BertForSequenceClassification", (r"classifier\.(?:weight|bias)",), "classifier.weight"),)),
    "roberta": KeyLayout(_BODY, _ANCHOR, ("", "roberta."), "RobertaModel", (
        Head("RobertaForSequenceClassification", (r"classifier\.(?:dense|out_proj)\.(?:weight|bias)",),
             "classifier.out_proj.weight"),)),
}

_COMMON = {"hidden_act": "gelu", "layer_norm_eps": 1e-12, "add_cross_attention": False, "is_decoder": False,
           "position_embedding_type": "absolute"}
#: The library's defaults of the fields read here (tests compare them with ``BertConfig()`` / ``RobertaConfig()``).
DEFAULTS = {"bert": {**_COMMON, "pad_token_id": 0}, "roberta": {**_COMMON, "pad_token_id": 1}}


def _refuse_roberta_like(c: Conversion) -> None:
    """Without a config saying ``bert``, refuse tables that look like RoBERTa's: its ``padding_idx`` 1
    keeps row 1 of the word *and* position tables at exactly zero (BERT's position table has no
    padding row), and the BERT layout would read its positions without RoBERTa's offset."""
    rows = [c.tensor(f"embeddings.{t}_embeddings.weight") for t in ("word", "position")]
    if all(r.shape[0] > 1 and not bool(r[1].any()) for r in rows):
        raise c.cfg.error("row 1 of the word and position embeddings is zero, as in a RoBERTa checkpoint "
                          "(padding_idx 1; the BERT layout would ignore RoBERTa's position offset): pass its "
                          "config.json, or --layout roberta")


def build(c: Conversion) -> dict[str, Any]:
    """Plan a BERT / RoBERTa model; returns the constructor arguments of the library's base class."""
    cfg, p = c.cfg, c.plan
    cfg.refuse_unless("add_cross_attention", lambda v: not v, "cross-attention layers are not modelled")
    cfg.refuse_unless("position_embedding_type", lambda v: v in (None, "absolute"),
                      "only absolute position embeddings are modelled")
    if cfg.model_type == "roberta":
        cfg.refuse_unless("pad_token_id", lambda v: isinstance(v, int),
                          "RoBERTa's positions start at pad_token_id + 1, so it must be an integer")
    scalars = cfg.activation("hidden_act")
    e = "embeddings."
    word = c.tensor(e + "word_embeddings.weight")
    if cfg.model_type == "bert" and "model_type" not in cfg:
        _refuse_roberta_like(c)
    d = int(word.shape[1])
    layers = c.count("encoder.layer.{}.attention.self.query.weight")
    heads = Heads(int(cfg.required("num_attention_heads", "pass --num-heads or a config.json")))
    for name, value, key in (("vocab_size", word.shape[0], _ANCHOR), ("hidden_size", d, _ANCHOR),
                             ("num_hidden_layers", layers, "encoder.layer.N.*"),
                             ("max_position_embeddings", c.tensor(e + "position_embeddings.weight").shape[0],
                              e + "position_embeddings.weight"),
                             ("type_vocab_size", c.tensor(e + "token_type_embeddings.weight").shape[0],
                              e + "token_type_embeddings.weight")):
        cfg.shape(name, int(value), c.prefix + key)
    if layers:
        cfg.shape("intermediate_size", int(c.tensor("encoder.layer.0.intermediate.dense.weight").shape[0]),
                  c.prefix + "encoder.layer.0.intermediate.dense.weight")

    s = c.stream("embeddings", d)
    for t in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        p.table(c.key(f"{e}{t}.weight"), s)
    s = p.norm(s, c.prefix + e + "LayerNorm", c.key(e + "LayerNorm.weight"), c.key(e + "LayerNorm.bias"),
               exclusive=True)
    c.int_buffer(e + "position_ids")
    for i in range(layers):
        lp = f"{c.prefix}encoder.layer.{i}."
        a = f"encoder.layer.{i}.attention."

        def proj(name: str) -> Proj:
            return Proj(c.key(name + ".weight"), c.key(name + ".bias"))

        blk = Block(
            name=lp.rstrip("."), attn=lp + "attention.self",
            qkv=(proj(a + "self.query"), proj(a + "self.key"), proj(a + "self.value")), out=proj(a + "output.dense"),
            norm1=(c.key(a + "output.LayerNorm.weight"), c.key(a + "output.LayerNorm.bias")),
            norm2=(c.key(f"encoder.layer.{i}.output.LayerNorm.weight"),
                   c.key(f"encoder.layer.{i}.output.LayerNorm.bias")),
            mlp=(proj(f"encoder.layer.{i}.intermediate.dense"), proj(f"encoder.layer.{i}.output.dense")),
            heads=heads, scalars=scalars,
        )
        s = post_norm_block(c, s, blk, lp + "attention.add", lp + "add")
    pooler = c.opt("pooler.dense.weight")
    if pooler is not None:
        out = p.linear(s, c.prefix + "pooler.dense", Proj(pooler, c.key("pooler.dense.bias")), NodeType.HIDDEN)
        s = out
    if c.head is None:
        c.b.fix(s, NodeType.OUTPUT if pooler is not None else None)
        return {"add_pooling_layer": pooler is not None}
    if cfg.model_type == "bert":
        if pooler is None:
            raise cfg.error("BertForSequenceClassification needs the pooler (pooler.dense.*)")
        c.b.constrain(s, Scalars.SIGN)  # tanh units read only by the classifier
        w = c.sd["classifier.weight"]
        cfg.labels(int(w.shape[0]), "classifier.weight")
        c.b.fix(p.linear(s, "classifier", Proj("classifier.weight", "classifier.bias"), NodeType.OUTPUT))
        return {}
    if pooler is not None:
        raise cfg.error("RobertaForSequenceClassification has no pooler; unexpected key "
                        f"{c.prefix + 'pooler.dense.weight'!r}")
    w = c.sd["classifier.out_proj.weight"]
    cfg.labels(int(w.shape[0]), "classifier.out_proj.weight")
    h = p.linear(s, "classifier.dense", Proj("classifier.dense.weight", "classifier.dense.bias"), NodeType.HIDDEN)
    c.b.constrain(h, Scalars.SIGN)  # tanh
    c.b.fix(p.linear(h, "classifier.out_proj", Proj("classifier.out_proj.weight", "classifier.out_proj.bias"),
                     NodeType.OUTPUT))
    return {}


__all__ = ["DEFAULTS", "LAYOUTS", "build"]
