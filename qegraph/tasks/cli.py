"""``qegraph fit|validate|test|predict``: LightningCLI over qegraph's tasks and data modules.

Any :class:`~qegraph.tasks.base.GraphTask` (with any metanetwork from ``qegraph.nn`` as its
``model``) and any ``LightningDataModule`` can be named in the config by ``class_path``. With
``test_after_fit: true`` a ``fit`` run ends by testing the best checkpoint and printing its metrics.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import lightning as L
import torch
from lightning.pytorch.cli import LightningCLI

from qegraph.tasks.base import GraphTask


class QegraphCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 (jsonargparse parser)
        parser.add_argument("--test_after_fit", type=bool, default=False,
                            help="after fit, run the test loop on the best checkpoint and print its metrics")

    def before_instantiate_classes(self) -> None:
        """``--trainer.strategy ddp`` (or ``ddp_spawn``…) means DDP that tolerates unused parameters: a
        metanetwork's parameters for symmetries a zoo lacks (e.g. the per-head GL gauge ``rho_gl`` on a
        CNN or MLP zoo) get no gradient, which plain DDP refuses after the first step."""
        cfg = self.config.get(self.subcommand) if self.subcommand else self.config
        strategy = cfg.get("trainer", {}).get("strategy") if cfg is not None else None
        if isinstance(strategy, str) and strategy in ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook"):
            from lightning.pytorch.strategies import StrategyRegistry

            tolerant = f"{strategy}_find_unused_parameters_true"
            if tolerant in StrategyRegistry:
                cfg["trainer"]["strategy"] = tolerant

    def after_fit(self) -> None:
        if not self.config[self.subcommand].get("test_after_fit"):
            return
        ckpt = "best" if self.trainer.checkpoint_callback is not None and self.trainer.checkpoint_callback.best_model_path else None
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)


def run_lightning(argv: Sequence[str]) -> None:
    """Run ``qegraph <subcommand> ...`` through LightningCLI (``argv`` as if typed after ``qegraph``).

    LightningCLI reads ``sys.argv`` itself, so it is set to ``argv`` for the call (and restored), which
    also lets ``main([...])`` be used in-process.
    """
    saved = sys.argv
    sys.argv = [saved[0] if saved else "qegraph", *argv]
    try:
        QegraphCLI(
            GraphTask,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
        )
    finally:
        sys.argv = saved
        # tear the DDP process group down while the interpreter is alive: left to exit-time
        # destructors, gloo's worker threads can abort the process ("terminate called without an
        # active exception") after the run has finished
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
