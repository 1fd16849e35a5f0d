"""The CNN zoo: the Small CNN Zoo architecture trained on digits with Small-CNN-Zoo-style hyperparameters.

Architecture (4,970 parameters for one input channel): three ``Conv2d(·, 16, 3)`` each followed by
ReLU or tanh, global average pooling, ``Linear(16, 10)``; an ``nn.Sequential`` so its graph's
architecture record rebuilds it. Hyperparameters per run, as in Unterthiner et al. (2020): activation,
weight initialisation and its std, optimizer (SGD / Adam / RMSProp), learning rate, L2 strength,
dropout (on the pooled features) and the fraction of the training data used.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qegraph.data.digits import load_digits_data, preprocessing_record
from qegraph.data.family import ClassifierFamily, choice, loguniform
from qegraph.data.train import OPTIMIZERS, WEIGHT_INITS, ClassificationData

CNN_ACTIVATIONS = ("relu", "tanh")
TRAIN_FRACTIONS = (0.1, 0.25, 0.5, 1.0)
_ACT_LAYER = {"relu": "ReLU", "tanh": "Tanh"}


def conv(in_channels: int, stride: int) -> dict[str, Any]:
    return {"type": "Conv2d", "in_channels": in_channels, "out_channels": 16, "kernel_size": 3, "stride": stride}


def cnn_arch(activation: str, in_channels: int = 1, stride: int = 1, num_classes: int = 10) -> dict[str, Any]:
    """The architecture record of a Small CNN Zoo network."""
    act = _ACT_LAYER[activation]
    return {"type": "sequential", "layers": [
        conv(in_channels, stride), act, conv(16, stride), act, conv(16, stride), act,
        {"type": "AdaptiveAvgPool2d", "output_size": 1}, {"type": "Flatten"},
        {"type": "Linear", "in_features": 16, "out_features": num_classes},
    ]}


class CNNFamily(ClassifierFamily):
    """``qegraph zoo cnn``."""

    name = "cnn"
    chunk_size = 100

    def sample_config(self, seed: int, run: int) -> dict[str, Any]:
        rng = np.random.default_rng([seed, run])
        return {
            "activation": choice(rng, CNN_ACTIVATIONS),
            "w_init": choice(rng, WEIGHT_INITS),
            "init_std": loguniform(rng, 1e-3, 0.5),
            "optimizer": choice(rng, OPTIMIZERS),
            "learning_rate": loguniform(rng, 5e-4, 5e-2),
            "l2reg": loguniform(rng, 1e-8, 1e-2),
            "dropout": float(rng.uniform(0.0, 0.7)),
            "train_fraction": choice(rng, TRAIN_FRACTIONS),
        }

    def arch(self, config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return f"cnn-{config['activation']}", cnn_arch(config["activation"])

    def preprocessing(self) -> dict[str, Any]:
        return preprocessing_record("images [N, 1, 8, 8]")

    def data(self) -> ClassificationData:
        d = load_digits_data()
        return ClassificationData(*d.train, *d.test)
