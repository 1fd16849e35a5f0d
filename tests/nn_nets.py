"""Small networks for the metanetwork tests (float64, graphs converted once per session)."""

from __future__ import annotations

import torch
from torch import nn

import nets
import qegraph
from qegraph.graph.parameter_graph import ParameterGraph


class ResidualReLUCNN(nn.Module):
    """A CNN with a residual block and no norm layer, so its channels keep positive scalings."""

    def __init__(self, c: int = 6) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, c, 3, padding=1)
        self.c2 = nn.Conv2d(c, c, 3, padding=1)
        self.c3 = nn.Conv2d(c, c, 3, padding=1)
        self.head = nn.Linear(c, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c1(x))
        h = h + torch.relu(self.c2(h))
        h = torch.relu(self.c3(h))
        return self.head(h.mean(dim=(2, 3)))


def modules() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    mods: dict[str, nn.Module] = {
        "relu_mlp": nn.Sequential(nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3)),
        "tanh_mlp": nn.Sequential(nn.Linear(4, 12), nn.Tanh(), nn.Linear(12, 10), nn.Tanh(), nn.Linear(10, 3)),
        "siren": nn.Sequential(nn.Linear(2, 16), qegraph.Sine(30.0), nn.Linear(16, 16), qegraph.Sine(30.0), nn.Linear(16, 1)),
        "cnn_relu": nets.small_cnn_zoo(nn.ReLU),
        "cnn_tanh": nets.small_cnn_zoo(nn.Tanh),
        "res_cnn": ResidualReLUCNN(),
        "transformer": nn.TransformerEncoder(
            nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), 2, enable_nested_tensor=False
        ),
    }
    return {k: m.double().eval() for k, m in mods.items()}


def inputs(name: str, n: int = 5) -> torch.Tensor:
    shape = {"relu_mlp": (n, 4), "tanh_mlp": (n, 4), "siren": (n, 2), "cnn_relu": (n, 1, 8, 8),
             "cnn_tanh": (n, 1, 8, 8), "res_cnn": (n, 1, 6, 6), "transformer": (n, 5, 8)}[name]
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))


def graphs(mods: dict[str, nn.Module]) -> dict[str, ParameterGraph]:
    return {k: qegraph.to_graph(m) for k, m in mods.items()}
