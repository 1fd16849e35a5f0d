"""Attention heads and embedding tables: the parts of a ParameterGraph that GraphBuilder does not plan.

A converter records them while it plans the graph, then :meth:`GraphExtras.finalize` completes the
built graph (see ``docs/transformers.md`` for the contract):

* **Heads.** The query, key and value unit layers of one attention layer (n = H·d units each, head h
  holding coordinates h·d … h·d+d-1) form one unit group of kind :attr:`SymKind.HEADS` whose H
  *members are heads*: node v of head h, coordinate i gets ``sym_member = h``, ``sym_stride = d``,
  ``gl_role`` ∈ {QUERY, KEY, VALUE} and ``gl_coord = i``. A head permutation π moves node
  v to v + (π(h) − h)·d, i.e. whole head blocks.
* **Embedding tables.** A table E ∈ R^{R×D} added to D units (token / position / segment embeddings,
  a ViT's positional embedding and cls token) is one EMBED unit layer of D nodes, tied to the units
  it writes (parameter-free diag ``EdgeType.EMBED`` edges), whose *columns* are the nodes' features:
  E lives row-major in the flat float table ``emb_attr``, and table t is described by
  ``etable_start`` (offset in ``emb_attr``), ``etable_rows`` (R), ``etable_cols`` (D) and
  ``etable_node`` (first EMBED node). Entry E[r, c] is ``emb_attr[start + r·D + c]`` and belongs to
  node ``etable_node + c``: a permutation/scaling of the units acts on E's columns like on a bias,
  E[:, c] ↦ q_c E[:, π(c)], and rows (vocabulary ids, positions) are never moved.

Every graph gets these fields (defaults: stride 1, role 0, coordinate −1, no tables), so graphs of
any architecture share a batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from qegraph.errors import NonFiniteError, QegraphError
from qegraph.graph.builder import GraphBuilder
from qegraph.graph.parameter_graph import ParameterGraph
from qegraph.graph.types import EdgeType, GLRole, NodeType, SymKind


@dataclass
class _Heads:
    layers: tuple[int, int, int]  # query, key, value unit layers
    num_heads: int


@dataclass
class _Table:
    key: str
    tensor: Tensor
    layer: int  # EMBED unit layer


@dataclass
class GraphExtras:
    """Heads and embedding tables recorded during planning; :meth:`finalize` adds them to the graph."""

    heads: list[_Heads] = field(default_factory=list)
    tables: list[_Table] = field(default_factory=list)

    @property
    def keys(self) -> set[str]:
        """State_dict keys stored in embedding tables (not placed through the builder)."""
        return {t.key for t in self.tables}

    def add_heads(self, b: GraphBuilder, q: int, k: int, v: int, num_heads: int, where: str) -> None:
        """Declare unit layers q, k, v (n = H·d units each) as the heads of one attention layer."""
        n = b.layers[q].n
        if num_heads < 1 or n % num_heads or b.layers[k].n != n or b.layers[v].n != n:
            raise QegraphError(
                f"{where}: query/key/value sizes ({n}, {b.layers[k].n}, {b.layers[v].n}) are not "
                f"{num_heads} heads of equal size"
            )
        b.tie(q, k)
        b.tie(q, v)
        self.heads.append(_Heads((q, k, v), num_heads))

    def add_table(self, b: GraphBuilder, key: str, tensor: Tensor, target: int, depth: int) -> int:
        """An EMBED layer holding ``tensor`` (R×D values, any shape ending in D) written into the D
        units of layer ``target``; returns the EMBED layer."""
        if key in self.keys:
            raise QegraphError(f"parameter {key!r} is used twice (weight sharing is not supported)")
        n = b.layers[target].n
        if tensor.dim() == 0 or tensor.shape[-1] != n:
            raise QegraphError(
                f"embedding {key!r} of shape {tuple(tensor.shape)} is added to {n} units; its last dim must be {n}"
            )
        layer = b.add_units(key, n, NodeType.EMBED, depth)
        b.add_edges(layer, target, EdgeType.EMBED, "diag", width=0)
        b.tie(layer, target)
        self.tables.append(_Table(key, tensor, layer))
        return layer

    def finalize(
        self,
        b: GraphBuilder,
        graph: ParameterGraph,
        key_order: list[str],
        *,
        allow_nonfinite: bool = False,
        source: str = "module",
    ) -> ParameterGraph:
        """Add the head metadata and embedding tables to ``graph`` (built by ``b``) in place."""
        n = graph.num_nodes
        stride = torch.ones(n, dtype=torch.long)
        role = torch.zeros(n, dtype=torch.long)
        coord = torch.full((n,), -1, dtype=torch.long)
        for h in self.heads:
            g = int(graph.sym_group[b.layers[h.layers[0]].start])
            if int(graph.sym_kind[g]) == int(SymKind.FIXED):
                raise QegraphError(f"{source}: attention heads of {b.layers[h.layers[0]].name!r} are tied to fixed units")
            if int(graph.sym_blocks[g]) != 1 or bool((graph.sym_couple == g).sum() > 1) or int(graph.sym_couple[g]) != g:
                raise QegraphError(f"{source}: attention heads of {b.layers[h.layers[0]].name!r} are tied to the "
                                   "channels of a grouped convolution (not supported)")
            graph.sym_kind[g] = int(SymKind.HEADS)
            graph.sym_size[g] = h.num_heads
            for layer, r in zip(h.layers, (GLRole.QUERY, GLRole.KEY, GLRole.VALUE)):
                lay = b.layers[layer]
                d = lay.n // h.num_heads
                sl = slice(lay.start, lay.start + lay.n)
                local = torch.arange(lay.n)
                graph.sym_member[sl] = local // d
                stride[sl] = d
                role[sl] = int(r)
                coord[sl] = local % d
        graph.sym_stride = stride
        graph.gl_role = role
        graph.gl_coord = coord

        dtype = graph.x.dtype
        for t in self.tables:
            if not t.tensor.is_floating_point():
                raise QegraphError(f"{source}: embedding {t.key!r} has non-float dtype {t.tensor.dtype}")
            if not allow_nonfinite and not bool(torch.isfinite(t.tensor).all()):
                raise NonFiniteError(
                    f"{source}: parameter {t.key!r} contains NaN or inf values "
                    "(pass --allow-nonfinite / allow_nonfinite=True to convert anyway)"
                )
            dtype = torch.promote_types(dtype, t.tensor.dtype)
        total = sum(t.tensor.numel() for t in self.tables)
        emb = torch.empty(total, dtype=dtype)
        starts, rows, cols, nodes = [], [], [], []
        params = list(graph.meta["params"])
        off = 0
        for t in self.tables:
            lay = b.layers[t.layer]
            emb[off : off + t.tensor.numel()] = t.tensor.detach().reshape(-1)
            starts.append(off)
            rows.append(t.tensor.numel() // lay.n)
            cols.append(lay.n)
            nodes.append(lay.start)
            params.append(
                {"key": t.key, "table": "emb_attr", "start": off, "rows": t.tensor.numel(), "col": 0, "width": 1,
                 "shape": list(t.tensor.shape), "dtype": str(t.tensor.dtype)}
            )
            off += t.tensor.numel()
        order = {k: i for i, k in enumerate(key_order)}
        missing = [p["key"] for p in params if p["key"] not in order]
        if missing:
            raise QegraphError(f"{source}: parameter {missing[0]!r} is not in the state_dict")
        params.sort(key=lambda p: order[p["key"]])
        graph.meta["params"] = params
        graph.emb_attr = emb
        graph.etable_start = torch.tensor(starts, dtype=torch.long)
        graph.etable_rows = torch.tensor(rows, dtype=torch.long)
        graph.etable_cols = torch.tensor(cols, dtype=torch.long)
        graph.etable_node = torch.tensor(nodes, dtype=torch.long)
        return graph


__all__ = ["GraphExtras"]
