"""Draw a ParameterGraph with networkx + matplotlib: unit layers left to right, edges coloured by weight.

Large graphs are subsampled (at most ``max_units`` units per layer, at most ``max_edges`` edges), and
the figure says so. Edges between the kept units are enumerated per edge block (dense, grouped or
diagonal), so drawing a 25M-parameter network never builds its full edge index.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import networkx as nx
import torch
from torch import Tensor
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from qegraph.graph.parameter_graph import ParameterGraph
from qegraph.graph.types import SymKind

_CMAP = matplotlib.colormaps["coolwarm"]


def _edges_between(g: ParameterGraph, nodes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Every edge whose endpoints are both in ``nodes`` (sorted ids): source, target, width and mean
    value over its slots — enumerated block by block from the kept units, never from a full edge index."""
    bt = g.block_table
    out: list[list[Tensor]] = [[], [], [], []]
    for b in range(bt.num_blocks):
        d0, nd, s0, ns = (int(t[b]) for t in (bt.dst, bt.ndst, bt.src, bt.nsrc))
        o = nodes[(nodes >= d0) & (nodes < d0 + nd)] - d0
        i = nodes[(nodes >= s0) & (nodes < s0 + ns)] - s0
        per, rpg, w = int(bt.per[b]), int(bt.rpg[b]), int(bt.width[b])
        oo, ii = o.repeat_interleave(i.numel()), i.repeat(o.numel())
        same = torch.div(oo, rpg, rounding_mode="floor") == torch.div(ii, per, rounding_mode="floor")
        oo, ii = oo[same], ii[same]
        k = oo * per + ii % per
        first = int(bt.voff[b]) + k * w
        vals = g.edge_val[first.unsqueeze(1) + torch.arange(w)].double().mean(1) if w else torch.zeros(k.numel())
        for lst, t in zip(out, (s0 + ii, d0 + oo, torch.full_like(k, w), vals.to(torch.float64))):
            lst.append(t)
    return tuple(torch.cat(lst) if lst else torch.zeros(0) for lst in out)  # type: ignore[return-value]


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
    src, dst, width, value = _edges_between(g, torch.tensor(sorted(keep), dtype=torch.long))
    n_edges_cut = 0
    if src.numel() > max_edges:
        n_edges_cut = src.numel() - max_edges
        sel = torch.randperm(src.numel(), generator=torch.Generator().manual_seed(seed))[:max_edges].sort().values
        src, dst, width, value = src[sel], dst[sel], width[sel], value[sel]
    pairs = list(zip(src.tolist(), dst.tolist()))
    weighted = [e for e, w in zip(pairs, width.tolist()) if w > 0]
    free = [e for e, w in zip(pairs, width.tolist()) if w == 0]
    colors = [float(v) for v, w in zip(value.tolist(), width.tolist()) if w > 0]

    G = nx.DiGraph()
    G.add_nodes_from(keep)
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
    ax.set_title(f"parameter graph: {g.num_params:,} parameters, {g.num_nodes:,} nodes, {g.num_edges:,} edges")
    ax.set_xlabel("layer depth (inputs left, outputs right)" + (f"\nsubsampled: {note}" if note else ""))
    ax.set_ylabel("unit")
    ax.legend(title="node symmetry", loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return note
