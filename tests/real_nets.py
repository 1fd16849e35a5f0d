"""Real vision architectures written in plain torch, following their libraries' code paths.

torchvision and timm are optional (torchvision's wheel on this package index is a CUDA build that does
not import against the CPU torch), so the code paths the converter must handle are reproduced here,
module for module, at test size (≤ 16 channels, 16×16 inputs):

* :class:`ResNet` with :class:`BasicBlock` / :class:`Bottleneck` — torchvision ``models/resnet.py``
  (7×7 stride-2 stem, BatchNorm, ReLU module reused inside a block, max-pool, ``out += identity``,
  1×1 conv + BN downsample, ``torch.flatten(x, 1)``), and ResNeXt (``groups=2`` in the 3×3 conv);
* :class:`MobileNetV2` — torchvision ``models/mobilenetv2.py`` (``Conv2dNormActivation`` sequentials,
  inverted residuals, depthwise 3×3 convs with ``groups = channels``, ReLU6, linear bottleneck);
* :class:`EfficientNet` of :class:`MBConv` blocks — torchvision ``models/efficientnet.py``,
  ``ops/misc.py`` and ``ops/stochastic_depth.py`` (SiLU, ``SqueezeExcitation``: ``scale * input`` with
  a sigmoid gate, stochastic depth on the residual branch, an fx-wrapped function), and the MobileNetV3
  variant (Hardswish, Hardsigmoid gate);
* timm's ``SqueezeExcite`` (``x.mean((2, 3), keepdim=True)``) and the original SENet block (Linear
  layers, ``.view(b, c, 1, 1)``, ``expand_as``);
* :class:`VGG` — torchvision ``models/vgg.py`` (``make_layers(cfg, batch_norm=True)``, adaptive
  average pool, a classifier whose first Linear reads the flattened map).

Every network takes ``norm=False`` to drop BatchNorm (convs get biases), which isolates what the
activations alone allow (e.g. ReLU keeps positive scalings, ReLU6 does not).
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch
from torch import Tensor, nn


def _norm(channels: int, norm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if norm else nn.Identity()


# ---------------------------------------------------------------------------------------------- ResNet
def conv3x3(cin: int, cout: int, stride: int = 1, groups: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, groups=groups, bias=bias)


def conv1x1(cin: int, cout: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=bias)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, norm: bool = True) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride, bias=not norm)
        self.bn1 = _norm(planes, norm)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, bias=not norm)
        self.bn2 = _norm(planes, norm)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, norm: bool = True) -> None:
        super().__init__()
        width = planes * groups  # ResNeXt: groups × (base width)
        self.conv1 = conv1x1(inplanes, width, bias=not norm)
        self.bn1 = _norm(width, norm)
        self.conv2 = conv3x3(width, width, stride, groups, bias=not norm)
        self.bn2 = _norm(width, norm)
        self.conv3 = conv1x1(width, planes * self.expansion, bias=not norm)
        self.bn3 = _norm(planes * self.expansion, norm)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class ResNet(nn.Module):
    """torchvision's ResNet at test size: ``planes`` per stage instead of 64·2^i (full size:
    ``planes=(64, 128, 256, 512), stem=64, num_classes=1000``)."""

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int], planes: tuple[int, ...] = (2, 4, 8, 16),
                 num_classes: int = 10, groups: int = 1, norm: bool = True, stem: int = 8) -> None:
        super().__init__()
        self.norm, self.groups = norm, groups
        self.inplanes = stem
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=not norm)
        self.bn1 = _norm(self.inplanes, norm)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, planes[0], layers[0])
        self.layer2 = self._make_layer(block, planes[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, planes[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, planes[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(planes[3] * block.expansion, num_classes)

    def _make_layer(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int,
                    stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride, bias=not self.norm),
                                       _norm(planes * block.expansion, self.norm))
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.norm)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, groups=self.groups, norm=self.norm))
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)
        return x


def resnet_basic(norm: bool = True) -> nn.Module:
    """A ResNet-18-shaped network (BasicBlock) at test size: a factory, like ``torchvision.models.resnet18``."""
    return ResNet(BasicBlock, [2, 1, 1, 1], norm=norm)


def resnet_bottleneck(norm: bool = True) -> nn.Module:
    """A ResNet-50-shaped network (Bottleneck, expansion 4) at test size."""
    return ResNet(Bottleneck, [1, 2, 1, 1], planes=(2, 2, 4, 4), norm=norm)


def resnext(norm: bool = True) -> nn.Module:
    """A ResNeXt-shaped network: Bottleneck blocks whose 3×3 conv has 2 groups."""
    return ResNet(Bottleneck, [1, 2, 1, 1], planes=(2, 2, 2, 2), groups=2, norm=norm)


# ------------------------------------------------------------------------------------------ MobileNetV2
class Conv2dNormActivation(nn.Sequential):
    """torchvision.ops.Conv2dNormActivation: conv (bias only without a norm), norm, activation."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
                 activation: Callable[..., nn.Module] | None = nn.ReLU6, norm: bool = True) -> None:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel_size, stride, (kernel_size - 1) // 2, groups=groups,
                                             bias=not norm)]
        if norm:
            layers.append(nn.BatchNorm2d(cout))
        if activation is not None:
            layers.append(activation(inplace=True) if activation in (nn.ReLU6, nn.ReLU, nn.SiLU, nn.Hardswish)
                          else activation())
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int,
                 activation: Callable[..., nn.Module] = nn.ReLU6, norm: bool = True) -> None:
        super().__init__()
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(Conv2dNormActivation(inp, hidden_dim, kernel_size=1, activation=activation, norm=norm))
        layers.extend([
            # depthwise
            Conv2dNormActivation(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim, activation=activation,
                                 norm=norm),
            # pw-linear (linear bottleneck: no activation)
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=not norm),
            _norm(oup, norm),
        ])
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


#: torchvision's MobileNetV2 inverted-residual settings [t, c, n, s]
MOBILENET_V2_FULL = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
                     [6, 320, 1, 1]]


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2 at test size (settings [t, c, n, s] scaled down; :data:`MOBILENET_V2_FULL`
    with ``input_channel=32, last_channel=1280`` is the full network)."""

    def __init__(self, num_classes: int = 10, activation: str = "relu6", norm: bool = True,
                 settings: list[list[int]] | None = None, input_channel: int = 8, last_channel: int = 16) -> None:
        super().__init__()
        act = {"relu6": nn.ReLU6, "relu": nn.ReLU}[activation]
        settings = settings or [[1, 4, 1, 1], [4, 4, 2, 2], [2, 6, 2, 1]]
        features: list[nn.Module] = [Conv2dNormActivation(3, input_channel, stride=2, activation=act, norm=norm)]
        for t, c, n, s in settings:
            for i in range(n):
                features.append(InvertedResidual(input_channel, c, s if i == 0 else 1, t, act, norm))
                input_channel = c
        features.append(Conv2dNormActivation(input_channel, last_channel, kernel_size=1, activation=act, norm=norm))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=0.2), nn.Linear(last_channel, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


# ------------------------------------------------------------------------------- EfficientNet / MBConv
#: torchvision/ops/stochastic_depth.py (its code, minus usage logging), run as a module of that name: its
#: ``torch.fx.wrap("stochastic_depth")`` makes fx record the function as one call, which the converter
#: recognises by name without importing torchvision.
_STOCHASTIC_DEPTH_PY = '''
import torch
import torch.fx
from torch import nn, Tensor


def stochastic_depth(input: Tensor, p: float, mode: str, training: bool = True) -> Tensor:
    if p < 0.0 or p > 1.0:
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    if mode not in ["batch", "row"]:
        raise ValueError(f"mode has to be either 'batch' or 'row', but got {mode}")
    if not training or p == 0.0:
        return input
    survival_rate = 1.0 - p
    if mode == "row":
        size = [input.shape[0]] + [1] * (input.ndim - 1)
    else:
        size = [1] * input.ndim
    noise = torch.empty(size, dtype=input.dtype, device=input.device)
    noise = noise.bernoulli_(survival_rate)
    if survival_rate > 0.0:
        noise.div_(survival_rate)
    return input * noise


torch.fx.wrap("stochastic_depth")


class StochasticDepth(nn.Module):
    def __init__(self, p: float, mode: str) -> None:
        super().__init__()
        self.p = p
        self.mode = mode

    def forward(self, input: Tensor) -> Tensor:
        return stochastic_depth(input, self.p, self.mode, self.training)
'''
_stochastic_depth = types.ModuleType("torchvision.ops.stochastic_depth")
exec(compile(_STOCHASTIC_DEPTH_PY, "torchvision/ops/stochastic_depth.py", "exec"), _stochastic_depth.__dict__)
StochasticDepth = _stochastic_depth.StochasticDepth


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation: ``scale * input`` with scale = σ(fc2(act(fc1(pool(input)))))."""

    def __init__(self, input_channels: int, squeeze_channels: int, activation: Callable[..., nn.Module] = nn.ReLU,
                 scale_activation: Callable[..., nn.Module] = nn.Sigmoid) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def _scale(self, input: Tensor) -> Tensor:
        scale = self.avgpool(input)
        scale = self.fc1(scale)
        scale = self.activation(scale)
        scale = self.fc2(scale)
        return self.scale_activation(scale)

    def forward(self, input: Tensor) -> Tensor:
        scale = self._scale(input)
        return scale * input


class SqueezeExciteTimm(nn.Module):
    """timm's ``SqueezeExcite`` (efficientnet_blocks.py): mean with keepdim, conv_reduce/expand, gate."""

    def __init__(self, in_chs: int, rd_channels: int, gate: Callable[..., nn.Module] = nn.Sigmoid) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(in_chs, rd_channels, 1, bias=True)
        self.act1 = nn.SiLU(inplace=True)
        self.conv_expand = nn.Conv2d(rd_channels, in_chs, 1, bias=True)
        self.gate = gate()

    def forward(self, x: Tensor) -> Tensor:
        x_se = x.mean((2, 3), keepdim=True)
        x_se = self.conv_reduce(x_se)
        x_se = self.act1(x_se)
        x_se = self.conv_expand(x_se)
        return x * self.gate(x_se)


class SELayer(nn.Module):
    """The original SENet block (Hu et al.): Linear layers on the pooled vector, ``view(b, c, 1, 1)``."""

    def __init__(self, channel: int, reduction: int = 4) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(channel, channel // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(channel // reduction, channel, bias=False), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y.expand_as(x)


_SE = {"torchvision": SqueezeExcitation, "timm": SqueezeExciteTimm, "senet": SELayer}


class MBConv(nn.Module):
    """torchvision's EfficientNet ``MBConv`` (expand 1×1, depthwise k×k, SE, project 1×1; residual when
    shapes allow). ``variant="v3"``: MobileNetV3's block (Hardswish, SE gated by Hardsigmoid)."""

    def __init__(self, inp: int, out: int, expand_ratio: int, kernel: int, stride: int, se: str = "torchvision",
                 variant: str = "efficientnet", norm: bool = True, stochastic_depth_prob: float = 0.2) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and inp == out
        act = nn.SiLU if variant == "efficientnet" else nn.Hardswish
        expanded = inp * expand_ratio
        squeeze = max(1, inp // 4)
        layers: list[nn.Module] = []
        if expanded != inp:
            layers.append(Conv2dNormActivation(inp, expanded, kernel_size=1, activation=act, norm=norm))
        layers.append(Conv2dNormActivation(expanded, expanded, kernel_size=kernel, stride=stride, groups=expanded,
                                           activation=act, norm=norm))
        if variant == "efficientnet" and se == "torchvision":
            layers.append(SqueezeExcitation(expanded, squeeze, activation=nn.SiLU))
        elif variant == "efficientnet" and se == "timm":
            layers.append(SqueezeExciteTimm(expanded, squeeze))
        elif variant == "efficientnet":
            layers.append(_SE[se](expanded))
        else:
            layers.append(SqueezeExcitation(expanded, squeeze, activation=nn.ReLU, scale_activation=nn.Hardsigmoid))
        layers.append(Conv2dNormActivation(expanded, out, kernel_size=1, activation=None, norm=norm))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")

    def forward(self, input: Tensor) -> Tensor:
        result = self.block(input)
        if self.use_res_connect:
            result = self.stochastic_depth(result)
            result += input
        return result


class EfficientNet(nn.Module):
    """torchvision's EfficientNet skeleton at test size (stem, MBConv stages, 1×1 head, pool, classifier)."""

    def __init__(self, num_classes: int = 10, se: str = "torchvision", variant: str = "efficientnet",
                 norm: bool = True) -> None:
        super().__init__()
        act = nn.SiLU if variant == "efficientnet" else nn.Hardswish
        self.features = nn.Sequential(
            Conv2dNormActivation(3, 8, stride=2, activation=act, norm=norm),
            MBConv(8, 8, 1, 3, 1, se, variant, norm),
            MBConv(8, 6, 2, 5, 2, se, variant, norm),
            MBConv(6, 6, 2, 3, 1, se, variant, norm),
            Conv2dNormActivation(6, 16, kernel_size=1, activation=act, norm=norm),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=0.2, inplace=True), nn.Linear(16, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


# ------------------------------------------------------------------------------------------------ VGG
class VGG(nn.Module):
    """torchvision's VGG with ``make_layers(cfg, batch_norm=True)`` at test size."""

    def __init__(self, cfg: tuple = (4, "M", 8, "M", 16, 16, "M"), num_classes: int = 10, norm: bool = True,
                 dropout: float = 0.5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for v in cfg:
            if v == "M":
                layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
            else:
                conv = nn.Conv2d(in_channels, int(v), kernel_size=3, padding=1)
                layers += [conv, nn.BatchNorm2d(int(v))] if norm else [conv]
                layers.append(nn.ReLU(inplace=True))
                in_channels = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(
            nn.Linear(in_channels * 2 * 2, 16), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(16, 16), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(16, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """float64, eval mode; He-normal conv/linear weights and small random biases (so that signals keep
    their size through a BatchNorm-free net), non-trivial BatchNorm statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            if m.bias is not None:
                m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=g) * 0.5 + 1)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)
            m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
    return module.double().eval()


#: name → (factory, keyword arguments); every net reads [B, 3, 16, 16] images
REAL_NETS: dict[str, tuple[Callable[..., nn.Module], dict]] = {
    "resnet_basic": (resnet_basic, {}),
    "resnet_basic_nobn": (resnet_basic, {"norm": False}),
    "resnet_bottleneck": (resnet_bottleneck, {}),
    "resnext": (resnext, {}),
    "resnext_nobn": (resnext, {"norm": False}),
    "mobilenet_v2": (MobileNetV2, {}),
    "mobilenet_v2_nobn": (MobileNetV2, {"norm": False}),
    "mobilenet_v2_relu_nobn": (MobileNetV2, {"activation": "relu", "norm": False}),
    "efficientnet": (EfficientNet, {}),
    "efficientnet_nobn": (EfficientNet, {"norm": False}),
    "efficientnet_timm_se": (EfficientNet, {"se": "timm"}),
    "efficientnet_senet_se": (EfficientNet, {"se": "senet"}),
    "mobilenet_v3": (EfficientNet, {"variant": "v3"}),
    "mobilenet_v3_nobn": (EfficientNet, {"variant": "v3", "norm": False}),
    "vgg_bn": (VGG, {}),
    "vgg_nobn": (VGG, {"norm": False}),
}


def make_real(name: str, seed: int = 0) -> tuple[nn.Module, Tensor]:
    """A seeded float64 network (eval mode) and a matching seeded input batch."""
    torch.manual_seed(seed)
    factory, kwargs = REAL_NETS[name]
    module = randomize(factory(**kwargs), seed)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    return module, x
