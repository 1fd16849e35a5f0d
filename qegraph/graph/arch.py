"""Architecture records: JSON-able descriptions of a network that ``to_module()`` can rebuild.

Three kinds of record:

* ``{"type": "sequential", "layers": [{"type": "Conv2d", "in_channels": 1, …}, "ReLU", …]}``:
  an ``nn.Sequential`` of the torch.nn layers in :data:`SPEC_LAYERS` (nested sequentials allowed).
  This is also the format of a YAML ``--spec`` file.
* ``{"type": "chain_mlp", "layers": [[prefix, in, out, bias], …], "activation": "relu"}``: a
  :class:`qegraph.modules.ChainMLP` (plain Linear chains recognised from checkpoint keys).
* ``{"type": "class", "target": "pkg.module:Class", "kwargs": {...}}``: a user class. Rebuilding
  imports it; it must be an ``nn.Module`` subclass (checked before it is called).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from torch import Tensor, nn

from qegraph.errors import QegraphError
from qegraph.modules import ChainMLP, Sine

#: torch.nn layers (and qegraph's Sine) that a sequential spec may name.
SPEC_LAYERS: dict[str, type[nn.Module]] = {
    cls.__name__: cls
    for cls in (
        nn.Linear, nn.Conv1d, nn.Conv2d,
        nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.Identity, Sine,
        nn.Flatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
        nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
        nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
        nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.Softmax, nn.LogSoftmax,
    )
}
_SKIP_ARGS = {"self", "device", "dtype"}


def _jsonable(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    return v


def layer_record(m: nn.Module) -> dict[str, Any] | None:
    """The spec record of one torch.nn layer, or None if it is not a plain spec layer."""
    if isinstance(m, nn.Sequential):
        layers = [layer_record(c) for c in m]
        return None if any(r is None for r in layers) else {"type": "Sequential", "layers": layers}
    cls = type(m)
    if SPEC_LAYERS.get(cls.__name__) is not cls:
        return None
    rec: dict[str, Any] = {"type": cls.__name__}
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name in _SKIP_ARGS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if name == "bias" and (isinstance(getattr(m, "bias", None), Tensor) or getattr(m, "bias", 0) is None):
            rec["bias"] = m.bias is not None
        elif hasattr(m, name):
            rec[name] = _jsonable(getattr(m, name))
        elif p.default is p.empty:
            return None
    return rec


def arch_from_module(module: nn.Module, kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The most rebuildable record of ``module``."""
    if isinstance(module, ChainMLP):
        return {"type": "chain_mlp", "layers": module.layer_specs, "activation": module.activation}
    if type(module) is nn.Sequential:
        rec = layer_record(module)
        if rec is not None:
            return {"type": "sequential", "layers": rec["layers"]}
    cls = type(module)
    return {"type": "class", "target": f"{cls.__module__}:{cls.__qualname__}", "kwargs": kwargs}


def _layer_from_record(rec: Any, where: str) -> nn.Module:
    if isinstance(rec, str):
        rec = {"type": rec}
    if not isinstance(rec, dict) or "type" not in rec:
        raise QegraphError(f"{where}: a layer must be a name or a mapping with a 'type' key, got {rec!r}")
    kwargs = {k: v for k, v in rec.items() if k != "type"}
    if rec["type"] == "Sequential":
        return nn.Sequential(*[_layer_from_record(r, f"{where}.{i}") for i, r in enumerate(kwargs.get("layers", []))])
    cls = SPEC_LAYERS.get(rec["type"])
    if cls is None:
        raise QegraphError(f"{where}: unknown layer type {rec['type']!r}; supported: {', '.join(sorted(SPEC_LAYERS))}")
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise QegraphError(f"{where}: bad arguments for {rec['type']}: {e}") from None


def module_from_arch(arch: dict[str, Any] | None) -> nn.Module:
    """Rebuild a module from an architecture record (parameters freshly initialised)."""
    if arch is None:
        raise QegraphError(
            "the graph records no rebuildable architecture: pass a template, graph.to_module(template=MyNet(...))"
        )
    kind = arch.get("type")
    if kind == "sequential":
        return nn.Sequential(*[_layer_from_record(r, f"layers[{i}]") for i, r in enumerate(arch["layers"])])
    if kind == "chain_mlp":
        return ChainMLP(arch["layers"], arch.get("activation", "relu"))
    if kind == "class":
        cls = import_object(arch["target"])
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise QegraphError(f"architecture {arch['target']!r} is not an nn.Module subclass; refusing to call it")
        kwargs = arch.get("kwargs") or {}
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise QegraphError(
                f"cannot build {arch['target']} with kwargs {kwargs}: {e} (give them with --arch-kwargs, "
                "or pass a template module)"
            ) from None
    raise QegraphError(f"unknown architecture record type {kind!r}")


def import_object(target: str) -> Any:
    """Import ``"pkg.module:Qualified.Name"``."""
    if ":" not in target:
        raise QegraphError(f"--arch must look like 'package.module:ClassName', got {target!r}")
    mod_name, qual = target.split(":", 1)
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as e:
        raise QegraphError(f"cannot import module {mod_name!r} for architecture {target!r}: {e}") from None
    for part in qual.split("."):
        if not hasattr(obj, part):
            raise QegraphError(f"module {mod_name!r} has no attribute {qual!r} (architecture {target!r})")
        obj = getattr(obj, part)
    return obj


def check_state_dict_matches(module: nn.Module, sd: dict[str, Tensor], source: str) -> None:
    """Raise a clear error naming the first unexpected, mismatching or missing key."""
    ref = module.state_dict()
    for key, t in sd.items():
        if key not in ref:
            raise QegraphError(
                f"{source} has key {key!r} that {type(module).__name__} does not have "
                f"(its first key is {next(iter(ref), None)!r})"
            )
        if tuple(ref[key].shape) != tuple(t.shape):
            raise QegraphError(
                f"{source} does not match the architecture at key {key!r}: "
                f"checkpoint shape {tuple(t.shape)}, architecture shape {tuple(ref[key].shape)}"
            )
    for key in ref:
        if key not in sd:
            raise QegraphError(f"{source} is missing key {key!r} that {type(module).__name__} expects")
