"""Epoch metrics: Kendall τ-b against scipy, and ties at floating-point round-off."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import kendalltau

from qegraph.tasks.metrics import kendall_tau


def test_kendall_tau_matches_scipy_with_ties() -> None:
    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(300, generator=gen)
    target = torch.randint(0, 20, (300,), generator=gen).float()  # many exact ties in the target
    pred[:10] = pred[10]  # and some in the prediction
    assert kendall_tau(pred, target) == pytest.approx(kendalltau(pred.numpy(), target.numpy())[0], abs=1e-12)


def test_round_off_differences_are_ties() -> None:
    """Predictions that differ by a few float32 ulps (another reduction order) give the same τ as the
    exactly tied ones; a real difference still counts."""
    target = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])
    tied = torch.tensor([0.3659142553806305, 0.3659142553806305, 0.2, 0.5, 0.6])
    nudged = tied.clone()
    nudged[1] = torch.nextafter(nudged[1], torch.tensor(0.0))  # one ulp below its twin
    nudged[1] = torch.nextafter(nudged[1], torch.tensor(0.0))  # two ulps
    assert not torch.equal(tied, nudged)
    assert kendall_tau(nudged, target) == kendall_tau(tied, target)
    assert kendall_tau(tied, target) == pytest.approx(kendalltau(tied.numpy(), target.numpy())[0], abs=1e-12)
    real = tied.clone()
    real[1] = 0.3659  # 1e-5 apart: a genuine difference, not round-off
    assert kendall_tau(real, target) != kendall_tau(tied, target)
