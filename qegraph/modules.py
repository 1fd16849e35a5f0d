"""Small runnable modules that qegraph rebuilds networks from (imports only torch)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Sine(nn.Module):
    r"""SIREN activation :math:`\sin(\omega_0 x)` (Sitzmann et al., 2020)."""

    def __init__(self, w0: float = 30.0) -> None:
        super().__init__()
        self.w0 = float(w0)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.w0 * x)

    def extra_repr(self) -> str:
        return f"w0={self.w0}"


def activation_fn(name: str) -> Callable[[Tensor], Tensor]:
    """``"relu"``, ``"leaky_relu"``, ``"tanh"``, ``"sigmoid"``, ``"gelu"``, ``"silu"``, ``"relu6"``,
    ``"hardswish"``, ``"hardsigmoid"``, ``"mish"``, ``"elu"``, ``"identity"``, or ``"sine"`` /
    ``"sine:W0"`` (SIREN, default ω₀ = 30)."""
    if name.startswith("sine"):
        w0 = float(name.split(":", 1)[1]) if ":" in name else 30.0
        return Sine(w0)
    table: dict[str, Callable[[Tensor], Tensor]] = {
        "relu": F.relu,
        "leaky_relu": F.leaky_relu,
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
        "gelu": F.gelu,
        "silu": F.silu,
        "relu6": F.relu6,
        "hardswish": F.hardswish,
        "hardsigmoid": F.hardsigmoid,
        "mish": F.mish,
        "elu": F.elu,
        "identity": nn.Identity(),
    }
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(table) + ['sine', 'sine:W0']}")
    return table[name]


class ChainMLP(nn.Module):
    """A chain of ``nn.Linear`` layers registered under arbitrary state_dict prefixes.

    ``layers`` lists ``(prefix, in_features, out_features, bias)``; the module's state_dict keys are
    ``f"{prefix}.weight"`` / ``f"{prefix}.bias"``, so a plain checkpoint such as
    ``{"net.0.weight", "net.0.bias", "net.2.weight", …}`` loads without renaming. The activation
    is applied between layers, not after the last one.
    """

    def __init__(self, layers: Sequence[Sequence], activation: str = "relu") -> None:
        super().__init__()
        self.activation = activation
        self.layer_specs = [list(layer) for layer in layers]
        self._act = activation_fn(activation)
        self._chain: list[nn.Linear] = []
        for prefix, fan_in, fan_out, bias in self.layer_specs:
            parent: nn.Module = self
            *path, leaf = str(prefix).split(".")
            for part in path:
                if not hasattr(parent, part):
                    parent.add_module(part, nn.Module())
                parent = getattr(parent, part)
            linear = nn.Linear(int(fan_in), int(fan_out), bias=bool(bias))
            parent.add_module(leaf, linear)
            self._chain.append(linear)

    def forward(self, x: Tensor) -> Tensor:
        for i, linear in enumerate(self._chain):
            x = linear(x)
            if i + 1 < len(self._chain):
                x = self._act(x)
        return x
