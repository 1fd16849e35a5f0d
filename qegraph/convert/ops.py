"""What each elementwise op, pooling and reshape does to a unit's symmetry.

An op g applied to the units between their producer (rows of W_in) and their consumers
(columns of W_out) keeps the scalar λ of a unit iff g(λz) = λ·g(z):

* linear ops (dropout in eval, identity, scalar multiplication, average pooling): every λ ≠ 0;
* positively homogeneous ops (ReLU, LeakyReLU, max pooling): λ > 0;
* odd ops (tanh, sin): λ = ±1;
* everything else (sigmoid, GELU, SiLU, softmax, norms, adding a constant): λ = 1 only.
"""

from __future__ import annotations

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
    F.softmax: Scalars.ONE, F.log_softmax: Scalars.ONE, torch.softmax: Scalars.ONE,
    "softmax": Scalars.ONE, "log_softmax": Scalars.ONE,
    F.dropout: Scalars.ALL, F.dropout1d: Scalars.ALL, F.dropout2d: Scalars.ALL,
    operator.neg: Scalars.ALL, torch.neg: Scalars.ALL, "neg": Scalars.ALL,
    "contiguous": Scalars.ALL, "clone": Scalars.ALL, "detach": Scalars.ALL,
}

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
FLATTEN_FUNCTIONS = {torch.flatten, "flatten"}
RESHAPE_FUNCTIONS = {"view", "reshape", torch.reshape}
SHAPE_FUNCTIONS = {"size", "dim"}
SQUEEZE_FUNCTIONS = {torch.squeeze, "squeeze"}
