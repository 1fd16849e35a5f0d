"""The digits data every generated zoo is trained on, and its preprocessing (recorded in each zoo).

scikit-learn ships ``load_digits``: 1,797 handwritten digits, 8×8 pixels with integer values 0…16,
10 classes. Preprocessing (also stored in a zoo's ``spec.json`` under ``"preprocessing"``):

* images: ``pixels / 16`` as float32, shape ``[N, 1, 8, 8]`` (CNNs, MLPs flatten them);
* split: ``numpy.random.RandomState(0).permutation(1797)``; the last 450 indices are the test set,
  the first 1,347 the training set (the index lists are stored in the spec as well);
* transformer tokens: the 8 rows of an image, each row's 8 pixels concatenated with a one-hot code
  of its row index (16 features per token, shape ``[N, 8, 16]``);
* INR coordinates: the pixel grid in ``[-1, 1]²`` (row-major, ``(row, col)``), targets ``2·pixels/16 − 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor

NUM_TEST = 450
SPLIT_SEED = 0


@dataclass(frozen=True)
class Digits:
    """The preprocessed digits: images ``[N, 1, 8, 8]`` in [0, 1], labels ``[N]``, and the split."""

    images: Tensor
    labels: Tensor
    train_idx: Tensor
    test_idx: Tensor

    @property
    def train(self) -> tuple[Tensor, Tensor]:
        return self.images[self.train_idx], self.labels[self.train_idx]

    @property
    def test(self) -> tuple[Tensor, Tensor]:
        return self.images[self.test_idx], self.labels[self.test_idx]


@lru_cache(maxsize=1)
def load_digits_data() -> Digits:
    """Load and preprocess scikit-learn's bundled digits (no download)."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = torch.from_numpy(raw.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(raw.target.astype(np.int64))
    perm = torch.from_numpy(np.random.RandomState(SPLIT_SEED).permutation(len(labels)))
    return Digits(images, labels, perm[:-NUM_TEST].clone(), perm[-NUM_TEST:].clone())


def row_tokens(images: Tensor) -> Tensor:
    """``[N, 1, 8, 8]`` images → ``[N, 8, 16]`` tokens: each row's pixels and a one-hot row index."""
    rows = images.squeeze(1)
    n, h, _ = rows.shape
    pos = torch.eye(h, dtype=rows.dtype).expand(n, h, h)
    return torch.cat([rows, pos], dim=2)


def pixel_grid(size: int = 8) -> Tensor:
    """``[size², 2]`` coordinates in ``[-1, 1]²``, row-major ``(row, col)``."""
    lin = torch.linspace(-1.0, 1.0, size)
    return torch.stack(torch.meshgrid(lin, lin, indexing="ij"), dim=-1).reshape(-1, 2)


def preprocessing_record(inputs: str) -> dict[str, Any]:
    """The JSON description of the inputs a zoo was trained on (stored in ``spec.json``)."""
    d = load_digits_data()
    return {
        "dataset": "sklearn.datasets.load_digits",
        "scale": "pixels / 16 (float32, [N, 1, 8, 8])",
        "inputs": inputs,
        "split": f"numpy.random.RandomState({SPLIT_SEED}).permutation(1797); last {NUM_TEST} = test",
        "train_indices": d.train_idx.tolist(),
        "test_indices": d.test_idx.tolist(),
    }
