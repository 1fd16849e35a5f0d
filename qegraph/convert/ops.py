"""What each elementwise op, pooling and reshape does to a unit's symmetry.

An op g applied to the units between their producer (rows of W_in) and their consumers
(columns of W_out) keeps the scalar λ of a unit iff g(λz) = λ·g(z):

* linear ops (dropout in eval, identity, scalar multiplication, average pooling): every λ ≠ 0;
* positively homogeneous ops (ReLU, LeakyReLU, max pooling, |x|): λ > 0;
* odd ops (tanh, sin, erf, softsign, a symmetric clamp/Hardtanh): λ = ±1;
* everything else (sigmoid, GELU, SiLU, Mish, ReLU6, Hardswish, Hardsigmoid, softmax, norms, adding a
  constant): λ = 1 only. ReLU6 = min(max(x, 0), 6) is *not* positively homogeneous: the cap at 6
  does not scale (relu6(2·5) = 6 ≠ 2·relu6(5)); Hardswish x·relu6(x+3)/6 and Hardsigmoid
  relu6(x+3)/6 are neither homogeneous nor odd.

A clamp to [lo, hi] (``torch.clamp``, ``F.hardtanh``, ``nn.Hardtanh``) commutes with λ > 0 when it is
a one-sided clamp at 0 (lo = 0, hi = ∞: ReLU; lo = −∞, hi = 0), with λ = ±1 when it is symmetric
(lo = −hi < 0), and with every λ ≠ 0 when it clamps nothing; see :func:`clamp_scalars`.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F
from torch import nn

from qegraph.graph.builder import Scalars

#: Elementwise modules → scalars they commute with.
ELEMENTWISE_MODULES: dict[type[nn.Module], Scalars] = {
    nn.ReLU: Scalars.POS,
    nn.LeakyReLU: Scalars.POS,
    nn.Tanh: Scalars.SIGN,
    nn.Sigmoid: Scalars.ONE,
    nn.GELU: Scalars.ONE,
    nn.SiLU: Scalars.ONE,
    nn.ELU: Scalars.ONE,
    nn.Softplus: Scalars.ONE,
    nn.Mish: Scalars.ONE,
    nn.ReLU6: Scalars.ONE,
    nn.Hardswish: Scalars.ONE,
    nn.Hardsigmoid: Scalars.ONE,
    nn.SELU: Scalars.ONE,
    nn.CELU: Scalars.ONE,
    nn.LogSigmoid: Scalars.ONE,
    nn.Threshold: Scalars.ONE,
    nn.RReLU: Scalars.POS,
    nn.Softsign: Scalars.SIGN,
    nn.Tanhshrink: Scalars.SIGN,
    nn.Hardshrink: Scalars.SIGN,
    nn.Softshrink: Scalars.SIGN,
    nn.Softmax: Scalars.ONE,
    nn.LogSoftmax: Scalars.ONE,
    nn.Identity: Scalars.ALL,
    nn.Dropout: Scalars.ALL,
    nn.Dropout1d: Scalars.ALL,
    nn.Dropout2d: Scalars.ALL,
}

#: Elementwise functions and tensor methods (by name) → scalars they commute with.
ELEMENTWISE_FUNCTIONS: dict[object, Scalars] = {
    F.relu: Scalars.POS, torch.relu: Scalars.POS, "relu": Scalars.POS, "relu_": Scalars.POS,
    F.leaky_relu: Scalars.POS,
    torch.tanh: Scalars.SIGN, F.tanh: Scalars.SIGN, "tanh": Scalars.SIGN,
    torch.sin: Scalars.SIGN, "sin": Scalars.SIGN,
    torch.sigmoid: Scalars.ONE, F.sigmoid: Scalars.ONE, "sigmoid": Scalars.ONE,
    F.gelu: Scalars.ONE, F.silu: Scalars.ONE, F.elu: Scalars.ONE, F.softplus: Scalars.ONE, F.mish: Scalars.ONE,
    F.relu6: Scalars.ONE, F.hardswish: Scalars.ONE, F.hardsigmoid: Scalars.ONE, F.selu: Scalars.ONE,
    F.celu: Scalars.ONE, F.logsigmoid: Scalars.ONE, F.threshold: Scalars.ONE, F.rrelu: Scalars.POS,
    F.softsign: Scalars.SIGN, F.tanhshrink: Scalars.SIGN, F.hardshrink: Scalars.SIGN, F.softshrink: Scalars.SIGN,
    torch.erf: Scalars.SIGN, "erf": Scalars.SIGN, torch.abs: Scalars.POS, "abs": Scalars.POS,
    torch.exp: Scalars.ONE, "exp": Scalars.ONE, "sigmoid_": Scalars.ONE, "tanh_": Scalars.SIGN,
    F.softmax: Scalars.ONE, F.log_softmax: Scalars.ONE, torch.softmax: Scalars.ONE,
    "softmax": Scalars.ONE, "log_softmax": Scalars.ONE,
    F.dropout: Scalars.ALL, F.dropout1d: Scalars.ALL, F.dropout2d: Scalars.ALL,
    operator.neg: Scalars.ALL, torch.neg: Scalars.ALL, "neg": Scalars.ALL,
    "contiguous": Scalars.ALL, "clone": Scalars.ALL, "detach": Scalars.ALL,
}

#: Clamps: ``torch.clamp(x, min, max)`` / ``x.clamp(...)`` / ``F.hardtanh(x, min_val, max_val)``.
CLAMP_FUNCTIONS = {torch.clamp, torch.clip, "clamp", "clip", "clamp_", F.hardtanh}
CLAMP_MIN_FUNCTIONS = {torch.clamp_min, "clamp_min"}
CLAMP_MAX_FUNCTIONS = {torch.clamp_max, "clamp_max"}


def clamp_scalars(lo: float | None, hi: float | None) -> Scalars:
    """The scalars λ with clamp(λz, lo, hi) = λ·clamp(z, lo, hi) for all z (``None`` = unbounded)."""
    lo = -math.inf if lo is None else float(lo)
    hi = math.inf if hi is None else float(hi)
    if lo == -math.inf and hi == math.inf:
        return Scalars.ALL
    if (lo, hi) in ((0.0, math.inf), (-math.inf, 0.0)):
        return Scalars.POS
    if lo == -hi and hi > 0:
        return Scalars.SIGN
    return Scalars.ONE


def module_scalars(mod: nn.Module) -> Scalars | None:
    """The scalars an elementwise module commutes with, or None if it is not a known elementwise op."""
    cls = type(mod)
    if cls in ELEMENTWISE_MODULES:
        return ELEMENTWISE_MODULES[cls]
    if cls is nn.Hardtanh:
        return clamp_scalars(mod.min_val, mod.max_val)
    return None


#: Library functions that fx records as one call (``torch.fx.wrap``), by ``"module:qualname"``, so that
#: the library need not be imported: torchvision's stochastic depth multiplies a whole sample (or batch)
#: by one random factor (identity in eval mode), which commutes with every per-unit λ.
NAMED_FUNCTIONS: dict[str, Scalars] = {
    "torchvision.ops.stochastic_depth:stochastic_depth": Scalars.ALL,
}


def named_function_scalars(target: object) -> Scalars | None:
    key = f"{getattr(target, '__module__', None)}:{getattr(target, '__qualname__', None)}"
    return NAMED_FUNCTIONS.get(key)


#: Pooling modules: (number of spatial dims or None for any, scalars).
POOL_MODULES: dict[type[nn.Module], tuple[int, Scalars]] = {
    nn.MaxPool1d: (1, Scalars.POS), nn.MaxPool2d: (2, Scalars.POS),
    nn.AdaptiveMaxPool1d: (1, Scalars.POS), nn.AdaptiveMaxPool2d: (2, Scalars.POS),
    nn.AvgPool1d: (1, Scalars.ALL), nn.AvgPool2d: (2, Scalars.ALL),
    nn.AdaptiveAvgPool1d: (1, Scalars.ALL), nn.AdaptiveAvgPool2d: (2, Scalars.ALL),
}

POOL_FUNCTIONS: dict[object, tuple[int, Scalars]] = {
    F.max_pool1d: (1, Scalars.POS), F.max_pool2d: (2, Scalars.POS),
    F.adaptive_max_pool1d: (1, Scalars.POS), F.adaptive_max_pool2d: (2, Scalars.POS),
    F.avg_pool1d: (1, Scalars.ALL), F.avg_pool2d: (2, Scalars.ALL),
    F.adaptive_avg_pool1d: (1, Scalars.ALL), F.adaptive_avg_pool2d: (2, Scalars.ALL),
}

#: Reductions over spatial dims (functions or method names) → scalars.
REDUCE_FUNCTIONS: dict[object, Scalars] = {
    torch.mean: Scalars.ALL, "mean": Scalars.ALL, torch.sum: Scalars.ALL, "sum": Scalars.ALL,
    torch.amax: Scalars.POS, "amax": Scalars.POS,
}

ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add, "add", "add_", operator.sub, torch.sub, "sub"}
MUL_FUNCTIONS = {operator.mul, operator.imul, torch.mul, "mul", "mul_", operator.truediv, torch.div, "div"}
#: The multiplications among MUL_FUNCTIONS (a number may stand on either side; two tensors may be multiplied).
PRODUCT_FUNCTIONS = {operator.mul, operator.imul, torch.mul, "mul", "mul_"}
POW_FUNCTIONS = {operator.pow, torch.pow, "pow"}
UNSQUEEZE_FUNCTIONS = {torch.unsqueeze, "unsqueeze"}
EXPAND_FUNCTIONS = {"expand", "expand_as"}
FLATTEN_FUNCTIONS = {torch.flatten, "flatten"}
RESHAPE_FUNCTIONS = {"view", "reshape", torch.reshape}
SHAPE_FUNCTIONS = {"size", "dim"}
SQUEEZE_FUNCTIONS = {torch.squeeze, "squeeze"}
