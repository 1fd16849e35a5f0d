"""GeneralizationPrediction: regress a checkpoint's test accuracy from its weights."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qegraph.tasks.base import GraphTask
from qegraph.tasks.metrics import kendall_tau, mean_absolute_error, r2_score


class GeneralizationPrediction(GraphTask):
    r"""Predict accuracy :math:`a \in [0, 1]` of the network θ from its parameter graph.

    ``loss="mse"``: :math:`(f(\theta) - a)^2`; ``loss="bce"``: :math:`\mathrm{BCE}(\sigma(f(\theta)), a)`
    (the prediction is then :math:`\sigma(f(\theta))`). Metrics per epoch: Kendall τ, R², MAE.
    """

    def __init__(self, model: nn.Module, loss: Literal["mse", "bce"] = "bce", lr: float = 1e-3, weight_decay: float = 0.0,
                 max_lr_epochs: int | None = None) -> None:
        super().__init__(model, lr=lr, weight_decay=weight_decay, max_lr_epochs=max_lr_epochs)
        if loss not in ("mse", "bce"):
            raise ValueError(f"loss must be 'mse' or 'bce', got {loss!r}")
        self.loss_name = loss
        self.save_hyperparameters(ignore=["model"])

    def target(self, batch) -> Tensor:
        return batch.y.reshape(-1).to(torch.get_default_dtype() if not batch.y.is_floating_point() else batch.y.dtype)

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        out = out.reshape(-1).to(torch.promote_types(out.dtype, torch.float32))  # fp16/bf16 logits (AMP) → fp32
        y = y.to(out.dtype)
        if self.loss_name == "bce":
            return F.binary_cross_entropy_with_logits(out, y)
        return F.mse_loss(out, y)

    def predict_values(self, out: Tensor) -> Tensor:
        out = out.reshape(-1)
        return torch.sigmoid(out) if self.loss_name == "bce" else out

    def epoch_metrics(self, pred: Tensor, y: Tensor) -> dict[str, float]:
        return {"kendall_tau": kendall_tau(pred, y), "r2": r2_score(pred, y), "mae": mean_absolute_error(pred, y)}
