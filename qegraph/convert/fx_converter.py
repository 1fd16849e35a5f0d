"""Convert an ``nn.Module`` to a ParameterGraph by walking its ``torch.fx`` dataflow.

The converter follows the traced graph, not module order, so residual additions and inputs shared by
several layers are found. Every fx value that carries units is a :class:`Value`: the unit layer its
channels belong to and its layout:

* ``vector``: units on the last dim (``[B, n]`` or ``[B, T, n]``);
* ``spatial``: units on dim 1 followed by ``nsp`` spatial dims (``[B, C, L]``, ``[B, C, H, W]``);
* ``flat``: a flattened spatial map; a Linear reading it gets an exact H·W block per channel;
* ``pending``: a graph input whose layout is decided by its first consumer.

A ``vector`` value of a token sequence records its token dim (``seq_dim``), so that pooling over
tokens and selecting a token are recognised. Parameters read directly in forward (``get_attr``:
positional embeddings, a cls token) are :class:`ParamRef` values; adding one to tokens or
concatenating it along the token dim makes it an embedding table (``qegraph.graph.extras``).

Grouped and depthwise convolutions (``groups = g``) get a "grouped" edge block in the layout of their
weight [C_out, C_in/g, …] and couple the block structure of their input and output channels (a
permutation must move whole groups on both sides together). The product of two unit tensors
(squeeze-and-excitation ``x * sigmoid(fc(pool(x)))``, GLU/SwiGLU) gets its own unit layer tied to both
factors, with permutations only (see :meth:`FxConverter.product`).

Error messages name the source (a checkpoint file or the module's class), then the module path and
type, e.g. ``my.pt: module 'layer1.0.conv1' (Conv2d): …``.

Handlers for further layers (e.g. attention, ``qegraph.convert.transformer``) are registered with
:func:`register_module_handler`.
"""

from __future__ import annotations

import inspect
import math
import numbers
import operator
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from qegraph.errors import QegraphError, UnsupportedOpError
from qegraph.graph.arch import arch_from_module
from qegraph.graph.builder import GraphBuilder, Scalars
from qegraph.graph.extras import GraphExtras
from qegraph.graph.parameter_graph import ParameterGraph
from qegraph.graph.types import EdgeType, NodeType
from qegraph.convert import ops


@dataclass(frozen=True)
class Value:
    """An fx value that carries units."""

    layer: int | None  # unit layer id; None while a graph input is pending
    layout: str  # "vector" | "spatial" | "flat" | "pending"
    nsp: int = 0  # number of spatial dims (spatial layout)
    exclusive: bool = False  # the unit layer feeds nothing but this value's chain
    placeholder: str | None = None
    seq_dim: int | None = None  # token dim of a vector value [B, T, n] / [T, B, n], when known


@dataclass(frozen=True)
class ParamRef:
    """A parameter read directly in forward (fx ``get_attr``), e.g. a positional embedding."""

    key: str
    tensor: Tensor


def _user_frame(e: BaseException) -> str:
    """`` (at file.py:12 in forward)``: the innermost traceback frame outside torch, or ``""``."""
    torch_dir = str(Path(torch.__file__).parent)
    tb, last = e.__traceback__, None
    while tb is not None:
        f = tb.tb_frame.f_code
        if not f.co_filename.startswith(torch_dir) and f.co_filename != __file__:
            last = (f.co_filename, tb.tb_lineno, f.co_name)
        tb = tb.tb_next
    if last is None:
        return ""
    return f" (at {Path(last[0]).name}:{last[1]} in {last[2]})"


class Opaque:
    """A non-unit value (a shape, an int from ``size()``)."""


ModuleHandler = Callable[["FxConverter", fx.Node, nn.Module, list[Any]], Any]
_MODULE_HANDLERS: dict[type[nn.Module], ModuleHandler] = {}


def register_module_handler(cls: type[nn.Module]) -> Callable[[ModuleHandler], ModuleHandler]:
    """Decorator: ``handler(conv, node, module, args) -> Value`` converts calls of ``cls``."""

    def deco(fn: ModuleHandler) -> ModuleHandler:
        _MODULE_HANDLERS[cls] = fn
        return fn

    return deco


class FxConverter:
    """One conversion: trace, walk the fx graph, fill a :class:`GraphBuilder`."""

    def __init__(self, module: nn.Module, name: str | None = None) -> None:
        self.module = module
        self.name = name or type(module).__name__
        self.b = GraphBuilder()
        self.extras = GraphExtras()
        self.sd = module.state_dict()
        self.inputs: dict[str, int] = {}  # placeholder name → unit layer
        self.called: set[str] = set()
        self.node: fx.Node | None = None
        self.input_layouts: dict[str, tuple[str, int]] = {}

    # ------------------------------------------------------------------ helpers
    def where(self) -> str:
        """``source: module 'layer1.0.conv1' (Conv2d)`` for a module call; ``…, fx node 'add'`` for an op
        inside a submodule's forward; ``source (fx node 'add')`` for an op of the root forward."""
        n = self.node
        if n is None:
            return self.name
        if n.op == "call_module" and n.target:
            path, cls = str(n.target), type(self.module.get_submodule(str(n.target))).__name__
            return f"{self.name}: module {path!r} ({cls})"
        stack = n.meta.get("nn_module_stack") or {}
        if stack:
            path, cls = next(reversed(stack.values()))
            cls = cls if isinstance(cls, str) else cls.__name__
            return f"{self.name}: module {path!r} ({cls.rsplit('.', 1)[-1]}), fx node {n.name!r}"
        return f"{self.name} (fx node {n.name!r})"

    def fail(self, msg: str) -> UnsupportedOpError:
        return UnsupportedOpError(f"{self.where()}: {msg}")

    def depth(self, layer: int) -> int:
        return self.b.layers[layer].depth

    def exclusive(self) -> bool:
        return self.node is not None and len(self.node.users) == 1

    def units(self, v: Any, n: int, layout: str, nsp: int = 0) -> Value:
        """Resolve ``v`` to a Value with ``n`` units in ``layout``, creating a graph input if pending."""
        if not isinstance(v, Value):
            raise self.fail(f"expected a tensor input, got {type(v).__name__}")
        if v.layout == "pending":
            assert v.placeholder is not None
            layer = self.inputs.get(v.placeholder)
            if layer is None:
                layer = self.b.add_units(v.placeholder, n, NodeType.INPUT, 0, fixed=True)
                self.inputs[v.placeholder] = layer
                self.input_layouts[v.placeholder] = (layout, nsp)
            elif self.input_layouts[v.placeholder] != (layout, nsp) or self.b.layers[layer].n != n:
                raise self.fail(f"input {v.placeholder!r} is read with two different layouts or sizes")
            return Value(layer, layout, nsp, exclusive=False)
        have = self.b.layers[v.layer].n if v.layer is not None else None
        if layout == "spatial" and (v.layout != "spatial" or v.nsp != nsp):
            raise self.fail(f"expected a {nsp}-d spatial feature map, got a {v.layout} value")
        if layout == "vector" and v.layout not in ("vector",):
            raise self.fail(f"expected features on the last dim, got a {v.layout} value")
        if have != n:
            raise self.fail(f"expected {n} input units, the incoming value has {have}")
        return v

    def param(self, module_path: str, name: str) -> tuple[str, Any]:
        key = f"{module_path}.{name}" if module_path else name
        return key, self.sd[key]

    # ------------------------------------------------------------------ walk
    def run(self, arch: dict[str, Any] | None, *, allow_nonfinite: bool) -> ParameterGraph:
        try:
            traced = self.trace()
        except Exception as e:  # tracing errors come in many types (TraceError, TypeError, …)
            cause = str(e).strip().splitlines()[0] if str(e).strip() else "(no message)"
            raise UnsupportedOpError(
                f"{self.name}: torch.fx cannot trace forward{_user_frame(e)}: {type(e).__name__}: {cause}. "
                "The converter follows the symbolically traced dataflow, so forward must not branch on tensor "
                "values or hand tensors to non-torch code (if x.sum() > 0, .item(), .tolist(), numpy); rewrite "
                "that line, or register a handler for the submodule that contains it "
                "(qegraph.convert.register_module_handler)"
            ) from e
        env: dict[fx.Node, Any] = {}
        for node in traced.nodes:
            self.node = node
            args = fx.node.map_arg(node.args, lambda a: env[a])
            kwargs = fx.node.map_arg(node.kwargs, lambda a: env[a])
            if node.op == "placeholder":
                env[node] = Value(None, "pending", placeholder=node.target)
            elif node.op == "call_module":
                env[node] = self.call_module(node, args, kwargs)
            elif node.op in ("call_function", "call_method"):
                env[node] = self.call_function(node.target, args, kwargs)
            elif node.op == "get_attr":
                env[node] = self.get_attr(str(node.target))
            elif node.op == "output":
                self.mark_outputs(args[0])
        self.node = None
        keys = list(self.sd)
        placed = self.extras.keys
        graph = self.b.build(arch, [k for k in keys if k not in placed], allow_nonfinite=allow_nonfinite,
                             source=self.name)
        return self.extras.finalize(self.b, graph, keys, allow_nonfinite=allow_nonfinite, source=self.name)

    def trace(self) -> fx.Graph:
        """The module's fx graph. A module that is itself a registered leaf (a bare ``nn.Linear`` or
        ``nn.TransformerEncoder``) becomes one call of it on its forward's required arguments."""
        if self.handler(self.module) is None:
            # optional arguments that default to None (masks, extra inputs) are traced as absent
            sig = inspect.signature(self.module.forward)
            absent = {n: None for n, p in sig.parameters.items() if p.default is None}
            return fx.symbolic_trace(self.module, concrete_args=absent or None).graph
        graph = fx.Graph()
        sig = inspect.signature(self.module.forward)
        names = [n for n, p in sig.parameters.items()
                 if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        graph.output(graph.call_module("", tuple(graph.placeholder(n) for n in names)))
        return graph

    @staticmethod
    def handler(mod: nn.Module) -> ModuleHandler | None:
        cls = type(mod)
        handler = next((h for c, h in _MODULE_HANDLERS.items() if cls is c), None)
        if handler is None:
            handler = next((h for c, h in _MODULE_HANDLERS.items() if isinstance(mod, c)), None)
        return handler

    def mark_outputs(self, out: Any) -> None:
        if isinstance(out, Value):
            if out.layer is None:
                raise self.fail("a graph input is returned unchanged; there is nothing to convert")
            self.b.fix(out.layer, NodeType.OUTPUT if self.b.layers[out.layer].node_type != NodeType.INPUT else None)
        elif isinstance(out, (tuple, list)):
            for o in out:
                self.mark_outputs(o)
        elif isinstance(out, dict):
            for o in out.values():
                self.mark_outputs(o)

    def call_module(self, node: fx.Node, args: tuple, kwargs: dict) -> Any:
        path = str(node.target)
        mod = self.module.get_submodule(path)
        if any(True for _ in mod.parameters(recurse=False)) or any(True for _ in mod.buffers(recurse=False)):
            if path in self.called:
                raise self.fail(f"module {path!r} is called more than once (weight sharing is not supported)")
            self.called.add(path)
        cls = type(mod)
        handler = self.handler(mod)
        if handler is not None:
            return handler(self, node, mod, list(args))
        x = args[0] if args else None
        scalars = ops.module_scalars(mod)
        if scalars is not None:
            return self.elementwise(x, scalars)
        if cls in ops.POOL_MODULES:
            nsp, sc = ops.POOL_MODULES[cls]
            return self.pool(x, nsp, sc)
        if isinstance(mod, nn.Flatten):
            return self.flatten(x, mod.start_dim, mod.end_dim)
        raise self.fail(f"unsupported module type {cls.__module__}.{cls.__qualname__} (see 'What the converter "
                        "understands' in the README; register a handler with qegraph.convert.register_module_handler)")

    def call_function(self, target: Any, args: tuple, kwargs: dict) -> Any:
        name = target if isinstance(target, str) else getattr(target, "__name__", repr(target))
        seq = self.sequence_op(target, name, args, kwargs)
        if seq is not NotImplemented:
            return seq
        x = args[0] if args else kwargs.get("input")
        if getattr(target, "__name__", "") == "_assert_is_none":  # inserted by tracing an absent optional input
            return Opaque()
        if target in ops.SHAPE_FUNCTIONS or (target is getattr and args[1] in ("shape", "dtype", "device")):
            return Opaque()
        if not any(isinstance(a, Value) for a in (*args, *kwargs.values())):
            return Opaque()  # arithmetic on shapes and constants
        if target in ops.ELEMENTWISE_FUNCTIONS:
            return self.elementwise(x, ops.ELEMENTWISE_FUNCTIONS[target])
        named = ops.named_function_scalars(target)
        if named is not None:
            return self.elementwise(x, named)
        clamp = self.clamp_bounds(target, args, kwargs)
        if clamp is not None:
            return self.elementwise(x, ops.clamp_scalars(*clamp))
        if target in ops.POW_FUNCTIONS:
            e = args[1] if len(args) > 1 else kwargs.get("exponent")
            if not isinstance(x, Value) or not isinstance(e, numbers.Number):
                raise self.fail(f"{name}() is supported only as a unit tensor raised to a constant power")
            return self.elementwise(x, Scalars.ALL if e == 1 else Scalars.ONE)
        if target in ops.ADD_FUNCTIONS:
            return self.add(args[0], args[1])
        if target in ops.MUL_FUNCTIONS:
            a, c = args[0], args[1]
            if isinstance(a, Value) and isinstance(c, numbers.Number) and c != 0:
                return self.elementwise(a, Scalars.ALL)
            if isinstance(c, Value) and isinstance(a, numbers.Number) and a != 0 and target in ops.PRODUCT_FUNCTIONS:
                return self.elementwise(c, Scalars.ALL)
            if isinstance(a, Value) and isinstance(c, Value) and target in ops.PRODUCT_FUNCTIONS:
                return self.product(a, c)
            raise self.fail(f"op {name!r} is supported only as multiplication/division by a nonzero constant "
                            "or as the product of two unit tensors (gating)")
        if target is operator.getitem and isinstance(x, Value):
            return self.add_dims_by_index(x, args[1])
        if target in ops.UNSQUEEZE_FUNCTIONS:
            return self.unsqueeze(x, args[1] if len(args) > 1 else kwargs.get("dim"))
        if target in ops.EXPAND_FUNCTIONS:
            return self.expand(x, target, args[1:] or tuple(kwargs.values()))
        if target in ops.POOL_FUNCTIONS:
            nsp, sc = ops.POOL_FUNCTIONS[target]
            return self.pool(x, nsp, sc)
        if target in ops.FLATTEN_FUNCTIONS:
            start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
            end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
            return self.flatten(x, start, end)
        if target in ops.RESHAPE_FUNCTIONS:
            shape = args[1:] if len(args) > 1 else kwargs.get("shape", ())
            if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
                shape = tuple(shape[0])
            # [B, …] → [B, k] keeps the batch dim (dim 0 of the shape is the batch size, e.g. x.size(0)):
            # a flatten; with -1 first (x.view(-1, k)) rows could mix channels, so that is refused
            if len(shape) == 2 and not (isinstance(shape[0], int) and shape[0] == -1) and (
                    shape[1] == -1 or (isinstance(x, Value) and x.layout in ("spatial", "flat", "pending"))):
                return self.flatten(x, 1, -1)
            if isinstance(x, Value) and x.layout == "vector" and x.seq_dim is None and len(shape) > 2 \
                    and all(d == 1 for d in shape[2:]):
                return replace(x, layout="spatial", nsp=len(shape) - 2, exclusive=x.exclusive and self.exclusive())
            raise self.fail(f"{name}() is supported only as a flatten, x.{name}(x.size(0), -1), or as adding "
                            f"trailing spatial dims of size 1 to features, x.{name}(b, c, 1, 1)")
        if target in ops.REDUCE_FUNCTIONS:
            dims = args[1] if len(args) > 1 else kwargs.get("dim")
            keep = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
            return self.reduce_spatial(x, dims, bool(keep), ops.REDUCE_FUNCTIONS[target], name)
        if target in ops.SQUEEZE_FUNCTIONS:
            dims = args[1] if len(args) > 1 else kwargs.get("dim")
            return self.reduce_spatial(x, dims, False, Scalars.ALL, name)
        raise self.fail(f"unsupported op {name!r}")

    # ------------------------------------------------------------------ generic ops
    def elementwise(self, v: Any, scalars: Scalars) -> Value:
        if not isinstance(v, Value):
            raise self.fail("expected a tensor")
        if v.layer is not None:
            self.b.constrain(v.layer, scalars)
            return replace(v, exclusive=v.exclusive and self.exclusive())
        return v  # ops on a pending input: the input is fixed anyway

    def pool(self, v: Any, nsp: int, scalars: Scalars) -> Value:
        if not isinstance(v, Value) or v.layout != "spatial" or v.nsp != nsp:
            raise self.fail(f"{nsp}-d pooling needs a {nsp}-d spatial feature map coming from a conv layer")
        return self.elementwise(v, scalars)

    def flatten(self, v: Any, start: int, end: int) -> Value:
        if not isinstance(v, Value):
            raise self.fail("expected a tensor")
        if v.layout == "pending":
            return v  # an MLP on images: the consumer decides the input units
        if v.layout == "spatial" and start % (v.nsp + 2) >= 2:  # merge spatial dims (ViT patches → tokens)
            nd = v.nsp + 2
            return replace(v, nsp=v.nsp - (end % nd - start % nd), exclusive=v.exclusive and self.exclusive())
        if start != 1 or end != -1:
            raise self.fail(f"flatten(start_dim={start}, end_dim={end}) is supported only from dim 1 to the end")
        if v.layout == "spatial":
            return replace(v, layout="flat", nsp=0, exclusive=v.exclusive and self.exclusive())
        if v.layout == "vector":
            return v
        raise self.fail("flattening an already flattened map")

    def reduce_spatial(self, v: Any, dims: Any, keepdim: bool, scalars: Scalars, name: str) -> Value:
        if not isinstance(v, Value) or v.layout != "spatial":
            raise self.fail(f"{name}() is supported only over the spatial dims of a conv feature map")
        nd = v.nsp + 2
        dims = [dims] if isinstance(dims, int) else list(dims or [])
        norm = sorted(d % nd for d in dims)
        if not norm or norm[0] < 2:
            raise self.fail(f"{name}() over dims {dims} mixes units; only spatial dims (≥ 2) may be reduced")
        self.elementwise(v, scalars)
        nsp = v.nsp if keepdim else v.nsp - len(norm)
        layout = "spatial" if nsp > 0 else "vector"
        return replace(v, layout=layout, nsp=nsp, exclusive=v.exclusive and self.exclusive())

    def add(self, a: Any, c: Any) -> Value:
        if isinstance(a, Value) and isinstance(c, numbers.Number):
            return self.elementwise(a, Scalars.ONE if c != 0 else Scalars.ALL)
        if isinstance(c, Value) and isinstance(a, numbers.Number):
            return self.elementwise(c, Scalars.ONE if a != 0 else Scalars.ALL)
        if not (isinstance(a, Value) and isinstance(c, Value)):
            raise self.fail("addition is supported between two unit-carrying tensors or with a constant")
        if a.layout == "pending" or c.layout == "pending":
            other = c if a.layout == "pending" else a
            if other.layout == "pending" or other.layer is None:
                raise self.fail("adding two raw inputs is not supported")
            n = self.b.layers[other.layer].n
            ph = a if a.layout == "pending" else c
            resolved = self.units(ph, n, other.layout, other.nsp)
            a, c = (resolved, c) if a.layout == "pending" else (a, resolved)
        if (a.layout, a.nsp) != (c.layout, c.nsp):
            raise self.fail(f"residual addition of a {a.layout} and a {c.layout} value")
        na, nc = self.b.layers[a.layer].n, self.b.layers[c.layer].n
        if na != nc:
            raise self.fail(f"residual addition of {na} and {nc} units")
        depth = max(self.depth(a.layer), self.depth(c.layer)) + 1
        s = self.b.add_units(f"{self.node.name}", na, NodeType.RESIDUAL, depth)
        for src in (a.layer, c.layer):
            self.b.add_edges(src, s, EdgeType.RESIDUAL, "diag", width=0)
            self.b.tie(src, s)
        return Value(s, a.layout, a.nsp, exclusive=self.exclusive())

    def clamp_bounds(self, target: Any, args: tuple, kwargs: dict) -> tuple[Any, Any] | None:
        """``(lo, hi)`` of a clamp / hardtanh call (None = unbounded), or None if ``target`` is no clamp."""
        if target in ops.CLAMP_FUNCTIONS:
            hardtanh = target is F.hardtanh
            names, default = (("min_val", "max_val"), (-1.0, 1.0)) if hardtanh else (("min", "max"), (None, None))
            lo = args[1] if len(args) > 1 else kwargs.get(names[0], default[0])
            hi = args[2] if len(args) > 2 else kwargs.get(names[1], default[1])
        elif target in ops.CLAMP_MIN_FUNCTIONS:
            lo, hi = (args[1] if len(args) > 1 else kwargs.get("min")), None
        elif target in ops.CLAMP_MAX_FUNCTIONS:
            lo, hi = None, (args[1] if len(args) > 1 else kwargs.get("max"))
        else:
            return None
        if not all(b is None or isinstance(b, numbers.Real) for b in (lo, hi)):
            raise self.fail("clamp() is supported only with constant bounds")
        return lo, hi

    def product(self, a: Value, c: Value) -> Value:
        """``a * c`` of two unit tensors, channel by channel (gating: x * sigmoid(fc(pool(x))), GLU).

        Output unit i is a_i · c_i. If both factors come from the same unit layer, this is an
        elementwise function of its units (λ = 1 only, e.g. x * sigmoid(x)). Otherwise the product gets
        its own unit layer P with parameter-free edges a → P and c → P, and a, c, P are tied: a shared
        permutation keeps the function. Scalars do not survive in general (λ_a λ_c ≠ λ for a common λ),
        so the tied group keeps permutations only.
        """
        if a.layout == "pending" or c.layout == "pending":
            raise self.fail("multiplying a graph input by another tensor is not supported")
        if (a.layout, a.nsp, a.seq_dim) != (c.layout, c.nsp, c.seq_dim) or a.layout == "flat":
            raise self.fail(f"product of a {a.layout} and a {c.layout} value: the two factors must have their units "
                            "on the same dim (features × features, or feature maps broadcast over spatial dims)")
        if a.layer == c.layer:
            return self.elementwise(a, Scalars.ONE)
        na, nc = self.b.layers[a.layer].n, self.b.layers[c.layer].n
        if na != nc:
            raise self.fail(f"product of {na} and {nc} units: only channel-by-channel products are supported")
        depth = max(self.depth(a.layer), self.depth(c.layer)) + 1
        p = self.b.add_units(f"{self.node.name}", na, NodeType.RESIDUAL, depth)
        for src in (a.layer, c.layer):
            self.b.add_edges(src, p, EdgeType.RESIDUAL, "diag", width=0)
            self.b.tie(src, p)
        self.b.constrain(p, Scalars.ONE)
        return Value(p, a.layout, a.nsp, exclusive=self.exclusive(), seq_dim=a.seq_dim)

    def add_dims_by_index(self, v: Value, index: Any) -> Value:
        """``s[:, :, None, None]`` / ``s[..., None]``: features [B, C] → a [B, C, 1, 1] map (SE gates)."""
        idx = index if isinstance(index, tuple) else (index,)
        full = slice(None)
        head = 1 if idx[:1] == (Ellipsis,) else 2 if idx[:2] == (full, full) else None
        new = len(idx) - (head or 0)
        if head is None or new == 0 or any(i is not None for i in idx[head:]):
            raise self.fail(f"indexing a unit tensor with {index!r} is supported only to append size-1 dims, "
                            "x[:, :, None, None]")
        return self.grow_spatial(v, new, f"indexing with {index!r}")

    def unsqueeze(self, v: Any, dim: Any) -> Value:
        if not isinstance(v, Value) or not isinstance(dim, int):
            raise self.fail("unsqueeze() is supported only on a unit tensor with a constant dim")
        nd = v.nsp + 2 if v.layout == "spatial" else 2
        if dim not in (-1, nd):
            raise self.fail(f"unsqueeze({dim}) is supported only as appending a trailing dim, unsqueeze(-1)")
        return self.grow_spatial(v, 1, "unsqueeze(-1)")

    def grow_spatial(self, v: Value, k: int, what: str) -> Value:
        """Append ``k`` size-1 spatial dims to a feature vector [B, C] or a feature map [B, C, …]."""
        if v.layout == "spatial":
            return replace(v, nsp=v.nsp + k, exclusive=v.exclusive and self.exclusive())
        if v.layout == "vector" and v.seq_dim is None:
            return replace(v, layout="spatial", nsp=k, exclusive=v.exclusive and self.exclusive())
        raise self.fail(f"{what} is supported only on [B, C] features or [B, C, …] feature maps")

    def expand(self, v: Any, target: Any, sizes: tuple) -> Value:
        """``s.expand_as(x)`` / ``s.expand(b, c, h, w)`` of a feature map: broadcast over spatial dims only."""
        if not isinstance(v, Value) or v.layout != "spatial":
            raise self.fail(f"{target}() is supported only on a [B, C, …] feature map (broadcast over spatial dims)")
        n = self.b.layers[v.layer].n
        if target == "expand_as":
            other = sizes[0] if sizes else None
            if not isinstance(other, Value) or other.layout != "spatial" or self.b.layers[other.layer].n != n:
                raise self.fail("expand_as() is supported only onto a feature map with the same channels")
        else:
            sizes = tuple(sizes[0]) if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)) else tuple(sizes)
            c = sizes[1] if len(sizes) > 1 else None
            if not (c in (-1, n) or (isinstance(c, Opaque) and n > 1)):
                raise self.fail(f"expand{sizes} must keep the {n} channels (only spatial dims may broadcast)")
        return replace(v, exclusive=v.exclusive and self.exclusive())

    def norm_target(self, v: Value, n: int, name: str) -> int:
        """The unit layer that receives a norm's parameters: in place when free, else a new layer."""
        lay = self.b.layers[v.layer]
        if v.exclusive and not lay.norm_used:
            lay.norm_used = True
            target = v.layer
        else:
            target = self.b.add_units(name, n, NodeType.NORM, lay.depth + 1)
            self.b.add_edges(v.layer, target, EdgeType.NORM, "diag", width=0)
            self.b.tie(v.layer, target)
            self.b.layers[target].norm_used = True
        self.b.constrain(target, Scalars.ONE)
        return target


    # ------------------------------------------------------------------ token sequences (issue 3)
    def get_attr(self, target: str) -> ParamRef:
        if target not in self.sd:
            raise self.fail(f"{target!r} is read in forward but is not in the state_dict (non-persistent buffer?)")
        return ParamRef(target, self.sd[target])

    def sequence_op(self, target: Any, name: str, args: tuple, kwargs: dict) -> Any:
        """Ops on token sequences and directly used parameters; ``NotImplemented`` for other ops.

        * ``getitem`` on a tuple (``mha(x, x, x)[0]``) or selecting one token ``x[:, 0]`` / ``x[0]``;
        * ``transpose`` / ``permute``: ``[B, C, T]`` ↔ ``[B, T, C]`` and swapping batch and token dims;
        * ``mean`` / ``sum`` over the token dim (pooling tokens: every λ commutes);
        * ``cat`` of a parameter (cls token) with tokens along the token dim, ``tokens + parameter``:
          the parameter becomes an embedding table of the tokens' units (its columns move with them);
        * ``expand`` / ``repeat`` / ``expand_as`` of a parameter (broadcasting a cls token).
        """
        x = args[0] if args else None
        if target is operator.getitem and isinstance(x, (tuple, list)):
            return x[args[1]]
        if isinstance(x, ParamRef) and target in ("expand", "repeat", "expand_as"):
            return x
        if target in (torch.cat, torch.concat, "cat"):
            parts = list(args[0] if args else kwargs["tensors"])
            if not any(isinstance(a, (Value, ParamRef)) for a in parts):
                return NotImplemented
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            return self.cat_tokens(parts, dim)
        if target in ops.ADD_FUNCTIONS and len(args) == 2 and any(isinstance(a, ParamRef) for a in args):
            if target in (operator.sub, torch.sub, "sub"):
                raise self.fail("subtracting a parameter from tokens is not supported (add it instead)")
            v, p = (args[0], args[1]) if isinstance(args[1], ParamRef) else (args[1], args[0])
            return self.add_table(v, p)
        if isinstance(x, Value) and x.layout == "vector" and x.seq_dim is not None:
            if target is operator.getitem:
                return self.select_token(x, args[1])
            if target in ("mean", torch.mean, "sum", torch.sum):
                dim = args[1] if len(args) > 1 else kwargs.get("dim")
                keep = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
                if not keep and isinstance(dim, int) and dim % 3 == x.seq_dim:
                    return replace(self.elementwise(x, Scalars.ALL), seq_dim=None)
        if isinstance(x, Value) and target in ("transpose", torch.transpose, "permute", torch.permute):
            dims = args[1:] if len(args) > 1 else tuple(kwargs.values())
            if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
                dims = tuple(dims[0])
            return self.transpose(x, tuple(dims), name)
        if any(isinstance(a, ParamRef) for a in (*args, *kwargs.values())):
            p = next(a for a in (*args, *kwargs.values()) if isinstance(a, ParamRef))
            raise self.fail(f"parameter {p.key!r} is used by op {name!r}; a parameter read in forward is supported "
                            "only when added to tokens or concatenated along the token dim (cls token)")
        return NotImplemented

    def transpose(self, v: Value, dims: tuple, name: str) -> Value:
        """``[B, C, T]`` → ``[B, T, C]`` (spatial with one spatial dim → tokens), back, and [B,T,C] ↔ [T,B,C]."""
        if not ((v.layout == "spatial" and v.nsp == 1) or (v.layout == "vector" and v.seq_dim is not None)):
            raise self.fail(f"{name}() is supported only on 3-d token tensors ([B, C, T], [B, T, C] or [T, B, C])")
        if len(dims) == 3 and name == "permute":
            swap = [i for i in range(3) if dims[i] != i]
            if sorted(dims) != [0, 1, 2] or len(swap) not in (0, 2):
                raise self.fail(f"permute{dims} is supported only as a swap of two dims")
            dims = tuple(swap) if swap else (0, 0)
        if len(dims) != 2 or not all(isinstance(d, int) for d in dims):
            raise self.fail(f"{name}{dims} is supported only as a swap of two dims of a 3-d tensor")
        pair = tuple(sorted(d % 3 for d in dims))
        ex = v.exclusive and self.exclusive()
        if pair == (0, 0):
            return replace(v, exclusive=ex)
        if v.layout == "spatial" and v.nsp == 1 and pair == (1, 2):
            return replace(v, layout="vector", nsp=0, seq_dim=1, exclusive=ex)
        if v.layout == "vector" and v.seq_dim == 1 and pair == (1, 2):
            return replace(v, layout="spatial", nsp=1, seq_dim=None, exclusive=ex)
        if v.layout == "vector" and v.seq_dim is not None and pair == (0, 1):
            return replace(v, seq_dim=1 - v.seq_dim, exclusive=ex)
        raise self.fail(f"{name}{dims} of a {v.layout} value would move its units off their dim")

    def select_token(self, v: Value, index: Any) -> Value:
        """``x[:, i]`` (batch first) or ``x[i]`` (tokens first): one token, units stay on the last dim."""
        idx = index if isinstance(index, tuple) else (index,)
        full = slice(None)
        if (len(idx) == v.seq_dim + 1 and isinstance(idx[-1], int) and all(i == full for i in idx[:-1])):
            return replace(self.elementwise(v, Scalars.ALL), seq_dim=None)
        raise self.fail(f"indexing tokens with {index!r} is supported only as selecting one token on dim {v.seq_dim}")

    def add_table(self, v: Any, p: ParamRef) -> Value:
        if not isinstance(v, Value) or v.layer is None or v.layout != "vector":
            raise self.fail(f"parameter {p.key!r} is added to something other than a token sequence")
        self.extras.add_table(self.b, p.key, p.tensor, v.layer, self.depth(v.layer))
        return replace(v, exclusive=v.exclusive and self.exclusive())

    def cat_tokens(self, parts: list[Any], dim: Any) -> Value:
        values = [a for a in parts if isinstance(a, Value)]
        params = [a for a in parts if isinstance(a, ParamRef)]
        if len(values) != 1 or len(values) + len(params) != len(parts) or not isinstance(dim, int):
            raise self.fail("cat() is supported only to prepend/append parameters (cls tokens) to one token sequence")
        v = values[0]
        if v.layout != "vector" or v.seq_dim is None or dim % 3 != v.seq_dim:
            raise self.fail(f"cat(dim={dim}) is supported only along the token dim of a token sequence")
        for p in params:
            self.extras.add_table(self.b, p.key, p.tensor, v.layer, self.depth(v.layer))
        return replace(v, exclusive=v.exclusive and self.exclusive())


# ---------------------------------------------------------------------- layer handlers
@register_module_handler(nn.Linear)
def _linear(cv: FxConverter, node: fx.Node, mod: nn.Linear, args: list) -> Value:
    path = str(node.target)
    v = args[0]
    if isinstance(v, Value) and v.layout == "flat":
        src = v.layer
        c = cv.b.layers[src].n
        if mod.in_features % c:
            raise cv.fail(f"Linear({mod.in_features}, …) reads a flattened map of {c} channels; "
                          f"{mod.in_features} is not a multiple of {c}")
        hw = mod.in_features // c
        etype = EdgeType.LINEAR if hw == 1 else EdgeType.FLATTEN
    else:
        src = cv.units(v, mod.in_features, "vector").layer
        hw, etype = 1, EdgeType.LINEAR
    dst = cv.b.add_units(path, mod.out_features, NodeType.HIDDEN, cv.depth(src) + 1)
    block = cv.b.add_edges(src, dst, etype, "dense", width=hw)
    cv.b.place_edges(*cv.param(path, "weight"), block)
    if mod.bias is not None:
        cv.b.place_nodes(*cv.param(path, "bias"), dst, "bias")
    return Value(dst, "vector", exclusive=cv.exclusive())


def _conv(cv: FxConverter, node: fx.Node, mod: nn.Conv1d | nn.Conv2d, args: list) -> Value:
    """Conv1d/Conv2d, y_o = Σ_i W[o, i] ⋆ x_i + b_o. ``groups == 1``: a dense block, edge i → o carries
    the kernel W[o, i]. ``groups = g > 1`` (grouped and depthwise convs): output o reads only the
    inputs of its group, W has shape [C_out, C_in/g, …] and edge k = o·(C_in/g) + i of a "grouped"
    block runs from input (o // (C_out/g))·(C_in/g) + i to output o. A permutation keeps the function
    iff it moves whole groups of inputs and outputs by one shared block permutation (plus any
    permutation inside each group); ``couple_blocks`` records that. Scalings need no constraint: a
    grouped conv is linear, so λ_in / λ_out per edge stay exact."""
    path = str(node.target)
    nsp = len(mod.kernel_size)
    src = cv.units(args[0], mod.in_channels, "spatial", nsp).layer
    dst = cv.b.add_units(path, mod.out_channels, NodeType.HIDDEN, cv.depth(src) + 1)
    width = math.prod(mod.kernel_size)
    if mod.groups == 1:
        block = cv.b.add_edges(src, dst, EdgeType.CONV, "dense", width=width)
    else:
        block = cv.b.add_edges(src, dst, EdgeType.CONV, "grouped", width=width, groups=mod.groups)
        cv.b.couple_blocks(src, dst, mod.groups)
    cv.b.place_edges(*cv.param(path, "weight"), block)
    if mod.bias is not None:
        cv.b.place_nodes(*cv.param(path, "bias"), dst, "bias")
    return Value(dst, "spatial", nsp, exclusive=cv.exclusive())


register_module_handler(nn.Conv1d)(_conv)
register_module_handler(nn.Conv2d)(_conv)


def _batchnorm(cv: FxConverter, node: fx.Node, mod: nn.modules.batchnorm._BatchNorm, args: list) -> Value:
    path = str(node.target)
    v = args[0]
    if isinstance(v, Value) and v.layout == "pending":
        v = cv.units(v, mod.num_features, *(("vector", 0) if isinstance(mod, nn.BatchNorm1d) else ("spatial", 2)))
    if not isinstance(v, Value) or v.layout == "flat":
        raise cv.fail("BatchNorm needs channels on dim 1")
    if isinstance(mod, nn.BatchNorm2d) and (v.layout, v.nsp) != ("spatial", 2):
        raise cv.fail("BatchNorm2d needs a 2-d feature map")
    if isinstance(mod, nn.BatchNorm1d) and not (v.layout == "vector" or (v.layout, v.nsp) == ("spatial", 1)):
        raise cv.fail("BatchNorm1d needs [B, C] or [B, C, L] input")
    n = cv.b.layers[v.layer].n
    if n != mod.num_features:
        raise cv.fail(f"BatchNorm over {mod.num_features} features applied to {n} units")
    target = cv.norm_target(v, n, path)
    for name, slot in (("weight", "norm_weight"), ("bias", "norm_bias"), ("running_mean", "running_mean"),
                       ("running_var", "running_var")):
        if getattr(mod, name, None) is not None:
            cv.b.place_nodes(*cv.param(path, name), target, slot)
    if getattr(mod, "num_batches_tracked", None) is not None:
        cv.b.place_aux(*cv.param(path, "num_batches_tracked"))
    return replace(v, layer=target, exclusive=cv.exclusive())


register_module_handler(nn.BatchNorm1d)(_batchnorm)
register_module_handler(nn.BatchNorm2d)(_batchnorm)


@register_module_handler(nn.LayerNorm)
def _layernorm(cv: FxConverter, node: fx.Node, mod: nn.LayerNorm, args: list) -> Value:
    path = str(node.target)
    if len(mod.normalized_shape) != 1:
        raise cv.fail(f"LayerNorm over shape {tuple(mod.normalized_shape)} is supported only over the last dim")
    n = mod.normalized_shape[0]
    v = cv.units(args[0], n, "vector")
    target = cv.norm_target(v, n, path)
    if mod.weight is not None:
        cv.b.place_nodes(*cv.param(path, "weight"), target, "norm_weight")
    if mod.bias is not None:
        cv.b.place_nodes(*cv.param(path, "bias"), target, "norm_bias")
    return replace(v, layer=target, exclusive=cv.exclusive())


# ---------------------------------------------------------------------- entry point
def to_graph(
    module: nn.Module,
    *,
    arch: dict[str, Any] | None = None,
    allow_nonfinite: bool = False,
    name: str | None = None,
) -> ParameterGraph:
    """Convert ``module`` to a :class:`ParameterGraph` (parameters and buffers, exact inverse).

    ``arch``: the architecture record to store (default: derived from the module, see
    ``qegraph.graph.arch``). Raises
    :class:`~qegraph.errors.UnsupportedOpError` naming the module path and op for anything the
    converter does not understand.
    """
    if not isinstance(module, nn.Module):
        raise QegraphError(f"to_graph() expects an nn.Module, got {type(module).__name__}")
    rec = arch if arch is not None else arch_from_module(module)
    return FxConverter(module, name=name).run(rec, allow_nonfinite=allow_nonfinite)
