"""Exact invariance / quasi-equivariance of the graph metanetworks (issue 4 acceptance, float64)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

import qegraph
from controls import INV_RTOL, MARGIN, relative_change, separate
from nn_nets import graphs, modules
from qegraph.nn import AlphaBetaGMN, PermGMN, QuasiGauge, QuasiLayer, StrictGMN
from qegraph.nn.context import GraphContext
from qegraph.nn.gauge import apply_node_scales
from qegraph.testing import assert_invariant, assert_quasi_equivariant

ARCHS = ["relu_mlp", "tanh_mlp", "siren", "cnn_relu", "cnn_tanh", "res_cnn", "transformer"]
SCALES = (1.0, 1e4)


@pytest.fixture(scope="module")
def g() -> dict[str, qegraph.ParameterGraph]:
    return graphs(modules())


def _model(cls: type, **kw: object) -> torch.nn.Module:
    torch.manual_seed(1)
    return cls(out_dim=3, hidden_dim=8, num_layers=2, **kw).double()


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(3)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("cls", [AlphaBetaGMN, StrictGMN])
def test_models_invariant(g: dict, arch: str, cls: type) -> None:
    err = assert_invariant(_model(cls), g[arch], n=2, scale_range=SCALES, generator=_gen(), rtol=INV_RTOL)
    assert err <= INV_RTOL


def test_detected_groups_are_nontrivial(g: dict) -> None:
    """The acceptance architectures really exercise every feature type."""
    kinds = {a: set(g[a].sym_kind.tolist()) for a in ARCHS}
    assert int(qegraph.SymKind.SCALE) in kinds["relu_mlp"] and int(qegraph.SymKind.SCALE) in kinds["res_cnn"]
    assert int(qegraph.SymKind.SIGN) in kinds["siren"] and int(qegraph.SymKind.SIGN) in kinds["cnn_tanh"]
    assert int(qegraph.SymKind.HEADS) in kinds["transformer"]


def test_mixed_batch_invariant(g: dict) -> None:
    batch = Batch.from_data_list([g[a] for a in ARCHS])
    model = _model(AlphaBetaGMN)
    err = assert_invariant(model, batch, n=2, scale_range=SCALES, generator=_gen(), rtol=INV_RTOL)
    assert err <= INV_RTOL
    # batching does not change a graph's prediction
    with torch.no_grad():
        single, batched = torch.cat([model(g[a]) for a in ARCHS]), model(batch)
    torch.testing.assert_close(batched, single, rtol=1e-12, atol=1e-12 * float(single.abs().max()))


@pytest.mark.parametrize("arch", ARCHS)
def test_quasi_layer_identity(g: dict, arch: str) -> None:
    torch.manual_seed(2)
    layer = QuasiLayer(6).double()
    assert assert_quasi_equivariant(layer, g[arch], n=2, scale_range=SCALES, generator=_gen(), rtol=1e-10) <= 1e-10


def test_gauge_is_not_trivial(g: dict) -> None:
    """α really moves the features (otherwise the quasi tests would be strict tests in disguise)."""
    torch.manual_seed(2)
    layer = QuasiLayer(6).double()
    gen = _gen()
    for arch in ("relu_mlp", "transformer"):
        graph = g[arch]
        ctx = GraphContext.from_graph(graph)
        h = torch.randn(graph.num_nodes, 6, dtype=torch.float64, generator=gen)
        e = torch.randn(graph.num_edges, 6, dtype=torch.float64, generator=gen)
        el = layer.alpha(h, e, ctx)
        scaled = ctx.slot_kind == int(qegraph.SymKind.SCALE)
        assert float((el.scale[scaled] - 1).abs().min()) > 1e-4  # every ReLU unit is gauged
        assert bool((el.scale[~scaled] == 1).all())
        assert bool(el.gl) == (arch == "transformer")
        for a, b in el.gl.values():  # both A (queries / keys) and B (values) of every head move
            eye = torch.eye(a.size(-1), dtype=a.dtype)
            assert float((a - eye).abs().amax(dim=(1, 2)).min()) > 1e-3
            assert float((b - eye).abs().amax(dim=(1, 2)).min()) > 1e-3


def test_gauge_bounded_by_construction(g: dict) -> None:
    """s = 1 + ε sin γ ∈ [1 − ε, 1 + ε] and ρ = I + (ε/d) sin Γ with ‖(ε/d) sin Γ‖₂ ≤ ε, so every singular
    value of ρ lies in [1 − ε, 1 + ε]: checked against the exact bounds for the ε of the module, for A
    (query), A^{-T} (key) and B (value) blocks, with large features and ε close to 1."""
    graph = g["transformer"]
    gauge = QuasiGauge(6, epsilon_max=1.0).double()
    ctx = GraphContext.from_graph(graph)
    h = 1e3 * torch.randn(graph.num_nodes, 6, dtype=torch.float64, generator=_gen())
    with torch.no_grad():
        gauge.rho.fill_(3.0)
        gauge.rho_gl.fill_(3.0)
    eps, eps_gl = float(gauge.epsilon().detach()), float(gauge.epsilon_gl().detach())
    assert 0.9 < eps < 1.0 and 0.9 < eps_gl < 1.0
    s = gauge.slot_scales(h, ctx)
    assert bool((s >= 1 - eps - 1e-12).all()) and bool((s <= 1 + eps + 1e-12).all())
    roles = set()
    for r, m in zip(ctx.gl.rows, gauge.gl_matrices(h, ctx)):
        sv = torch.linalg.svdvals(m)
        key = r.role == int(qegraph.GLRole.KEY)  # A^{-T}: singular values 1/σ(A)
        lo = torch.where(key, 1 / (1 + eps_gl), 1 - eps_gl).unsqueeze(1)
        hi = torch.where(key, 1 / (1 - eps_gl), 1 + eps_gl).unsqueeze(1)
        assert bool((sv >= lo - 1e-12).all()) and bool((sv <= hi + 1e-12).all())
        roles |= set(r.role.tolist())
        eye = torch.eye(r.d, dtype=m.dtype)
        assert float((m - eye).abs().amax(dim=(1, 2)).max()) > 1e-2  # the bound is not met by ρ = I
    assert roles == {int(qegraph.GLRole.QUERY), int(qegraph.GLRole.KEY), int(qegraph.GLRole.VALUE)}
    ffn = ctx.slot_kind == int(qegraph.SymKind.SCALE)
    assert float((s[ffn] - 1).abs().max()) > 1e-3  # the ReLU FFN units are gauged
    assert bool((s[~ffn] == 1).all())  # fixed stream, heads (GL instead): no scale


@pytest.mark.parametrize("arch", ["relu_mlp", "transformer"])
def test_fixed_epsilon_gauge(g: dict, arch: str) -> None:
    """A fixed ε: no ρ is learned, the gauge is still non-trivial, the model still exactly invariant."""
    model = _model(AlphaBetaGMN, epsilon=0.9)
    assert not any(n.endswith(("rho", "rho_gl")) for n, _ in model.named_parameters())
    assert assert_invariant(model, g[arch], n=2, scale_range=SCALES, generator=_gen(), rtol=INV_RTOL) <= INV_RTOL
    gauge = QuasiGauge(6, epsilon=0.9).double()
    ctx = GraphContext.from_graph(g[arch])
    h = torch.randn(g[arch].num_nodes, 6, dtype=torch.float64, generator=_gen())
    if arch == "relu_mlp":
        s = gauge.slot_scales(h, ctx)
        assert float((s - 1).abs().max()) > 1e-2 and bool((s > 0.1 - 1e-12).all())
    else:
        m = gauge.gl_matrices(h, ctx)
        assert any(float((a - torch.eye(a.size(-1))).abs().max()) > 1e-3 for a in m)
    with pytest.raises(qegraph.QegraphError, match="fixed epsilon"):
        QuasiGauge(6, epsilon=1.0)


def test_sign_units_get_no_scale(g: dict) -> None:
    graph = g["siren"]
    ctx = GraphContext.from_graph(graph)
    s = QuasiGauge(6).double().slot_scales(torch.randn(graph.num_nodes, 6, dtype=torch.float64, generator=_gen()), ctx)
    assert bool((s == 1).all())


def test_strict_is_quasi_without_gauge() -> None:
    quasi, strict = _model(AlphaBetaGMN), _model(StrictGMN)
    assert _model(AlphaBetaGMN, gauge=False).state_dict().keys() == strict.state_dict().keys()
    extra = set(quasi.state_dict()) - set(strict.state_dict())
    assert extra and all(".gauge." in k for k in extra)
    assert set(strict.state_dict()) <= set(quasi.state_dict())


# ---------------------------------------------------------------------- negative tests
class PerChannelGauge(QuasiGauge):
    """Wrong on purpose: s_{v,c} = 1 + ε sin(γ_v + asinh h_{v,c}), a different scale for every channel
    (as in the published per-channel α; not a group element)."""

    def forward(self, h: Tensor, e: Tensor, ctx: GraphContext) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        gauged = (self.slot_scales(h, ctx)[ctx.slot] != 1).unsqueeze(1)
        gamma = self.gamma(self._inputs(h, ctx))[:, :1] + torch.asinh(h)
        s = torch.where(gauged, 1 + self.epsilon() * torch.sin(gamma), torch.ones_like(h))
        h, e = apply_node_scales(h, e, s, ctx)
        return h, e, s, []


class FixedUnitGauge(QuasiGauge):
    """Wrong on purpose: the correct per-unit scales, plus scales on fixed (input/output) units whose
    γ also reads the graph's mean feature (a fixed unit has no continuous symmetry to absorb them)."""

    def forward(self, h: Tensor, e: Tensor, ctx: GraphContext) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        gamma = self.gamma(self._inputs(h, ctx))[:, 0]
        context = scatter(torch.asinh(h).mean(1), ctx.batch, dim=0, reduce="mean")[ctx.batch]
        s = torch.where(ctx.fixed, 1 + self.epsilon() * torch.sin(gamma + context), self.slot_scales(h, ctx)[ctx.slot])
        h, e = apply_node_scales(h, e, s, ctx)
        return h, e, s, []


@pytest.mark.parametrize("arch", ["relu_mlp", "cnn_relu"])
@pytest.mark.parametrize("bad", [PerChannelGauge, FixedUnitGauge])
def test_wrong_gauge_breaks_invariance(g: dict, arch: str, bad: type) -> None:
    model = _model(AlphaBetaGMN)
    for layer in model.backbone.layers:
        broken = bad(8).double()
        broken.load_state_dict(layer.gauge.state_dict())
        layer.gauge = broken
    # the correct gauge is invariant for every parameter value; the broken one can be driven to ≥ 1e-3
    moved = qegraph.symmetry_group(g[arch]).sample(generator=_gen(), scale_range=SCALES).act(g[arch])
    assert separate(model, g[arch], moved) >= MARGIN


def test_perm_gmn_only_permutation_invariant(g: dict) -> None:
    model = _model(PermGMN)
    graph = g["relu_mlp"]
    scaled = qegraph.symmetry_group(graph).sample(generator=_gen(), scale_range=SCALES, permute=False).act(graph)
    assert separate(model, graph, scaled) >= MARGIN  # scalings are not symmetries of PermGMN …
    # … permutations are, for the same parameters
    assert assert_invariant(model, graph, n=2, scale_range=(1.0, 1.0), generator=_gen(), rtol=INV_RTOL) <= INV_RTOL


# ---------------------------------------------------------------------- sign-only units (SIREN, tanh)
def _sign_groups(graph: qegraph.ParameterGraph) -> list[int]:
    return torch.nonzero(graph.sym_kind == int(qegraph.SymKind.SIGN)).flatten().tolist()


def test_feature_type_join() -> None:
    """The type of an edge is the join of its endpoints' types (not a max: SCALE, SIGN incomparable)."""
    from qegraph.nn.types import FeatureType as T
    from qegraph.nn.types import join_feature_types

    expect = {
        (T.INVARIANT, T.INVARIANT): T.INVARIANT, (T.INVARIANT, T.SCALE): T.SCALE, (T.INVARIANT, T.SIGN): T.SIGN,
        (T.INVARIANT, T.NONZERO): T.NONZERO, (T.SCALE, T.SCALE): T.SCALE, (T.SIGN, T.SIGN): T.SIGN,
        (T.SCALE, T.SIGN): T.NONZERO, (T.SCALE, T.NONZERO): T.NONZERO, (T.SIGN, T.NONZERO): T.NONZERO,
        (T.NONZERO, T.NONZERO): T.NONZERO,
    }
    for t in T:
        expect[(t, T.GL)] = T.GL
    for (a, b), t in expect.items():
        for x, y in ((a, b), (b, a)):
            assert int(join_feature_types(torch.tensor([int(x)]), torch.tensor([int(y)]))) == int(t), (x, y)


@pytest.mark.parametrize("arch", ["siren", "tanh_mlp", "cnn_tanh"])
def test_sign_units_get_sign_type(g: dict, arch: str) -> None:
    from qegraph.nn import FeatureType

    graph = g[arch]
    ctx = GraphContext.from_graph(graph)
    sign = (graph.sym_kind == int(qegraph.SymKind.SIGN))[graph.sym_group]
    assert bool(sign.any())
    assert bool((ctx.node_ftype[sign] == FeatureType.SIGN).all())
    assert bool((ctx.node_ftype[~sign] != FeatureType.SIGN).all())
    if arch in ("siren", "tanh_mlp"):  # only FIXED and SIGN units: every edge is SIGN
        assert bool((ctx.edge_ftype == FeatureType.SIGN).all())
        assert ctx.node_types == {int(FeatureType.INVARIANT), int(FeatureType.SIGN)}


def _rescale_one_unit(graph: qegraph.ParameterGraph, q: float) -> qegraph.ParameterGraph:
    """Unit 3 of the last SIGN group: incoming weights and bias × q, outgoing weights × 1/q (a positive
    rescaling, a symmetry of a ReLU unit but not of a sine unit)."""
    group = qegraph.symmetry_group(graph)
    el = group.identity()
    el.scale[int(group.ptr[_sign_groups(graph)[-1]]) + 3] = q
    return el.act(graph)


@pytest.mark.parametrize("cls", [AlphaBetaGMN, StrictGMN])
def test_sign_units_not_scale_invariant(g: dict, cls: type) -> None:
    """A positive rescaling of one SIREN hidden unit changes the network function, so it must change
    the model output (a SIGN unit must not be canonicalized like a nonzero-scale one, x/‖x‖)."""
    from nn_nets import inputs

    graph = g["siren"]
    moved = _rescale_one_unit(graph, 2.0)
    tmpl = modules()["siren"]
    with pytest.raises(AssertionError, match="modules differ"):
        qegraph.testing.assert_functionally_equal(graph.to_module(tmpl), moved.to_module(tmpl), inputs("siren"))
    model = _model(cls)
    # with SIGN units typed NONZERO (u ⊙ Pu) the difference was exactly 0, whatever the parameters
    assert relative_change(model, graph, moved) > 0
    assert separate(model, graph, moved) >= MARGIN  # see controls.py: a few steps, then ≥ 1e-3
    # sign flips and permutations remain exact symmetries for the same parameters
    assert assert_invariant(model, graph, n=2, scale_range=SCALES, generator=_gen(), rtol=INV_RTOL) <= INV_RTOL


def test_sign_invariants_keep_magnitude(g: dict) -> None:
    """Two SIRENs that differ by scaling the weights and biases of one hidden layer by 1.1: the
    canonicalized node and edge invariants after the encoder differ (they would agree to rounding
    if SIGN units were canonicalized by x/‖x‖)."""
    from qegraph.nn import FeatureType
    from qegraph.nn.types import edge_invariants, node_invariants

    graph = g["siren"]
    layer = (graph.sym_group == _sign_groups(graph)[-1])
    into = layer[graph.edge_index[1]]
    moved = graph.with_features(x=torch.where(layer.unsqueeze(1), 1.1 * graph.x, graph.x),
                                edge_attr=torch.where(into.unsqueeze(1), 1.1 * graph.edge_attr, graph.edge_attr))
    model = _model(AlphaBetaGMN)
    canon = model.backbone.layers[0].beta.canon
    ctx = GraphContext.from_graph(graph)
    sign = ctx.node_ftype == FeatureType.SIGN
    with torch.no_grad():
        out = []
        for gr in (graph, moved):
            c = GraphContext.from_graph(gr)
            h, e = model.backbone.node_encoder(c), model.backbone.edge_encoder(c)
            out.append((node_invariants(canon, h, e, c), edge_invariants(canon, h, e, c)))
    (ih0, ie0), (ih1, ie1) = out
    rel_h = float((ih0[sign] - ih1[sign]).abs().max() / ih0[sign].abs().max())
    rel_e = float((ie0[into] - ie1[into]).abs().max() / ie0[into].abs().max())
    assert rel_h > 1e-3 and rel_e > 1e-3
    assert torch.equal(ih0[~layer], ih1[~layer])  # other units untouched
    # the invariant is homogeneous of degree 1: ι(1.1 h) = 1.1 ι(h) on the rescaled layer
    assert torch.allclose(ih1[layer], 1.1 * ih0[layer], rtol=1e-12, atol=0)


@pytest.mark.parametrize("cls", [AlphaBetaGMN, StrictGMN])
def test_mixed_scale_and_sign_units_invariant(cls: type) -> None:
    """ReLU units (SCALE) feeding tanh units (SIGN): the edges between them are NONZERO (σ_v / q_u),
    and the models stay exactly invariant."""
    from qegraph.nn import FeatureType

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.Tanh(),
                              torch.nn.Linear(8, 3)).double()
    graph = qegraph.to_graph(net)
    ctx = GraphContext.from_graph(graph)
    assert {int(FeatureType.SCALE), int(FeatureType.SIGN)} <= ctx.node_types
    fu, fv = ctx.node_ftype[graph.edge_index[0]], ctx.node_ftype[graph.edge_index[1]]
    between = (fu == FeatureType.SCALE) & (fv == FeatureType.SIGN)
    assert bool(between.any()) and bool((ctx.edge_ftype[between] == FeatureType.NONZERO).all())
    assert assert_invariant(_model(cls), graph, n=2, scale_range=SCALES, generator=_gen(), rtol=INV_RTOL) <= INV_RTOL
