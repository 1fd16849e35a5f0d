"""Baselines that read the same ParameterGraph batches as the graph metanetworks.

* :class:`FlatMLP`: an MLP on the flattened parameters of one fixed architecture, y = MLP(vec θ). vec θ
  holds the edge values ``edge_val``, every valid column of ``x`` (and embedding tables), a fixed
  reordering of ``torch.cat`` of the state_dict values, taken from the batch's tensors with one
  reshape and one boolean index.
* :class:`StatNN` (Unterthiner et al., 2020): y = MLP([stats(W_1), …, stats(b_1), …]) with
  stats = (mean, variance, min, q25, median, q75, max) of every weight tensor (edge block) and of every
  node-parameter column (bias, norm γ, β, running stats) of every layer. With ``standardize=True``
  (default) the statistics pass a ``BatchNorm1d(affine=False)`` first: statistics of one zoo differ
  between networks by 0.1–10 % of their common value, far below what the MLP resolves at its initial scale.
  With ``quantile=True`` they pass their training CDF instead (:mod:`qegraph.nn.quantile_norm`).

Neither is invariant to the networks' symmetries; they are the non-equivariant references — except
``StatNN(canonical=True)``, which reads the canonical form θ̂ (:func:`qegraph.canonicalize`) and takes
|w| of values that flip with a residual sign (tanh/sin units, head coordinate pairs; see
:mod:`qegraph.nn.section`): per-tensor statistics of θ̂ are then invariant to the whole group of the raw
network (the section removes scalings and GL gauges, statistics are permutation invariant, |·| removes
the signs) — the strongest simple invariant baseline.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qegraph.errors import QegraphError
from qegraph.graph.parameter_graph import ParameterGraph
from qegraph.graph.types import NODE_SLOTS
from qegraph.nn.encoders import mlp
from qegraph.nn.quantile_norm import QuantileNorm
from qegraph.nn.stats import segment_mean_var, segment_quantiles

_QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


def _num_graphs(graph: ParameterGraph) -> tuple[int, Tensor]:
    batch = getattr(graph, "batch", None)
    if batch is None:
        return 1, torch.zeros(graph.num_nodes, dtype=torch.long, device=graph.x.device)
    return int(graph.num_graphs), batch


def _per_graph(counts: Tensor, what: str, model: str) -> int:
    if counts.numel() and bool((counts != counts[0]).any()):
        raise QegraphError(
            f"{model} needs one fixed architecture, but the graphs of this batch have different numbers of "
            f"{what} ({sorted(set(counts.tolist()))}); use QuasiGMN/StrictGMN/PermGMN for mixed architectures"
        )
    return int(counts[0]) if counts.numel() else 0


def _head(in_dim: int | None, hidden_dim: int, num_layers: int, out_dim: int) -> nn.Sequential:
    first: nn.Module = nn.LazyLinear(hidden_dim) if in_dim is None else nn.Linear(in_dim, hidden_dim)
    return nn.Sequential(first, nn.ReLU(), *mlp([hidden_dim] * num_layers + [out_dim], act=nn.ReLU))


class FlatMLP(nn.Module):
    """MLP on the flattened weights of one fixed architecture. ``in_dim=None``: inferred at the first call."""

    def __init__(self, *, out_dim: int = 1, hidden_dim: int = 256, num_layers: int = 2, in_dim: int | None = None) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.net = _head(in_dim, hidden_dim, num_layers, out_dim)

    @staticmethod
    def flatten(graph: ParameterGraph) -> Tensor:
        """``[num_graphs, P]``: every parameter of every graph (same order for each graph)."""
        g, batch = _num_graphs(graph)
        n = _per_graph(torch.bincount(batch, minlength=g), "nodes", "FlatMLP")
        nblk = _per_graph(torch.bincount(batch[graph.eblock_dst], minlength=g), "weight tensors", "FlatMLP")
        xmask = graph.x_mask.reshape(g, -1)
        layout = torch.stack([graph.eblock_size, graph.eblock_width]).reshape(2, g, nblk)
        if bool((layout != layout[:, :1]).any()) or bool((xmask != xmask[:1]).any()):
            raise QegraphError("FlatMLP needs one fixed architecture: the graphs' parameter layouts differ")
        parts = [graph.edge_val.reshape(g, -1), graph.x.reshape(g, n * len(NODE_SLOTS))[:, xmask[0]]]
        emb = getattr(graph, "emb_attr", None)
        if emb is not None and emb.numel():
            parts.append(emb.reshape(g, -1))
        return torch.cat(parts, dim=1)

    def forward(self, graph: ParameterGraph) -> Tensor:
        flat = self.flatten(graph)
        if self.in_dim is not None and flat.size(1) != self.in_dim:
            raise QegraphError(f"FlatMLP was built for {self.in_dim} parameters, the batch has {flat.size(1)} per network")
        return self.net(flat)


class StatNN(nn.Module):
    """Per-layer weight statistics → MLP (Unterthiner et al.). ``in_dim=None``: inferred at the first call.
    ``standardize``: z-score every statistic with batch (training) / running (eval) moments first.
    ``canonical``: statistics of the canonical form, exactly invariant (module docstring).
    ``quantile``: map every statistic through its training CDF (:class:`~qegraph.nn.quantile_norm.QuantileNorm`,
    fitted by the training task at fit start) instead of standardizing it (``standardize`` is then unused)."""

    def __init__(self, *, out_dim: int = 1, hidden_dim: int = 256, num_layers: int = 2, in_dim: int | None = None,
                 standardize: bool = True, canonical: bool = False, quantile: bool = False) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.canonical = canonical
        norm: nn.Module
        if quantile:
            norm = QuantileNorm(in_dim)
        elif not standardize:
            norm = nn.Identity()
        else:
            norm = nn.LazyBatchNorm1d(eps=1e-8, affine=False) if in_dim is None else nn.BatchNorm1d(in_dim, eps=1e-8, affine=False)
        self.norm = norm
        self.net = _head(in_dim, hidden_dim, num_layers, out_dim)

    @staticmethod
    def _stats(vals: Tensor, seg: Tensor, num_seg: int) -> Tensor:
        v = vals.unsqueeze(1)
        mean, var = segment_mean_var(v, seg, num_seg)
        q = segment_quantiles(v, seg, num_seg, _QUANTILES).squeeze(2)
        return torch.cat([mean, var, q], dim=1)  # [num_seg, 7]

    @classmethod
    def features(cls, graph: ParameterGraph) -> Tensor:
        """``[num_graphs, 7·(blocks + 5·depths)]`` statistics of each weight tensor and node column."""
        g, batch = _num_graphs(graph)
        dev = graph.x.device
        nblk = graph.eblock_size.numel()
        blk_graph = batch[graph.eblock_dst]
        per_blk = _per_graph(torch.bincount(blk_graph, minlength=g), "weight tensors", "StatNN")
        blk = torch.repeat_interleave(torch.arange(nblk, device=dev), graph.eblock_size * graph.eblock_width)
        w_stats = cls._stats(graph.edge_val, blk, nblk)
        depth = graph.layer
        key = batch * (int(depth.max()) + 1) + depth
        keys, layer_seg = torch.unique(key, return_inverse=True)
        per_layer = _per_graph(torch.bincount(torch.div(keys, int(depth.max()) + 1, rounding_mode="floor"),
                                              minlength=g), "layers", "StatNN")
        s = len(NODE_SLOTS)
        col_seg = (layer_seg.unsqueeze(1) * s + torch.arange(s, device=dev)).expand_as(graph.x_mask)
        n_stats = cls._stats(graph.x[graph.x_mask], col_seg[graph.x_mask], keys.numel() * s)
        return torch.cat([w_stats.reshape(g, per_blk * 7), n_stats.reshape(g, per_layer * s * 7)], dim=1)

    def forward(self, graph: ParameterGraph) -> Tensor:
        feats = self.features(_even_canonical(graph) if self.canonical else graph)
        if self.in_dim is not None and feats.size(1) != self.in_dim:
            raise QegraphError(f"StatNN was built for {self.in_dim} statistics, the batch gives {feats.size(1)}")
        return self.net(self.norm(feats))


def _even_canonical(graph: ParameterGraph) -> ParameterGraph:
    """θ̂ with |·| on the values that flip with a residual sign (so its statistics are invariant)."""
    from qegraph.nn.section import SectionContext, canonical_input, even_view

    g = canonical_input(graph)
    ctx = SectionContext.of(g)
    width = g.edge_width
    edge_of = torch.repeat_interleave(torch.arange(width.numel(), device=width.device), width)
    odd = ctx.edge_odd.squeeze(1)[edge_of].unsqueeze(1)
    return g.with_features(x=even_view(g.x, ctx.node_odd), edge_val=even_view(g.edge_val.unsqueeze(1), odd).squeeze(1))
