r"""ViT (``model_type`` ``vit``): patch-embedding conv, cls token, position embeddings, pre-norm encoder.

.. math::
    h_0 = [\,c;\; \mathrm{Conv}_{p\times p,\,\mathrm{stride}\,p}(x)\,] + E_{pos}, \quad
    a = h + \mathrm{MHA}(\mathrm{LN}_1(h)), \quad h' = a + W_2\,\mathrm{act}(W_1 \mathrm{LN}_2(a) + b_1) + b_2,
    \quad z = \mathrm{LN}(h_L),

then the pooler act(W_P z[:, 0] + b_P) (``ViTModel``), the classifier W_c z[:, 0] + b_c
(``ViTForImageClassification``) or z itself (``ViTModel`` without pooler).

Graph: the image channels are fixed INPUT units; the patch conv is a CONV edge block (p·p values per
edge) into the first stream layer (its bias as node features); the cls token c [1, 1, D] and the
position table [1, T+1, D] are EMBED layers tied to the stream; every layer as in
:func:`~qegraph.convert.hf.stack.pre_norm_block`; the final LayerNorm in place. With a pooler or a
classifier the output units are fixed and the stream (conv channels included) is free; without, the
stream is the output and fixed.

Both key schemes are read: ``layers.N.attention.{q,k,v,o}_proj`` / ``layers.N.mlp.fc1`` (transformers
≥ 5) and ``encoder.layer.N.attention.attention.{query,key,value}`` / ``….intermediate.dense`` (older
versions); ``to_module()`` needs a transformers version with the checkpoint's scheme. Refused:
``hidden_act`` values with parameters; a ``mask_token`` (masked image modelling) is an unexpected key.
"""

from __future__ import annotations

from typing import Any

from qegraph.convert.hf.base import Conversion, Head, KeyLayout
from qegraph.convert.hf.stack import Block, pre_norm_block
from qegraph.convert.transformer import Heads, Proj
from qegraph.graph.types import EdgeType, NodeType

_NEW = (r"layers\.\d+\.(?:attention\.(?:q|k|v|o)_proj|layernorm_before|layernorm_after|mlp\.fc1|mlp\.fc2)"
        r"\.(?:weight|bias)")
_OLD = (r"encoder\.layer\.\d+\.(?:attention\.attention\.(?:query|key|value)|attention\.output\.dense|"
        r"layernorm_before|layernorm_after|intermediate\.dense|output\.dense)\.(?:weight|bias)")
_BODY = (r"embeddings\.(?:cls_token|position_embeddings)", r"embeddings\.patch_embeddings\.projection\.(?:weight|bias)",
         _NEW, _OLD, r"layernorm\.(?:weight|bias)", r"pooler\.dense\.(?:weight|bias)")
LAYOUTS = {"vit": KeyLayout(_BODY, "embeddings.cls_token", ("", "vit."), "ViTModel", (
    Head("ViTForImageClassification", (r"classifier\.(?:weight|bias)",), "classifier.weight"),))}
#: The library's defaults of the fields read here (tests compare them with ``ViTConfig()``).
DEFAULTS = {"vit": {"hidden_act": "gelu", "pooler_act": "tanh", "qkv_bias": True}}

#: (new scheme, old scheme) names inside layer N.
_NAMES = {
    "q": ("attention.q_proj", "attention.attention.query"), "k": ("attention.k_proj", "attention.attention.key"),
    "v": ("attention.v_proj", "attention.attention.value"), "o": ("attention.o_proj", "attention.output.dense"),
    "fc1": ("mlp.fc1", "intermediate.dense"), "fc2": ("mlp.fc2", "output.dense"),
    "ln1": ("layernorm_before", "layernorm_before"), "ln2": ("layernorm_after", "layernorm_after"),
}


def build(c: Conversion) -> dict[str, Any]:
    cfg, p = c.cfg, c.plan
    scalars = cfg.activation("hidden_act")
    cfg.activation("pooler_act")
    old = c.opt("encoder.layer.0.attention.attention.query.weight") is not None
    layer = "encoder.layer.{}." if old else "layers.{}."
    layers = c.count(layer + ("attention.attention.query.weight" if old else "attention.q_proj.weight"))
    conv = c.tensor("embeddings.patch_embeddings.projection.weight")
    if conv.dim() != 4 or conv.shape[2] != conv.shape[3]:
        raise cfg.error(f"{c.prefix}embeddings.patch_embeddings.projection.weight has shape {tuple(conv.shape)}; "
                        "expected a square patch kernel [D, C, p, p]")
    d, ch, patch = int(conv.shape[0]), int(conv.shape[1]), int(conv.shape[2])
    heads = Heads(int(cfg.required("num_attention_heads", "pass --num-heads or a config.json")))
    pos = c.tensor("embeddings.position_embeddings")
    cfg.shape("hidden_size", d, c.prefix + "embeddings.patch_embeddings.projection.weight")
    cfg.shape("num_channels", ch, c.prefix + "embeddings.patch_embeddings.projection.weight")
    cfg.shape("patch_size", patch, c.prefix + "embeddings.patch_embeddings.projection.weight")
    cfg.shape("num_hidden_layers", layers, c.prefix + layer.format("N") + "*")
    side = round((int(pos.shape[1]) - 1) ** 0.5)
    if pos.dim() != 3 or side * side != pos.shape[1] - 1:
        raise cfg.error(f"{c.prefix}embeddings.position_embeddings has shape {tuple(pos.shape)}; expected "
                        "[1, (image_size / patch_size)² + 1, D]")
    cfg.shape("image_size", side * patch, c.prefix + "embeddings.position_embeddings")
    if layers:
        fc1 = layer.format(0) + _NAMES["fc1"][old] + ".weight"
        cfg.shape("intermediate_size", int(c.tensor(fc1).shape[0]), c.prefix + fc1)
    q0 = layer.format(0) + _NAMES["q"][old] + ".bias"
    if layers:
        cfg.refuse_unless("qkv_bias", lambda v: bool(v) == (c.opt(q0) is not None),
                          f"it does not match the checkpoint ({'has' if c.opt(q0) else 'no'} key {c.prefix + q0!r})")

    pixels = c.b.add_units("pixel_values", ch, NodeType.INPUT, 0, fixed=True)
    s = c.b.add_units(c.prefix + "embeddings.patch_embeddings.projection", d, NodeType.STREAM, 1)
    key = c.key("embeddings.patch_embeddings.projection.weight")
    c.b.place_edges(key, conv, c.b.add_edges(pixels, s, EdgeType.CONV, "dense", width=patch * patch))
    c.b.place_nodes(c.key("embeddings.patch_embeddings.projection.bias"),
                    c.tensor("embeddings.patch_embeddings.projection.bias"), s, "bias")
    p.table(c.key("embeddings.cls_token"), s)
    p.table(c.key("embeddings.position_embeddings"), s)
    for i in range(layers):
        lp = layer.format(i)

        def proj(part: str, bias: bool = True) -> Proj:
            name = lp + _NAMES[part][old]
            return Proj(c.key(name + ".weight"), c.opt(name + ".bias") if bias else None)

        def ln(part: str) -> tuple[str, str]:
            name = lp + _NAMES[part][old]
            return c.key(name + ".weight"), c.key(name + ".bias")

        blk = Block(
            name=c.prefix + lp.rstrip("."), attn=c.prefix + lp + "attention",
            qkv=(proj("q"), proj("k"), proj("v")), out=Proj(c.key(lp + _NAMES["o"][old] + ".weight"),
                                                             c.key(lp + _NAMES["o"][old] + ".bias")),
            norm1=ln("ln1"), norm2=ln("ln2"), mlp=(proj("fc1"), proj("fc2")), heads=heads, scalars=scalars,
        )
        s = pre_norm_block(c, s, blk, c.prefix + lp + "add1", c.prefix + lp + "add2")
    s = p.norm(s, c.prefix + "layernorm", c.key("layernorm.weight"), c.key("layernorm.bias"), exclusive=True)
    pooler = c.opt("pooler.dense.weight")
    if c.head is not None:
        if pooler is not None:
            raise cfg.error(f"ViTForImageClassification has no pooler; unexpected key {pooler!r}")
        cfg.labels(int(c.sd["classifier.weight"].shape[0]), "classifier.weight")
        c.b.fix(p.linear(s, "classifier", Proj("classifier.weight", "classifier.bias"), NodeType.OUTPUT))
        return {}
    if pooler is None:
        c.b.fix(s)
    else:
        w = c.tensor("pooler.dense.weight")
        cfg.shape("pooler_output_size", int(w.shape[0]), pooler)
        c.b.fix(p.linear(s, c.prefix + "pooler.dense", Proj(pooler, c.key("pooler.dense.bias")), NodeType.OUTPUT))
    return {"add_pooling_layer": pooler is not None}


__all__ = ["DEFAULTS", "LAYOUTS", "build"]
