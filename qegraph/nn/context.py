"""GraphContext: the index bookkeeping of one batch, computed once per forward pass.

Every layer of a metanetwork reuses the same gathers and segment ids, so they are derived here once:
feature types of nodes and edges, inverse in/out degrees (mean aggregation as a sum times a
precomputed factor), the reversed edge index (messages against edge direction), the *unit slot* of
every node (``ptr[sym_group] + sym_member``: nodes tied by residual additions or norms, and the d
coordinates of a head, share one slot and hence one gauge element), and the (graph, depth)
segments used for per-layer statistics and pooling, and the rows of each feature type (so that
canonicalizations are computed only on the rows that need them, never for absent types). The
graph stores ragged edge values and no per-edge index; ``edge_index``, the per-edge type and width,
and the edge values padded to the batch's largest width (``edge_attr [E, S]``, zeros in invalid slots)
are derived here once per forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch_geometric.utils import degree

from qegraph.graph.parameter_graph import ParameterGraph
from qegraph.graph.types import EdgeType, SymKind
from qegraph.nn.gl import GLStructure
from qegraph.nn.types import FeatureType, TypedRows, group_feature_types, join_feature_types
from qegraph.symmetry.group import SymmetryGroup


@dataclass
class GraphContext:
    graph: ParameterGraph
    num_nodes: int
    num_graphs: int
    edge_index: Tensor  # [2, E]
    edge_attr: Tensor  # [E, S] edge values padded to the batch's largest width S
    edge_type: Tensor  # [E] EdgeType
    edge_width: Tensor  # [E] valid slots of every edge
    rev_index: Tensor  # [2, E], edge_index flipped (same edge order)
    batch: Tensor  # [N] graph of each node
    edge_batch: Tensor  # [E] graph of each edge
    node_ftype: Tensor  # [N] FeatureType
    edge_ftype: Tensor  # [E] FeatureType: join of the endpoints' types (types.join_feature_types)
    fixed: Tensor  # [N] bool, node of a FIXED group
    inv_in_deg: Tensor  # [N, 1]
    inv_out_deg: Tensor  # [N, 1]
    slot: Tensor  # [N] global unit slot (one group member)
    num_slots: int
    slot_kind: Tensor  # [num_slots] SymKind of the slot's group
    layer_seg: Tensor  # [N] id of the (graph, depth) segment
    num_layer_seg: int
    layer_seg_graph: Tensor  # [num_layer_seg] graph of each segment
    param_free: Tensor  # [E] bool, edge without parameters whose endpoints are tied (ratio 1)
    group: SymmetryGroup
    gl: GLStructure | None  # attention-head blocks and rows (None: no GL features)
    node_rows: TypedRows  # node ids by FeatureType
    edge_rows: TypedRows  # edge ids by FeatureType
    node_types: frozenset[int] = frozenset(int(t) for t in FeatureType)  # FeatureTypes occurring in node_ftype
    edge_types: frozenset[int] = frozenset(int(t) for t in FeatureType)  # ... in edge_ftype

    @property
    def edge_mask(self) -> Tensor:
        """``[E, S]`` True where a slot of ``edge_attr`` holds a parameter."""
        slots = torch.arange(self.edge_attr.size(1), device=self.edge_width.device)
        return slots.unsqueeze(0) < self.edge_width.unsqueeze(1)

    @classmethod
    def from_graph(cls, graph: ParameterGraph, perm_only: bool = False) -> GraphContext:
        n = int(graph.num_nodes)
        ei = graph.edge_index
        dev = ei.device
        etype, width = graph.edge_type, graph.edge_width
        batch = getattr(graph, "batch", None)
        if batch is None:
            batch = torch.zeros(n, dtype=torch.long, device=dev)
            num_graphs = 1
        else:
            num_graphs = int(graph.num_graphs)
        gft = group_feature_types(graph.sym_kind, perm_only)
        node_ftype = gft[graph.sym_group]
        edge_ftype = join_feature_types(node_ftype[ei[0]], node_ftype[ei[1]])
        one = torch.ones(1, dtype=graph.x.dtype, device=dev)
        in_deg = degree(ei[1], n, dtype=graph.x.dtype)
        out_deg = degree(ei[0], n, dtype=graph.x.dtype)
        sizes = graph.sym_size.to(dev)
        ptr = torch.cumsum(sizes, 0) - sizes
        slot = ptr[graph.sym_group] + graph.sym_member
        depth = graph.layer
        key = batch * (int(depth.max()) + 1 if n else 1) + depth
        seg_keys, layer_seg = torch.unique(key, return_inverse=True)
        param_free = (width == 0) & (etype != int(EdgeType.QK_PAIR))
        node_rows, edge_rows = TypedRows.of(node_ftype), TypedRows.of(edge_ftype)
        return cls(
            node_types=node_rows.present,
            edge_types=edge_rows.present,
            node_rows=node_rows,
            edge_rows=edge_rows,
            graph=graph,
            num_nodes=n,
            num_graphs=num_graphs,
            edge_index=ei,
            edge_attr=graph.edge_attr,
            edge_type=etype,
            edge_width=width,
            rev_index=ei.flip(0),
            batch=batch,
            edge_batch=batch[ei[0]],
            node_ftype=node_ftype,
            edge_ftype=edge_ftype,
            fixed=graph.sym_kind[graph.sym_group] == int(SymKind.FIXED),
            inv_in_deg=(one / in_deg.clamp(min=1)).unsqueeze(1),
            inv_out_deg=(one / out_deg.clamp(min=1)).unsqueeze(1),
            slot=slot,
            num_slots=int(sizes.sum()),
            slot_kind=torch.repeat_interleave(graph.sym_kind, sizes),
            layer_seg=layer_seg,
            num_layer_seg=int(seg_keys.numel()),
            layer_seg_graph=torch.div(seg_keys, int(depth.max()) + 1 if n else 1, rounding_mode="floor"),
            param_free=param_free,
            group=SymmetryGroup.of(graph),
            gl=None if perm_only else GLStructure.from_graph(graph, ei, etype),
        )
