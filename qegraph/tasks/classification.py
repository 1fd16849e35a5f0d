"""INRClassification: classify implicit neural representations (e.g. which digit a SIREN draws)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from qegraph.tasks.base import GraphTask


class INRClassification(GraphTask):
    r"""Cross-entropy :math:`-\log \mathrm{softmax}(f(\theta))_y` over ``num_classes``; metric: accuracy."""

    def __init__(self, model: nn.Module, lr: float = 1e-3, weight_decay: float = 0.0,
                 max_lr_epochs: int | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__(model, lr=lr, weight_decay=weight_decay, max_lr_epochs=max_lr_epochs)
        self.label_smoothing = label_smoothing
        self.save_hyperparameters(ignore=["model"])

    def target(self, batch) -> Tensor:
        return batch.y.reshape(-1).long()

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(out, y, label_smoothing=self.label_smoothing)

    def predict_values(self, out: Tensor) -> Tensor:
        return out.argmax(-1)

    def epoch_metrics(self, pred: Tensor, y: Tensor) -> dict[str, float]:
        return {"acc": float((pred == y).double().mean())}
