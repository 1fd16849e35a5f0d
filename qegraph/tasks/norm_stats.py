"""Re-estimate BatchNorm moments over a data set before evaluating ("precise BatchNorm").

Normalization layers of qegraph models (``StatNN(standardize=True)``, ``InvariantReadout(norm=True)``)
standardize inputs whose differences between networks can be 1e-5 of their common value (e.g. INRs
fitted from one shared initialisation). Exponential running moments lag behind training by far more
than that, so evaluation with them is meaningless; :func:`recompute_batchnorm_stats` replaces them by
the exact moments of the current model over a pass of the training data (cumulative average,
``momentum=None``), with every other module left in its current mode.

:func:`fit_quantile_norms` fits the knots of :class:`~qegraph.nn.quantile_norm.QuantileNorm` layers the same
way: one pass over the training data records their inputs. The training task passes the whole training
split in a fixed order to every process of a distributed run (the loader is not sharded), so every rank
fits the same knots and, unlike BatchNorm moments, nothing differs between ranks.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import ExitStack
from itertools import chain
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.lazy import LazyModuleMixin

from qegraph.nn.quantile_norm import QuantileNorm


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running moments."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_batchnorm_stats(model: nn.Module, batches: Iterable[Any]) -> int:
    """Set the running moments of every BatchNorm layer of ``model`` to the moments over ``batches`` (ready
    for the model: on its device, augmented as wanted). Returns the number of batches."""
    layers = batchnorm_layers(model)
    it = iter(batches)
    first = next(it, None)
    if not layers or first is None:
        return 0
    if any(isinstance(m, LazyModuleMixin) and m.has_uninitialized_params() for m in layers):
        model(first)  # size the lazy layers first
    modes = [(m, m.training, m.momentum) for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: equal weight for every batch
        m.train()
    n = 0
    try:
        for batch in chain([first], it):
            model(batch)
            n += 1
    finally:
        for m, training, momentum in modes:
            m.momentum = momentum
            m.train(training)
    return n


def quantile_norm_layers(model: nn.Module, unfitted_only: bool = False) -> list[QuantileNorm]:
    """The :class:`QuantileNorm` layers of ``model`` (only those not fitted yet with ``unfitted_only``)."""
    return [m for m in model.modules() if isinstance(m, QuantileNorm) and not (unfitted_only and bool(m.fitted))]


@torch.no_grad()
def fit_quantile_norms(model: nn.Module, batches: Iterable[Any], unfitted_only: bool = False) -> int:
    """Fit every :class:`QuantileNorm` layer of ``model`` (only unfitted ones with ``unfitted_only``) to its
    inputs over ``batches`` (ready for the model). Returns the number of batches."""
    layers = quantile_norm_layers(model, unfitted_only)
    if not layers:
        return 0
    n = 0
    modes = [(m, m.training) for m in model.modules()]
    model.eval()  # no side effects (BatchNorm moments, dropout) while recording
    try:
        with ExitStack() as stack:
            for m in layers:
                stack.enter_context(m.recording())
            for batch in batches:
                model(batch)
                n += 1
            for m in layers:
                m.fit(m.collected())
    finally:
        for m, training in modes:
            m.training = training
    return n
