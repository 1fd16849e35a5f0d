"""The INR zoo: one SIREN per digit image, fitted to its 8×8 pixels (label = the digit).

Each INR maps a pixel coordinate in ``[-1, 1]²`` to the pixel value mapped to ``[-1, 1]``
(``2·pixels/16 − 1``). Architecture: ``Linear(2, 32), Sine(30), Linear(32, 32), Sine(30),
Linear(32, 1)`` with the SIREN initialisation; all INRs of a chunk are fitted at once (full batch,
Adam). Recorded: ``psnr`` (dB, peak-to-peak range 2) and ``mse`` of the final fit, and the image's
``label``, index into ``load_digits()`` and split (``train``/``test`` of the digits split).

Initialisation (``init``): ``"shared"`` (default) starts every INR of the zoo from one SIREN
initialisation drawn from the zoo seed; ``"independent"`` draws a fresh one per INR. An 8×8 image
has only 64 values against 1,185 parameters, so a fit barely moves the weights away from where they
started: with independent starts the class is not decodable from the weights (a linear probe on the
raw weights or on per-tensor statistics is at chance, 10–13 %, while the same probe on the rendered
images reaches 93 %), with a shared start it is (91 % raw, 62 % statistics). Graph metanetworks
still see the weights through random elements of the SIREN's symmetry group when trained or tested
with augmentation, so a shared start does not make the symmetry disappear.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from qegraph.data.digits import load_digits_data, pixel_grid, preprocessing_record
from qegraph.data.family import Device, Progress, Runs, ZooFamily
from qegraph.data.train import (
    DropoutBeforeHead, StackedOptimizer, TrainedCheckpoint, flatten_stacked, resolve_device, seeded_generator,
    stacked_forward,
)
from qegraph.graph.arch import module_from_arch

SIREN_HIDDEN = 32
SIREN_W0 = 30.0
_SHARED_INIT_KEY = 2**31 - 1  # generator key of the shared start (chunk keys are 0, 1, 2, …)


def siren_arch(hidden: int = SIREN_HIDDEN, depth: int = 2, w0: float = SIREN_W0, in_features: int = 2,
               out_features: int = 1) -> dict[str, Any]:
    """``Linear, Sine, (Linear, Sine)×(depth−1), Linear``."""
    layers: list[Any] = []
    dims = [in_features] + [hidden] * depth
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [{"type": "Linear", "in_features": a, "out_features": b}, {"type": "Sine", "w0": w0}]
    layers.append({"type": "Linear", "in_features": hidden, "out_features": out_features})
    return {"type": "sequential", "layers": layers}


@lru_cache(maxsize=8)
def _image_order(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(load_digits_data().labels.numel())


def siren_init(template: nn.Module, n: int, w0: float, gen: torch.Generator) -> dict[str, Tensor]:
    """Stacked SIREN initialisation (Sitzmann et al. 2020): first layer U(±1/fan_in), later layers
    U(±√(6/fan_in)/ω₀), biases U(±1/√fan_in)."""
    out: dict[str, Tensor] = {}
    first = True
    for name, p in template.named_parameters():
        fan_in = p.shape[-1] if p.dim() == 2 else out[name.replace("bias", "weight")].shape[-1]
        if p.dim() == 2:
            bound = 1.0 / fan_in if first else math.sqrt(6.0 / fan_in) / w0
            first = False
        else:
            bound = 1.0 / math.sqrt(fan_in)
        out[name] = torch.empty(n, *p.shape).uniform_(-bound, bound, generator=gen)
    return out


class INRFamily(ZooFamily):
    """``qegraph zoo inr``: run r fits image ``permutation(seed)[r]`` of the digits."""

    name = "inr"
    chunk_size = 300
    fit_steps = 150
    learning_rate = 1e-3
    INITS = ("shared", "independent")

    def __init__(self, init: str = "shared") -> None:
        if init not in self.INITS:
            raise ValueError(f"init must be one of {', '.join(self.INITS)}, got {init!r}")
        self.init = init

    @property
    def options(self) -> dict[str, Any]:
        return {"init": self.init}

    def sample_config(self, seed: int, run: int) -> dict[str, Any]:
        idx = int(_image_order(seed)[run])
        d = load_digits_data()
        split = "test" if bool((d.test_idx == idx).any()) else "train"
        return {"image_index": idx, "label": int(d.labels[idx]), "split": split,
                "learning_rate": self.learning_rate, "fit_steps": self.fit_steps, "init": self.init}

    def arch(self, config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return f"siren-2x{SIREN_HIDDEN}", siren_arch()

    def preprocessing(self) -> dict[str, Any]:
        rec = preprocessing_record("coordinates: 8×8 pixel grid in [-1, 1]² (row-major (row, col)) → 2·pixels/16 − 1")
        rec["image"] = "config.image_index indexes sklearn.datasets.load_digits().images"
        return rec

    def max_runs(self) -> int:
        return int(load_digits_data().labels.numel())

    def train_chunks(self, chunks: Sequence[tuple[int, Runs]], seed: int, progress: Progress,
                     device: Device = None) -> list[list[TrainedCheckpoint]]:
        """Fit the INRs of all ``chunks`` at once (full batch, Adam). Starts: one shared initialisation
        (generator ``(seed, 2^31 − 1)``) or, per chunk k, independent ones from generator ``(seed, k)``."""
        dev = resolve_device(device)
        runs = [r for _, chunk_runs in chunks for r in chunk_runs]
        key, rec = self.arch(runs[0][1])
        template = module_from_arch(rec)
        n = len(runs)
        coords = pixel_grid(8).to(dev)
        images = load_digits_data().images.squeeze(1).reshape(-1, 64)
        target = (2 * images[torch.tensor([cfg["image_index"] for _, cfg in runs])] - 1).to(dev)  # [n, 64]
        if self.init == "shared":
            start = siren_init(template, 1, SIREN_W0, seeded_generator(seed, _SHARED_INIT_KEY))
            init = {k: v.expand(n, *v.shape[1:]).clone() for k, v in start.items()}
        else:
            parts = [siren_init(template, len(r), SIREN_W0, seeded_generator(seed, k)) for k, r in chunks]
            init = {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
        flat, views = flatten_stacked({k: v.to(dev) for k, v in init.items()})
        flat.requires_grad_()
        opt = StackedOptimizer(flat, torch.zeros(flat.size(1), dtype=torch.bool), ["adam"] * n,
                               [self.learning_rate] * n, [0.0] * n)

        model, ones = DropoutBeforeHead(template).to(dev), torch.ones(SIREN_HIDDEN, device=dev)

        def predict(buf: Tensor) -> Tensor:
            return stacked_forward(model, views(buf), coords, ones, shared_x=True).squeeze(-1)

        for _ in range(self.fit_steps):
            mse = ((predict(flat) - target) ** 2).mean(1)
            (grad,) = torch.autograd.grad(mse.sum(), flat)
            opt.step(flat, grad)
            progress(n / self.fit_steps)
        with torch.no_grad():
            mse = ((predict(flat) - target) ** 2).mean(1)
        params = {k: v.cpu() for k, v in views(flat.detach()).items()}
        mse_host = mse.cpu()
        out = [
            TrainedCheckpoint(run=run, step=self.fit_steps, arch=key,
                              state_dict={k: v[m].clone() for k, v in params.items()}, config=dict(cfg),
                              metrics={"psnr": float(10 * torch.log10(4.0 / mse_host[m])), "mse": float(mse_host[m])})
            for m, (run, cfg) in enumerate(runs)
        ]
        sizes = [len(r) for _, r in chunks]
        return [out[a : a + s] for a, s in zip(np.cumsum([0, *sizes[:-1]]).tolist(), sizes)]
