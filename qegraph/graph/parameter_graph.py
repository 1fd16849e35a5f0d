"""ParameterGraph: a network's parameters as a typed graph with an exact inverse (DESIGN §3).

Nodes are units (input features, neurons, channels, …); the edge u→v carries the weights from unit u
into unit v. Every scalar of every parameter and buffer lives in exactly one place:

* ``x[N, 5]``: per-unit parameters in the columns of :data:`NODE_SLOTS` (bias, norm γ, norm β,
  running mean, running variance), zero where ``x_mask`` is False.
* ``edge_val[K]`` (the graph's float dtype): the edge values, *ragged*: each edge holds its own
  block's number of values (1 for a Linear, the k_h·k_w kernel of a conv, the H·W block of a Linear
  that reads a flattened feature map, 0 for parameter-free edges: residual additions, norm
  identities, q↔k pairings). Block b's values are ``edge_val[voff_b : voff_b + size_b·width_b]``
  viewed ``[size_b, width_b]`` edge-major — for a dense block exactly the weight tensor's flat layout.
* ``aux_int[K]``: non-float buffers (``num_batches_tracked``) and other integer tensors.

Edges are stored as contiguous *edge blocks* (one per weight tensor or parameter-free connection):
``eblock_size``, ``eblock_type``, ``eblock_width`` (values per edge), ``eblock_groups`` (1: every
src→dst pair, edge k = o·n_src + i, the row-major order of W[o, i]; g: block-diagonal with g groups,
the layout of a grouped conv weight W[n_dst, n_src/g, …]; g = n_src = n_dst: the diagonal i→i),
``eblock_src`` / ``eblock_dst`` (first node of the source / target unit layer) and ``eblock_nsrc``
(formulas in :mod:`qegraph.graph.blocks`). Nothing per edge is stored: ``edge_index`` (int64
``[2, E]``), ``edge_attr`` (``[E, S]`` padded to the graph's — or the batch's — largest width S,
zeros in invalid slots), ``edge_mask``, ``edge_type``, ``edge_width``, ``num_edges`` and
``num_slots`` are computed from the block table when read (``graph.edge_attr = padded`` and
``with_features(edge_attr=…)`` convert back). So graphs of any architectures share a PyG batch with no
padding step, and batching copies each value once.

``meta["params"]`` is the explicit parameter → slot index: for each state_dict key, its table
(``x``, ``edge_val``, ``aux_int``, ``emb_attr``), ``start``, ``rows``, ``col``, ``width``, shape and
dtype. In ``x`` the tensor fills rows start … start+rows−1 of column col; in a flat table it is
``table[start : start + rows·width]`` (for ``edge_val``: rows edges of width values each, starting at
the first edge of edge block ``block``). An entry with ``view``/``perm`` was stored as
``tensor.reshape(view).permute(perm)`` (a Hugging Face ``Conv1D`` weight, grouped-query projections:
:func:`param_to_stored`). :meth:`to_state_dict` reads it back bit for bit.

Symmetry metadata (DESIGN §4): ``sym_group[N]`` is the unit group of each node (units tied by
residual additions, norms or a flatten share one group); ``sym_member[N]`` the unit's index inside the
group; ``sym_kind[G]`` the :class:`SymKind` of each group and ``sym_size[G]`` its number of units.
Grouped convolutions restrict permutations (:mod:`qegraph.symmetry.group`): ``sym_blocks[G]`` is the
number of equal contiguous blocks of members a permutation must keep together (1: unstructured; 0: no
permutation at all), ``sym_couple[G]`` the coupling class (unit groups of one class permute their
blocks by the same σ).

Attention heads and embedding tables (``qegraph.graph.extras``, ``docs/transformers.md``): a group of
kind ``HEADS`` (or ``HEAD_SIGNS``) has one *member per head* (``sym_size`` = number of heads). Per node:
``sym_stride[N]`` is the node distance between consecutive members inside a unit layer (1, or the
head dim d for head nodes: a permutation π of the group reads node v from v + (π(m) − m)·stride),
``gl_role[N]`` the :class:`GLRole` (0 none, 1 query ρ = A, 2 key ρ = A^{-T}, 3 value ρ = B) and
``gl_coord[N]`` the coordinate inside the head (−1 outside heads); the d nodes of one head and role
are consecutive node ids in coordinate order. Embedding tables live row-major in the flat float
table ``emb_attr[K]``; table t has ``etable_start`` (offset), ``etable_rows`` (R),
``etable_cols`` (D) and ``etable_node`` (first of its D EMBED nodes; entry [r, c] belongs to node
``etable_node + c``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from qegraph.errors import QegraphError
from qegraph.graph import blocks
from qegraph.graph.arch import check_state_dict_matches, module_from_arch
from qegraph.graph.blocks import BlockTable


_DTYPES: dict[str, torch.dtype] = {
    str(d): d
    for d in (
        torch.float16, torch.bfloat16, torch.float32, torch.float64,
        torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool,
    )
}


def dtype_from_str(name: str) -> torch.dtype:
    """``"torch.float16"`` → ``torch.float16`` (only plain numeric dtypes are accepted)."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise QegraphError(f"unsupported dtype {name!r} in graph metadata") from None


class GraphMeta:
    """The JSON metadata of one graph (architecture record, parameter → slot index, unit layers).

    A plain object rather than a dict, so that PyG batching keeps one per graph instead of merging
    them key by key.
    """

    __slots__ = ("data",)

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GraphMeta) and other.data == self.data

    def __repr__(self) -> str:
        return f"GraphMeta(arch={self.data.get('arch', {}) and self.data['arch'].get('type')!r}, params={len(self.data['params'])})"


class ParameterGraph(Data):
    """A PyG ``Data`` holding one network's parameters; see the module docstring for the fields."""

    def __init__(self, x: Tensor | None = None, edge_index: Tensor | None = None, edge_attr: Tensor | None = None,
                 **kwargs: Any) -> None:
        if edge_index is not None:
            raise QegraphError("ParameterGraph.edge_index is derived from the edge blocks (eblock_*); do not pass it")
        super().__init__(x=x, **kwargs)
        if edge_attr is not None:
            self.edge_attr = edge_attr

    # ---------------------------------------------------------------- PyG batching
    def __inc__(self, key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        if key in ("sym_group", "sym_couple"):
            return int(self.sym_kind.numel())
        if key in ("eblock_src", "eblock_dst", "etable_node"):
            return self.num_nodes
        if key == "etable_start":
            return int(self.emb_attr.numel())
        if key in ("io_pos", "sym_member", "layer", "sym_stride", "gl_role", "gl_coord", "etable_rows",
                   "etable_cols"):
            return 0
        return super().__inc__(key, value, *args, **kwargs)

    def __cat_dim__(self, key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        if key == "sym_member":
            return 0
        return super().__cat_dim__(key, value, *args, **kwargs)

    # ---------------------------------------------------------------- derived fields
    def _blocks(self) -> BlockTable | None:
        return BlockTable.of(self) if "eblock_size" in self._store else None

    @property
    def block_table(self) -> BlockTable:
        """The edge-block table with its derived offsets (:class:`~qegraph.graph.blocks.BlockTable`)."""
        return BlockTable.of(self)

    @property
    def edge_index(self) -> Tensor | None:  # type: ignore[override]
        """``[2, E]`` int64 source and target node of every edge (computed from the edge blocks)."""
        bt = self._blocks()
        return None if bt is None else blocks.edge_index(bt)

    @edge_index.setter
    def edge_index(self, value: Tensor | None) -> None:
        raise QegraphError("ParameterGraph.edge_index is derived from the edge blocks (eblock_*) and cannot be set")

    @property
    def edge_attr(self) -> Tensor | None:  # type: ignore[override]
        """``[E, S]`` edge values padded to the largest width S of the graph or batch (zeros in the
        invalid slots); a view computed from ``edge_val`` (differentiable)."""
        bt = self._blocks()
        return None if bt is None or "edge_val" not in self._store else blocks.padded(bt, self.edge_val)

    @edge_attr.setter
    def edge_attr(self, value: Tensor) -> None:
        """Set the edge values from a padded ``[E, S']`` table (S' ≥ every block's width)."""
        self.edge_val = blocks.ragged(BlockTable.of(self), value)

    @property
    def num_edges(self) -> int:  # type: ignore[override]
        return int(self.eblock_size.sum())

    @property
    def num_slots(self) -> int:
        """S: the largest number of values of an edge (at least 1): the width of ``edge_attr``."""
        return BlockTable.of(self).max_width()

    @property
    def edge_type(self) -> Tensor:
        """``[E]`` :class:`EdgeType` of every edge, expanded from the edge blocks."""
        return torch.repeat_interleave(self.eblock_type, self.eblock_size)

    @property
    def edge_width(self) -> Tensor:
        """``[E]`` number of values of every edge."""
        return torch.repeat_interleave(self.eblock_width, self.eblock_size)

    @property
    def edge_mask(self) -> Tensor:
        """``[E, S]`` True where a slot of ``edge_attr`` holds a parameter."""
        slots = torch.arange(self.num_slots, device=self.eblock_width.device)
        return slots.unsqueeze(0) < self.edge_width.unsqueeze(1)

    @property
    def num_params(self) -> int:
        return sum(int(torch.Size(p["shape"]).numel()) for p in self.meta["params"])

    @property
    def arch(self) -> dict[str, Any] | None:
        return self.meta.get("arch")

    @property
    def units(self) -> list[dict[str, Any]]:
        """Unit layers: name, first node, count, node type, depth, unit group."""
        return self.meta["units"]

    # ---------------------------------------------------------------- exact inverse
    def _require_single(self, what: str) -> None:
        if isinstance(self.meta, list):
            raise QegraphError(
                f"{what} needs a single graph, got a batch: use batch.get_example(i) or batch.to_data_list()"
            )

    def to_state_dict(self) -> dict[str, Tensor]:
        """The original state_dict: same keys (in order), shapes, dtypes and values, bit for bit."""
        self._require_single("to_state_dict()")
        tables = {"x": self.x, "edge_val": self.edge_val, "aux_int": self.aux_int,
                  "emb_attr": getattr(self, "emb_attr", None)}
        out: dict[str, Tensor] = {}
        for p in self.meta["params"]:
            table = tables[p["table"]]
            if table.dim() == 1:
                block = table[p["start"] : p["start"] + p["rows"] * p["width"]]
            else:
                block = table[p["start"] : p["start"] + p["rows"], p["col"] : p["col"] + p["width"]]
            out[p["key"]] = stored_to_param(block, p).to(dtype_from_str(p["dtype"])).clone(
                memory_format=torch.contiguous_format)
        return out

    def to_module(self, template: nn.Module | None = None) -> nn.Module:
        """A runnable module holding this graph's parameters (dtypes preserved).

        ``template``: a module of the right architecture (copied, not modified). Without it, the
        architecture recorded at conversion is rebuilt (torch.nn layers, a Linear chain, or the class
        given as ``--arch``, which must be an ``nn.Module`` subclass).
        """
        self._require_single("to_module()")
        if template is not None:
            module = copy.deepcopy(template)
        else:
            module = module_from_arch(self.arch)
        sd = self.to_state_dict()
        check_state_dict_matches(module, sd, source="the graph")
        module.load_state_dict(sd, strict=True, assign=True)
        return module.eval()

    # ---------------------------------------------------------------- editing
    def with_features(self, x: Tensor | None = None, edge_attr: Tensor | None = None,
                      edge_val: Tensor | None = None) -> ParameterGraph:
        """A shallow copy with new ``x`` and new edge values, given ragged (``edge_val [K]``) or padded
        (``edge_attr [E, S]``, S ≥ the largest width; the padding is not read). Same structure,
        index and metadata."""
        if edge_attr is not None and edge_val is not None:
            raise QegraphError("with_features takes edge_attr or edge_val, not both")
        out = copy.copy(self)
        if x is not None:
            out.x = x
        if edge_val is not None:
            if edge_val.dim() != 1 or edge_val.numel() != self.edge_val.numel():
                raise QegraphError(f"edge_val must be [{self.edge_val.numel()}], got {tuple(edge_val.shape)}")
            out.edge_val = edge_val
        if edge_attr is not None:
            out.edge_attr = edge_attr
        return out

    def __repr__(self) -> str:
        if isinstance(self.meta, list):
            return super().__repr__()
        return (
            f"ParameterGraph(params={self.num_params:,}, nodes={self.num_nodes:,}, "
            f"edges={self.num_edges:,}, slots<={self.num_slots}, dtype={self.x.dtype}, "
            f"groups={self.sym_kind.numel()})"
        )


def stored_to_param(block: Tensor, p: dict[str, Any]) -> Tensor:
    """A parameter from its stored values. Most parameters are stored in their own flat layout; a
    parameter whose index entry has ``view``/``perm`` (a Hugging Face ``Conv1D`` weight stored [out, in],
    grouped-query projections) was stored as ``tensor.reshape(view).permute(perm)``, which this inverts."""
    if "perm" in p:
        view, perm = p["view"], p["perm"]
        inv = sorted(range(len(perm)), key=perm.__getitem__)
        block = block.reshape([view[k] for k in perm]).permute(inv)
    return block.reshape(p["shape"])


def param_to_stored(tensor: Tensor, p: dict[str, Any]) -> Tensor:
    """The flat stored values of a parameter (the inverse of :func:`stored_to_param`)."""
    if "perm" in p:
        tensor = tensor.reshape(p["view"]).permute(p["perm"])
    return tensor.reshape(-1)


def pad_to_common_slots(graphs: list[ParameterGraph]) -> list[ParameterGraph]:
    """The graphs, unchanged (kept for compatibility). Graphs store ragged edge values and a batch pads
    its ``edge_attr`` to its own largest width, so graphs with different kernel sizes share a batch
    (``Batch.from_data_list``, ``torch_geometric.loader.DataLoader``) without this call."""
    return list(graphs)


__all__ = ["ParameterGraph", "pad_to_common_slots"]
