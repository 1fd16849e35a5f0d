"""What a zoo family (cnn, mlp, inr, transformer) provides to the generic generator."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from qegraph.data.train import (
    ClassificationData, DropoutBeforeHead, RunGroup, TrainedCheckpoint, seeded_generator, train_classifiers,
)
from qegraph.graph.arch import module_from_arch

Progress = Callable[[float], None]
Runs = Sequence[tuple[int, dict[str, Any]]]
Device = str | torch.device | None


def loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A float log-uniform in ``[lo, hi]``."""
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def choice(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    """A uniform choice that returns a plain Python value (JSON-able)."""
    return options[int(rng.integers(len(options)))]


class ZooFamily(ABC):
    """A kind of zoo: how to sample a run's config, its architecture, and how to train a chunk of runs.

    Configs are sampled per run from ``numpy.random.default_rng([seed, run])``, so they do not depend
    on chunking; training randomness comes from generators seeded by ``(seed, chunk, group)``, so
    several chunks trained together in one vectorized call (:meth:`train_chunks`, used on GPUs) give
    the same runs as one call per chunk, up to floating-point rounding.
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
    def train_chunks(self, chunks: Sequence[tuple[int, Runs]], seed: int, progress: Progress,
                     device: Device = None) -> list[list[TrainedCheckpoint]]:
        """Train the runs of several chunks ``(chunk index, runs)`` at once on ``device``; per chunk,
        every checkpoint of every run (sorted by run, then step)."""

    def train_chunk(self, runs: Runs, seed: int, chunk: int, progress: Progress) -> list[TrainedCheckpoint]:
        """Train the runs of one chunk on the CPU; every checkpoint of every run."""
        return self.train_chunks([(chunk, runs)], seed, progress)[0]

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

    def train_chunks(self, chunks: Sequence[tuple[int, Runs]], seed: int, progress: Progress,
                     device: Device = None) -> list[list[TrainedCheckpoint]]:
        """Per chunk, its runs grouped by architecture (group g = g-th architecture key in sorted order,
        generator ``(seed, chunk, g)``); one vectorized call per architecture over all chunks."""
        groups: dict[str, list[RunGroup]] = {}
        records: dict[str, dict[str, Any]] = {}
        chunk_of: dict[int, int] = {}
        for k, runs in chunks:
            by_arch: dict[str, list[tuple[int, dict[str, Any]]]] = {}
            for run, cfg in runs:
                key, rec = self.arch(cfg)
                by_arch.setdefault(key, []).append((run, cfg))
                records[key] = rec
                chunk_of[run] = k
            for g, key in enumerate(sorted(by_arch)):
                groups.setdefault(key, []).append((by_arch[key], seeded_generator(seed, k, g)))
        out: dict[int, list[TrainedCheckpoint]] = {k: [] for k, _ in chunks}
        for key in sorted(groups):
            for c in train_classifiers(self.build(records[key]), key, groups[key], self.data(), self.checkpoint_steps,
                                       batch_size=self.batch_size, progress=progress, device=device):
                out[chunk_of[c.run]].append(c)
        return [sorted(out[k], key=lambda c: (c.run, c.step)) for k, _ in chunks]
