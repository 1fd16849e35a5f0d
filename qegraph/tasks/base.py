"""Shared LightningModule plumbing: a metanetwork, an optimizer, per-epoch prediction buffers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from qegraph.errors import QegraphError
from qegraph.tasks.norm_stats import batchnorm_layers, fit_quantile_norms, quantile_norm_layers, recompute_batchnorm_stats


class GraphTask(L.LightningModule):
    """Base class: wraps a metanetwork ``model(batch) -> Tensor[num_graphs, out_dim]``.

    Subclasses implement :meth:`loss` and :meth:`epoch_metrics`; predictions and targets of every
    validation/test step are gathered and scored once per epoch (rank metrics such as Kendall τ are
    not averages of per-batch values). Under DDP the per-rank buffers are gathered first; the
    distributed sampler pads an evaluation set to a multiple of the world size by repeating
    samples, so graphs carrying a ``zoo_id`` are de-duplicated by it before scoring and the metrics
    equal a single-process run's.

    Devices and precision: nothing here leaves the model's device (metrics are computed where the
    predictions are). With a mixed-precision trainer (``precision: 16-mixed`` / ``bf16-mixed``) only
    training steps run under autocast; validation, test and predict steps run in the parameters' own
    precision (float32), so rank metrics are not decided by 8-bit mantissas and what is measured
    (metrics, invariance) is float32-accurate.
    """

    def __init__(self, model: nn.Module, lr: float = 1e-3, weight_decay: float = 0.0, max_lr_epochs: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.lr = lr
        self.weight_decay = weight_decay
        self.max_lr_epochs = max_lr_epochs
        self._epoch_outputs: dict[str, list[tuple[Tensor, Tensor, Tensor | None]]] = {"val": [], "test": []}

    def forward(self, batch: Any) -> Tensor:
        return self.model(batch)

    def target(self, batch: Any) -> Tensor:
        return batch.y

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def predict_values(self, out: Tensor) -> Tensor:
        return out

    def epoch_metrics(self, pred: Tensor, y: Tensor) -> dict[str, float]:
        raise NotImplementedError

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self.loss(self(batch), self.target(batch))
        self.log("train/loss", loss, batch_size=int(batch.num_graphs), prog_bar=True)
        return loss

    def _full_precision(self) -> torch.autocast:
        """A context that switches the trainer's autocast (mixed precision) off."""
        return torch.autocast(self.device.type, enabled=False)

    def _eval_step(self, stage: str, batch: Any) -> None:
        with self._full_precision():
            out = self(batch)
        y = self.target(batch)
        self.log(f"{stage}/loss", self.loss(out, y), batch_size=int(batch.num_graphs), sync_dist=True)
        ids = getattr(batch, "zoo_id", None)
        ids = ids.detach().reshape(-1) if isinstance(ids, Tensor) and ids.numel() == out.size(0) else None
        self._epoch_outputs[stage].append((self.predict_values(out).detach(), y.detach(), ids))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        with self._full_precision():
            return self.predict_values(self(batch))

    def _epoch_end(self, stage: str) -> None:
        buf = self._epoch_outputs[stage]
        if not buf:
            return
        pred = torch.cat([p for p, _, _ in buf])
        y = torch.cat([t for _, t, _ in buf])
        ids = torch.cat([i for _, _, i in buf]) if all(i is not None for _, _, i in buf) else None
        buf.clear()
        if self.trainer.world_size > 1:
            pred = self.all_gather(pred).reshape(-1, *pred.shape[1:])
            y = self.all_gather(y).reshape(-1, *y.shape[1:])
            if ids is not None:  # drop the samples the DistributedSampler repeated to pad the last rank
                ids = self.all_gather(ids).reshape(-1)
                keep = _first_occurrences(ids)
                pred, y = pred[keep], y[keep]
        for name, value in self.epoch_metrics(pred, y).items():
            self.log(f"{stage}/{name}", value, prog_bar=name in ("kendall_tau", "acc"), rank_zero_only=True)

    def on_fit_start(self) -> None:
        """Models that align their inputs to reference networks (``QuasiGMN(align=True)``) get the first
        training graph of each architecture, the same in every process of a DDP run. Unfitted
        :class:`~qegraph.nn.quantile_norm.QuantileNorm` layers (``QuasiGMN(stats_transform="quantile")``,
        ``StatNN(quantile=True)``) are fitted on one pass over the training split as it is trained on
        (:func:`~qegraph.tasks.norm_stats.fit_quantile_norms`); a resumed or fine-tuned model keeps its
        knots. In a DDP run every rank fits on the whole split, then takes rank 0's knots."""
        set_references = getattr(self.model, "set_references", None)
        dm = self.trainer.datamodule
        if set_references is not None and dm is not None and hasattr(dm, "reference_graphs"):
            set_references(dm.reference_graphs())
        layers = quantile_norm_layers(self.model, unfitted_only=True)
        if not layers:
            return
        if dm is None:
            raise QegraphError(
                f"{type(self.model).__name__} has QuantileNorm layers to fit on the training split: pass a "
                "LightningDataModule to trainer.fit (e.g. qegraph.data.ZooDataModule), or fit them first with "
                "qegraph.tasks.fit_quantile_norms(model, training_batches)")
        fit_quantile_norms(self.model, self._training_pass(dm, epoch=0), unfitted_only=True)
        if self.trainer.world_size > 1:  # identical data on every rank; rank 0's knots make it exact
            for m in layers:
                knots, constant = self.trainer.strategy.broadcast((m.knots.cpu(), m.constant.cpu()), src=0)
                m.knots.copy_(knots)
                m.constant.copy_(constant)

    def on_validation_epoch_start(self) -> None:
        """Models with BatchNorm layers: re-estimate their moments over the training split first, with
        the training augmentation applied (:mod:`qegraph.tasks.norm_stats`), so validation and the
        saved checkpoint use the exact moments of what the model is trained on."""
        if not batchnorm_layers(self.model) or self.trainer.datamodule is None:
            return
        recompute_batchnorm_stats(self.model, self._training_pass(self.trainer.datamodule, self.current_epoch))

    def _training_pass(self, dm: Any, epoch: int) -> Iterator[Any]:
        """The training split in evaluation order, on the model's device, augmented as in training."""
        loader = dm.eval_train_dataloader() if hasattr(dm, "eval_train_dataloader") else dm.train_dataloader()
        augment_like_training = getattr(dm, "augment_like_training", None)
        # a CPU generator: group elements are drawn on the CPU (the same on every device) and act on
        # the batch where it lives
        gen = torch.Generator().manual_seed(epoch)
        for batch in loader:  # what the model is trained on
            batch = batch.to(self.device)
            yield batch if augment_like_training is None else augment_like_training(batch, gen)

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        if not self.max_lr_epochs:
            return opt
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.max_lr_epochs)
        return {"optimizer": opt, "lr_scheduler": sched}


def _first_occurrences(ids: Tensor) -> Tensor:
    """Indices of the first occurrence of each distinct value of ``ids``, in order."""
    _, inverse = torch.unique(ids, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), ids.numel(), dtype=torch.long, device=ids.device)
    first.scatter_reduce_(0, inverse, torch.arange(ids.numel(), device=ids.device), reduce="amin")
    return first.sort().values
