"""Draw a ParameterGraph with networkx + matplotlib: unit layers left to right, edges coloured by weight.

Large graphs are subsampled (at most ``max_units`` units per layer, at most ``max_edges`` edges), and
the figure says so.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import networkx as nx
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from qegraph.graph.parameter_graph import ParameterGraph
from qegraph.graph.types import SymKind

_CMAP = matplotlib.colormaps["coolwarm"]


def plot_graph(g: ParameterGraph, path: str | Path, max_units: int = 16, max_edges: int = 4000, seed: int = 0) -> str:
    """Save a drawing of ``g`` to ``path``; returns a note on what was subsampled ('' if nothing)."""
    keep: list[int] = []
    pos: dict[int, tuple[float, float]] = {}
    cut = []
    for u in g.units:
        n = u["n"]
        idx = torch.linspace(0, n - 1, min(n, max_units)).round().long().unique().tolist()
        if len(idx) < n:
            cut.append(f"{u['name']} {len(idx)}/{n}")
        for r, i in enumerate(idx):
            v = u["start"] + i
            keep.append(v)
            pos[v] = (float(u["depth"]), (r - (len(idx) - 1) / 2) / max(len(idx), 1))
    kept = torch.zeros(g.num_nodes, dtype=torch.bool)
    kept[keep] = True
    ei = g.edge_index
    sel = (kept[ei[0]] & kept[ei[1]]).nonzero().flatten()
    n_edges_cut = 0
    if sel.numel() > max_edges:
        n_edges_cut = sel.numel() - max_edges
        perm = torch.randperm(sel.numel(), generator=torch.Generator().manual_seed(seed))[:max_edges]
        sel = sel[perm.sort().values]
    width = g.edge_width[sel]
    attr = g.edge_attr[sel].double()
    mask = torch.arange(g.num_slots).unsqueeze(0) < width.unsqueeze(1)
    value = (attr * mask).sum(1) / width.clamp(min=1)

    G = nx.DiGraph()
    G.add_nodes_from(keep)
    weighted = [(int(ei[0, e]), int(ei[1, e])) for e, w in zip(sel.tolist(), width.tolist()) if w > 0]
    free = [(int(ei[0, e]), int(ei[1, e])) for e, w in zip(sel.tolist(), width.tolist()) if w == 0]
    colors = [float(v) for v, w in zip(value.tolist(), width.tolist()) if w > 0]
    G.add_edges_from(weighted + free)

    fig = Figure(figsize=(max(6, 1.6 * (1 + int(g.layer.max()))), 6))  # no pyplot: any backend, no global state
    ax = fig.add_subplot()
    kinds = [SymKind(int(g.sym_kind[g.sym_group[v]])).name.lower() for v in keep]
    palette = {"fixed": "#444444", "perm": "#1f77b4", "scale": "#2ca02c", "sign": "#d62728", "nonzero": "#9467bd"}
    for kind in sorted(set(kinds)):
        nodes = [v for v, k in zip(keep, kinds) if k == kind]
        nx.draw_networkx_nodes(G, pos, nodelist=nodes, node_size=40, node_color=palette.get(kind, "#ff7f0e"), ax=ax, label=kind)
    vmax = max((abs(c) for c in colors), default=1.0) or 1.0
    edges = nx.draw_networkx_edges(
        G, pos, edgelist=weighted, edge_color=colors, edge_cmap=_CMAP, edge_vmin=-vmax, edge_vmax=vmax,
        arrows=False, width=0.6, alpha=0.7, ax=ax,
    )
    if free:
        nx.draw_networkx_edges(G, pos, edgelist=free, style="dashed", edge_color="#999999", arrows=False, ax=ax)
    if colors and edges is not None:
        fig.colorbar(ScalarMappable(cmap=_CMAP, norm=Normalize(-vmax, vmax)), ax=ax,
                     label="edge weight (mean over kernel/block slots)")
    note_parts = []
    if cut:
        note_parts.append("units shown: " + ", ".join(cut))
    if n_edges_cut:
        note_parts.append(f"{n_edges_cut:,} edges not drawn")
    note = "; ".join(note_parts)
    ax.set_title(f"parameter graph: {g.num_params:,} parameters, {g.num_nodes:,} nodes, {g.edge_index.size(1):,} edges")
    ax.set_xlabel("layer depth (inputs left, outputs right)" + (f"\nsubsampled: {note}" if note else ""))
    ax.set_ylabel("unit")
    ax.legend(title="node symmetry", loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return note
