"""Human-readable summary of a ParameterGraph (used by ``qegraph convert`` and ``qegraph inspect``)."""

from __future__ import annotations

from collections import Counter

import torch

from qegraph.graph.parameter_graph import ParameterGraph
from qegraph.graph.types import EdgeType, NodeType, SymKind


def graph_nbytes(g: ParameterGraph) -> int:
    """Bytes held by the graph's tensors in memory."""
    return sum(v.numel() * v.element_size() for v in g.to_dict().values() if isinstance(v, torch.Tensor))


def _enum_name(enum: type, value: int) -> str:
    try:
        return enum(value).name.lower()
    except ValueError:
        return str(value)


def summarize(g: ParameterGraph) -> str:
    """Parameters, nodes and edges by type, and the detected symmetry of every unit layer."""
    n_params = g.num_params
    nodes = Counter(_enum_name(NodeType, int(t)) for t in g.node_type.tolist())
    edges: Counter[str] = Counter()
    for t, size in zip(g.eblock_type.tolist(), g.eblock_size.tolist()):
        edges[_enum_name(EdgeType, t)] += size
    lines = [
        f"parameters : {n_params:,} in {len(g.meta['params'])} tensors (graph dtype {str(g.x.dtype).replace('torch.', '')})",
        f"nodes      : {g.num_nodes:,} (" + ", ".join(f"{k} {v:,}" for k, v in sorted(nodes.items())) + ")",
        f"edges      : {g.num_edges:,} (" + ", ".join(f"{k} {v:,}" for k, v in sorted(edges.items()))
        + f"), {g.edge_val.numel():,} edge values (1 to {g.num_slots} per edge)",
        f"memory     : {graph_nbytes(g) / 2**20:.2f} MiB in memory",
        "symmetry per unit layer:",
    ]
    width = max([len(u["name"]) for u in g.units] + [5])
    blocks = getattr(g, "sym_blocks", None)
    couple = getattr(g, "sym_couple", None)
    for u in g.units:
        j = u["group"]
        kind = _enum_name(SymKind, int(g.sym_kind[j]))
        if blocks is not None and int(blocks[j]) == 0:
            kind += " (no permutation: conflicting grouped-conv structures)"
        elif blocks is not None and int(blocks[j]) > 1:
            kind += f", permutations in {int(blocks[j])} blocks (class of group {int(couple[j])})"
        lines.append(f"  {u['name']:<{width}}  {u['n']:>6} {u['type']:<8} group {j:>3}: {kind}")
    return "\n".join(lines)
