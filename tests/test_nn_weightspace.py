"""Weight-space decoder, baselines, canonicalization stability and configuration errors."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch

import qegraph
from nn_nets import graphs, inputs, modules
from qegraph.errors import QegraphError
from qegraph.nn import AlphaBetaGMN, AlphaBetaWeightSpaceGMN, FlatMLP, QuasiGMN, StatNN, WeightSpaceGMN
from qegraph.nn.types import direction
from qegraph.testing import assert_functional_identity_preserved, assert_functionally_equal


@pytest.fixture(scope="module")
def mods() -> dict[str, torch.nn.Module]:
    return modules()


@pytest.fixture(scope="module")
def g(mods: dict) -> dict[str, qegraph.ParameterGraph]:
    return graphs(mods)


@pytest.mark.parametrize("cls", [WeightSpaceGMN, AlphaBetaWeightSpaceGMN])
@pytest.mark.parametrize("delta", [True, False])
@pytest.mark.parametrize("arch", ["relu_mlp", "siren", "cnn_tanh", "res_cnn", "transformer"])
def test_decoder_preserves_functional_identity(mods: dict, g: dict, arch: str, delta: bool, cls: type) -> None:
    torch.manual_seed(4)
    model = cls(hidden_dim=8, num_layers=2, delta=delta).double()
    tmpl = mods[arch]
    err = assert_functional_identity_preserved(model, g[arch], inputs(arch), n=2, scale_range=(1.0, 1e4),
                                               generator=torch.Generator().manual_seed(5), template=tmpl, rtol=1e-12)
    assert err <= 1e-12
    with torch.no_grad():
        out = model(g[arch])
    assert isinstance(out, qegraph.ParameterGraph)
    assert not bool(out.edge_attr[~g[arch].edge_mask].any()) and not bool(out.x[~g[arch].x_mask].any())
    # the decoded network is a different function (the check above is not vacuous)
    with pytest.raises(AssertionError, match="modules differ"):
        assert_functionally_equal(out.to_module(tmpl), tmpl, inputs(arch), rtol=1e-3)


@pytest.mark.parametrize("cls", [WeightSpaceGMN, AlphaBetaWeightSpaceGMN])
def test_decoder_on_mixed_batch(mods: dict, g: dict, cls: type) -> None:
    names = ["relu_mlp", "cnn_relu", "transformer"]
    batch = Batch.from_data_list([g[a] for a in names])
    torch.manual_seed(4)
    model = cls(hidden_dim=8, num_layers=2).double()
    err = assert_functional_identity_preserved(model, batch, [inputs(a) for a in names], n=1, rtol=1e-12,
                                               generator=torch.Generator().manual_seed(6),
                                               template=[mods[a] for a in names])
    assert err <= 1e-12
    with torch.no_grad():  # decoding a batch decodes each graph as if it were alone
        parts = model(batch).to_data_list()
        for part, name in zip(parts, names):
            alone = model(g[name])
            x = inputs(name)
            torch.testing.assert_close(part.to_module(mods[name])(x), alone.to_module(mods[name])(x), rtol=1e-12,
                                       atol=1e-12)


def test_flat_mlp_sees_every_parameter(mods: dict, g: dict) -> None:
    graph = g["cnn_relu"]
    flat = FlatMLP.flatten(graph)
    ref = torch.cat([v.flatten() for v in mods["cnn_relu"].state_dict().values()])
    assert flat.shape == (1, ref.numel())
    assert torch.equal(flat[0].sort().values, ref.sort().values)
    other = qegraph.to_graph(modules()["cnn_relu"])
    other = other.with_features(x=other.x * 2)  # the same weights, biases doubled
    batch = Batch.from_data_list([graph, other])
    torch.manual_seed(0)
    model = FlatMLP(out_dim=2, hidden_dim=16, in_dim=ref.numel()).double()
    with torch.no_grad():
        y = model(batch)
        assert y.shape == (2, 2)
        torch.testing.assert_close(y, torch.cat([model(graph), model(other)]), rtol=1e-12, atol=0)
        # y = MLP(vec θ), checked against the flattened vector directly
        torch.testing.assert_close(y[:1], model.net(FlatMLP.flatten(graph)), rtol=1e-12, atol=0)
    assert float((y[0] - y[1]).abs().max()) > 1e-3 * float(y.abs().max())  # the biases are read
    with pytest.raises(QegraphError, match="fixed architecture"):
        model(Batch.from_data_list([graph, g["relu_mlp"]]))


def test_statnn_statistics(mods: dict, g: dict) -> None:
    feats = StatNN.features(g["relu_mlp"])
    sd = mods["relu_mlp"].state_dict()
    w = sd["2.weight"].flatten()  # second weight tensor = second edge block
    q = torch.quantile(w, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=w.dtype), interpolation="nearest")
    ref = torch.cat([w.mean().view(1), w.var(unbiased=False).view(1), q])
    assert torch.allclose(feats[0, 7:14], ref)
    b = sd["0.bias"]  # bias of depth 1, slot 0 (after the 3 weight blocks and depth 0's 5 slots)
    off = 3 * 7 + 5 * 7
    assert torch.allclose(feats[0, off : off + 2], torch.stack([b.mean(), b.var(unbiased=False)]))
    torch.manual_seed(0)
    model = StatNN(out_dim=3, hidden_dim=16, standardize=False).double().eval()
    other = g["relu_mlp"].with_features(x=2 * g["relu_mlp"].x)
    with torch.no_grad():
        y = model(Batch.from_data_list([g["relu_mlp"], other]))
        assert y.shape == (2, 3)
        torch.testing.assert_close(y, torch.cat([model(g["relu_mlp"]), model(other)]), rtol=1e-12, atol=0)
    assert float((y[0] - y[1]).abs().max()) > 1e-3 * float(y.abs().max())  # bias statistics are read


def test_direction_is_stable_float32() -> None:
    v = torch.tensor([[3.0, -4.0, 0.0]])
    for scale in (1e-30, 1e-15, 1.0, 1e15, 1e30):
        d = direction(v * scale)
        assert torch.allclose(d, torch.tensor([[0.6, -0.8, 0.0]]), atol=1e-7), scale
    assert torch.equal(direction(torch.zeros(2, 3)), torch.zeros(2, 3))


@pytest.mark.parametrize("cls", [WeightSpaceGMN, AlphaBetaWeightSpaceGMN])
@pytest.mark.parametrize("delta", [True, False])
@pytest.mark.parametrize("permute", [False, True])
def test_decoder_sign_equivariant(g: dict, delta: bool, permute: bool, cls: type) -> None:
    """On a SIREN (FIXED and SIGN units only, so α = 1 and g′ = g) the decoded graph transforms exactly
    like the input: model(g·θ) = g·model(θ) for sign flips (and permutations) of the hidden units."""
    graph = g["siren"]
    torch.manual_seed(4)
    model = cls(hidden_dim=8, num_layers=2, delta=delta).double().requires_grad_(False)
    gen = torch.Generator().manual_seed(8)
    ref = model(graph)
    for _ in range(2):
        el = qegraph.symmetry_group(graph).sample(generator=gen, permute=permute)
        assert bool((el.scale == -1).any()) and bool((el.scale == 1).any())
        out, expect = model(el.act(graph)), el.act(ref)
        for a, b in ((out.x, expect.x), (out.edge_attr, expect.edge_attr)):
            assert float((a - b).abs().max()) <= 1e-12 * float(b.abs().max())
    if not delta:  # the decoded weights really depend on the signs (the check is not vacuous)
        flipped = el.act(graph)
        assert not torch.allclose(model(flipped).edge_attr, ref.edge_attr)


def test_sign_canonicalization_stable_float32() -> None:
    """ι(x) = u ⊙ Sx of a SIGN feature: even, degree-1 homogeneous (keeps the magnitude), no over- or
    underflow over 60 orders of magnitude, bounded gradient near 0, and 0 at x = 0."""
    from qegraph.nn import Canonicalizer, FeatureType

    torch.manual_seed(0)
    canon = Canonicalizer(3)
    ftype = torch.full((1,), int(FeatureType.SIGN))
    v = torch.tensor([[3.0, -4.0, 0.5]])
    ref = canon(v, ftype)
    assert float(ref.abs().max()) > 0.1
    for t in (-1e-30, -1e-15, -1.0, 1.0, 1e15, 1e30):
        out = canon(v * t, ftype)
        assert torch.isfinite(out).all()
        assert torch.allclose(out, abs(t) * ref, rtol=1e-5, atol=0), t
    x = (1e-20 * v).requires_grad_(True)
    canon(x, ftype).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and float(x.grad.abs().max()) < 10
    assert torch.equal(canon(torch.zeros(2, 3), torch.full((2,), int(FeatureType.SIGN))), torch.zeros(2, 3))


def test_clear_errors(g: dict) -> None:
    with pytest.raises(QegraphError, match="max_slots"):
        QuasiGMN(hidden_dim=8, num_layers=1, max_slots=4).double()(g["cnn_relu"])
    with pytest.raises(QegraphError, match="epsilon_max"):
        AlphaBetaGMN(epsilon_max=1.5)
