"""``BestValidationState``: keep, in memory, the model state of the epoch with the best validation metric."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch


class BestValidationState(L.Callback):
    """After every validation, if ``trainer.callback_metrics[monitor]`` is finite and larger than every
    earlier value, copy ``pl_module.state_dict()``; :meth:`restore` loads the copy back (model selection
    on the validation split without writing checkpoints, as ``ModelCheckpoint(mode="max")`` + testing
    the best checkpoint does)."""

    def __init__(self, monitor: str) -> None:
        self.monitor, self.score, self.epoch = monitor, -math.inf, -1
        self.state: dict[str, Any] | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and math.isfinite(float(value)) and float(value) > self.score:
            self.score, self.epoch = float(value), trainer.current_epoch
            self.state = {k: v.detach().clone() if isinstance(v, torch.Tensor) else v
                          for k, v in pl_module.state_dict().items()}

    def restore(self, pl_module: L.LightningModule) -> None:
        """Load the best state into ``pl_module`` (nothing to do before the first finite value)."""
        if self.state is not None:
            pl_module.load_state_dict(self.state)
