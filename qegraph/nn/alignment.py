r"""A section of the finite residual group: align canonical networks to a reference (issue 13).

After :func:`~qegraph.symmetry.canonical.canonicalize` only permutations and residual signs act. For
networks of one architecture they can be removed too, by matching every network to a fixed
*reference* network θ_ref of that architecture:

.. math::
    \bar\theta = \pi^*(\hat\theta)\cdot\hat\theta, \qquad
    \pi^*(\hat\theta) = \arg\min_{\pi} \lVert \pi\cdot\hat\theta - \hat\theta_{ref} \rVert
    \quad(\text{layer-wise Hungarian matching, } :func:`~qegraph.symmetry.align.align_batch`).

Since π*(π·θ̂) = π*(θ̂)·π⁻¹, θ̄ depends only on the orbit of θ under the *whole* group of the raw network
(continuous part by the canonical section, finite part by the alignment): exactly invariant wherever the
assignment is unique (generic weights; ties give the same θ̄ only when the tied units are equal). Every
unit then has a consistent identity across the zoo, so a model may use its position and read the
weights as a flat vector (the section's seed map is free). The map is discontinuous where the
assignment changes; it suits zoos whose networks share a basin (e.g. INRs fitted from one shared
initialisation), less so independently initialised networks.

References: the first network of each architecture passed to :meth:`AlignmentSection.set_references`
(the training task does this with the first training graph of each architecture, so every process of
a DDP run uses the same one), or else the first one the module sees. They are saved with the model
(``get_extra_state``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch

from qegraph.errors import QegraphError
from qegraph.graph.parameter_graph import GraphMeta, ParameterGraph
from qegraph.symmetry.align import align_batch


def architecture_key(meta: Any) -> str:
    """A short hash of a graph's architecture record and parameter shapes."""
    record = {"arch": meta.get("arch"), "params": [(p["key"], p["shape"]) for p in meta["params"]]}
    return hashlib.sha1(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


class AlignmentSection(nn.Module):
    """``θ̂ -> θ̄``: every canonical graph of a batch aligned to the reference of its architecture."""

    def __init__(self) -> None:
        super().__init__()
        self.references: dict[str, ParameterGraph] = {}

    def set_references(self, graphs: list[ParameterGraph]) -> None:
        """Use the first of ``graphs`` of each architecture not seen yet as its reference (canonical graphs)."""
        for g in graphs:
            key = architecture_key(g.meta)
            if key not in self.references:
                self.references[key] = g.detach().cpu().clone()  # kept on the CPU; align_batch moves it

    def forward(self, graph: ParameterGraph) -> ParameterGraph:
        examples = graph.to_data_list() if isinstance(graph.meta, list) else None
        metas = graph.meta if examples is not None else [graph.meta]
        keys = [architecture_key(m) for m in metas]
        if any(k not in self.references for k in keys):
            self.set_references([ex for ex, k in zip(examples or [graph], keys) if k not in self.references])
        if len(set(keys)) == 1:
            return align_batch(self.references[keys[0]], graph).act(graph)
        assert examples is not None
        out: list[ParameterGraph | None] = [None] * len(examples)
        for key in dict.fromkeys(keys):
            idx = [i for i, k in enumerate(keys) if k == key]
            sub = Batch.from_data_list([examples[i] for i in idx])
            for i, ex in zip(idx, align_batch(self.references[key], sub).act(sub).to_data_list()):
                out[i] = ex
        return Batch.from_data_list(out)

    def get_extra_state(self) -> dict[str, Any]:
        return {key: {"tensors": {k: v for k, v in g.to_dict().items() if isinstance(v, Tensor)},
                      "meta": json.dumps(g.meta.data)} for key, g in self.references.items()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict):
            raise QegraphError("corrupted alignment references in the model state")
        self.references = {key: ParameterGraph(**v["tensors"], meta=GraphMeta(json.loads(v["meta"])))
                           for key, v in state.items()}


class FlatHead(nn.Module):
    """An MLP on the flattened aligned weights of one architecture: ``[num_graphs, P] -> [num_graphs, out]``."""

    def __init__(self, out_dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LazyBatchNorm1d(eps=1e-8, affine=False)
        self.net = nn.Sequential(nn.LazyLinear(hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, g: ParameterGraph, num_graphs: int) -> Tensor:
        emb = getattr(g, "emb_attr", None)
        parts = [g.x[g.x_mask].view(num_graphs, -1), g.edge_val.view(num_graphs, -1)]
        if emb is not None and emb.numel():
            parts.append(emb.view(num_graphs, -1))
        flat = torch.cat(parts, dim=1)
        if flat.size(0) == 1 and self.training:  # one sample has no batch moments
            self.norm.eval()
            try:
                return self.net(self.norm(flat))
            finally:
                self.norm.train()
        return self.net(self.norm(flat))


__all__ = ["AlignmentSection", "FlatHead", "architecture_key"]
