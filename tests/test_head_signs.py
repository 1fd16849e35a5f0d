"""SymKind.HEAD_SIGNS: attention heads in canonical form, whose residual group is head permutations
× per-coordinate signs A = diag(s_q) (on Q and, since A^{-T} = A, on K) and B = diag(s_v)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import qegraph
from qegraph.graph.types import GLRole, SymKind
from qegraph.nn import StrictGMN
from qegraph.symmetry.gl import apply_gl, head_dims
from qegraph.testing import (
    act_on_features,
    assert_functionally_equal,
    assert_invariant,
    check_group_element,
    compose,
    inverse,
)


def _layer() -> nn.TransformerEncoderLayer:
    torch.manual_seed(0)
    return nn.TransformerEncoderLayer(12, 3, 20, dropout=0.0, batch_first=True).double().eval()


def _signed(graph: qegraph.ParameterGraph) -> qegraph.ParameterGraph:
    """The graph with its HEADS groups relabelled HEAD_SIGNS."""
    out = copy.copy(graph)
    heads = graph.sym_kind == int(SymKind.HEADS)
    assert bool(heads.any())
    out.sym_kind = torch.where(heads, int(SymKind.HEAD_SIGNS), graph.sym_kind)
    return out


def _inputs() -> torch.Tensor:
    return torch.randn(2, 5, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def test_enum_value_is_appended() -> None:
    assert int(SymKind.HEAD_SIGNS) == 6 and int(SymKind.HEADS) == 5


def test_sampled_elements_are_sign_matrices_and_keep_the_function() -> None:
    layer = _layer()
    g = _signed(qegraph.to_graph(layer))
    group = qegraph.symmetry_group(g)
    (j,) = torch.nonzero(g.sym_kind == int(SymKind.HEAD_SIGNS)).flatten().tolist()
    assert head_dims(g)[j] == {int(GLRole.QUERY): 4, int(GLRole.KEY): 4, int(GLRole.VALUE): 4}
    gen = torch.Generator().manual_seed(0)
    flipped = 0
    for _ in range(4):
        el = group.sample(generator=gen, scale_range=(1.0, 1e3))
        check_group_element(el)
        a, b = el.gl[j]
        assert a.shape == b.shape == (3, 4, 4)
        for m in (a, b):
            assert torch.equal(m, torch.diag_embed(torch.diagonal(m, dim1=-2, dim2=-1)))
            assert bool((torch.diagonal(m, dim1=-2, dim2=-1).abs() == 1).all())
        flipped += int(bool((torch.diagonal(a, dim1=-2, dim2=-1) < 0).any()))
        assert_functionally_equal(layer, el.act(g).to_module(template=layer), _inputs(), rtol=1e-10)
    assert flipped > 0


@pytest.mark.parametrize("roles_in,roles_out", [({int(GLRole.QUERY)}, set()), ({int(GLRole.VALUE)}, set())],
                         ids=["signs_on_Q_only", "signs_on_V_only"])
def test_partial_sign_actions_change_the_function(roles_in: set[int], roles_out: set[int]) -> None:
    layer = _layer()
    g = _signed(qegraph.to_graph(layer))
    el = qegraph.symmetry_group(g).sample(generator=torch.Generator().manual_seed(2), permute=False, rescale=False)
    x, ev = apply_gl(g, g.x, g.edge_val, el.gl, roles_in=roles_in, roles_out=roles_out)
    with pytest.raises(AssertionError, match="modules differ"):
        assert_functionally_equal(layer, g.with_features(x=x, edge_val=ev).to_module(template=layer), _inputs(), rtol=1e-6)


def test_testing_helpers_accept_head_signs() -> None:
    g = _signed(qegraph.to_graph(_layer()))
    group = qegraph.symmetry_group(g)
    gen = torch.Generator().manual_seed(3)
    a, b = group.sample(generator=gen), group.sample(generator=gen)
    ab = compose(a, b)
    check_group_element(ab)
    h = torch.randn(g.num_nodes, 3, dtype=torch.float64, generator=gen)
    e = torch.randn(g.num_edges, 3, dtype=torch.float64, generator=gen)
    step = act_on_features(a, g, *act_on_features(b, g, h, e))
    once = act_on_features(ab, g, h, e)
    torch.testing.assert_close(once, step, rtol=1e-12, atol=1e-12)
    back = act_on_features(inverse(a), g, *act_on_features(a, g, h, e))
    torch.testing.assert_close(back, (h, e), rtol=1e-12, atol=1e-12)
    model = StrictGMN(out_dim=2, hidden_dim=8, num_layers=2).double()
    assert assert_invariant(model, g, n=2, generator=gen) <= 1e-9
