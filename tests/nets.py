"""Architectures used across the tests (importable as ``nets:Name`` for ``--arch``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qegraph.modules import Sine


def siren(width: int = 32) -> nn.Sequential:
    return nn.Sequential(nn.Linear(2, width), Sine(30.0), nn.Linear(width, width), Sine(30.0), nn.Linear(width, 1))


def relu_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def tanh_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3))


def small_cnn_zoo(act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """The Small CNN Zoo architecture: 3× Conv2d(·,16,3) + act, global average pool, Linear(16,10)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3), act(), nn.Conv2d(16, 16, 3), act(), nn.Conv2d(16, 16, 3), act(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )


def lenet() -> nn.Sequential:
    """LeNet-style CNN on 16×16 inputs with Flatten→Linear reading a 16×2×2 map."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 2 * 2, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 10),
    )


def conv1d_net() -> nn.Sequential:
    """1-D conv net on length-32 inputs (stride, padding, dilation, LeakyReLU, average pooling)."""
    return nn.Sequential(
        nn.Conv1d(3, 8, 5, stride=2, padding=2), nn.LeakyReLU(0.1), nn.Conv1d(8, 8, 3, dilation=2), nn.ReLU(),
        nn.AvgPool1d(2), nn.Flatten(), nn.Linear(8 * 6, 4),
    )


class ResCNN(nn.Module):
    """A CNN with BatchNorm and a residual block."""

    def __init__(self, channels: int = 8, classes: int = 5) -> None:
        super().__init__()
        c = channels
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(c)
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.head = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn0(self.stem(x)))
        r = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(h)))))
        h = F.relu(h + r)
        return self.head(h.mean(dim=(2, 3)))


class ResMLP(nn.Module):
    """Pre-norm residual MLP block with LayerNorm and GELU."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.fc_in = nn.Linear(6, width)
        self.ln = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)
        self.out = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc_in(x)
        h = h + self.fc2(F.gelu(self.fc1(self.ln(h))))
        return self.out(torch.relu(h))


class SmallCNN(nn.Module):
    """A user class for ``--arch nets:SmallCNN`` (custom forward, kwargs)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3)
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(torch.relu(self.conv(x)), 1).flatten(1))


class Upsampler(nn.Module):
    """Uses an op the converter does not support."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.up = nn.Upsample(scale_factor=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.conv(x))


def randomize_buffers(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm running statistics and counters non-trivial values."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=g))
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g))
            m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
    return module


# ---------------------------------------------------------------------- transformers (float64, weights N(0, 0.3²))
D_MODEL, N_HEADS, D_FF = 16, 4, 24


def _normal_(module: nn.Module, seed: int, std: float = 0.3) -> nn.Module:
    """Every parameter N(0, std²) from a seeded generator: non-trivial biases and norm parameters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)
    return module


def encoder(norm_first: bool = False, activation: str = "relu", batch_first: bool = True, layers: int = 2,
            d_model: int = D_MODEL, heads: int = N_HEADS, d_ff: int = D_FF, seed: int = 0) -> nn.TransformerEncoder:
    """An ``nn.TransformerEncoder`` (post- or pre-norm, final LayerNorm with pre-norm), float64, eval."""
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(d_model, heads, d_ff, dropout=0.0, activation=activation,
                                       batch_first=batch_first, norm_first=norm_first)
    enc = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(d_model) if norm_first else None,
                                enable_nested_tensor=False)
    return _normal_(enc, seed).double().eval()


class ViT(nn.Module):
    """Patch conv → tokens → cls token + positional embedding → encoder → cls / mean pool → head."""

    def __init__(self, pool: str) -> None:
        super().__init__()
        self.pool = pool
        self.patch = nn.Conv2d(3, D_MODEL, 4, stride=4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D_MODEL))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, D_MODEL))
        layer = nn.TransformerEncoderLayer(D_MODEL, N_HEADS, D_FF, dropout=0.0, batch_first=True, norm_first=True,
                                           activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(D_MODEL)
        self.head = nn.Linear(D_MODEL, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.encoder(x))
        return self.head(x[:, 0] if self.pool == "cls" else x.mean(dim=1))


def vit(pool: str = "cls", seed: int = 1) -> ViT:
    """A ViT-style classifier on 8×8 RGB images (4 patches + cls token), float64, eval."""
    torch.manual_seed(seed)
    return _normal_(ViT(pool), seed).double().eval()


def bert_state_dict(vocab: int = 50, hidden: int = 16, layers: int = 2, heads: int = 4, inter: int = 32,
                    positions: int = 12, types: int = 2, prefix: str = "bert.", pooler: bool = True,
                    position_ids: bool = True, seed: int = 0, std: float = 0.05) -> dict[str, torch.Tensor]:
    """Random float64 weights with the key names and shapes of a Hugging Face ``BertModel``."""
    from qegraph.models import BertLayout

    torch.manual_seed(seed)
    m = BertLayout(vocab, hidden, layers, heads, inter, positions, types, pooler=pooler, prefix=prefix,
                   position_ids=position_ids)
    _normal_(m, seed, std)
    return {k: v.double() if v.is_floating_point() else v for k, v in m.state_dict().items()}


def seeded(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A standard normal tensor from its own generator (never the global RNG)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


#: name → (builder, input shape)
ARCHS = {
    "siren": (siren, (7, 2)),
    "relu_mlp": (relu_mlp, (7, 5)),
    "tanh_mlp": (tanh_mlp, (7, 5)),
    "cnn_zoo_relu": (small_cnn_zoo, (4, 1, 8, 8)),
    "cnn_zoo_tanh": (lambda: small_cnn_zoo(nn.Tanh), (4, 1, 8, 8)),
    "lenet": (lenet, (4, 1, 16, 16)),
    "rescnn": (ResCNN, (4, 3, 8, 8)),
    "conv1d": (conv1d_net, (4, 3, 32)),
    "resmlp": (ResMLP, (7, 6)),
}


def make(name: str, dtype: torch.dtype = torch.float64, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """A freshly initialised network and a matching random input."""
    torch.manual_seed(seed)
    build, shape = ARCHS[name]
    module = randomize_buffers(build(), seed).to(dtype).eval()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1), dtype=dtype)
    return module, x
