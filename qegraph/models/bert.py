r"""A plain functional BERT encoder over a Hugging Face BERT-layout state_dict.

.. math::
    h_0 = \mathrm{LN}(E_{word}[ids] + E_{pos}[0..T) + E_{type}[tt]),\qquad
    a = \mathrm{LN}(h + W_O\,\mathrm{MHA}(h) + b_O),\qquad
    h' = \mathrm{LN}(a + W_2\,\mathrm{GELU}(W_1 a + b_1) + b_2),

with multi-head attention softmax(q_h k_hᵀ/√d + mask) v_h, GELU the erf form and LayerNorm
ε = 1e-12 (post-norm, as in BERT). The pooler is tanh(W_P h[:, 0] + b_P).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qegraph.errors import QegraphError

LN_EPS = 1e-12


def bert_prefix(state_dict: Mapping[str, Tensor]) -> str:
    """``"bert."`` when the keys carry that prefix, else ``""``."""
    return "bert." if "bert.embeddings.word_embeddings.weight" in state_dict else ""


def bert_num_layers(state_dict: Mapping[str, Tensor], prefix: str = "") -> int:
    n = 0
    while f"{prefix}encoder.layer.{n}.attention.self.query.weight" in state_dict:
        n += 1
    return n


def _get(sd: Mapping[str, Tensor], key: str) -> Tensor:
    if key not in sd:
        raise QegraphError(f"BERT state_dict is missing key {key!r}")
    return sd[key]


def _ln(sd: Mapping[str, Tensor], p: str, x: Tensor) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], _get(sd, p + ".weight"), _get(sd, p + ".bias"), LN_EPS)


def _lin(sd: Mapping[str, Tensor], p: str, x: Tensor) -> Tensor:
    return F.linear(x, _get(sd, p + ".weight"), _get(sd, p + ".bias"))


def bert_encoder(
    state_dict: Mapping[str, Tensor],
    num_heads: int,
    input_ids: Tensor,
    token_type_ids: Tensor | None = None,
    attention_mask: Tensor | None = None,
) -> Tensor:
    """Last hidden states ``[B, T, D]`` of the BERT encoder in ``state_dict`` (``bert.`` prefix
    optional). ``attention_mask`` ``[B, T]``: 1 for tokens to attend to, 0 for padding."""
    p = bert_prefix(state_dict)
    sd = state_dict
    b, t = input_ids.shape
    if token_type_ids is None:
        token_type_ids = torch.zeros_like(input_ids)
    e = p + "embeddings."
    h = (_get(sd, e + "word_embeddings.weight")[input_ids]
         + _get(sd, e + "position_embeddings.weight")[:t].unsqueeze(0)
         + _get(sd, e + "token_type_embeddings.weight")[token_type_ids])
    h = _ln(sd, e + "LayerNorm", h)
    d_model = h.shape[-1]
    if d_model % num_heads:
        raise QegraphError(f"hidden size {d_model} is not divisible by num_heads={num_heads}")
    d = d_model // num_heads
    bias = torch.zeros(b, 1, 1, t, dtype=h.dtype)
    if attention_mask is not None:
        bias = (1.0 - attention_mask.to(h.dtype))[:, None, None, :] * torch.finfo(h.dtype).min
    for i in range(bert_num_layers(sd, p)):
        lp = f"{p}encoder.layer.{i}."

        def heads(x: Tensor) -> Tensor:
            return x.view(b, t, num_heads, d).transpose(1, 2)

        q, k, v = (heads(_lin(sd, lp + f"attention.self.{n}", h)) for n in ("query", "key", "value"))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + bias, dim=-1)
        ctx = (att @ v).transpose(1, 2).reshape(b, t, d_model)
        h = _ln(sd, lp + "attention.output.LayerNorm", h + _lin(sd, lp + "attention.output.dense", ctx))
        f = _lin(sd, lp + "output.dense", F.gelu(_lin(sd, lp + "intermediate.dense", h)))
        h = _ln(sd, lp + "output.LayerNorm", h + f)
    return h


def bert_pooler(state_dict: Mapping[str, Tensor], hidden: Tensor) -> Tensor:
    """tanh(W_P h[:, 0] + b_P): the pooler output ``[B, D]``."""
    return torch.tanh(_lin(state_dict, bert_prefix(state_dict) + "pooler.dense", hidden[:, 0]))


class BertLayout(nn.Module):
    """A module whose state_dict has exactly the keys of a BERT-layout checkpoint (``bert.`` prefix,
    pooler and the ``position_ids`` buffer optional), running :func:`bert_encoder`. ``forward``
    returns the pooler output when there is a pooler, else the last hidden states."""

    def __init__(self, vocab_size: int, hidden_size: int, num_layers: int, num_heads: int,
                 intermediate_size: int, max_position_embeddings: int, type_vocab_size: int,
                 pooler: bool = True, prefix: str = "", position_ids: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.has_pooler = pooler
        d = hidden_size
        root = nn.Module()
        emb = nn.Module()
        emb.word_embeddings = nn.Embedding(vocab_size, d)
        emb.position_embeddings = nn.Embedding(max_position_embeddings, d)
        emb.token_type_embeddings = nn.Embedding(type_vocab_size, d)
        emb.LayerNorm = nn.LayerNorm(d, eps=LN_EPS)
        if position_ids:
            emb.register_buffer("position_ids", torch.arange(max_position_embeddings).unsqueeze(0))
        root.embeddings = emb
        layers = nn.ModuleList()
        for _ in range(num_layers):
            layer = nn.Module()
            att, slf, out = nn.Module(), nn.Module(), nn.Module()
            slf.query, slf.key, slf.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
            out.dense, out.LayerNorm = nn.Linear(d, d), nn.LayerNorm(d, eps=LN_EPS)
            att.self, att.output = slf, out
            inter, output = nn.Module(), nn.Module()
            inter.dense = nn.Linear(d, intermediate_size)
            output.dense, output.LayerNorm = nn.Linear(intermediate_size, d), nn.LayerNorm(d, eps=LN_EPS)
            layer.attention, layer.intermediate, layer.output = att, inter, output
            layers.append(layer)
        enc = nn.Module()
        enc.layer = layers
        root.encoder = enc
        if pooler:
            pool = nn.Module()
            pool.dense = nn.Linear(d, d)
            root.pooler = pool
        if prefix == "bert.":
            self.bert = root
        elif prefix == "":
            for name, child in root.named_children():
                self.add_module(name, child)
        else:
            raise QegraphError(f"unsupported BERT key prefix {prefix!r} (use '' or 'bert.')")

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None,
                attention_mask: Tensor | None = None) -> Tensor:
        sd = {**dict(self.named_parameters()), **dict(self.named_buffers())}
        h = bert_encoder(sd, self.num_heads, input_ids, token_type_ids, attention_mask)
        return bert_pooler(sd, h) if self.has_pooler else h


__all__ = ["BertLayout", "bert_encoder", "bert_pooler"]
