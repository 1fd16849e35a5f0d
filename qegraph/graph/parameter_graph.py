"""ParameterGraph: a network's parameters as a typed graph with an exact inverse (DESIGN §3).

Nodes are units (input features, neurons, channels, …); the edge u→v carries the weights from unit u
into unit v. Every scalar of every parameter and buffer lives in exactly one slot:

* ``x[N, 5]``: per-unit parameters in the columns of :data:`NODE_SLOTS` (bias, norm γ, norm β,
  running mean, running variance), zero where ``x_mask`` is False.
* ``edge_attr[E, S]``: one scalar for a Linear, the k_h·k_w kernel of a conv, the H·W block of a
  Linear that reads a flattened feature map; zero-padded to S slots (``edge_mask`` marks the valid
  ones). Parameter-free edges (residual additions, norm identities, q↔k pairings) have no valid slot.
* ``aux_int[K]``: non-float buffers (``num_batches_tracked``) and other integer tensors.

Edges are stored as contiguous *edge blocks* (one per weight tensor or parameter-free connection):
``eblock_size``, ``eblock_type``, ``eblock_width`` (valid slots), ``eblock_dense`` (every src→dst pair,
edge k = o·n_src + i, the row-major order of W[o, i]; else the diagonal i→i), ``eblock_src`` /
``eblock_dst`` (first node of the source / target unit layer) and ``eblock_nsrc``. ``edge_type`` and
``edge_mask`` are derived from them, so no per-edge metadata costs memory. ``meta["params"]`` is the
explicit parameter → slot index: for each state_dict key, the table, first row, row count, first
column, width, shape and dtype of its block. :meth:`to_state_dict` reads it back bit for bit.

Symmetry metadata (DESIGN §4): ``sym_group[N]`` is the unit group of each node (units tied by
residual additions, norms or a flatten share one group); ``sym_member[N]`` the unit's index inside the
group; ``sym_kind[G]`` the :class:`SymKind` of each group and ``sym_size[G]`` its number of units.

Attention heads and embedding tables (``qegraph.graph.extras``, ``docs/transformers.md``): a group of
kind ``HEADS`` has one *member per head* (``sym_size`` = number of heads). Per node:
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
from qegraph.graph.arch import check_state_dict_matches, module_from_arch


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

    # ---------------------------------------------------------------- PyG batching
    def __inc__(self, key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        if key == "sym_group":
            return int(self.sym_kind.numel())
        if key in ("edge_index", "eblock_src", "eblock_dst", "etable_node"):
            return self.num_nodes
        if key == "etable_start":
            return int(self.emb_attr.numel())
        if key in ("io_pos", "sym_member", "layer", "sym_stride", "gl_role", "gl_coord", "etable_rows",
                   "etable_cols"):
            return 0
        return super().__inc__(key, value, *args, **kwargs)

    def __cat_dim__(self, key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        if key == "edge_index":
            return -1
        if key in ("sym_member",):
            return 0
        return super().__cat_dim__(key, value, *args, **kwargs)

    # ---------------------------------------------------------------- derived fields
    @property
    def num_slots(self) -> int:
        """S: the number of edge-feature slots (max kernel / block size of the graph)."""
        return int(self.edge_attr.size(1))

    @property
    def edge_type(self) -> Tensor:
        """``[E]`` :class:`EdgeType` of every edge, expanded from the edge blocks."""
        return torch.repeat_interleave(self.eblock_type, self.eblock_size)

    @property
    def edge_width(self) -> Tensor:
        """``[E]`` number of valid slots of every edge."""
        return torch.repeat_interleave(self.eblock_width, self.eblock_size)

    @property
    def edge_mask(self) -> Tensor:
        """``[E, S]`` True where a slot of ``edge_attr`` holds a parameter."""
        slots = torch.arange(self.num_slots, device=self.edge_attr.device)
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
        tables = {"x": self.x, "edge_attr": self.edge_attr, "aux_int": self.aux_int,
                  "emb_attr": getattr(self, "emb_attr", None)}
        out: dict[str, Tensor] = {}
        for p in self.meta["params"]:
            table = tables[p["table"]]
            if table.dim() == 1:
                block = table[p["start"] : p["start"] + p["rows"]]
            else:
                block = table[p["start"] : p["start"] + p["rows"], p["col"] : p["col"] + p["width"]]
            out[p["key"]] = block.reshape(p["shape"]).to(dtype_from_str(p["dtype"])).clone()
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
    def with_features(self, x: Tensor | None = None, edge_attr: Tensor | None = None) -> ParameterGraph:
        """A shallow copy with new ``x`` / ``edge_attr`` (same structure, index and metadata)."""
        out = copy.copy(self)
        if x is not None:
            out.x = x
        if edge_attr is not None:
            out.edge_attr = edge_attr
        return out

    def pad_slots(self, num_slots: int) -> ParameterGraph:
        """A copy whose ``edge_attr`` has ``num_slots`` slots (zero padding), so that graphs with
        different kernel sizes share a batch. The inverse is unchanged."""
        s = self.num_slots
        if num_slots < s:
            raise QegraphError(f"cannot pad {s} edge slots down to {num_slots}")
        if num_slots == s:
            return self
        pad = self.edge_attr.new_zeros(self.edge_attr.size(0), num_slots - s)
        return self.with_features(edge_attr=torch.cat([self.edge_attr, pad], dim=1))

    def __repr__(self) -> str:
        if isinstance(self.meta, list):
            return super().__repr__()
        return (
            f"ParameterGraph(params={self.num_params:,}, nodes={self.num_nodes:,}, "
            f"edges={self.edge_index.size(1):,}, slots={self.num_slots}, dtype={self.x.dtype}, "
            f"groups={self.sym_kind.numel()})"
        )


def fill_edge_index(
    out: Tensor, src_start: int, nsrc: int, dst_start: int, ndst: int, dense: bool
) -> None:
    """Write one edge block's ``[2, size]`` indices into ``out`` in place (no temporaries of its size).

    Dense blocks enumerate every pair in the row-major order of a weight W[o, i] (edge k = o·n_src + i);
    diagonal blocks connect i → i.
    """
    if dense:
        out[0].view(ndst, nsrc).copy_(torch.arange(src_start, src_start + nsrc).unsqueeze(0))
        out[1].view(ndst, nsrc).copy_(torch.arange(dst_start, dst_start + ndst).unsqueeze(1))
    else:
        torch.arange(src_start, src_start + nsrc, out=out[0])
        torch.arange(dst_start, dst_start + ndst, out=out[1])


def edge_index_from_blocks(g: ParameterGraph) -> Tensor:
    """Rebuild ``edge_index`` from the edge-block table (used when loading a saved graph)."""
    sizes = g.eblock_size.tolist()
    edge_index = torch.empty(2, sum(sizes), dtype=torch.long)
    start = 0
    for size, s0, ns, d0, dense in zip(
        sizes, g.eblock_src.tolist(), g.eblock_nsrc.tolist(), g.eblock_dst.tolist(), g.eblock_dense.tolist()
    ):
        nd = size // ns if dense else ns
        fill_edge_index(edge_index[:, start : start + size], s0, ns, d0, nd, dense)
        start += size
    return edge_index


def pad_to_common_slots(graphs: list[ParameterGraph]) -> list[ParameterGraph]:
    """Pad every graph to the largest slot count of the list (needed to batch CNNs with MLPs)."""
    s = max(g.num_slots for g in graphs)
    return [g.pad_slots(s) for g in graphs]


__all__ = ["ParameterGraph", "pad_to_common_slots"]
