"""Group-action augmentation: a random element of each graph's own symmetry group (DESIGN §4).

Permutations of hidden units (whole groups of grouped convolutions move together), positive scalings
log-uniform in ``[1, 10**k]`` (ReLU units), sign flips (tanh units), and per-head gauges for attention
(GL matrices for HEADS groups, ±1 diagonals for HEAD_SIGNS groups). The acted network computes the
same function. The action is vectorized over the graphs of a collated PyG batch (no loop over graphs),
which is much cheaper than acting on every graph (``benchmarks/zoo.py`` measures both), so
:class:`ZooDataModule` augments batches.
"""

from __future__ import annotations

import torch
from torch_geometric.data import Batch

from qegraph.errors import QegraphError
from qegraph.graph.parameter_graph import ParameterGraph
from qegraph.symmetry import symmetry_group


def augment(graph: ParameterGraph | Batch, k: float, generator: torch.Generator | None = None) -> ParameterGraph | Batch:
    """``g·graph`` for a random ``g`` of the graph's group, scales in ``[1, 10**k]`` (``k = 0``: only
    permutations, sign flips and GL gauges)."""
    if k < 0:
        raise QegraphError(f"augmentation scale exponent k must be ≥ 0, got {k}")
    element = symmetry_group(graph).sample(generator=generator, scale_range=(1.0, 10.0**k))
    return element.act(graph)
