"""Testing the testers: every assertion of ``qegraph.testing`` passes on a correct model and fails on a
deliberately broken one (a checker that cannot fail proves nothing)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn
from torch_geometric.data import Batch

import qegraph
from nn_nets import graphs, inputs, modules
from qegraph.nn import QuasiLayer
from qegraph.nn.context import GraphContext
from qegraph.symmetry.group import GroupElement
from qegraph.testing import (assert_functional_identity_preserved, assert_functionally_equal, assert_invariant,
                             assert_quasi_equivariant, compose, inverse)


@pytest.fixture(scope="module")
def g() -> dict[str, qegraph.ParameterGraph]:
    return graphs(modules())


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _sd_values(graph: qegraph.ParameterGraph) -> Tensor:
    return torch.cat([v.flatten().double() for v in graph.to_state_dict().values()])


# ---------------------------------------------------------------------- assert_functionally_equal
def test_functionally_equal_passes_and_fails() -> None:
    m = modules()["relu_mlp"]
    x = inputs("relu_mlp")
    assert assert_functionally_equal(m, m, x) == 0.0
    other = copy.deepcopy(m)
    with torch.no_grad():
        other[4].bias.mul_(1 + 1e-8)  # a relative change of about 1e-8 in the outputs
    with pytest.raises(AssertionError, match="modules differ"):
        assert_functionally_equal(m, other, x, rtol=1e-10)
    assert 1e-10 < assert_functionally_equal(m, other, x, rtol=1e-6) < 1e-6
    with pytest.raises(AssertionError, match="shapes differ"):
        assert_functionally_equal(m, nn.Sequential(m, nn.Linear(3, 2).double()), x)
    with pytest.raises(AssertionError, match="return 1 and 2 outputs"):
        assert_functionally_equal(m, _TwoOutputs(m), x)


class _TwoOutputs(nn.Module):
    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = self.m(x)
        return y, y


# ---------------------------------------------------------------------- assert_invariant
def _network_output(arch: str):  # noqa: ANN202
    """The function the graph's network computes on fixed inputs: exactly invariant by functional identity."""
    tmpl, x = modules()[arch], inputs(arch)
    return lambda graph: graph.to_module(tmpl)(x)


def _weight_sum(graph: qegraph.ParameterGraph) -> Tensor:
    """Σ of every parameter: permutation invariant, not scale or sign invariant."""
    return _sd_values(graph).sum().view(1, 1)


@pytest.mark.parametrize("arch", ["relu_mlp", "tanh_mlp", "transformer"])
def test_invariant_passes_on_an_invariant_function(g: dict, arch: str) -> None:
    assert assert_invariant(_network_output(arch), g[arch], n=3, generator=_gen(), rtol=1e-10) <= 1e-10


@pytest.mark.parametrize("arch", ["relu_mlp", "tanh_mlp", "transformer"])
def test_invariant_fails_on_a_non_invariant_function(g: dict, arch: str) -> None:
    with pytest.raises(AssertionError, match=r"not invariant: sample 0"):
        assert_invariant(_weight_sum, g[arch], n=3, generator=_gen(), scale_range=(1.0, 10.0))
    if arch == "relu_mlp":  # permutations only: the sum is invariant, so the check passes
        assert assert_invariant(_weight_sum, g[arch], n=3, generator=_gen(), scale_range=(1.0, 1.0)) <= 1e-12


def test_invariant_enforces_its_tolerance(g: dict) -> None:
    """A function that is invariant up to 1e-6 of its size passes rtol 1e-5 and fails rtol 1e-9."""
    f = _network_output("relu_mlp")

    def almost(graph: qegraph.ParameterGraph) -> Tensor:
        y = f(graph)
        return y + 1e-6 * y.abs().max() * torch.sin(_weight_sum(graph))

    assert 1e-7 < assert_invariant(almost, g["relu_mlp"], n=2, generator=_gen(), rtol=1e-5) <= 1e-5
    with pytest.raises(AssertionError, match="not invariant"):
        assert_invariant(almost, g["relu_mlp"], n=2, generator=_gen(), rtol=1e-9)


def test_invariant_acts_on_every_graph_of_a_batch(g: dict) -> None:
    names = ["relu_mlp", "tanh_mlp"]
    batch = Batch.from_data_list([g[a] for a in names])

    def per_graph(b: Batch) -> Tensor:
        return torch.cat([_network_output(a)(b.get_example(i)).flatten() for i, a in enumerate(names)]).unsqueeze(0)

    assert assert_invariant(per_graph, batch, n=2, generator=_gen(), rtol=1e-10) <= 1e-10

    def second_graph_sum(b: Batch) -> Tensor:  # only the second graph's weights: fails through it alone
        return _weight_sum(b.get_example(1))

    with pytest.raises(AssertionError, match="not invariant"):
        assert_invariant(second_graph_sum, batch, n=2, generator=_gen())


# ---------------------------------------------------------------------- compose / inverse
@pytest.mark.parametrize("arch", ["relu_mlp", "transformer"])
def test_compose_and_inverse_act_like_the_group(g: dict, arch: str) -> None:
    graph = g[arch]
    group = qegraph.symmetry_group(graph)
    gen = _gen(1)
    a, b = group.sample(generator=gen, scale_range=(1, 100)), group.sample(generator=gen, scale_range=(1, 100))
    ab = compose(a, b).act(graph)
    a_then_b = a.act(b.act(graph))
    torch.testing.assert_close(_sd_values(ab), _sd_values(a_then_b), rtol=1e-12, atol=1e-12)
    back = compose(inverse(a), a).act(graph)
    torch.testing.assert_close(_sd_values(back), _sd_values(graph), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(_sd_values(compose(b, a).act(graph)), _sd_values(ab))  # the order matters


# ---------------------------------------------------------------------- assert_quasi_equivariant
class _LyingAlpha(QuasiLayer):
    """Applies its gauge in forward but reports the identity as α: g′ is then wrong."""

    def alpha(self, h: Tensor, e: Tensor, ctx: GraphContext) -> GroupElement:
        return ctx.group.identity()


class _BiasedBeta(QuasiLayer):
    """Adds a constant to every feature (an additive bias on scaled types is not equivariant)."""

    def forward(self, h: Tensor, e: Tensor, ctx: GraphContext):  # noqa: ANN201
        h, e, a = super().forward(h, e, ctx)
        return h + 0.1, e, a


class _SignedGauge(QuasiLayer):
    """Multiplies the gauge of every other unit of a positive-scaling group by −1 (and reports it in α):
    consistent, but g′ then has negative scales on ReLU units, which are not in the group."""

    @staticmethod
    def _signs(ctx: GraphContext) -> Tensor:
        odd = torch.arange(ctx.num_slots) % 2 == 1
        return torch.where(odd & (ctx.slot_kind == int(qegraph.SymKind.SCALE)), -1.0, 1.0).double()

    def forward(self, h: Tensor, e: Tensor, ctx: GraphContext):  # noqa: ANN201
        from qegraph.nn.gauge import apply_node_scales

        h, e, a = super().forward(h, e, ctx)
        h, e = apply_node_scales(h, e, self._signs(ctx)[ctx.slot].to(h.dtype), ctx)
        return h, e, a

    def alpha(self, h: Tensor, e: Tensor, ctx: GraphContext) -> GroupElement:
        el = super().alpha(h, e, ctx)
        el.scale = el.scale * self._signs(ctx)
        return el


@pytest.mark.parametrize("arch", ["relu_mlp", "transformer"])
def test_quasi_equivariant_passes_on_the_layer(g: dict, arch: str) -> None:
    torch.manual_seed(2)
    assert assert_quasi_equivariant(QuasiLayer(6).double(), g[arch], n=2, generator=_gen(3), rtol=1e-10) <= 1e-10


@pytest.mark.parametrize("arch", ["relu_mlp", "res_cnn", "transformer"])
@pytest.mark.parametrize("broken,match", [(_LyingAlpha, "not quasi-equivariant"), (_BiasedBeta, "not quasi-equivariant"),
                                          (_SignedGauge, "not a group element")])
def test_quasi_equivariant_fails_on_a_broken_layer(g: dict, arch: str, broken: type, match: str) -> None:
    torch.manual_seed(2)
    with pytest.raises(AssertionError, match=match):
        assert_quasi_equivariant(broken(6).double(), g[arch], n=2, generator=_gen(3), rtol=1e-9)


# ---------------------------------------------------------------------- assert_functional_identity_preserved
def _doubled(graph: qegraph.ParameterGraph) -> qegraph.ParameterGraph:
    """θ ↦ 2θ commutes with every permutation and scaling: functional identity is preserved."""
    return graph.with_features(x=2 * graph.x, edge_attr=2 * graph.edge_attr)


def _shifted(graph: qegraph.ParameterGraph) -> qegraph.ParameterGraph:
    """θ ↦ θ + 0.1 on every weight does not commute with scalings: identity is lost."""
    return graph.with_features(edge_attr=graph.edge_attr + 0.1 * graph.edge_mask.to(graph.edge_attr.dtype))


def test_functional_identity_preserved_passes_and_fails(g: dict) -> None:
    graph, tmpl, x = g["relu_mlp"], modules()["relu_mlp"], inputs("relu_mlp")
    kw = dict(n=2, generator=_gen(4), template=tmpl)
    assert assert_functional_identity_preserved(_doubled, graph, x, **kw) <= 1e-10
    with pytest.raises(AssertionError, match="graph 0: decoded networks differ"):
        assert_functional_identity_preserved(_shifted, graph, x, **kw)
    with pytest.raises(ValueError, match="2 inputs for 1 graphs"):
        assert_functional_identity_preserved(_doubled, graph, [x, x], **kw)
