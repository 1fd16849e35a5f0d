r"""Hugging Face BERT-layout encoder state_dicts → ParameterGraph (no module class needed).

Accepted keys (optional ``bert.`` prefix on all of them): ``embeddings.{word,position,token_type}_
embeddings.weight``, ``embeddings.LayerNorm.{weight,bias}``, optional ``embeddings.position_ids``
(int buffer), per layer N ``encoder.layer.N.attention.self.{query,key,value}.{weight,bias}``,
``…attention.output.dense.*``, ``…attention.output.LayerNorm.*``, ``…intermediate.dense.*``,
``…output.dense.*``, ``…output.LayerNorm.*``, and optional ``pooler.dense.{weight,bias}``. Any
other key is refused.

The model (post-norm, GELU, see :mod:`qegraph.models.bert`):
h₀ = LN(E_word[ids] + E_pos[t] + E_type[tt]); per layer a = LN(h + Attn(h)), h' = LN(a + FF(a));
pooler tanh(W_P h[:, 0] + b_P).

Graph: the three embedding tables are EMBED layers (columns as node features in ``emb_attr``, see
``qegraph.graph.extras``) tied to the first stream layer, which carries the embedding LayerNorm; each
layer is planned by :class:`~qegraph.convert.transformer.TransformerPlanner` (heads, FFN with GELU:
permutations only, residual sums with the post-norm γ, β in place). The residual stream is one unit
group for the whole stack. The graph's function is the pooler output when there is a pooler (the
stream is then free to permute), else the last hidden states (then the stream units are fixed).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from qegraph.convert.transformer import TransformerPlanner
from qegraph.errors import QegraphError
from qegraph.graph.builder import GraphBuilder, Scalars
from qegraph.graph.extras import GraphExtras
from qegraph.graph.parameter_graph import ParameterGraph
from qegraph.graph.types import NodeType
from qegraph.models.bert import bert_num_layers, bert_prefix

_EMB_TABLES = ("word_embeddings", "position_embeddings", "token_type_embeddings")
_LAYER_KEYS = tuple(
    f"{m}.{w}"
    for m in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
              "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm")
    for w in ("weight", "bias")
)


def _expected_keys(p: str, num_layers: int) -> list[str]:
    keys = [f"{p}embeddings.{t}.weight" for t in _EMB_TABLES]
    keys += [f"{p}embeddings.LayerNorm.weight", f"{p}embeddings.LayerNorm.bias"]
    keys += [f"{p}encoder.layer.{i}.{k}" for i in range(num_layers) for k in _LAYER_KEYS]
    return keys


def bert_to_graph(
    state_dict: Mapping[str, Tensor],
    num_heads: int,
    *,
    allow_nonfinite: bool = False,
    source: str = "state_dict",
) -> ParameterGraph:
    """Convert a BERT-layout encoder state_dict (exact inverse: ``to_state_dict()`` returns it bit for
    bit, in the same key order). ``graph.to_module()`` rebuilds a :class:`qegraph.models.BertLayout`."""
    sd = dict(state_dict)
    p = bert_prefix(sd)
    num_layers = bert_num_layers(sd, p)
    pos_ids = f"{p}embeddings.position_ids"
    pooler = (f"{p}pooler.dense.weight", f"{p}pooler.dense.bias")
    expected = _expected_keys(p, num_layers)
    optional = [pos_ids, *pooler]
    allowed = set(expected) | set(optional)
    for key in sd:
        if key not in allowed:
            raise QegraphError(
                f"{source}: unexpected key {key!r} for a BERT-layout encoder (prefix {p!r}, {num_layers} layers); "
                "only embeddings.*, encoder.layer.N.*, pooler.dense.* are supported"
            )
    for key in expected:
        if key not in sd:
            raise QegraphError(f"{source}: BERT-layout state_dict is missing key {key!r}")
    has_pooler = pooler[0] in sd or pooler[1] in sd
    if has_pooler and not all(k in sd for k in pooler):
        raise QegraphError(f"{source}: the pooler needs both {pooler[0]!r} and {pooler[1]!r}")
    if num_heads < 1:
        raise QegraphError(f"{source}: num_heads must be positive, got {num_heads}")

    b, extras = GraphBuilder(), GraphExtras()
    plan = TransformerPlanner(b, extras, sd, lambda msg: QegraphError(f"{source}: {msg}"))
    e = f"{p}embeddings."
    word = sd[e + "word_embeddings.weight"]
    if word.dim() != 2:
        raise QegraphError(f"{source}: {e}word_embeddings.weight has shape {tuple(word.shape)}; expected [vocab, hidden]")
    s = b.add_units(e.rstrip("."), word.shape[1], NodeType.STREAM, 1)
    for t in _EMB_TABLES:
        extras.add_table(b, f"{e}{t}.weight", sd[f"{e}{t}.weight"], s, 0)
    s = plan.norm(s, e + "LayerNorm", e + "LayerNorm.weight", e + "LayerNorm.bias", exclusive=True)
    if pos_ids in sd:
        b.place_aux(pos_ids, sd[pos_ids])
    for i in range(num_layers):
        lp = f"{p}encoder.layer.{i}."
        a = lp + "attention."
        qkv = tuple((f"{a}self.{n}.weight", f"{a}self.{n}.bias") for n in ("query", "key", "value"))
        o = plan.attention(a + "self", (s, s, s), num_heads, qkv=qkv,  # type: ignore[arg-type]
                           out=(a + "output.dense.weight", a + "output.dense.bias"))
        s = plan.norm(plan.residual(s, o, a + "add"), a + "output.LayerNorm", a + "output.LayerNorm.weight",
                      a + "output.LayerNorm.bias", exclusive=True)
        f = plan.ffn(s, lp.rstrip("."), (lp + "intermediate.dense.weight", lp + "intermediate.dense.bias"),
                     (lp + "output.dense.weight", lp + "output.dense.bias"), Scalars.ONE)
        s = plan.norm(plan.residual(s, f, lp + "add"), lp + "output.LayerNorm", lp + "output.LayerNorm.weight",
                      lp + "output.LayerNorm.bias", exclusive=True)
    if has_pooler:
        out = plan.linear(s, f"{p}pooler.dense", pooler[0], pooler[1], NodeType.OUTPUT)
        b.fix(out)
    else:
        b.fix(s)
    inter = sd[f"{p}encoder.layer.0.intermediate.dense.weight"].shape[0] if num_layers else 4 * word.shape[1]
    arch = {
        "type": "class",
        "target": "qegraph.models.bert:BertLayout",
        "kwargs": {
            "vocab_size": int(word.shape[0]), "hidden_size": int(word.shape[1]), "num_layers": num_layers,
            "num_heads": int(num_heads), "intermediate_size": int(inter),
            "max_position_embeddings": int(sd[e + "position_embeddings.weight"].shape[0]),
            "type_vocab_size": int(sd[e + "token_type_embeddings.weight"].shape[0]),
            "pooler": has_pooler, "prefix": p, "position_ids": pos_ids in sd,
        },
    }
    keys = list(sd)
    graph = b.build(arch, [k for k in keys if k not in extras.keys], allow_nonfinite=allow_nonfinite, source=source)
    return extras.finalize(b, graph, keys, allow_nonfinite=allow_nonfinite, source=source)


__all__ = ["bert_to_graph"]
