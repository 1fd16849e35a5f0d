r"""Transformer converters: ``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer``, ``nn.TransformerEncoder``.

Attention over token features x_t ∈ R^D with H heads of d = D/H coordinates (head h holds rows
h·d … h·d+d−1 of the projections; PyTorch convention y = W x + b):

.. math::
    q = W_Q x + b_Q,\quad k = W_K x + b_K,\quad v = W_V x + b_V,\qquad
    o_t = W_O \operatorname{concat}_h \sum_s \operatorname{softmax}_s\!\big(q_{t,h}^\top k_{s,h}/\sqrt d\big)\, v_{s,h} + b_O .

Graph (``docs/transformers.md``): a QUERY, KEY and VALUE unit layer of D nodes each (biases as node
features), dense edges source → Q/K/V holding W_Q, W_K, W_V, parameter-free diag ``QK_PAIR`` edges
q_{h,i} → k_{h,i}, and dense edges V → output units holding W_O (the value coordinates *are* the
columns of W_O). Q, K, V form one ``HEADS`` unit group (head permutation × GL per head, see
``qegraph.symmetry.gl``). An encoder layer adds the feed-forward units (FFN nodes, ReLU keeps positive
scalings, GELU only permutations), residual sums (STREAM nodes, RESIDUAL edges) and LayerNorms (γ, β
as node features of the stream units: in place on a residual sum (post-norm) or on NORM nodes tied to
the stream (pre-norm)). Residual additions tie the whole stream of a stack into one unit group.

The same planning functions build BERT-layout graphs (``qegraph.convert.bert``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from qegraph.convert import ops
from qegraph.convert.fx_converter import FxConverter, Opaque, Value, register_module_handler
from qegraph.graph.builder import GraphBuilder, Placement, Scalars
from qegraph.graph.extras import GraphExtras
from qegraph.graph.types import NODE_SLOTS, EdgeType, NodeType


class TransformerPlanner:
    """Plans transformer pieces into a :class:`GraphBuilder`; parameters are read from ``sd`` by key."""

    def __init__(self, b: GraphBuilder, extras: GraphExtras, sd: Mapping[str, Tensor],
                 fail: Callable[[str], Exception]) -> None:
        self.b = b
        self.extras = extras
        self.sd = sd
        self.fail = fail

    def param(self, key: str) -> Tensor:
        if key not in self.sd:
            raise self.fail(f"missing parameter {key!r}")
        return self.sd[key]

    def depth(self, *layers: int) -> int:
        return max(self.b.layers[i].depth for i in layers) + 1

    def linear(self, src: int, name: str, w_key: str, b_key: str | None, node_type: NodeType) -> int:
        """Units y = W x + b: a dense edge block src → new layer holding W, b as node features."""
        w = self.param(w_key)
        if w.dim() != 2 or w.shape[1] != self.b.layers[src].n:
            raise self.fail(f"{w_key!r} has shape {tuple(w.shape)}; expected [out, {self.b.layers[src].n}]")
        dst = self.b.add_units(name, w.shape[0], node_type, self.depth(src))
        self.b.place_edges(w_key, w, self.b.add_edges(src, dst, EdgeType.LINEAR, "dense"))
        if b_key is not None:
            self.b.place_nodes(b_key, self.param(b_key), dst, "bias")
        return dst

    def residual(self, a: int, c: int, name: str) -> int:
        """STREAM units a + c (parameter-free diag RESIDUAL edges; a, c and the sum are tied)."""
        s = self.b.add_units(name, self.b.layers[a].n, NodeType.STREAM, self.depth(a, c))
        for src in (a, c):
            self.b.add_edges(src, s, EdgeType.RESIDUAL, "diag", width=0)
            self.b.tie(src, s)
        return s

    def norm(self, layer: int, name: str, w_key: str | None, b_key: str | None, exclusive: bool) -> int:
        """LayerNorm over the units of ``layer``: γ, β in place when ``layer`` feeds only this norm,
        else on new NORM units (diag NORM edges, tied). LayerNorm keeps only permutations."""
        lay = self.b.layers[layer]
        if exclusive and not lay.norm_used:
            target = layer
        else:
            target = self.b.add_units(name, lay.n, NodeType.NORM, lay.depth + 1)
            self.b.add_edges(layer, target, EdgeType.NORM, "diag", width=0)
            self.b.tie(layer, target)
        self.b.layers[target].norm_used = True
        self.b.constrain(target, Scalars.ONE)
        if w_key is not None:
            self.b.place_nodes(w_key, self.param(w_key), target, "norm_weight")
        if b_key is not None:
            self.b.place_nodes(b_key, self.param(b_key), target, "norm_bias")
        return target

    def attention(
        self,
        name: str,
        srcs: tuple[int, int, int],
        num_heads: int,
        *,
        in_proj: tuple[str, str | None] | None = None,
        qkv: tuple[tuple[str, str | None], tuple[str, str | None], tuple[str, str | None]] | None = None,
        in_proj_bias: str | None = None,
        out: tuple[str, str | None],
        out_type: NodeType = NodeType.HIDDEN,
    ) -> int:
        """Multi-head attention reading query/key/value sources ``srcs``; returns W_O's output layer.

        Weights come either as one stacked ``in_proj`` [3D, D] (key, None) with ``in_proj_bias``, or
        as three separate (weight key, bias key) pairs ``qkv``.
        """
        if in_proj is not None:
            w = self.param(in_proj[0])
            if w.dim() != 2 or w.shape[0] % 3:
                raise self.fail(f"{in_proj[0]!r} has shape {tuple(w.shape)}; expected [3·D, D]")
            dims = [w.shape[0] // 3] * 3
            ins = [w.shape[1]] * 3
        else:
            assert qkv is not None
            ws = [self.param(k) for k, _ in qkv]
            for (k, _), w in zip(qkv, ws):
                if w.dim() != 2:
                    raise self.fail(f"{k!r} has shape {tuple(w.shape)}; expected a matrix")
            dims = [w.shape[0] for w in ws]
            ins = [w.shape[1] for w in ws]
        for src, n_in, role in zip(srcs, ins, ("query", "key", "value")):
            if self.b.layers[src].n != n_in:
                raise self.fail(f"{role} projection reads {n_in} features, its input has {self.b.layers[src].n} units")
        layers, blocks = [], []
        for src, n, t, role in zip(srcs, dims, (NodeType.QUERY, NodeType.KEY, NodeType.VALUE), ("q", "k", "v")):
            layers.append(self.b.add_units(f"{name}.{role}", n, t, self.depth(src)))
        for src, dst in zip(srcs, layers):
            blocks.append(self.b.add_edges(src, dst, EdgeType.LINEAR, "dense"))
        if in_proj is not None:
            first = self.b.blocks[blocks[0]]
            self.b.placements.append(Placement(in_proj[0], w, "edge_attr", first.start, w.numel()))
        else:
            for (wk, bk), w, blk, dst in zip(qkv, ws, blocks, layers):
                self.b.place_edges(wk, w, blk)
                if bk is not None:
                    self.b.place_nodes(bk, self.param(bk), dst, "bias")
        if in_proj_bias is not None:
            bias = self.param(in_proj_bias)
            if bias.numel() != sum(dims):
                raise self.fail(f"{in_proj_bias!r} has {bias.numel()} values for {sum(dims)} q/k/v units")
            start = self.b.layers[layers[0]].start
            self.b.placements.append(Placement(in_proj_bias, bias, "x", start, bias.numel(), NODE_SLOTS.index("bias")))
        self.b.add_edges(layers[0], layers[1], EdgeType.QK_PAIR, "diag", width=0)
        self.extras.add_heads(self.b, *layers, num_heads, where=name)
        return self.linear(layers[2], f"{name}.out", out[0], out[1], out_type)

    def ffn(self, src: int, name: str, first: tuple[str, str | None], second: tuple[str, str | None],
            scalars: Scalars) -> int:
        """y = W₂ act(W₁ x + b₁) + b₂; FFN units keep the scalars that ``act`` commutes with."""
        h = self.linear(src, f"{name}.ffn", first[0], first[1], NodeType.FFN)
        self.b.constrain(h, scalars)
        return self.linear(h, f"{name}.ffn_out", second[0], second[1], NodeType.HIDDEN)


# ---------------------------------------------------------------------- torch.nn modules
def _planner(cv: FxConverter) -> TransformerPlanner:
    return TransformerPlanner(cv.b, cv.extras, cv.sd, cv.fail)


def _key(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _opt(path: str, name: str, present: bool) -> str | None:
    return _key(path, name) if present else None


def _mha(p: TransformerPlanner, path: str, mod: nn.MultiheadAttention, srcs: tuple[int, int, int]) -> int:
    if mod.bias_k is not None or mod.bias_v is not None:
        raise p.fail(f"nn.MultiheadAttention {path!r} with add_bias_kv=True is not supported")
    if mod.add_zero_attn:
        raise p.fail(f"nn.MultiheadAttention {path!r} with add_zero_attn=True is not supported")
    has_bias = mod.in_proj_bias is not None
    common: dict[str, Any] = {
        "in_proj_bias": _opt(path, "in_proj_bias", has_bias),
        "out": (_key(path, "out_proj.weight"), _opt(path, "out_proj.bias", mod.out_proj.bias is not None)),
    }
    if mod._qkv_same_embed_dim:
        return p.attention(path, srcs, mod.num_heads, in_proj=(_key(path, "in_proj_weight"), None), **common)
    qkv = tuple((_key(path, f"{r}_proj_weight"), None) for r in ("q", "k", "v"))
    return p.attention(path, srcs, mod.num_heads, qkv=qkv, **common)  # type: ignore[arg-type]


def _activation_scalars(p: TransformerPlanner, path: str, act: Any) -> Scalars:
    if isinstance(act, nn.Module) and type(act) in ops.ELEMENTWISE_MODULES:
        return ops.ELEMENTWISE_MODULES[type(act)]
    if act in (F.relu, F.gelu):
        return ops.ELEMENTWISE_FUNCTIONS[act]
    raise p.fail(f"{path!r}: feed-forward activation {act!r} is not supported (use 'relu', 'gelu' or a torch.nn activation)")


def _encoder_layer(p: TransformerPlanner, path: str, mod: nn.TransformerEncoderLayer, src: int) -> int:
    """Post-norm: x ← LN₁(x + SA(x)), x ← LN₂(x + FF(x)); pre-norm: x ← x + SA(LN₁(x)), x ← x + FF(LN₂(x))."""
    scalars = _activation_scalars(p, path, mod.activation)

    def norm(layer: int, which: str, exclusive: bool) -> int:
        ln = getattr(mod, which)
        return p.norm(layer, _key(path, which), _opt(path, f"{which}.weight", ln.weight is not None),
                      _opt(path, f"{which}.bias", ln.bias is not None), exclusive)

    def ff(x: int) -> int:
        return p.ffn(x, path, (_key(path, "linear1.weight"), _opt(path, "linear1.bias", mod.linear1.bias is not None)),
                     (_key(path, "linear2.weight"), _opt(path, "linear2.bias", mod.linear2.bias is not None)), scalars)

    attn = _key(path, "self_attn")
    if mod.norm_first:
        h = norm(src, "norm1", exclusive=False)
        x = p.residual(src, _mha(p, attn, mod.self_attn, (h, h, h)), _key(path, "add1"))
        h = norm(x, "norm2", exclusive=False)
        return p.residual(x, ff(h), _key(path, "add2"))
    x = norm(p.residual(src, _mha(p, attn, mod.self_attn, (src, src, src)), _key(path, "add1")), "norm1", True)
    return norm(p.residual(x, ff(x), _key(path, "add2")), "norm2", True)


def _input(cv: FxConverter, v: Any, n: int) -> Value:
    if not isinstance(v, Value):
        raise cv.fail(f"expected a tensor input, got {type(v).__name__}")
    return cv.units(v, n, "vector")


@register_module_handler(nn.MultiheadAttention)
def _mha_handler(cv: FxConverter, node: fx.Node, mod: nn.MultiheadAttention, args: list) -> tuple[Value, Opaque]:
    """``attn(query, key, value, …)`` → (output, weights); the weights carry no units."""
    if len(args) < 3:
        raise cv.fail(f"call nn.MultiheadAttention {node.target!r} with query, key and value as positional arguments")
    q = _input(cv, args[0], mod.embed_dim)
    k = _input(cv, args[1], mod.kdim)
    v = _input(cv, args[2], mod.vdim)
    assert q.layer is not None and k.layer is not None and v.layer is not None
    out = _mha(_planner(cv), str(node.target), mod, (q.layer, k.layer, v.layer))
    return Value(out, "vector", exclusive=cv.exclusive(), seq_dim=q.seq_dim), Opaque()


@register_module_handler(nn.TransformerEncoderLayer)
def _encoder_layer_handler(cv: FxConverter, node: fx.Node, mod: nn.TransformerEncoderLayer, args: list) -> Value:
    v = _input(cv, args[0], mod.linear1.in_features)
    assert v.layer is not None
    out = _encoder_layer(_planner(cv), str(node.target), mod, v.layer)
    return Value(out, "vector", exclusive=cv.exclusive(), seq_dim=_seq_dim(v, mod.self_attn.batch_first))


def _seq_dim(v: Value, batch_first: bool) -> int:
    """The token dim of an encoder's output: known from the input, else from ``batch_first``."""
    return v.seq_dim if v.seq_dim is not None else (1 if batch_first else 0)


@register_module_handler(nn.TransformerEncoder)
def _encoder_handler(cv: FxConverter, node: fx.Node, mod: nn.TransformerEncoder, args: list) -> Value:
    path = str(node.target)
    if not mod.layers:
        raise cv.fail(f"nn.TransformerEncoder {path!r} has no layers")
    v = _input(cv, args[0], mod.layers[0].linear1.in_features)
    assert v.layer is not None
    p = _planner(cv)
    x = v.layer
    for i, layer in enumerate(mod.layers):
        if not isinstance(layer, nn.TransformerEncoderLayer):
            raise cv.fail(f"{path}.layers.{i} is a {type(layer).__name__}, not an nn.TransformerEncoderLayer")
        x = _encoder_layer(p, _key(path, f"layers.{i}"), layer, x)
    if mod.norm is not None:
        if not isinstance(mod.norm, nn.LayerNorm):
            raise cv.fail(f"{path}.norm is a {type(mod.norm).__name__}; only nn.LayerNorm is supported")
        x = p.norm(x, _key(path, "norm"), _opt(path, "norm.weight", mod.norm.weight is not None),
                   _opt(path, "norm.bias", mod.norm.bias is not None), exclusive=True)
    return Value(x, "vector", exclusive=cv.exclusive(), seq_dim=_seq_dim(v, mod.layers[0].self_attn.batch_first))


__all__ = ["TransformerPlanner"]
