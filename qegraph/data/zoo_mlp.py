"""The MLP zoo: ReLU and tanh MLPs of several depths and widths on flattened digits (mixed architectures)."""

from __future__ import annotations

from typing import Any

import numpy as np

from qegraph.data.digits import load_digits_data, preprocessing_record
from qegraph.data.family import ClassifierFamily, choice, loguniform
from qegraph.data.train import OPTIMIZERS, WEIGHT_INITS, ClassificationData

MLP_ACTIVATIONS = ("relu", "tanh")
MLP_DEPTHS = (1, 2, 3)
MLP_WIDTHS = (16, 32, 64)
_ACT_LAYER = {"relu": "ReLU", "tanh": "Tanh"}


def mlp_arch(activation: str, widths: list[int], in_features: int = 64, num_classes: int = 10) -> dict[str, Any]:
    """``Flatten, Linear, act, …, Linear(·, num_classes)`` with the given hidden widths."""
    layers: list[Any] = [{"type": "Flatten"}]
    dims = [in_features, *widths]
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [{"type": "Linear", "in_features": a, "out_features": b}, _ACT_LAYER[activation]]
    layers.append({"type": "Linear", "in_features": dims[-1], "out_features": num_classes})
    return {"type": "sequential", "layers": layers}


class MLPFamily(ClassifierFamily):
    """``qegraph zoo mlp``: activation, depth and width are sampled per run."""

    name = "mlp"
    chunk_size = 200

    def sample_config(self, seed: int, run: int) -> dict[str, Any]:
        rng = np.random.default_rng([seed, run])
        return {
            "activation": choice(rng, MLP_ACTIVATIONS),
            "depth": choice(rng, MLP_DEPTHS),
            "width": choice(rng, MLP_WIDTHS),
            "w_init": choice(rng, WEIGHT_INITS),
            "init_std": loguniform(rng, 1e-3, 0.5),
            "optimizer": choice(rng, OPTIMIZERS),
            "learning_rate": loguniform(rng, 5e-4, 5e-2),
            "l2reg": loguniform(rng, 1e-8, 1e-2),
            "train_fraction": choice(rng, (0.1, 0.25, 0.5, 1.0)),
        }

    def arch(self, config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        key = f"mlp-{config['activation']}-{'x'.join([str(config['width'])] * config['depth'])}"
        return key, mlp_arch(config["activation"], [config["width"]] * config["depth"])

    def preprocessing(self) -> dict[str, Any]:
        return preprocessing_record("images [N, 1, 8, 8] (the network's Flatten makes them [N, 64])")

    def data(self) -> ClassificationData:
        d = load_digits_data()
        return ClassificationData(*d.train, *d.test)
