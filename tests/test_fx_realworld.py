"""Real vision architectures (plain-torch ResNet, ResNeXt, MobileNetV2/V3, EfficientNet, VGG-BN) through
the fx converter: exact round trip, detected symmetry that keeps the function, and negative controls that
show each constraint is needed (DESIGN §4, §7). Also the activations, gating products, grouped convs and
error messages these networks rely on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qegraph
from qegraph import SymKind
from qegraph.errors import UnsupportedOpError
from qegraph.testing import assert_functionally_equal
from real_nets import REAL_NETS, SqueezeExcitation, make_real, randomize

N_ELEMENTS = 6


def same_bits(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        and torch.equal(a[k].reshape(-1).view(torch.uint8) if a[k].is_floating_point() else a[k],
                        b[k].reshape(-1).view(torch.uint8) if b[k].is_floating_point() else b[k])
        for k in a
    )


@torch.no_grad()
def rel_change(module: nn.Module, other: nn.Module, x: torch.Tensor) -> float:
    y = module(x)
    return float((other(x) - y).abs().max() / y.abs().max())


def kinds(g: qegraph.ParameterGraph) -> dict[str, str]:
    return {r["name"]: r["symmetry"] for r in qegraph.symmetry_group(g).describe(g)}


def group_of(g: qegraph.ParameterGraph, layer: str) -> int:
    return next(u["group"] for u in g.units if u["name"] == layer)


def check_elements(module: nn.Module, x: torch.Tensor, g: qegraph.ParameterGraph, seed: int = 0,
                   n: int = N_ELEMENTS) -> None:
    """Random elements of the detected group move the weights and keep the function (rtol 1e-9)."""
    group = qegraph.symmetry_group(g)
    gen = torch.Generator().manual_seed(seed)
    moved = 0
    for _ in range(n):
        acted = group.sample(generator=gen, scale_range=(1.0, 1e3)).act(g)
        moved += not same_bits(acted.to_state_dict(), g.to_state_dict())
        assert_functionally_equal(module, acted.to_module(template=module), x, rtol=1e-9)
    assert moved == n


#: the element a wrong claim is tested with: λ = 10 on every unit (SCALE), λ = −1 (NONZERO: sign flips),
#: the reversed order (PERM on fixed units)
CLAIM_SCALE = {SymKind.SCALE: 10.0, SymKind.NONZERO: -1.0, SymKind.PERM: 1.0}


def wrong_claim_change(module: nn.Module, x: torch.Tensor, layer: str, kind: SymKind) -> float:
    """Relative output change under the element of CLAIM_SCALE on ``layer``'s unit group only."""
    g = qegraph.to_graph(module)
    j = group_of(g, layer)
    group = qegraph.symmetry_group(g).with_kinds({j: kind})
    e = group.identity()
    lo, hi = int(group.ptr[j]), int(group.ptr[j + 1])
    e.scale[lo:hi] = CLAIM_SCALE[kind]
    if kind == SymKind.PERM:
        e.perm[lo:hi] = e.perm[lo:hi].flip(0)
    return rel_change(module, e.act(g).to_module(template=module), x)


# ---------------------------------------------------------------------------------------- real nets
@pytest.mark.parametrize("name", sorted(REAL_NETS))
def test_real_net_converts_exactly(name: str) -> None:
    module, x = make_real(name)
    g = qegraph.to_graph(module)
    assert g.num_params == sum(t.numel() for t in module.state_dict().values())
    assert same_bits(g.to_state_dict(), module.state_dict())
    with torch.no_grad():
        assert torch.equal(g.to_module(template=module)(x), module(x))


#: one of each kind in the fast loop (residual, inverted residual + depthwise, squeeze-excitation, grouped);
#: every net in the full suite
_FAST_NETS = {"resnet_basic", "mobilenet_v2", "efficientnet_timm_se", "resnext"}


@pytest.mark.parametrize("name", [n if n in _FAST_NETS else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(REAL_NETS)])
def test_real_net_group_elements_keep_the_function(name: str) -> None:
    module, x = make_real(name)
    check_elements(module, x, qegraph.to_graph(module))


EXPECTED = {
    # BatchNorm after every conv: permutations only; the classifier's outputs are fixed
    "resnet_basic": {"conv1": "perm", "layer1.0.conv1": "perm", "layer2.0.downsample.0": "perm", "fc": "fixed"},
    # without BatchNorm, ReLU keeps positive scalings (through max-pool and the residual stream)
    "resnet_basic_nobn": {"conv1": "scale", "layer1.0.conv1": "scale", "layer2.0.conv2": "scale"},
    # ReLU6 is not positively homogeneous; the linear bottleneck keeps every nonzero scalar
    "mobilenet_v2_nobn": {"features.1.conv.0.0": "perm", "features.2.conv.0.0": "perm",
                          "features.2.conv.1.0": "perm", "features.2.conv.2": "nonzero"},
    "mobilenet_v2_relu_nobn": {"features.2.conv.0.0": "scale", "features.2.conv.1.0": "scale"},
    # SiLU and the sigmoid gate: permutations; the SE bottleneck after SiLU too
    "efficientnet_nobn": {"features.2.block.0.0": "perm", "features.2.block.2.fc1": "perm",
                          "features.2.block.2.fc2": "perm", "features.2.block.3.0": "nonzero"},
    # Hardswish: permutations; the SE bottleneck after ReLU keeps positive scalings
    "mobilenet_v3_nobn": {"features.2.block.0.0": "perm", "features.2.block.2.fc1": "scale"},
    "vgg_bn": {"features.0": "perm", "classifier.0": "scale", "classifier.6": "fixed"},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_detected_kinds(name: str) -> None:
    got = kinds(qegraph.to_graph(make_real(name)[0]))
    assert {k: got[k] for k in EXPECTED[name]} == EXPECTED[name]


def test_squeeze_excitation_gate_is_tied_to_the_gated_units() -> None:
    g = qegraph.to_graph(make_real("efficientnet")[0])
    gate = next(u for u in g.units if u["name"] == "mul_1")
    assert gate["type"] == "residual"
    assert group_of(g, "features.2.block.2.fc2") == group_of(g, "features.2.block.1.0") == gate["group"]


def test_depthwise_channels_are_coupled() -> None:
    g = qegraph.to_graph(make_real("mobilenet_v2")[0])
    rows = {r["name"]: r for r in qegraph.symmetry_group(g).describe(g)}
    dw_in, dw_out = rows["features.2.conv.0.0"], rows["features.2.conv.1.0"]
    assert dw_in["blocks"] == dw_out["blocks"] == 16  # one group per channel
    assert dw_in["coupled_with"] == dw_out["coupled_with"]


@pytest.mark.parametrize(
    "name,layer,kind",
    [
        ("mobilenet_v2_nobn", "features.2.conv.0.0", SymKind.SCALE),  # scaling through ReLU6
        ("mobilenet_v3_nobn", "features.2.block.0.0", SymKind.SCALE),  # scaling through Hardswish
        ("efficientnet_nobn", "features.2.block.0.0", SymKind.SCALE),  # scaling through SiLU
        ("efficientnet_nobn", "features.2.block.2.fc2", SymKind.SCALE),  # scaling the sigmoid gate's group
        ("resnet_basic_nobn", "layer1.0.conv1", SymKind.NONZERO),  # sign flips through ReLU
        ("resnet_basic", "layer1.0.conv1", SymKind.SCALE),  # scaling through BatchNorm
        ("vgg_bn", "features.4", SymKind.SCALE),  # scaling through BatchNorm
        ("mobilenet_v2", "classifier.1", SymKind.PERM),  # permuting the fixed outputs
    ],
)
def test_wrong_claims_change_the_function(name: str, layer: str, kind: SymKind) -> None:
    module, x = make_real(name)
    assert wrong_claim_change(module, x, layer, kind) >= 1e-3


@pytest.mark.parametrize("relu6,relu", [
    (("mobilenet_v2_nobn", "features.2.conv.0.0"), ("mobilenet_v2_relu_nobn", "features.2.conv.0.0")),
])
def test_the_same_scaling_is_a_symmetry_with_relu(relu6, relu) -> None:
    """Control for the ReLU6 case above: the same element (λ = 10 on the same units) keeps the function when
    the activations are ReLU, so the change comes from ReLU6 alone."""
    m6, x = make_real(relu6[0])
    m, _ = make_real(relu[0])
    assert wrong_claim_change(m6, x, relu6[1], SymKind.SCALE) >= 1e-3
    assert wrong_claim_change(m, x, relu[1], SymKind.SCALE) <= 1e-12


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnext_nobn", "efficientnet"])
def test_moving_channels_across_conv_groups_changes_the_function(name: str) -> None:
    """The same group without the block structure (channels of grouped/depthwise convs permuted freely)."""
    module, x = make_real(name)
    g = qegraph.to_graph(module)
    free = qegraph.symmetry_group(g).unstructured()
    acted = free.sample(generator=torch.Generator().manual_seed(0), scale_range=(1.0, 1.0)).act(g)
    assert rel_change(module, acted.to_module(template=module), x) >= 1e-3


# ---------------------------------------------------------------------------------------- torchvision
#: torchvision factories at small width (where torchvision imports; the plain-torch nets above run the
#: same code paths everywhere)
TORCHVISION = {
    "resnet18": {"num_classes": 10},
    "mobilenet_v2": {"num_classes": 10, "width_mult": 0.25},
    "mobilenet_v3_small": {"num_classes": 10, "width_mult": 0.25},
    "efficientnet_b0": {"num_classes": 10},
}


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_models(name: str, tmp_path) -> None:
    try:
        import torchvision.models as tvm
    except Exception as e:  # the CUDA-only wheel fails with RuntimeError/OSError, not ImportError
        first = str(e).splitlines()[0] if str(e) else ""
        pytest.skip(f"torchvision does not import here ({type(e).__name__}: {first})")
    torch.manual_seed(0)
    module = randomize(getattr(tvm, name)(**TORCHVISION[name]))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g = qegraph.to_graph(module)
    assert same_bits(g.to_state_dict(), module.state_dict())
    check_elements(module, x, g, n=2)
    torch.save(module.state_dict(), tmp_path / "tv.pt")
    from_file = qegraph.convert(tmp_path / "tv.pt", arch=f"torchvision.models:{name}", arch_kwargs=TORCHVISION[name])
    with torch.no_grad():
        assert torch.equal(from_file.to_module()(x), module(x))


# ---------------------------------------------------------------------------------------- activations
class ActMLP(nn.Module):
    def __init__(self, act: nn.Module | None = None, fn=None) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(5, 8), nn.Linear(8, 3)
        self.act, self.fn = act, fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h = self.act(h) if self.act is not None else self.fn(h)
        return self.b(h)


def gelu_new(h: torch.Tensor) -> torch.Tensor:
    """GPT-2's tanh GELU, written out as Hugging Face's ``NewGELUActivation`` does."""
    return 0.5 * h * (1.0 + torch.tanh(0.7978845608028654 * (h + 0.044715 * torch.pow(h, 3.0))))


ACTIVATIONS = {
    "ReLU6": (lambda: ActMLP(nn.ReLU6()), "perm"),
    "Hardswish": (lambda: ActMLP(nn.Hardswish()), "perm"),
    "Hardsigmoid": (lambda: ActMLP(nn.Hardsigmoid()), "perm"),
    "Hardtanh": (lambda: ActMLP(nn.Hardtanh()), "sign"),
    "Hardtanh(0,6)": (lambda: ActMLP(nn.Hardtanh(0.0, 6.0)), "perm"),
    "Mish": (lambda: ActMLP(nn.Mish()), "perm"),
    "SiLU": (lambda: ActMLP(nn.SiLU()), "perm"),
    "SELU": (lambda: ActMLP(nn.SELU()), "perm"),
    "CELU": (lambda: ActMLP(nn.CELU()), "perm"),
    "Softsign": (lambda: ActMLP(nn.Softsign()), "sign"),
    "Tanhshrink": (lambda: ActMLP(nn.Tanhshrink()), "sign"),
    "Softshrink": (lambda: ActMLP(nn.Softshrink(0.3)), "sign"),
    "Hardshrink": (lambda: ActMLP(nn.Hardshrink(0.3)), "sign"),
    "LogSigmoid": (lambda: ActMLP(nn.LogSigmoid()), "perm"),
    "Threshold": (lambda: ActMLP(nn.Threshold(0.1, -0.5)), "perm"),
    "RReLU (eval)": (lambda: ActMLP(nn.RReLU()), "scale"),
    "exp": (lambda: ActMLP(fn=torch.exp), "perm"),
    "F.relu6": (lambda: ActMLP(fn=F.relu6), "perm"),
    "F.hardswish": (lambda: ActMLP(fn=F.hardswish), "perm"),
    "F.hardsigmoid": (lambda: ActMLP(fn=F.hardsigmoid), "perm"),
    "F.hardtanh": (lambda: ActMLP(fn=F.hardtanh), "sign"),
    "clamp(0,6)": (lambda: ActMLP(fn=lambda h: torch.clamp(h, 0, 6)), "perm"),
    "clamp(min=0)": (lambda: ActMLP(fn=lambda h: h.clamp(min=0)), "scale"),
    "clamp(-2,2)": (lambda: ActMLP(fn=lambda h: h.clamp(-2.0, 2.0)), "sign"),
    "clamp_max(0)": (lambda: ActMLP(fn=lambda h: torch.clamp_max(h, 0.0)), "scale"),
    "x*sigmoid(x)": (lambda: ActMLP(fn=lambda h: h * torch.sigmoid(h)), "perm"),
    "gelu_new": (lambda: ActMLP(fn=gelu_new), "perm"),
    "x*relu6(x+3)/6": (lambda: ActMLP(fn=lambda h: h * F.relu6(h + 3.0) / 6.0), "perm"),
    "erf": (lambda: ActMLP(fn=torch.erf), "sign"),
    "abs": (lambda: ActMLP(fn=torch.abs), "scale"),
}
#: the next larger claim, which must be caught
STRONGER = {"perm": SymKind.SCALE, "sign": SymKind.SCALE, "scale": SymKind.NONZERO}


def _act_net(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    module = ACTIVATIONS[name][0]().double().eval()
    x = torch.randn(16, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    return module, x


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_kind_is_exact(name: str) -> None:
    module, x = _act_net(name)
    g = qegraph.to_graph(module)
    assert kinds(g)["a"] == ACTIVATIONS[name][1]
    check_elements(module, x, g, n=3)
    assert wrong_claim_change(module, x, "a", STRONGER[ACTIVATIONS[name][1]]) >= 1e-3


@pytest.mark.parametrize("act", ["relu6", "hardswish", "hardsigmoid", "mish"])
def test_linear_chain_with_new_activations(act: str) -> None:
    """``qegraph convert --activation relu6`` builds a ChainMLP: permutations only, rebuilt without template."""
    torch.manual_seed(0)
    module = qegraph.ChainMLP([["net.0", 4, 8, True], ["net.2", 8, 3, True]], act).double().eval()
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    g = qegraph.to_graph(module)
    assert kinds(g)["net.0"] == "perm"
    with torch.no_grad():
        assert torch.equal(g.to_module()(x), module(x))
    check_elements(module, x, g, n=3)
    assert wrong_claim_change(module, x, "net.0", SymKind.SCALE) >= 1e-3


def test_clamp_with_tensor_bounds_is_refused() -> None:
    module = ActMLP(fn=lambda h: torch.clamp(h, min=-h))
    with pytest.raises(UnsupportedOpError, match="constant bounds"):
        qegraph.to_graph(module)


# ---------------------------------------------------------------------------------------- gating
class LinearThenSE(nn.Module):
    """An SE gate on units with no activation before it: alone they would keep every λ ≠ 0."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.se = SqueezeExcitation(8, 2)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.se(self.conv(x))).mean((2, 3))


class SwiGLU(nn.Module):
    def __init__(self, gate=F.silu) -> None:
        super().__init__()
        self.w1, self.w3, self.w2 = nn.Linear(6, 12), nn.Linear(6, 12), nn.Linear(12, 6)
        self.gate = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.gate(self.w1(x)) * self.w3(x))


def test_gate_product_claims_permutations_only() -> None:
    """x·σ(fc(pool(x))): x, the gate logits and the product share one permutation; a common scalar would
    scale the product by λ² and the gate's input by λ, so none is claimed (and claiming one is caught)."""
    torch.manual_seed(0)
    module = LinearThenSE().double().eval()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g = qegraph.to_graph(module)
    assert kinds(g)["conv"] == "perm" and group_of(g, "conv") == group_of(g, "se.fc2")
    check_elements(module, x, g)
    assert wrong_claim_change(module, x, "conv", SymKind.NONZERO) >= 1e-3


@pytest.mark.parametrize("gate", [F.silu, nn.Identity()], ids=["swiglu", "bilinear"])
def test_product_of_two_branches(gate) -> None:
    """SwiGLU, and a bilinear product of two linear branches (each alone would keep every λ ≠ 0)."""
    torch.manual_seed(0)
    module = SwiGLU(gate).double().eval()
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g = qegraph.to_graph(module)
    assert group_of(g, "w1") == group_of(g, "w3") and kinds(g)["w3"] == "perm"
    check_elements(module, x, g)
    assert wrong_claim_change(module, x, "w3", SymKind.NONZERO) >= 1e-3


def test_product_of_mismatched_units_is_refused() -> None:
    class Bad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(4, 3)

        def forward(self, x):
            return self.a(x) * self.b(x).sum(-1, keepdim=True)

    with pytest.raises(UnsupportedOpError, match="Bad"):
        qegraph.to_graph(Bad())


# ---------------------------------------------------------------------------------------- grouped convs
def grouped_net() -> nn.Sequential:
    """Depthwise with channel multiplier 2 (groups 8), a grouped 1×1 conv (groups 8), a depthwise conv:
    one coupling class, 8 blocks in every unit group."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, groups=8), nn.ReLU6(),
        nn.Conv2d(16, 8, 1, groups=8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, groups=8, bias=False),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )


def grouped_conflict_net() -> nn.Sequential:
    """A unit group read by convs with 8 and with 4 groups: the conservative fallback (no permutations)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, groups=8), nn.ReLU6(),
        nn.Conv2d(16, 8, 1, groups=4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )


def conv1d_depthwise() -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(2, 6, 3), nn.Tanh(), nn.Conv1d(6, 12, 5, groups=6, padding=2), nn.Tanh(),
                         nn.Conv1d(12, 6, 1, groups=6), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(6, 3))


GROUPED = {
    # name: (builder, input shape, {layer: blocks})
    "grouped": (grouped_net, (4, 3, 10, 10), {"0": 8, "2": 8, "4": 8, "6": 8}),
    "conflict": (grouped_conflict_net, (4, 3, 10, 10), {"0": 0, "2": 0, "4": 0}),
    "conv1d": (conv1d_depthwise, (4, 2, 16), {"0": 6, "2": 6, "4": 6}),
}


@pytest.mark.parametrize("name", sorted(GROUPED))
def test_grouped_convs_exact(name: str) -> None:
    build, shape, blocks = GROUPED[name]
    torch.manual_seed(0)
    module = build().double().eval()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g = qegraph.to_graph(module)
    assert same_bits(g.to_state_dict(), module.state_dict())
    rows = {r["name"]: r for r in qegraph.symmetry_group(g).describe(g)}
    assert {k: rows[k]["blocks"] for k in blocks} == blocks
    rebuilt = g.to_module()  # a torch.nn stack: rebuilt from the record, groups included
    with torch.no_grad():
        assert torch.equal(rebuilt(x), module(x))
    check_elements(module, x, g)
    free = qegraph.symmetry_group(g).unstructured()
    acted = free.sample(generator=torch.Generator().manual_seed(3), scale_range=(1.0, 1.0)).act(g)
    assert rel_change(module, acted.to_module(template=module), x) >= 1e-3


def test_grouped_conv_blocks_follow_the_weight_layout() -> None:
    """Edge k of a grouped block: o = k // (C_in/g), i = k % (C_in/g), source (o // (C_out/g))·(C_in/g) + i."""
    module = nn.Sequential(nn.Conv2d(2, 6, 1), nn.Conv2d(6, 4, 3, groups=2)).double()
    g = qegraph.to_graph(module)
    w = module[1].weight  # [4, 3, 3, 3]
    src = next(u for u in g.units if u["name"] == "0")
    dst = next(u for u in g.units if u["name"] == "1")
    p = next(p for p in g.meta["params"] if p["key"] == "1.weight")
    assert p["rows"] == 4 * 3
    block = [b for b in range(g.eblock_size.numel()) if int(g.eblock_dst[b]) == dst["start"]][0]
    first = int(g.eblock_size[:block].sum())
    for k in range(12):
        o, i = divmod(k, 3)
        assert g.edge_index[:, first + k].tolist() == [src["start"] + (o // 2) * 3 + i, dst["start"] + o]
    assert same_bits(g.to_state_dict(), module.state_dict())
    assert torch.equal(g.to_state_dict()["1.weight"], w)


# ---------------------------------------------------------------------------------------- messages
class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return torch.cumsum(self.fc(x), 1)


class Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Block()
        self.up = nn.Upsample(scale_factor=2)

    def forward(self, x):
        return self.block(x)


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return x


class Upsampler(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Upsample(scale_factor=2))

    def forward(self, x):
        return self.body(x)


def test_unsupported_module_message_names_the_module_path() -> None:
    with pytest.raises(UnsupportedOpError) as err:
        qegraph.to_graph(Upsampler())
    assert str(err.value).startswith("Upsampler: module 'body.1' (Upsample): unsupported module type "
                                     "torch.nn.modules.upsampling.Upsample")


def test_unsupported_op_in_a_submodule_names_the_submodule() -> None:
    with pytest.raises(UnsupportedOpError, match=r"^Wrapper: module 'block' \(Block\), fx node 'cumsum': "
                                                 r"unsupported op 'cumsum'"):
        qegraph.to_graph(Wrapper())


def test_checkpoint_name_is_not_glued_to_the_module_path(tmp_path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    torch.save(Upsampler().state_dict(), tmp_path / "my.pt")
    with pytest.raises(UnsupportedOpError, match=r"^my\.pt: module 'body\.1' \(Upsample\): "):
        qegraph.convert(tmp_path / "my.pt", arch="test_fx_realworld:Upsampler")


def test_trace_failure_keeps_the_cause_and_says_what_to_do() -> None:
    with pytest.raises(UnsupportedOpError) as err:
        qegraph.to_graph(Branchy())
    msg = str(err.value)
    assert msg.startswith("Branchy: torch.fx cannot trace forward (at test_fx_realworld.py:")
    assert "in forward): TraceError: symbolically traced variables cannot be used as inputs to control flow" in msg
    assert "rewrite that line" in msg and "register_module_handler" in msg and "\n" not in msg
    assert isinstance(err.value.__cause__, Exception)
