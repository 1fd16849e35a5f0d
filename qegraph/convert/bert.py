r"""BERT-layout encoder state_dicts → ParameterGraph with qegraph's own runnable model (no config).

``bert_to_graph(state_dict, num_heads)`` is the Hugging Face BERT layout of
:mod:`qegraph.convert.hf.bert` with only the number of heads given: every other config field takes
BERT's defaults (GELU with erf, LayerNorm ε = 1e-12, absolute positions), and ``graph.to_module()``
rebuilds a :class:`qegraph.models.BertLayout`, which needs no ``transformers``. Accepted keys
(optional ``bert.`` prefix on all of them): ``embeddings.{word,position,token_type}_embeddings.weight``,
``embeddings.LayerNorm.*``, optional ``embeddings.position_ids`` (int buffer), per layer
``encoder.layer.N.*`` and optional ``pooler.dense.*``; any other key is refused by name.

The model: h₀ = LN(E_word[ids] + E_pos[t] + E_type[tt]); per layer a = LN(h + Attn(h)),
h' = LN(a + FF(a)); pooler tanh(W_P h[:, 0] + b_P). The graph's function is the pooler output when
there is a pooler (the stream is then free to permute), else the last hidden states (stream fixed).
For a checkpoint with its ``config.json`` use ``qegraph.convert.hf.hf_to_graph`` (or ``qegraph convert``),
which honours every config field.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from qegraph.convert.hf import detect_layout, hf_to_graph
from qegraph.errors import QegraphError
from qegraph.graph.parameter_graph import ParameterGraph


def bert_to_graph(
    state_dict: Mapping[str, Tensor],
    num_heads: int,
    *,
    allow_nonfinite: bool = False,
    source: str = "state_dict",
) -> ParameterGraph:
    """Convert a BERT-layout encoder state_dict (exact inverse: ``to_state_dict()`` returns it bit for
    bit, in the same key order). ``graph.to_module()`` rebuilds a :class:`qegraph.models.BertLayout`."""
    prefix, cls = detect_layout(state_dict, "bert", source)
    if cls != "BertModel":
        raise QegraphError(f"{source}: bert_to_graph converts the encoder only ({cls} has a task head); use "
                           "qegraph.convert.hf.hf_to_graph with the model's config")
    if num_heads < 1:
        raise QegraphError(f"{source}: num_heads must be positive, got {num_heads}")
    graph = hf_to_graph(state_dict, {"num_attention_heads": int(num_heads)}, model_type="bert",
                        allow_nonfinite=allow_nonfinite, source=source)
    cfg = graph.meta["arch"]["kwargs"]["config"]
    graph.meta["arch"] = {
        "type": "class",
        "target": "qegraph.models.bert:BertLayout",
        "kwargs": {
            "vocab_size": cfg["vocab_size"], "hidden_size": cfg["hidden_size"], "num_layers": cfg["num_hidden_layers"],
            "num_heads": int(num_heads), "intermediate_size": cfg.get("intermediate_size", 4 * cfg["hidden_size"]),
            "max_position_embeddings": cfg["max_position_embeddings"], "type_vocab_size": cfg["type_vocab_size"],
            "pooler": f"{prefix}pooler.dense.weight" in state_dict, "prefix": prefix,
            "position_ids": f"{prefix}embeddings.position_ids" in state_dict,
        },
    }
    return graph


__all__ = ["bert_to_graph"]
