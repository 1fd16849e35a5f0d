"""Vectorized training of many small networks at once (one stacked tensor per parameter).

Every parameter of M same-architecture models is stacked into one ``[M, P]`` buffer. Plain
classifier ``nn.Sequential``s run layer by layer on ``[M, B, ...]`` activations (convolutions as
one grouped convolution, linear layers as one batched matmul); other modules (the transformer zoo)
through ``torch.func.vmap`` over ``torch.func.functional_call``. :class:`StackedOptimizer`
implements SGD, Adam and RMSProp on the stacked tensors with per-model optimizer, learning rate and
L2 strength. A model whose update would make a parameter non-finite is frozen at its last finite
value (recorded as ``diverged``), so every stored checkpoint converts to a graph.

Devices: training runs on ``device`` (CPU or a GPU), but every random number (initialisations, data
subsets, minibatches, dropout masks) is drawn on the CPU from seeded generators and copied to the
device, so a zoo's randomness is the same on every device: a GPU zoo equals the CPU zoo of the same
seed up to floating-point rounding (cuDNN's TF32 convolutions, if enabled, included). Per-step draws
reach a GPU through pinned memory without waiting for it, so drawing the next minibatch overlaps the
device's work; the loop synchronises only at checkpoints (one copy of all parameters and metrics).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from qegraph.errors import QegraphError

OPTIMIZERS = ("sgd", "adam", "rmsprop")
WEIGHT_INITS = ("glorot_normal", "glorot_uniform", "he_normal", "orthogonal", "random_normal", "truncated_normal")


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU torch generator seeded from integer keys (stable across runs, platforms and devices)."""
    seed = int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"cpu"`` → CPU; ``"auto"`` → the current CUDA device if one is available, else CPU; any
    other torch device string as given, after checking that the device exists."""
    if device is None or device == "auto":
        return torch.device("cuda" if device == "auto" and torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise QegraphError(f"unknown device {device!r} ({e}); use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise QegraphError(f"device {device!r} requested but torch.cuda.is_available() is False "
                           f"(torch {torch.__version__}); use --device cpu or a CUDA build of PyTorch")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise QegraphError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return dev


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """A freshly drawn CPU tensor on ``device``; to a CUDA device asynchronously, through pinned memory
    (the caching host allocator keeps the pinned block until the copy is done)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


class StackedOptimizer:
    """SGD, Adam (β = 0.9, 0.999) or RMSProp (ρ = 0.9), chosen per model, on a flat ``[M, P]`` buffer.

    ``l2[m]`` adds ``l2·Σw²`` over the entries where ``decay_mask`` is True (weight matrices and
    kernels, as a Keras ``kernel_regularizer``) to model m's loss. One update covers the three rules
    with per-model constants (β₁ = 0 for SGD and RMSProp, β₂ = 0 and a unit denominator for SGD, bias
    corrections only for Adam): ``m ← lerp(m, g, 1−β₁)``, ``v ← lerp(v, g², 1−β₂)``,
    ``θ ← θ − lr/bc₁ · m / (√(v/bc₂) + ε)``.
    """

    def __init__(self, flat: Tensor, decay_mask: Tensor, kinds: Sequence[str], lr: Sequence[float],
                 l2: Sequence[float], eps: float = 1e-7) -> None:
        dev, dtype = flat.device, flat.dtype
        kind = torch.tensor([OPTIMIZERS.index(k) for k in kinds], device=dev)
        self.adam = (kind == OPTIMIZERS.index("adam")).unsqueeze(1)
        self.sgd = (kind == OPTIMIZERS.index("sgd")).unsqueeze(1)
        rms = (kind == OPTIMIZERS.index("rmsprop")).unsqueeze(1)
        self.b1 = torch.where(self.adam, 0.9, 0.0).to(dtype)
        self.b2 = torch.where(self.adam, 0.999, torch.where(rms, 0.9, 0.0)).to(dtype)
        self.lr = torch.as_tensor(lr, dtype=dtype, device=dev).unsqueeze(1)
        self.l2x2 = 2 * torch.as_tensor(l2, dtype=dtype, device=dev).unsqueeze(1) * decay_mask.to(dev, dtype)
        self.eps = torch.where(self.sgd, 1.0, eps).to(dtype)
        self.m, self.v = torch.zeros_like(flat), torch.zeros_like(flat)
        self.t = 0
        self.active = torch.ones(len(kinds), dtype=torch.bool, device=dev)

    @torch.no_grad()
    def step(self, flat: Tensor, grad: Tensor) -> None:
        """Update ``flat`` in place; a model whose update is non-finite is frozen from then on (decided
        on the device: no host synchronisation)."""
        self.t += 1
        g = torch.addcmul(grad, self.l2x2, flat)
        self.m.lerp_(g, 1 - self.b1)
        self.v.lerp_(g.mul_(g), 1 - self.b2)
        bc1 = torch.where(self.adam, 1 - self.b1**self.t, 1.0)
        inv_bc2 = torch.where(self.sgd, 0.0, 1 / torch.where(self.adam, 1 - self.b2**self.t, 1.0))
        denom = (self.v * inv_bc2).sqrt_().add_(self.eps)
        cand = flat - (self.m * (self.lr / bc1)).div_(denom)
        self.active &= torch.isfinite(cand.sum(1))  # a non-finite entry makes the row sum non-finite
        flat.copy_(torch.where(self.active.unsqueeze(1), cand, flat))


def flatten_stacked(params: dict[str, Tensor]) -> tuple[Tensor, Callable[[Tensor], dict[str, Tensor]]]:
    """Stacked parameters → one ``[M, P]`` buffer and a function mapping the buffer back to views."""
    names = list(params)
    shapes = [params[k].shape[1:] for k in names]
    sizes = [s.numel() for s in shapes]
    flat = torch.cat([params[k].reshape(params[k].size(0), -1) for k in names], dim=1)

    def views(buf: Tensor) -> dict[str, Tensor]:
        return {k: t.view(buf.size(0), *s) for k, t, s in zip(names, buf.split(sizes, dim=1), shapes)}

    return flat, views


@torch.no_grad()
def init_stacked(template: nn.Module, hparams: Sequence[dict[str, Any]], gen: torch.Generator) -> dict[str, Tensor]:
    """Stacked fresh parameters for ``len(hparams)`` copies of ``template``.

    Weights (≥ 2 dims) follow ``hp["w_init"]`` (:data:`WEIGHT_INITS`; ``random_normal`` and
    ``truncated_normal`` use std ``hp["init_std"]``, the others their standard fan-based scale times
    ``hp.get("init_gain", 1)``); biases start at zero and norm scales at one.
    """
    out: dict[str, Tensor] = {}
    for name, p in template.named_parameters():
        stack = torch.empty((len(hparams), *p.shape), dtype=p.dtype)
        for m, hp in enumerate(hparams):
            stack[m] = _init_one(name, p, hp, gen)
        out[name] = stack
    return out


def _init_one(name: str, p: Tensor, hp: dict[str, Any], gen: torch.Generator) -> Tensor:
    if p.dim() < 2:
        return torch.ones_like(p) if "norm" in name and name.endswith("weight") else torch.zeros_like(p)
    fan_out, fan_in = p.shape[0] * p[0, 0].numel(), p.shape[1] * p[0, 0].numel()
    kind, gain = hp["w_init"], float(hp.get("init_gain", 1.0))
    t = torch.empty_like(p)
    if kind == "random_normal":
        return t.normal_(0.0, float(hp["init_std"]), generator=gen)
    if kind == "truncated_normal":
        std = float(hp["init_std"])
        return nn.init.trunc_normal_(t, 0.0, std, -2 * std, 2 * std, generator=gen)
    if kind == "glorot_normal":
        return t.normal_(0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), generator=gen)
    if kind == "glorot_uniform":
        a = gain * math.sqrt(6.0 / (fan_in + fan_out))
        return t.uniform_(-a, a, generator=gen)
    if kind == "he_normal":
        return t.normal_(0.0, gain * math.sqrt(2.0 / fan_in), generator=gen)
    if kind == "orthogonal":
        return nn.init.orthogonal_(t, gain=gain, generator=gen)
    raise ValueError(f"unknown weight init {kind!r}; choose from {WEIGHT_INITS}")


@dataclass(frozen=True)
class ClassificationData:
    """Model inputs (already preprocessed) and labels of a train and a test set."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor


@dataclass
class TrainedCheckpoint:
    """One stored checkpoint: run, step, architecture key, parameters, hyperparameters, metrics."""

    run: int
    step: int
    arch: str
    state_dict: dict[str, Tensor]
    config: dict[str, Any]
    metrics: dict[str, float]


class DropoutBeforeHead(nn.Module):
    """The layers of a classifier ``nn.Sequential`` (same parameter names), run with a per-model
    dropout keep-mask multiplied into the input of the last layer."""

    def __init__(self, seq: nn.Sequential) -> None:
        super().__init__()
        for name, layer in seq.named_children():
            self.add_module(name, layer)

    def forward(self, x: Tensor, feature_mask: Tensor) -> Tensor:
        *body, head = self.children()
        for layer in body:
            x = layer(x)
        return head(x * feature_mask)


def _stacked_layer(layer: nn.Module, p: dict[str, Tensor], h: Tensor) -> Tensor:
    """One layer of M stacked models on ``h`` = ``[M, B, ...]`` (grouped conv, batched matmul)."""
    if isinstance(layer, nn.Linear) and h.dim() == 3:
        out = torch.bmm(h, p["weight"].transpose(1, 2))
        return out + p["bias"].unsqueeze(1) if "bias" in p else out
    if isinstance(layer, nn.Conv2d):
        m, b = h.shape[:2]
        w = p["weight"]
        out = F.conv2d(h.transpose(0, 1).reshape(b, m * h.size(2), *h.shape[3:]), w.reshape(-1, *w.shape[2:]),
                       p["bias"].reshape(-1) if "bias" in p else None, layer.stride, layer.padding, layer.dilation,
                       groups=m)
        return out.view(b, m, w.size(1), *out.shape[2:]).transpose(0, 1)
    if isinstance(layer, nn.AdaptiveAvgPool2d) and layer.output_size in (1, (1, 1), [1, 1]):
        return h.mean((-2, -1), keepdim=True)
    if isinstance(layer, nn.Flatten):
        return h.flatten(layer.start_dim + 1, layer.end_dim if layer.end_dim < 0 else layer.end_dim + 1)
    if not any(True for _ in layer.parameters()):
        return layer(h)  # elementwise activations
    raise TypeError(f"no stacked rule for {type(layer).__name__}")


def stacked_forward(model: nn.Module, params: dict[str, Tensor], x: Tensor, mask: Tensor, shared_x: bool) -> Tensor:
    """Outputs ``[M, B, ...]`` of M stacked models on inputs ``x`` (``[M, B, ...]``, or ``[B, ...]``
    shared by all models). ``mask`` multiplies the input of the last layer (dropout keep-mask).

    A :class:`DropoutBeforeHead` (a plain classifier ``nn.Sequential``) runs layer by layer as grouped
    convolutions and batched matmuls; any other module through ``vmap(functional_call)``.
    """
    n = next(iter(params.values())).size(0)
    if isinstance(model, DropoutBeforeHead):
        h = x.expand(n, *x.shape) if shared_x else x
        *body, head = model.named_children()
        for name, layer in body:
            h = _stacked_layer(layer, {k[len(name) + 1:]: v for k, v in params.items() if k.startswith(name + ".")}, h)
        name, layer = head
        return _stacked_layer(layer, {k[len(name) + 1:]: v for k, v in params.items() if k.startswith(name + ".")}, h * mask)

    def one(p: dict[str, Tensor], xi: Tensor, mi: Tensor) -> Tensor:
        return functional_call(model, p, (xi, mi))

    return vmap(one, in_dims=(0, None if shared_x else 0, None if shared_x else 0))(params, x, mask)


@torch.no_grad()
def _evaluate(model: nn.Module, params: dict[str, Tensor], x: Tensor, y: Tensor, feat_dim: int,
              member: Tensor | None, chunk: int = 512) -> tuple[Tensor, Tensor]:
    """Per-model accuracy and mean cross-entropy on ``x`` (restricted to ``member[m]`` rows if given)."""
    correct, losses = [], []
    ones = torch.ones(feat_dim, device=x.device)
    for s in range(0, x.size(0), chunk):
        logits = stacked_forward(model, params, x[s : s + chunk], ones, shared_x=True)  # [M, n, C]
        ys = y[s : s + chunk]
        correct.append((logits.argmax(-1) == ys).float())
        losses.append(F.cross_entropy(logits.transpose(1, 2), ys.expand(logits.size(0), -1), reduction="none"))
    acc, loss = torch.cat(correct, 1), torch.cat(losses, 1)
    if member is None:
        return acc.mean(1), loss.mean(1)
    w = member.float()
    return (acc * w).sum(1) / w.sum(1), (loss * w).sum(1) / w.sum(1)


RunGroup = tuple[Sequence[tuple[int, dict[str, Any]]], torch.Generator]


def train_classifiers(
    model: nn.Module,
    arch_key: str,
    groups: Sequence[RunGroup],
    data: ClassificationData,
    checkpoint_steps: Sequence[int],
    batch_size: int = 32,
    progress: Callable[[float], None] = lambda n: None,
    device: str | torch.device | None = None,
) -> list[TrainedCheckpoint]:
    """Train copies of ``model`` (one architecture) at once on ``device``; return all checkpoints.

    ``groups``: ``(runs, generator)`` pairs; each group's random numbers (initialisation, training
    subset, minibatches, dropout masks) come from its own generator in the same order as if it were
    trained alone, so training several groups in one call (e.g. several zoo chunks on a GPU) gives
    every run the same randomness as one call per group. Each run's config gives ``optimizer``,
    ``learning_rate``, ``l2reg``, ``w_init`` (+ ``init_std``), ``train_fraction`` (the run trains on
    its own random subset of that size) and optionally ``dropout`` (on the input of the last
    ``nn.Linear``). Checkpoints are taken before the listed optimizer steps (step 0 =
    initialisation), with train metrics measured on the run's own training subset; their state_dicts
    are CPU tensors. ``progress(n)`` is called after every step with the number of models' worth of
    training done.
    """
    dev = resolve_device(device)
    runs = [r for group_runs, _ in groups for r in group_runs]
    hps = [hp for _, hp in runs]
    feat_dim = [m for m in model.modules() if isinstance(m, nn.Linear)][-1].in_features
    n_models, n_train = len(runs), data.train_x.size(0)
    model = model.train().to(dev)
    train_x, train_y, test_x, test_y = (t.to(dev) for t in (data.train_x, data.train_y, data.test_x, data.test_y))
    inits = [init_stacked(model, [hp for _, hp in r], gen) for r, gen in groups]
    flat, views = flatten_stacked({k: torch.cat([i[k] for i in inits]).to(dev) for k in inits[0]})
    flat.requires_grad_()
    decay = torch.cat([torch.full((p.numel(),), p.dim() >= 2) for p in model.parameters()])
    opt = StackedOptimizer(flat, decay, [hp["optimizer"] for hp in hps], [hp["learning_rate"] for hp in hps],
                           [hp["l2reg"] for hp in hps])
    perm = torch.argsort(torch.cat([torch.rand(len(r), n_train, generator=gen) for r, gen in groups]), dim=1)
    n_sub = torch.tensor([max(batch_size, round(hp["train_fraction"] * n_train)) for hp in hps])
    member = torch.empty_like(perm).scatter_(1, perm, torch.arange(n_train).expand(n_models, -1)) < n_sub[:, None]
    member = member.to(dev)
    keep = 1.0 - torch.tensor([float(hp.get("dropout", 0.0)) for hp in hps])
    keep_dev = keep.to(dev)[:, None, None]
    out: list[TrainedCheckpoint] = []
    last = max(checkpoint_steps)
    for step in range(last + 1):
        if step in checkpoint_steps:
            snap = views(flat.detach())
            tr_acc, tr_loss = _evaluate(model, snap, train_x, train_y, feat_dim, member)
            te_acc, te_loss = _evaluate(model, snap, test_x, test_y, feat_dim, None)
            host = {k: v.cpu() for k, v in snap.items()}  # one copy per checkpoint step, not per model
            metrics = torch.stack([tr_acc, tr_loss, te_acc, te_loss]).cpu().tolist()
            active = opt.active.cpu().tolist()
            for m, (run, hp) in enumerate(runs):
                out.append(TrainedCheckpoint(
                    run=run, step=step, arch=arch_key,
                    state_dict={k: v[m].clone() for k, v in host.items()}, config=dict(hp),
                    metrics={"train_accuracy": metrics[0][m], "train_loss": metrics[1][m],
                             "test_accuracy": metrics[2][m], "test_loss": metrics[3][m],
                             "diverged": not active[m]},
                ))
        if step == last:
            break
        # drawn on the CPU, group by group (each generator: minibatch, then dropout mask), then copied
        pick, unif = [], []
        for r, gen in groups:
            pick.append(torch.rand(len(r), batch_size, generator=gen))
            unif.append(torch.rand(len(r), batch_size, feat_dim, generator=gen))
        idx = to_device(perm.gather(1, (torch.cat(pick) * n_sub[:, None]).long()), dev)
        mask = to_device(torch.cat(unif) < keep[:, None, None], dev) / keep_dev  # keep-mask copied as bool
        logits = stacked_forward(model, views(flat), train_x[idx], mask, shared_x=False)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), train_y[idx].reshape(-1), reduction="none")
        (grad,) = torch.autograd.grad(loss.view(n_models, batch_size).mean(1).sum(), flat)
        opt.step(flat, grad)
        progress(n_models / last)
    return sorted(out, key=lambda c: (c.run, c.step))
