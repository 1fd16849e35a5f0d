"""Negative controls for the metanetwork tests: perturbations that are *not* symmetries, and a check
that a model really tells them apart.

Why a few gradient steps (:func:`separate`): at initialisation a metanetwork's output is dominated by
terms common to every input (biases of its MLPs), so a genuine non-symmetry — e.g. a GL matrix on the
queries of one head without A^{-T} on its keys — moves the output by only 1e-9…1e-5 of its size,
although it changes the network's function by 10 %. A model that is *blind* to the perturbation
(ignores the head blocks, treats all query coordinates of a layer as one block, …) computes the same
output for both inputs for **every** value of its parameters, so no optimisation can separate them.
:func:`separate` therefore takes gradient steps that increase ``|y(θ′) − y(θ)| / |y(θ)|`` until it
exceeds the margin (1e-3: nine orders above the invariance tolerance of 1e-12), and the tests then
check that the *same* trained parameters are still exactly invariant under the real group.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

import qegraph
from qegraph.graph.parameter_graph import ParameterGraph

#: invariance tolerance (relative to max|y|): float64 round-off is ~1e-16, the README claims ~1e-16
INV_RTOL = 1e-12
#: the smallest relative output change a non-symmetry must cause
MARGIN = 1e-3


def relative_change(model: nn.Module, a: ParameterGraph, b: ParameterGraph) -> float:
    """max|y(b) − y(a)| / max|y(a)|."""
    with torch.no_grad():
        ya, yb = model(a), model(b)
    return float((yb - ya).abs().max() / ya.abs().max())


def separate(model: nn.Module, a: ParameterGraph, b: ParameterGraph, margin: float = MARGIN,
             steps: int = 40, lr: float = 0.05) -> float:
    """Adam steps on −log(‖y(b) − y(a)‖² / ‖y(a)‖²) until max|y(b) − y(a)| ≥ margin · max|y(a)|;
    returns the relative change reached (the model's parameters are changed in place)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rel = 0.0
    with torch.enable_grad():
        for _ in range(steps + 1):
            ya, yb = model(a), model(b)
            rel = float(((yb - ya).abs().max() / ya.abs().max()).detach())
            if rel >= 2 * margin:
                break
            loss = -torch.log((yb - ya).pow(2).sum() / ya.pow(2).sum())
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.zero_grad(set_to_none=True)
    return rel


def permutation_invariance(model: nn.Module, graph: ParameterGraph, n: int = 2, seed: int = 0) -> float:
    """Worst relative output change over ``n`` random elements that only permute (no scalings, no
    sign flips, no GL matrices): the symmetry a permutation-only model (PermGMN) must respect."""
    group = qegraph.symmetry_group(graph)
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for _ in range(n):
        el = group.sample(generator=gen, rescale=False, gl=False)
        assert bool((el.perm != group.identity().perm).any()), "the sampled permutation is the identity"
        worst = max(worst, relative_change(model, graph, el.act(graph)))
    return worst


# ---------------------------------------------------------------------- attention state_dict edits
class Attention:
    """Views into one attention layer of a (cloned) state_dict: W_Q, b_Q, W_K, b_K, W_V, b_V, W_O.

    ``style="torch"``: ``nn.MultiheadAttention`` with a packed ``in_proj_weight`` (rows Q; K; V);
    ``style="bert"``: Hugging Face BERT keys (``attention.self.query.weight`` …)."""

    def __init__(self, sd: dict[str, Tensor], prefix: str, style: str) -> None:
        if style == "torch":
            w, b = sd[f"{prefix}.in_proj_weight"], sd[f"{prefix}.in_proj_bias"]
            d = w.shape[1]
            self.wq, self.wk, self.wv = w[:d], w[d : 2 * d], w[2 * d :]
            self.bq, self.bk, self.bv = b[:d], b[d : 2 * d], b[2 * d :]
            self.wo = sd[f"{prefix}.out_proj.weight"]
        else:
            s = f"{prefix}.attention.self"
            self.wq, self.bq = sd[f"{s}.query.weight"], sd[f"{s}.query.bias"]
            self.wk, self.bk = sd[f"{s}.key.weight"], sd[f"{s}.key.bias"]
            self.wv, self.bv = sd[f"{s}.value.weight"], sd[f"{s}.value.bias"]
            self.wo = sd[f"{prefix}.attention.output.dense.weight"]

    @staticmethod
    def left(m: Tensor, w: Tensor, b: Tensor, rows: slice) -> None:
        """W[rows] ← m W[rows], b[rows] ← m b[rows] (in place)."""
        w[rows] = m @ w[rows]
        b[rows] = m @ b[rows]


def _gl(d: int, seed: int, cond: float = 10.0) -> Tensor:
    from qegraph.symmetry.gl import sample_gl

    return sample_gl(1, d, cond, torch.Generator().manual_seed(seed))[0]


def query_without_key(att: Attention, d: int, head: int = 0, seed: int = 0) -> None:
    """A ∈ GL(d) on the queries of one head, keys untouched (scores q^T A^T k: not a symmetry)."""
    rows = slice(head * d, (head + 1) * d)
    Attention.left(_gl(d, seed), att.wq, att.bq, rows)


def per_head_gl(att: Attention, d: int, heads: int, seed: int = 0) -> None:
    """The real symmetry, for comparison: per head A on Q, A^{-T} on K, B on V, B^{-1} on W_O's columns."""
    for h in range(heads):
        rows = slice(h * d, (h + 1) * d)
        a, b = _gl(d, seed + 2 * h), _gl(d, seed + 2 * h + 1)
        Attention.left(a, att.wq, att.bq, rows)
        Attention.left(torch.linalg.inv(a).T, att.wk, att.bk, rows)
        Attention.left(b, att.wv, att.bv, rows)
        att.wo[:, rows] = att.wo[:, rows] @ torch.linalg.inv(b)


def mix_two_heads(att: Attention, d: int, c: float = 1.0) -> None:
    """M ∈ GL(2d) mixing heads 0 and 1 — queries Q_0 ← Q_0 + c Q_1 — with M^{-T} on their keys
    (K_1 ← K_1 − c K_0). The summed score of the two heads is unchanged, each head's is not: a
    GL(D) matrix on a whole layer is not a symmetry, only one GL(d) matrix per head is."""
    eye = torch.eye(d, dtype=att.wq.dtype)
    zero = torch.zeros(d, d, dtype=att.wq.dtype)
    m = torch.cat([torch.cat([eye, c * eye], 1), torch.cat([zero, eye], 1)])
    rows = slice(0, 2 * d)
    Attention.left(m, att.wq, att.bq, rows)
    Attention.left(torch.linalg.inv(m).T, att.wk, att.bk, rows)


def edited(module: nn.Module, edit: Callable[[dict[str, Tensor]], None]) -> nn.Module:
    """A copy of ``module`` whose state_dict was changed by ``edit`` (in place on a clone)."""
    sd = {k: v.clone() for k, v in module.state_dict().items()}
    edit(sd)
    out = copy.deepcopy(module)
    out.load_state_dict(sd)
    return out.eval()
