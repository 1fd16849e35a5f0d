"""Gradients stay finite on weights real zoos contain (e.g. decayed to 1e-22), and the forward stays exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import qegraph
from qegraph.nn import AlphaBetaGMN, QuasiGMN
from qegraph.nn.types import direction


def test_direction_gradient_is_capped_but_forward_exact() -> None:
    x = torch.tensor([[3e-22, -4e-22], [3.0, 4.0], [0.0, 0.0]], requires_grad=True)
    u = direction(x)
    assert torch.allclose(u[:2], torch.tensor([[0.6, -0.8], [0.6, 0.8]]))  # scale-free, even at 1e-22
    assert torch.equal(u[2], torch.zeros(2))
    u[:, 1].sum().backward()
    assert torch.isfinite(x.grad).all()
    assert float(x.grad[0].abs().max()) <= 1e6  # uncapped, 1/‖x‖ makes it ~1e21 (and inf after a few layers)


@pytest.mark.parametrize("cls", [QuasiGMN, AlphaBetaGMN])
def test_gradients_finite_on_near_zero_weights(cls: type) -> None:
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        cnn[2].weight[:2] *= 1e-22  # two channels whose incoming weights decayed to ~0
        cnn[2].bias.zero_()
    g = qegraph.to_graph(cnn)
    model = cls(out_dim=1, hidden_dim=8, num_layers=2)
    model(g).sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(t).all() for t in grads)
