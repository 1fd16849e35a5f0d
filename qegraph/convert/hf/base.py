r"""Shared machinery of the Hugging Face layouts: config fields, key layouts, one conversion.

A layout converter reads a state_dict with the keys of one ``transformers`` model class and the
model's ``config.json`` values, and plans the graph with the shared attention-head / residual-stream
planner (:class:`~qegraph.convert.transformer.TransformerPlanner`). Every config field that changes
the network's function is either *modelled* or *refused by name*:

* fields that fix shapes (hidden size, vocabulary, layers, …) are read from the tensors and checked
  against the config (a mismatch names the field and the key);
* fields that change the symmetry (``hidden_act``: ReLU keeps positive scalings of the feed-forward
  units, tanh signs, everything else only permutations; the number of heads; rotary embeddings;
  grouped-query attention) are modelled in the graph;
* fields that change only the function inside a head or a norm (``layer_norm_eps``,
  ``rope_theta``, ``scale_attn_weights``, RoBERTa's ``pad_token_id`` position offset, …) are
  recorded and honoured by ``graph.to_module()``, which rebuilds the library's own class from the
  recorded config;
* values that the graph cannot represent (cross-attention, relative position embeddings, activations
  with parameters, tied output embeddings) are refused with an error naming the field.

A missing field takes the library's default (as ``transformers`` itself does when it loads that
config.json), except the number of attention heads, which cannot be read from the shapes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from qegraph.convert.transformer import TransformerPlanner
from qegraph.errors import QegraphError
from qegraph.graph.builder import GraphBuilder, Scalars
from qegraph.graph.extras import GraphExtras
from qegraph.graph.parameter_graph import ParameterGraph
from qegraph.graph.types import NodeType

#: ``hidden_act`` names of ``transformers.activations.ACT2FN`` and the per-unit scalars each keeps
#: (DESIGN §4): ReLU / LeakyReLU are positively homogeneous, tanh is odd, the identity is linear; the
#: rest (GELU variants, SiLU, ReLU², ReLU6, …) keep only permutations. ``prelu`` and ``xielu`` have
#: parameters of their own and are refused.
ACTIVATION_SCALARS: dict[str, Scalars] = {
    "relu": Scalars.POS, "leaky_relu": Scalars.POS, "tanh": Scalars.SIGN, "linear": Scalars.ALL,
    **{name: Scalars.ONE for name in (
        "gelu", "gelu_10", "gelu_fast", "gelu_new", "gelu_python", "gelu_pytorch_tanh", "gelu_python_tanh",
        "gelu_accurate", "quick_gelu", "hardswish", "laplace", "mish", "relu2", "relu6", "sigmoid", "silu",
        "swish", "sqrtsoftplus")},
}


class HFConfig:
    """The config.json values of one model, read with the family's library defaults."""

    def __init__(self, data: Mapping[str, Any], defaults: Mapping[str, Any], model_type: str, source: str) -> None:
        self.data = dict(data)
        self.defaults = defaults
        self.model_type = model_type
        self.source = source
        self.filled: dict[str, Any] = {}

    def error(self, msg: str) -> QegraphError:
        return QegraphError(f"{self.source}: {msg}")

    def __contains__(self, name: str) -> bool:
        return name in self.data

    def __getitem__(self, name: str) -> Any:
        if name in self.data:
            return self.data[name]
        if name in self.filled:
            return self.filled[name]
        return self.defaults[name]

    def required(self, name: str, hint: str) -> Any:
        if self.data.get(name) is None:
            raise self.error(f"config field {name!r} is needed and not given ({hint})")
        return self.data[name]

    def refuse_unless(self, name: str, ok: Callable[[Any], bool], why: str) -> None:
        """Refuse the config if field ``name`` (given or default) fails ``ok``."""
        value = self[name]
        if not ok(value):
            raise self.error(f"config field {name}={value!r} is not supported: {why}")

    def shape(self, name: str, value: int, key: str) -> None:
        """A shape-determined field: checked against the config when given, recorded otherwise."""
        given = self.data.get(name)
        if given is not None and int(given) != int(value):
            raise self.error(f"config field {name}={given!r} does not match the checkpoint ({key!r} implies {value})")
        if given is None:
            self.filled[name] = int(value)

    def labels(self, n: int, key: str) -> None:
        """The number of labels of a classification head (``id2label`` or ``num_labels``), as :meth:`shape`."""
        id2label = self.data.get("id2label")
        given = len(id2label) if isinstance(id2label, Mapping) else self.data.get("num_labels")
        if given is not None and int(given) != n:
            raise self.error(f"config gives {given} labels (id2label / num_labels); {key!r} has {n} rows")
        if given is None:
            self.filled["num_labels"] = int(n)

    def activation(self, name: str) -> Scalars:
        """The scalars kept by the feed-forward activation named by field ``name``."""
        act = self[name]
        if not isinstance(act, str) or act not in ACTIVATION_SCALARS:
            known = ", ".join(sorted(ACTIVATION_SCALARS))
            raise self.error(f"config field {name}={act!r} is not supported (activations without parameters: {known})")
        return ACTIVATION_SCALARS[act]

    def record(self) -> dict[str, Any]:
        """The config to rebuild the model with: the given fields plus the shape fields read from tensors."""
        out = {**self.data, **self.filled, "model_type": self.model_type}
        return out


@dataclass(frozen=True)
class Head:
    """A task head on top of the base model: its keys (regexes, without prefix) and library class."""

    library_class: str
    keys: tuple[str, ...]
    anchor: str  # a key every checkpoint with this head has


@dataclass(frozen=True)
class KeyLayout:
    """The state_dict keys of one family: ``body`` regexes (after the prefix), allowed prefixes, the
    base class and the task heads it supports."""

    body: tuple[str, ...]
    anchor: str  # a body key every checkpoint has
    prefixes: tuple[str, ...]
    base_class: str
    heads: tuple[Head, ...] = ()

    def detect(self, keys: list[str], family: str, source: str) -> tuple[str, Head | None]:
        """(prefix, head) of a state_dict with ``keys``; raises naming the first key that does not fit."""
        prefix = next((p for p in self.prefixes if p + self.anchor in keys), None)
        if prefix is None:
            raise QegraphError(
                f"{source}: not a {family} checkpoint: no key {self.anchor!r} (with an optional prefix "
                f"{', '.join(repr(p) for p in self.prefixes if p)}); its first key is {keys[0]!r}" if keys else
                f"{source}: the state_dict is empty"
            )
        body = re.compile("|".join(f"(?:{re.escape(prefix)}{k})" for k in self.body))
        head = next((h for h in self.heads if h.anchor in keys), None)
        extra = re.compile("|".join(f"(?:{k})" for k in head.keys)) if head else None
        for k in keys:
            if not body.fullmatch(k) and not (extra is not None and extra.fullmatch(k)):
                classes = ", ".join([self.base_class, *(h.library_class for h in self.heads)])
                raise QegraphError(f"{source}: unexpected key {k!r} for a {family} checkpoint (prefix {prefix!r}; "
                                   f"supported classes: {classes})")
        return prefix, head


@dataclass
class Conversion:
    """One layout conversion: the state_dict, its config, the planner, and the keys read so far."""

    sd: dict[str, Tensor]
    cfg: HFConfig
    prefix: str
    head: Head | None
    source: str
    b: GraphBuilder = field(default_factory=GraphBuilder)
    extras: GraphExtras = field(default_factory=GraphExtras)
    buffers: list[str] = field(default_factory=list)  # int buffers the rebuilt class must keep persistent

    def __post_init__(self) -> None:
        self.plan = TransformerPlanner(self.b, self.extras, self.sd, self.cfg.error)

    def key(self, name: str) -> str:
        """The full key of body parameter ``name`` (which must exist)."""
        k = self.prefix + name
        if k not in self.sd:
            raise self.cfg.error(f"{self.cfg.model_type} checkpoint is missing key {k!r}")
        return k

    def opt(self, name: str) -> str | None:
        """The full key of an optional body parameter, or None."""
        k = self.prefix + name
        return k if k in self.sd else None

    def tensor(self, name: str) -> Tensor:
        return self.sd[self.key(name)]

    def count(self, pattern: str) -> int:
        """Number of layers: n such that ``pattern.format(i)`` is a key for every i < n."""
        n = 0
        while self.prefix + pattern.format(n) in self.sd:
            n += 1
        return n

    def stream(self, name: str, n: int) -> int:
        """The first residual-stream layer (depth 1)."""
        return self.b.add_units(self.prefix + name, n, NodeType.STREAM, 1)

    def int_buffer(self, name: str) -> None:
        """An optional integer buffer (``position_ids`` of older checkpoints) kept in ``aux_int``."""
        k = self.opt(name)
        if k is not None:
            self.b.place_aux(k, self.sd[k])
            self.buffers.append(name)

    def finish(self, arch: dict[str, Any], allow_nonfinite: bool) -> ParameterGraph:
        keys = list(self.sd)
        placed = {p.key for p in self.b.placements} | self.extras.keys
        unused = next((k for k in keys if k not in placed), None)
        if unused is not None:
            raise self.cfg.error(f"key {unused!r} has no place in a {self.cfg.model_type} graph "
                                 "(its layer index or shape does not match the rest of the checkpoint)")
        tables = self.extras.keys
        graph = self.b.build(arch, [k for k in keys if k not in tables], allow_nonfinite=allow_nonfinite,
                             source=self.source)
        graph = self.extras.finalize(self.b, graph, keys, allow_nonfinite=allow_nonfinite, source=self.source)
        return self.plan.finish(graph)


__all__ = ["ACTIVATION_SCALARS", "Conversion", "HFConfig", "Head", "KeyLayout"]
