r"""Per-layer statistics of canonical weights: invariant features for a skip path and for StatNN.

For every graph and depth ℓ (the ``layer`` of the target units): the statistics

.. math::
    \mathrm{stats}(S) = \big(\mathrm{mean}, \mathrm{var}, q_0, q_{.25}, q_{.5}, q_{.75}, q_1\big)(S)

of S = {ev(w) : w a value of an edge into depth ℓ} and, for each of the 5 node columns (bias, norm γ,
β, running mean/var), of {ev(x_v) : v at depth ℓ, the column is used}; ev(w) = w, or |w| on values
that flip with a residual sign (edges and units of odd parity, see :mod:`qegraph.nn.section`). On a
canonical graph these are invariant to the whole group of the raw network: the section removes the
continuous part, sorting (quantiles) and averaging remove permutations, |·| removes the signs.

Output: ``[num_graphs, max_depth, 42]`` (zeros for depths a graph does not have) and a presence mask,
so that graphs of different architectures share a batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from qegraph.errors import QegraphError
from qegraph.graph.parameter_graph import ParameterGraph
from qegraph.graph.types import NODE_SLOTS
from qegraph.nn.section import SectionContext
from qegraph.nn.stats import segment_mean_var, segment_quantiles

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
STATS_PER_SET = 2 + len(QUANTILES)
STATS_PER_DEPTH = STATS_PER_SET * (1 + len(NODE_SLOTS))


def _stats(vals: Tensor, seg: Tensor, num_seg: int) -> Tensor:
    v = vals.unsqueeze(1)
    mean, var = segment_mean_var(v, seg, num_seg)
    q = segment_quantiles(v, seg, num_seg, QUANTILES).squeeze(2)
    return torch.cat([mean, var, q], dim=1)


def depth_statistics(graph: ParameterGraph, ctx: SectionContext, max_depth: int) -> tuple[Tensor, Tensor]:
    """``([G, max_depth, 42], [G, max_depth] bool)``: the statistics of the module docstring."""
    g = ctx.num_graphs
    depth = graph.layer
    if int(depth.max()) >= max_depth:
        raise QegraphError(f"a network has {int(depth.max()) + 1} unit depths; build the model with "
                           f"stats_max_depth >= {int(depth.max()) + 1}")
    node_seg = ctx.batch * max_depth + depth  # [N]
    num_seg = g * max_depth
    # edge values: ragged, one segment per (graph, depth of the target)
    width = ctx.edge_width
    vals = graph.edge_val.to(graph.x.dtype)
    edge_of = torch.repeat_interleave(torch.arange(width.numel(), device=width.device), width)
    dst = ctx.edge_index[1]
    odd_v = ctx.edge_odd.squeeze(1)[edge_of]
    ev = vals + odd_v * (vals.abs() - vals)
    e_stats = _stats(ev, node_seg[dst][edge_of], num_seg)  # [num_seg, 7]
    # node columns
    s = len(NODE_SLOTS)
    x = graph.x + ctx.node_odd * (graph.x.abs() - graph.x)
    mask = graph.x_mask
    col_seg = (node_seg.unsqueeze(1) * s + torch.arange(s, device=x.device)).expand_as(mask)
    n_stats = _stats(x[mask], col_seg[mask], num_seg * s).view(num_seg, s * STATS_PER_SET)
    present = torch.zeros(num_seg, dtype=torch.bool, device=x.device)
    present[node_seg] = True
    out = torch.cat([e_stats, n_stats], dim=1) * present.unsqueeze(1)
    return out.view(g, max_depth, STATS_PER_DEPTH), present.view(g, max_depth)


__all__ = ["STATS_PER_DEPTH", "depth_statistics"]
