"""Assertions for checking symmetry guarantees (in the spirit of ``e3nn.util.test.assert_equivariant``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def _as_tuple(x: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    return (x,) if isinstance(x, Tensor) else tuple(x)


@torch.no_grad()
def assert_functionally_equal(
    module_a: nn.Module,
    module_b: nn.Module,
    inputs: Tensor | Sequence[Tensor],
    rtol: float = 1e-10,
) -> float:
    """Assert that two modules compute the same function on ``inputs``.

    Passes when ``max|f_a(x) - f_b(x)| <= rtol * max(max|f_a(x)|, tiny)`` (the tolerance scales with
    the output, DESIGN §7). Returns the relative error; raises ``AssertionError`` with the numbers
    otherwise. Both modules are put in eval mode.
    """
    module_a.eval()
    module_b.eval()
    xs = _as_tuple(inputs)
    ya = _as_tuple(module_a(*xs))
    yb = _as_tuple(module_b(*xs))
    if len(ya) != len(yb):
        raise AssertionError(f"the modules return {len(ya)} and {len(yb)} outputs")
    worst = 0.0
    for i, (a, b) in enumerate(zip(ya, yb)):
        if a.shape != b.shape:
            raise AssertionError(f"output {i}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
        scale = max(float(a.abs().max()), torch.finfo(a.dtype).tiny)
        err = float((a - b).abs().max()) / scale
        if not err <= rtol:
            raise AssertionError(
                f"output {i}: modules differ, max|a-b| = {err * scale:.3e} = {err:.3e} × max|a| "
                f"(rtol {rtol:.1e})"
            )
        worst = max(worst, err)
    return worst
