r"""Transformer converters and the shared attention-head / residual-stream planner.

Attention over token features x_t ∈ R^D with H query heads of d coordinates (head h holds rows
h·d … h·d+d−1 of the projections; PyTorch convention y = W x + b), H_kv ≤ H key/value heads (grouped-
query attention, r = H / H_kv query heads share a key/value head: query head h reads kv head
⌊h / r⌋) and, optionally, rotary position embeddings R_t (a rotation of every head's (i, i + d/2)
coordinate pairs by angles t·ω_i):

.. math::
    q = W_Q x + b_Q,\quad k = W_K x + b_K,\quad v = W_V x + b_V,\qquad
    o_t = W_O \operatorname{concat}_h \sum_s
          \operatorname{softmax}_s\!\big((R_t q_{t,h})^\top (R_s k_{s,\lfloor h/r \rfloor})\,c\big)\,
          v_{s,\lfloor h/r \rfloor} + b_O .

Graph (``docs/transformers.md``): QUERY, KEY and VALUE unit layers (biases as node features), dense
edges source → Q/K/V holding W_Q, W_K, W_V, parameter-free diag ``QK_PAIR`` edges q_{h,i} → k_{h,i},
and dense edges V → output units holding W_O (the value coordinates *are* the columns of W_O). With
r > 1 the queries are r unit layers Q_0 … Q_{r−1} of H_kv·d units (Q_j holds query head g·r + j of
every kv head g, paired with K by its own diag edges) and every V → O edge holds r values, W_O[o, (g·r
+ j)·d + i] for j < r. Q, K, V form one ``HEADS`` unit group whose members are the kv heads; the
group element (π, A_g, B_g) acts as (``qegraph.symmetry.gl``): π moves kv head g with its query heads,
W_Q ↦ A W_Q, W_K ↦ A^{-T} W_K (every query head of the group shares A because they share K),
W_V ↦ B W_V, W_O's columns of every query head of the group ↦ · B^{-1}. Rotary embeddings commute only
with A that commute with every rotation R_t (per frequency pair a·I + b·J); that is not a GL(d) gauge,
so rotary queries and keys get ``gl_role`` NONE (head permutations and B stay).

Also planned here: feed-forward blocks (FFN units; ReLU keeps positive scalings, GELU/SiLU only
permutations), gated blocks W_down(act(W_gate x) ⊙ W_up x) (gate and up units multiplied in a product
layer with parameter-free RESIDUAL edges, as the fx converter's channel products: permutations only),
residual sums (STREAM nodes, RESIDUAL edges) and LayerNorm / RMSNorm (γ, β as node features of the
stream units: in place on a residual sum (post-norm) or on NORM nodes tied to the stream (pre-norm)).
Residual additions tie the whole stream of a stack into one unit group.

*Stored layouts.* A few checkpoints store a weight in another order than the graph's row-major
W[o, i]: Hugging Face ``Conv1D`` keeps W^T ([in, out]); grouped-query W_Q and W_O are regrouped by kv
head. The graph holds ``tensor.reshape(view).permute(perm)`` and records ``view``/``perm`` in the
parameter index, which ``ParameterGraph.to_state_dict`` inverts; :func:`stored_layouts_supported`
says whether this qegraph core can, and such checkpoints are refused when it cannot.

The same planner builds the Hugging Face layouts (``qegraph.convert.hf``) and the ``torch.nn``
transformer modules below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from qegraph.convert import ops
from qegraph.convert.fx_converter import FxConverter, Opaque, Value, register_module_handler
from qegraph.graph.builder import GraphBuilder, Placement, Scalars
from qegraph.graph.extras import GraphExtras
from qegraph.graph.parameter_graph import ParameterGraph
from qegraph.graph.types import NODE_SLOTS, EdgeType, GLRole, NodeType


@dataclass(frozen=True)
class Proj:
    """A projection y = W x + b by state_dict keys. ``conv1d``: the weight is stored transposed,
    [in, out] (Hugging Face ``Conv1D``)."""

    weight: str
    bias: str | None = None
    conv1d: bool = False


@dataclass(frozen=True)
class Heads:
    """Head structure of one attention layer: H query heads, H_kv key/value heads (default H),
    rotary position embeddings on queries and keys."""

    num_heads: int
    num_kv_heads: int | None = None
    rotary: bool = False

    @property
    def kv(self) -> int:
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads


@dataclass
class _HeadMeta:
    """Head metadata that :meth:`TransformerPlanner.finish` writes after ``GraphExtras.finalize``."""

    queries: list[int]  # all query layers (Q_0 is declared to GraphExtras, the others are completed here)
    key: int
    d: int
    rotary: bool


@lru_cache(maxsize=1)
def stored_layouts_supported() -> bool:
    """Whether ``ParameterGraph.to_state_dict`` restores parameters stored with a ``view``/``perm``
    layout (checked on a 2×3 transposed weight)."""
    b = GraphBuilder()
    i = b.add_units("in", 2, NodeType.INPUT, 0, fixed=True)
    o = b.add_units("out", 3, NodeType.OUTPUT, 1, fixed=True)
    w = torch.arange(6, dtype=torch.float32).view(2, 3)  # stored [in, out]
    b.place_edges("w", w.t(), b.add_edges(i, o, EdgeType.LINEAR, "dense"))
    g = b.build(None, ["w"])
    _patch_layouts(g, {"w": ([2, 3], [2, 3], [1, 0])})
    return torch.equal(g.to_state_dict()["w"], w)


def _patch_layouts(graph: ParameterGraph, layouts: Mapping[str, tuple[list[int], list[int], list[int]]]) -> None:
    """Record (shape, view, perm) of stored layouts in the graph's parameter index."""
    for p in graph.meta["params"]:
        if p["key"] in layouts:
            shape, view, perm = layouts[p["key"]]
            p["shape"], p["view"], p["perm"] = list(shape), list(view), list(perm)


class TransformerPlanner:
    """Plans transformer pieces into a :class:`GraphBuilder`; parameters are read from ``sd`` by key.

    Call :meth:`finish` on the graph built by ``b`` (after ``GraphExtras.finalize``) when the plan used
    grouped-query or rotary attention or stored layouts.
    """

    def __init__(self, b: GraphBuilder, extras: GraphExtras, sd: Mapping[str, Tensor],
                 fail: Callable[[str], Exception]) -> None:
        self.b = b
        self.extras = extras
        self.sd = sd
        self.fail = fail
        self.layouts: dict[str, tuple[list[int], list[int], list[int]]] = {}
        self.heads: list[_HeadMeta] = []

    # ------------------------------------------------------------------ parameters
    def param(self, key: str) -> Tensor:
        if key not in self.sd:
            raise self.fail(f"missing parameter {key!r}")
        return self.sd[key]

    def depth(self, *layers: int) -> int:
        return max(self.b.layers[i].depth for i in layers) + 1

    def stored(self, key: str, tensor: Tensor, view: Sequence[int], perm: Sequence[int], why: str) -> Tensor:
        """``tensor`` in graph order, ``tensor.reshape(view).permute(perm)``; the layout is recorded."""
        if not stored_layouts_supported():
            raise self.fail(f"{key!r}: {why}, which this qegraph core cannot store yet (ParameterGraph."
                            "to_state_dict does not restore 'view'/'perm' layouts)")
        self.layouts[key] = (list(tensor.shape), list(view), list(perm))
        return tensor.reshape(*view).permute(*perm)

    def matrix(self, proj: Proj, n_in: int) -> Tensor:
        """W of ``proj`` as [out, n_in] (a Conv1D weight is read transposed)."""
        w = self.param(proj.weight)
        rows = 1 if proj.conv1d else 0
        if w.dim() != 2 or w.shape[1 - rows] != n_in:
            want = f"[{n_in}, out]" if proj.conv1d else f"[out, {n_in}]"
            raise self.fail(f"{proj.weight!r} has shape {tuple(w.shape)}; expected {want}")
        if proj.conv1d:
            return self.stored(proj.weight, w, list(w.shape), [1, 0], "a Conv1D weight is stored [in, out]")
        return w

    def bias(self, key: str, n: int) -> Tensor:
        t = self.param(key)
        if t.shape != (n,):
            raise self.fail(f"{key!r} has shape {tuple(t.shape)}; expected ({n},)")
        return t

    def place_node_span(self, key: str, tensor: Tensor, first: int, slot: str) -> None:
        """One tensor over the ``slot`` of consecutive unit layers starting at ``first`` (a fused bias)."""
        start, covered, i = self.b.layers[first].start, 0, first
        while covered < tensor.numel() and i < len(self.b.layers) and self.b.layers[i].start == start + covered:
            covered += self.b.layers[i].n
            i += 1
        if covered != tensor.numel():
            raise self.fail(f"{key!r} has {tensor.numel()} values; they do not fill whole consecutive unit layers")
        self.b.placements.append(Placement(key, tensor, "x", start, tensor.numel(), NODE_SLOTS.index(slot)))

    # ------------------------------------------------------------------ pieces
    def linear(self, src: int, name: str, proj: Proj, node_type: NodeType) -> int:
        """Units y = W x + b: a dense edge block src → new layer holding W, b as node features."""
        w = self.matrix(proj, self.b.layers[src].n)
        dst = self.b.add_units(name, w.shape[0], node_type, self.depth(src))
        self.b.place_edges(proj.weight, w, self.b.add_edges(src, dst, EdgeType.LINEAR, "dense"))
        if proj.bias is not None:
            self.b.place_nodes(proj.bias, self.bias(proj.bias, w.shape[0]), dst, "bias")
        return dst

    def residual(self, a: int, c: int, name: str) -> int:
        """STREAM units a + c (parameter-free diag RESIDUAL edges; a, c and the sum are tied)."""
        s = self.b.add_units(name, self.b.layers[a].n, NodeType.STREAM, self.depth(a, c))
        for src in (a, c):
            self.b.add_edges(src, s, EdgeType.RESIDUAL, "diag", width=0)
            self.b.tie(src, s)
        return s

    def norm(self, layer: int, name: str, w_key: str | None, b_key: str | None, exclusive: bool) -> int:
        """LayerNorm / RMSNorm over the units of ``layer``: γ (and β) in place when ``layer`` feeds only
        this norm, else on new NORM units (diag NORM edges, tied). A norm keeps only permutations."""
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
        heads: Heads,
        qkv: Proj | tuple[Proj, Proj, Proj],
        out: Proj,
        *,
        qkv_bias: str | None = None,
        out_type: NodeType = NodeType.HIDDEN,
    ) -> int:
        """Multi-head attention reading query/key/value sources ``srcs``; returns W_O's output layer.

        ``qkv``: one fused projection (rows Q, K, V stacked: ``nn.MultiheadAttention.in_proj_weight``, or
        a Conv1D ``c_attn``) or three separate ones. ``qkv_bias``: one bias over Q, K, V (separate
        weights with a fused bias, as ``nn.MultiheadAttention`` without ``_qkv_same_embed_dim``).
        """
        h, hk = heads.num_heads, heads.kv
        fused = isinstance(qkv, Proj)
        ins = [self.b.layers[s].n for s in srcs]
        if fused:
            assert isinstance(qkv, Proj)
            w = self.matrix(qkv, ins[0])
            if w.shape[0] % 3:
                raise self.fail(f"{qkv.weight!r} has {w.shape[0]} output rows; expected 3 equal Q, K, V parts")
            dims = [w.shape[0] // 3] * 3
            ws = None
        else:
            ws = [self.matrix(p, n) for p, n in zip(qkv, ins)]
            dims = [x.shape[0] for x in ws]
        if h < 1 or hk < 1 or h % hk:
            raise self.fail(f"{name}: {h} query heads are not a multiple of {hk} key/value heads")
        if dims[0] % h or dims[1] % hk or dims[1] // hk != dims[0] // h or dims[2] != dims[1]:
            heads_txt = f"{h} heads" if h == hk else f"{h} query heads and {hk} key/value heads"
            raise self.fail(f"{name}: query/key/value sizes {tuple(dims)} are not {heads_txt} of equal size")
        r, d = h // hk, dims[0] // h
        if r > 1 and (fused or qkv_bias is not None):
            raise self.fail(f"{name}: grouped-query attention with a fused q/k/v projection is not supported")
        qs = [self.b.add_units(f"{name}.q" if r == 1 else f"{name}.q{j}", hk * d, NodeType.QUERY,
                               self.depth(srcs[0])) for j in range(r)]
        k = self.b.add_units(f"{name}.k", hk * d, NodeType.KEY, self.depth(srcs[1]))
        v = self.b.add_units(f"{name}.v", hk * d, NodeType.VALUE, self.depth(srcs[2]))
        qb = [self.b.add_edges(srcs[0], q, EdgeType.LINEAR, "dense") for q in qs]
        kb = self.b.add_edges(srcs[1], k, EdgeType.LINEAR, "dense")
        vb = self.b.add_edges(srcs[2], v, EdgeType.LINEAR, "dense")
        if fused:
            assert isinstance(qkv, Proj)
            self.b.place_edge_span(qkv.weight, w, [*qb, kb, vb])
            if qkv.bias is not None:
                self.place_node_span(qkv.bias, self.bias(qkv.bias, sum(dims)), qs[0], "bias")
        else:
            assert ws is not None and not isinstance(qkv, Proj)
            wq = ws[0]
            if r > 1:
                wq = self.stored(qkv[0].weight, wq, [hk, r, d, ins[0]], [1, 0, 2, 3],
                                 "grouped-query W_Q is stored grouped by key/value head")
            self.b.place_edge_span(qkv[0].weight, wq, qb)
            if qkv[0].bias is not None:
                bq = self.bias(qkv[0].bias, dims[0])
                if r > 1:
                    bq = self.stored(qkv[0].bias, bq, [hk, r, d], [1, 0, 2],
                                     "grouped-query b_Q is stored grouped by key/value head")
                self.place_node_span(qkv[0].bias, bq, qs[0], "bias")
            for p, x, blk, dst in zip(qkv[1:], ws[1:], (kb, vb), (k, v)):
                self.b.place_edges(p.weight, x, blk)
                if p.bias is not None:
                    self.b.place_nodes(p.bias, self.bias(p.bias, x.shape[0]), dst, "bias")
            if qkv_bias is not None:
                self.place_node_span(qkv_bias, self.bias(qkv_bias, sum(dims)), qs[0], "bias")
        for q in qs:
            self.b.add_edges(q, k, EdgeType.QK_PAIR, "diag", width=0)
        self.extras.add_heads(self.b, qs[0], k, v, hk, where=name)
        for q in qs[1:]:
            self.b.tie(qs[0], q)
        if r > 1 or heads.rotary:
            self.heads.append(_HeadMeta(qs, k, d, heads.rotary))
        return self._output(v, name, out, out_type, r, d, hk)

    def _output(self, v: int, name: str, out: Proj, out_type: NodeType, r: int, d: int, hk: int) -> int:
        """W_O on edges V → output (r values per edge with grouped-query attention)."""
        if r == 1:
            return self.linear(v, f"{name}.out", out, out_type)
        w = self.matrix(out, r * hk * d)
        dst = self.b.add_units(f"{name}.out", w.shape[0], out_type, self.depth(v))
        w = self.stored(out.weight, w, [w.shape[0], hk, r, d], [0, 1, 3, 2],
                        "grouped-query W_O is stored grouped by key/value head")
        self.b.place_edges(out.weight, w, self.b.add_edges(v, dst, EdgeType.LINEAR, "dense", width=r))
        if out.bias is not None:
            self.b.place_nodes(out.bias, self.bias(out.bias, w.shape[0]), dst, "bias")
        return dst

    def ffn(self, src: int, name: str, first: Proj, second: Proj, scalars: Scalars) -> int:
        """y = W₂ act(W₁ x + b₁) + b₂; FFN units keep the scalars that ``act`` commutes with."""
        h = self.linear(src, f"{name}.ffn", first, NodeType.FFN)
        self.b.constrain(h, scalars)
        return self.linear(h, f"{name}.ffn_out", second, NodeType.HIDDEN)

    def gated_ffn(self, src: int, name: str, gate: Proj, up: Proj, down: Proj) -> int:
        """y = W_down (act(W_gate x + b) ⊙ (W_up x + b)) + b (SwiGLU): gate and up units feed a product
        layer through parameter-free RESIDUAL edges; the three are tied (permutations only)."""
        g = self.linear(src, f"{name}.gate", gate, NodeType.FFN)
        u = self.linear(src, f"{name}.up", up, NodeType.FFN)
        if self.b.layers[g].n != self.b.layers[u].n:
            raise self.fail(f"{gate.weight!r} and {up.weight!r} have different output sizes")
        p = self.b.add_units(f"{name}.act", self.b.layers[g].n, NodeType.FFN, self.depth(g, u))
        for x in (g, u):
            self.b.add_edges(x, p, EdgeType.RESIDUAL, "diag", width=0)
            self.b.tie(x, p)
        self.b.constrain(p, Scalars.ONE)
        return self.linear(p, f"{name}.down", down, NodeType.HIDDEN)

    def table(self, key: str, target: int) -> int:
        """An embedding table (rows added to the units of ``target``): an EMBED layer tied to them."""
        return self.extras.add_table(self.b, key, self.param(key), target, self.b.layers[target].depth)

    # ------------------------------------------------------------------ completion
    def finish(self, graph: ParameterGraph) -> ParameterGraph:
        """Complete ``graph`` (built by ``b``, finalized by ``extras``): stored layouts in the parameter
        index; grouped-query layers Q_1 … Q_{r−1} as head blocks; rotary queries and keys without GL."""
        _patch_layouts(graph, self.layouts)
        for hm in self.heads:
            for layer in hm.queries[1:]:
                sl, local = self._nodes(layer)
                graph.sym_member[sl] = local // hm.d
                graph.sym_stride[sl] = hm.d
                graph.gl_role[sl] = int(GLRole.QUERY)
                graph.gl_coord[sl] = local % hm.d
            if hm.rotary:
                for layer in (*hm.queries, hm.key):
                    sl, _ = self._nodes(layer)
                    graph.gl_role[sl] = int(GLRole.NONE)
                    graph.gl_coord[sl] = -1
        return graph

    def _nodes(self, layer: int) -> tuple[slice, Tensor]:
        lay = self.b.layers[layer]
        return slice(lay.start, lay.start + lay.n), torch.arange(lay.n)


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
    bias = _opt(path, "in_proj_bias", mod.in_proj_bias is not None)
    out = Proj(_key(path, "out_proj.weight"), _opt(path, "out_proj.bias", mod.out_proj.bias is not None))
    heads = Heads(mod.num_heads)
    if mod._qkv_same_embed_dim:
        return p.attention(path, srcs, heads, Proj(_key(path, "in_proj_weight"), bias), out)
    qkv = tuple(Proj(_key(path, f"{r}_proj_weight")) for r in ("q", "k", "v"))
    return p.attention(path, srcs, heads, qkv, out, qkv_bias=bias)  # type: ignore[arg-type]


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
        first = Proj(_key(path, "linear1.weight"), _opt(path, "linear1.bias", mod.linear1.bias is not None))
        second = Proj(_key(path, "linear2.weight"), _opt(path, "linear2.bias", mod.linear2.bias is not None))
        return p.ffn(x, path, first, second, scalars)

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


__all__ = ["Heads", "Proj", "TransformerPlanner", "stored_layouts_supported"]
