"""QuasiGMN on the canonical section (issue 13): exact invariance to the raw group, negative controls,
the learned gauge is a real group element, the layers respect the residual group."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn
from torch_geometric.data import Batch

import qegraph
from qegraph.nn.quasi import QuasiGMN
from qegraph.nn.section import SectionContext, canonical_input, gauge_weights
from qegraph.nn.sign_conv import SignEquivariantConv
from qegraph.symmetry import symmetry_group
from qegraph.symmetry.gl import apply_gl
from qegraph.testing import assert_functionally_equal
from test_canonical import NETS, GeluMLP, _bert

FAMILIES = [k for k in NETS if k != "gelu_mlp"]


def _graphs() -> dict[str, qegraph.ParameterGraph]:
    out = {k: qegraph.to_graph(NETS[k][0]) for k in FAMILIES}
    out["bert"] = _bert()[1]
    return out


GRAPHS = _graphs()


def _model(gauge: str = "layers", seed: int = 0, **kw: object) -> QuasiGMN:
    """A float64 model whose gauges are not the identity (their last layers start at zero)."""
    torch.manual_seed(seed)
    m = QuasiGMN(out_dim=2, hidden_dim=16, num_layers=2, gauge=gauge, **kw).double().eval()
    with torch.no_grad():
        for g in m.backbone.gauges:
            g.gamma[-1].weight.normal_(0, 1.0)
            g.gamma[-1].bias.normal_(0, 0.5)
    return m


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


def _hidden(model: QuasiGMN):  # noqa: ANN202
    """``graph -> h``: the node features after the message-passing layers (before the readout)."""
    return lambda graph: model.features(graph)[0]


# the default gauge ("layers") in the fast loop; the ablation gauges in the full suite
@pytest.mark.parametrize("gauge", [pytest.param("none", marks=pytest.mark.slow), pytest.param("input", marks=pytest.mark.slow),
                                   "layers"])
@pytest.mark.parametrize("name", list(GRAPHS))
@torch.no_grad()
def test_invariant_to_the_full_group(name: str, gauge: str) -> None:
    model = _model(gauge)
    g = GRAPHS[name]
    y = model(g)
    for seed in range(2):
        el = symmetry_group(g).sample(generator=torch.Generator().manual_seed(seed), scale_range=(1.0, 1e6), gl_cond=1e3)
        assert _rel(y, model(el.act(g))) <= 1e-12


@torch.no_grad()
def test_mixed_batch_invariant_and_equal_to_single_graphs() -> None:
    model = _model()
    names = list(GRAPHS)
    batch = Batch.from_data_list([GRAPHS[n] for n in names])
    y = model(batch)
    el = symmetry_group(batch).sample(generator=torch.Generator().manual_seed(3), scale_range=(1.0, 1e6), gl_cond=1e3)
    assert _rel(y, model(el.act(batch))) <= 1e-12
    # BatchNorm layers are in eval mode: every graph's output is its own
    for i, n in enumerate(names):
        assert torch.allclose(y[i], model(GRAPHS[n])[0], rtol=1e-12, atol=1e-14)


@torch.no_grad()
def test_negative_controls_move_the_output() -> None:
    """Perturbations that are not symmetries change the message-passing features by ≥ 1e-3 (relative;
    the same graph structure, so nodes correspond one to one), and symmetries leave them unchanged. The
    model's *output* at initialisation is too flat to show 1e-3 for every control: that is checked after
    a few training steps in tests/test_nn_negative_controls.py. The statistics pathway is checked below."""
    full = _model(stats=False)
    model = _hidden(full)
    # scaling a unit followed by GELU (only permutations act there)
    gm = NETS["gelu_mlp"][0]
    bad = GeluMLP().double()
    bad.load_state_dict(gm.state_dict())
    with torch.no_grad():
        bad.b.weight[2] *= 10.0
        bad.b.bias[2] *= 10.0
        bad.c.weight[:, 2] /= 10.0
    assert _rel(model(qegraph.to_graph(gm)), model(qegraph.to_graph(bad))) >= 1e-3
    # a sign flip through a ReLU unit
    relu = NETS["relu_mlp"][0]
    g = qegraph.to_graph(relu)
    sd = {k: v.clone() for k, v in relu.state_dict().items()}
    sd["0.weight"][1] *= -1
    sd["0.bias"][1] *= -1
    sd["2.weight"][:, 1] *= -1
    net = nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 3)).double()
    net.load_state_dict(sd)
    assert _rel(model(g), model(qegraph.to_graph(net))) >= 1e-3
    # a sign flip through a tanh unit is a symmetry: no change
    tanh = NETS["tanh_mlp"][0]
    sd = {k: v.clone() for k, v in tanh.state_dict().items()}
    sd["0.weight"][1] *= -1
    sd["0.bias"][1] *= -1
    sd["2.weight"][:, 1] *= -1
    net = nn.Sequential(nn.Linear(4, 10), nn.Tanh(), nn.Linear(10, 3)).double()
    net.load_state_dict(sd)
    assert _rel(full(qegraph.to_graph(tanh)), full(qegraph.to_graph(net))) <= 1e-12
    # a GL matrix on one head's queries without A^{-T} on its keys; a GL(D) matrix mixing two heads
    g = GRAPHS["transformer"]
    y = model(g)
    j = int(torch.nonzero(g.sym_kind == 5).flatten()[0])  # the HEADS group of layer 0
    big = torch.diag(torch.tensor([4.0, 1.0, 1.0, 0.25], dtype=torch.float64)).repeat(2, 1, 1)
    eye = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    for mats, roles in (((big, eye), {1}), ((eye, big), {3})):  # A on Q without A^{-T} on K; B on V without B^{-1} on W_O
        x, ea = apply_gl(g, g.x, g.edge_attr, {j: mats}, roles_in=roles, roles_out=set())
        assert _rel(y, model(g.with_features(x=x, edge_attr=ea))) >= 1e-3
    sd = NETS["transformer"][0].state_dict()
    mix = torch.eye(8, dtype=torch.float64)
    mix[0, 4] = mix[4, 0] = 0.7  # mixes coordinate 0 of head 0 with coordinate 0 of head 1
    sd = {k: v.clone() for k, v in sd.items()}
    w = sd["layers.0.self_attn.in_proj_weight"]
    w[:8] = mix @ w[:8]
    w[8:16] = torch.linalg.inv(mix).T @ w[8:16]
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), 2,
                                enable_nested_tensor=False).double()
    enc.load_state_dict(sd)
    assert _rel(y, model(qegraph.to_graph(enc))) >= 1e-3


@torch.no_grad()
def test_statistics_pathway_sees_non_symmetries_and_not_symmetries() -> None:
    from qegraph.nn.canonical_stats import depth_statistics

    def stats(graph: qegraph.ParameterGraph) -> Tensor:
        c = canonical_input(graph)
        return depth_statistics(c, SectionContext.of(c), 16)[0]

    g = GRAPHS["res_cnn"]
    ref = stats(g)
    el = symmetry_group(g).sample(generator=torch.Generator().manual_seed(0), scale_range=(1.0, 1e6))
    assert _rel(ref, stats(el.act(g))) <= 1e-12
    gm = NETS["gelu_mlp"][0]
    bad = GeluMLP().double()
    bad.load_state_dict(gm.state_dict())
    bad.b.weight[2] *= 3.0
    bad.b.bias[2] *= 3.0
    bad.c.weight[:, 2] /= 3.0
    assert _rel(stats(qegraph.to_graph(gm)), stats(qegraph.to_graph(bad))) >= 1e-3


@pytest.mark.parametrize("name", ["res_cnn", "cnn_zoo", "transformer", "linear_mlp"])
@torch.no_grad()
def test_learned_gauge_is_a_group_element(name: str) -> None:
    """θ̃ = a(θ̂)·θ̂ computes the same function as θ: the gauge is one element of G_c per unit (all
    channels share it; keys get A^{-T} of their queries; W_O's columns B^{-1})."""
    module, x = NETS[name]
    model = _model(seed=1)
    g = canonical_input(qegraph.to_graph(module))
    ctx = SectionContext.of(g)
    h = model.backbone.node_encoder(g, ctx)
    lam = model.backbone.gauges[0](h, ctx)
    assert float(lam.abs().max()) > 1e-2  # a real, non-identity gauge
    xt, eat = gauge_weights(g.x, g.edge_attr, lam, ctx)
    gauged = g.with_features(x=xt, edge_attr=eat)
    assert_functionally_equal(module, gauged.to_module(module), x, rtol=1e-10)


@pytest.mark.parametrize("name", ["tanh_mlp", "siren", "transformer", "res_cnn"])
@torch.no_grad()
def test_layer_respects_the_residual_group(name: str) -> None:
    """Conv(π·h, π·e) = π·Conv(h, e) for random permutations and residual signs of the canonical graph."""
    g = canonical_input(qegraph.to_graph(NETS[name][0]))
    ctx = SectionContext.of(g)
    torch.manual_seed(0)
    layer = SignEquivariantConv(6).double()
    gen = torch.Generator().manual_seed(1)
    h = torch.randn(g.num_nodes, 6, generator=gen, dtype=torch.float64)
    e = torch.randn(g.num_edges, 6, generator=gen, dtype=torch.float64)
    el = symmetry_group(g).sample(generator=gen)
    assert bool((el.scale.abs() == 1).all())
    h1, e1 = layer(h, e, None, ctx)
    hg, eg = el.act_features(g, h, e)
    h2, e2 = layer(hg, eg, None, ctx)
    eh, ee = el.act_features(g, h1, e1)
    assert _rel(eh, h2) <= 1e-12 and _rel(ee, e2) <= 1e-12
    # a per-channel sign on one odd unit is not a residual element (negative control)
    if name in ("tanh_mlp", "siren"):
        odd = torch.nonzero(ctx.node_odd.squeeze(1)).flatten()[0]
        hb = h.clone()
        hb[odd, :3] *= -1
        assert _rel(h1, layer(hb, e, None, ctx)[0]) >= 1e-3


def test_gauge_parameters_get_gradients() -> None:
    model = _model().train()
    batch = Batch.from_data_list([GRAPHS["res_cnn"], GRAPHS["transformer"], GRAPHS["cnn_zoo"]])
    model(batch).sum().backward()
    for gauge in model.backbone.gauges:
        assert float(gauge.gamma[0].weight.grad.abs().max()) > 0


def test_bad_options_are_refused() -> None:
    with pytest.raises(qegraph.QegraphError, match="gauge must be one of"):
        QuasiGMN(gauge="sometimes")
    model = QuasiGMN(max_slots=4)
    with pytest.raises(qegraph.QegraphError, match="max_slots >= 9"):
        model(qegraph.to_graph(copy.deepcopy(NETS["cnn_zoo"][0]).float()))


@pytest.mark.parametrize("delta", [True, False])
@pytest.mark.parametrize("name", ["relu_mlp", "res_cnn", "tanh_mlp", "siren", "transformer", "linear_mlp"])
def test_weight_space_output_preserves_functional_identity(name: str, delta: bool) -> None:
    from qegraph.nn.section_decoder import WeightSpaceGMN
    from qegraph.testing import assert_functional_identity_preserved

    module, x = NETS[name]
    torch.manual_seed(0)
    model = WeightSpaceGMN(hidden_dim=12, num_layers=2, delta=delta).double().eval()
    with torch.no_grad():  # a decoder far from zero, so the output really differs from the input
        model.decoder.slots.mul_(30)
        model.decoder.slots_even.mul_(30)
        model.decoder.node_odd.weight.mul_(30)
        model.decoder.node_even[-1].weight.mul_(30)
        for g in model.backbone.gauges:
            g.gamma[-1].bias.normal_(0, 0.5)
    g = qegraph.to_graph(module)
    out = model(g)
    assert torch.equal(out.sym_kind, g.sym_kind) and "canonical" not in out.meta
    assert _rel(out.edge_attr, g.edge_attr) >= 1e-3  # the model changes the weights
    assert_functional_identity_preserved(model, g, x, n=2, scale_range=(1.0, 1e4), rtol=1e-9,
                                         generator=torch.Generator().manual_seed(1), template=module)


def test_weight_space_gradients_flow() -> None:
    from qegraph.nn.section_decoder import WeightSpaceGMN

    torch.manual_seed(0)
    model = WeightSpaceGMN(hidden_dim=8, num_layers=1)
    g = qegraph.to_graph(nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2)))
    out = model(g)
    out.to_state_dict  # noqa: B018  (an ordinary graph)
    (out.edge_val.pow(2).sum() + out.x.pow(2).sum()).backward()
    assert float(model.decoder.slots.grad.abs().max()) > 0


@pytest.mark.parametrize("name", ["tanh_mlp", "res_cnn", "transformer"])
@torch.no_grad()
def test_statnn_on_the_section_is_invariant(name: str) -> None:
    from qegraph.nn import StatNN

    g = GRAPHS[name]
    torch.manual_seed(0)
    model = StatNN(out_dim=2, canonical=True).double()
    model.train()
    model(Batch.from_data_list([g, g]))  # sizes the lazy layers
    model.eval()
    y = model(g)
    el = symmetry_group(g).sample(generator=torch.Generator().manual_seed(0), scale_range=(1.0, 1e6), gl_cond=1e3)
    assert _rel(y, model(el.act(g))) <= 1e-12
    raw = StatNN(out_dim=2).double()
    raw.load_state_dict(model.state_dict())
    raw.eval()
    assert _rel(raw(g), raw(el.act(g))) >= 1e-3  # the plain StatNN is not invariant
