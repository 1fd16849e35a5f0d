"""The transformer zoo: tiny ``nn.TransformerEncoder`` classifiers reading a digit's 8 rows as 8 tokens.

Tokens are the rows with a one-hot row index (16 features, see :func:`qegraph.data.digits.row_tokens`),
so positions need no extra parameter type. :class:`TokenTransformer`: ``Linear(16, d)`` token
embedding → ``nn.TransformerEncoder`` (batch_first, post-norm, no dropout; 1–2 layers, 2 or 4 heads,
ReLU or GELU feed-forward of width 2d) → mean over tokens → ``Linear(d, 10)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor, nn

from qegraph.data.digits import load_digits_data, preprocessing_record, row_tokens
from qegraph.data.family import ClassifierFamily, choice, loguniform
from qegraph.data.train import OPTIMIZERS, ClassificationData

TRANSFORMER_WIDTHS = (16, 32)
TRANSFORMER_HEADS = (2, 4)
TRANSFORMER_LAYERS = (1, 2)
TRANSFORMER_ACTIVATIONS = ("relu", "gelu")


class TokenTransformer(nn.Module):
    """Token embedding → ``nn.TransformerEncoder`` → mean pool → linear head (see module docstring)."""

    def __init__(self, d_model: int = 16, nhead: int = 2, num_layers: int = 1, activation: str = "relu",
                 dim_feedforward: int = 32, in_features: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(in_features, d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout=0.0, activation=activation,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, tokens: Tensor, feature_mask: Tensor | None = None) -> Tensor:
        """``[B, T, in_features]`` → logits ``[B, num_classes]``; ``feature_mask`` (dropout keep-mask
        used in training) multiplies the pooled features."""
        h = self.encoder(self.embed(tokens)).mean(dim=1)
        return self.head(h if feature_mask is None else h * feature_mask)


def transformer_arch(d_model: int, nhead: int, num_layers: int, activation: str) -> dict[str, Any]:
    """The architecture record (``type: class``) of a :class:`TokenTransformer`."""
    return {"type": "class", "target": f"{__name__}:TokenTransformer",
            "kwargs": {"d_model": d_model, "nhead": nhead, "num_layers": num_layers, "activation": activation,
                       "dim_feedforward": 2 * d_model, "in_features": 16, "num_classes": 10}}


class TransformerFamily(ClassifierFamily):
    """``qegraph zoo transformer``: width, heads, depth and FFN activation sampled per run."""

    name = "transformer"
    chunk_size = 50
    checkpoint_steps = (0, 50, 150, 300)

    def sample_config(self, seed: int, run: int) -> dict[str, Any]:
        rng = np.random.default_rng([seed, run])
        return {
            "d_model": choice(rng, TRANSFORMER_WIDTHS),
            "nhead": choice(rng, TRANSFORMER_HEADS),
            "num_layers": choice(rng, TRANSFORMER_LAYERS),
            "activation": choice(rng, TRANSFORMER_ACTIVATIONS),
            "w_init": choice(rng, ("glorot_uniform", "glorot_normal", "he_normal", "truncated_normal")),
            "init_std": loguniform(rng, 1e-2, 0.3),
            "optimizer": choice(rng, OPTIMIZERS),
            "learning_rate": loguniform(rng, 3e-4, 1e-2),
            "l2reg": loguniform(rng, 1e-8, 1e-3),
            "train_fraction": choice(rng, (0.25, 0.5, 1.0)),
        }

    def arch(self, config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        c = config
        key = f"transformer-d{c['d_model']}-h{c['nhead']}-l{c['num_layers']}-{c['activation']}"
        return key, transformer_arch(c["d_model"], c["nhead"], c["num_layers"], c["activation"])

    def preprocessing(self) -> dict[str, Any]:
        return preprocessing_record("row tokens [N, 8, 16]: each image row's 8 pixels + one-hot row index "
                                    "(qegraph.data.digits.row_tokens)")

    def data(self) -> ClassificationData:
        d = load_digits_data()
        (trx, try_), (tex, tey) = d.train, d.test
        return ClassificationData(row_tokens(trx), try_, row_tokens(tex), tey)
