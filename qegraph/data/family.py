"""What a zoo family (cnn, mlp, inr, transformer) provides to the generic generator."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch import nn

from qegraph.data.train import ClassificationData, DropoutBeforeHead, TrainedCheckpoint, seeded_generator, train_classifiers
from qegraph.graph.arch import module_from_arch

Progress = Callable[[float], None]


def loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A float log-uniform in ``[lo, hi]``."""
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def choice(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    """A uniform choice that returns a plain Python value (JSON-able)."""
    return options[int(rng.integers(len(options)))]


class ZooFamily(ABC):
    """A kind of zoo: how to sample a run's config, its architecture, and how to train a chunk of runs.

    Configs are sampled per run from ``numpy.random.default_rng([seed, run])``, so they do not depend
    on chunking; training randomness comes from generators seeded by ``(seed, chunk, group)``.
    """

    name: str
    chunk_size: int = 200

    @abstractmethod
    def sample_config(self, seed: int, run: int) -> dict[str, Any]:
        """The hyperparameters of run ``run``."""

    @abstractmethod
    def arch(self, config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The architecture key and rebuildable architecture record of a run."""

    @abstractmethod
    def preprocessing(self) -> dict[str, Any]:
        """How inputs are prepared (stored in the zoo's spec)."""

    @abstractmethod
    def train_chunk(self, runs: Sequence[tuple[int, dict[str, Any]]], seed: int, chunk: int,
                    progress: Progress) -> list[TrainedCheckpoint]:
        """Train the runs of one chunk; every checkpoint of every run."""

    def max_runs(self) -> int | None:
        """The largest zoo this family can generate (None: unbounded)."""
        return None

    @property
    def options(self) -> dict[str, Any]:
        """The family's effective constructor options (recorded in the manifest; resuming must match)."""
        return {}


class ClassifierFamily(ZooFamily):
    """Digit classifiers trained with :func:`train_classifiers`, grouped by architecture."""

    checkpoint_steps: tuple[int, ...] = (0, 10, 40, 100, 200)
    batch_size: int = 64
    @abstractmethod
    def data(self) -> ClassificationData:
        """Preprocessed digits for this family's input format."""

    def build(self, arch: dict[str, Any]) -> nn.Module:
        """The training module of an architecture (forward takes a dropout keep-mask)."""
        module = module_from_arch(arch)
        return DropoutBeforeHead(module) if isinstance(module, nn.Sequential) else module

    def train_chunk(self, runs: Sequence[tuple[int, dict[str, Any]]], seed: int, chunk: int,
                    progress: Progress) -> list[TrainedCheckpoint]:
        groups: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        records: dict[str, dict[str, Any]] = {}
        for run, cfg in runs:
            key, rec = self.arch(cfg)
            groups.setdefault(key, []).append((run, cfg))
            records[key] = rec
        out: list[TrainedCheckpoint] = []
        for g, key in enumerate(sorted(groups)):
            out += train_classifiers(self.build(records[key]), key, groups[key], self.data(),
                                     self.checkpoint_steps, seeded_generator(seed, chunk, g),
                                     batch_size=self.batch_size, progress=progress)
        return sorted(out, key=lambda c: (c.run, c.step))
