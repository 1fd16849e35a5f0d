"""Architecture records: JSON-able descriptions of a network that ``to_module()`` can rebuild.

Three kinds of record:

* ``{"type": "sequential", "layers": [{"type": "Conv2d", "in_channels": 1, …}, "ReLU", …]}``:
  an ``nn.Sequential`` of the torch.nn layers in :data:`SPEC_LAYERS` (nested sequentials allowed).
  This is also the format of a YAML ``--spec`` file.
* ``{"type": "chain_mlp", "layers": [[prefix, in, out, bias], …], "activation": "relu"}``: a
  :class:`qegraph.modules.ChainMLP` (plain Linear chains recognised from checkpoint keys).
* ``{"type": "class", "target": "pkg.module:Name", "kwargs": {...}}``: ``Name`` is an ``nn.Module``
  subclass (checked before it is called) or a *factory function* whose return annotation is an
  ``nn.Module`` subclass (``torchvision.models:resnet18``, ``timm:vit_tiny_patch16_224``; checked
  before the call, and the result is checked after it). A graph file names what to call, so nothing
  else is ever called. Targets resolve from the current directory first (``mynets:make`` finds
  ``./mynets.py``); ``timm:NAME`` also finds timm's model functions, which live in ``timm.models``.
  ``"kwargs": null`` means the constructor arguments are unknown: rebuilding needs a template.

``to_graph(module)`` records a user class with its constructor arguments when they can be *recovered
and verified*: each constructor parameter is read back from the same-named attribute of the module
(``bias`` as "has a bias"), a copy is built from those arguments on the meta device, and the record
is kept only if the copy has the same submodules (names and types), the same parameter and buffer
names and shapes, and equal plain attributes on every submodule — everything ``forward`` can depend
on except the parameter values, which the graph holds. Otherwise the record keeps the class with
``"kwargs": null`` and a ``"reason"``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor, nn

from qegraph.errors import QegraphError
from qegraph.modules import ChainMLP, Sine

#: torch.nn layers (and qegraph's Sine) that a sequential spec may name.
SPEC_LAYERS: dict[str, type[nn.Module]] = {
    cls.__name__: cls
    for cls in (
        nn.Linear, nn.Conv1d, nn.Conv2d,
        nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.Identity, Sine,
        nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Mish, nn.ELU,
        nn.Flatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
        nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
        nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
        nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.Softmax, nn.LogSoftmax,
    )
}
_SKIP_ARGS = {"self", "device", "dtype"}
#: Keyword arguments that would make a library factory download weights (the graph holds them).
_DOWNLOAD_ARGS = ("pretrained", "weights")
#: Packages whose model functions live in a submodule: ``timm:NAME`` → ``timm.models:NAME``.
_MODEL_NAMESPACES = {"timm": "timm.models"}
#: Attributes every nn.Module has (bookkeeping, hooks, mode), not set by a constructor.
_MODULE_INTERNALS = frozenset(vars(nn.Module())) - {"_non_persistent_buffers_set"}
_MISSING = object()


def _jsonable(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    return v


def _is_json(v: Any) -> bool:
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    if isinstance(v, (tuple, list)):
        return all(_is_json(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _is_json(x) for k, x in v.items())
    return False


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
    """The most rebuildable record of ``module`` (``kwargs``: its known constructor arguments)."""
    if isinstance(module, ChainMLP):
        return {"type": "chain_mlp", "layers": module.layer_specs, "activation": module.activation}
    if type(module) is nn.Sequential:
        rec = layer_record(module)
        if rec is not None:
            return {"type": "sequential", "layers": rec["layers"]}
    cls = type(module)
    target = f"{cls.__module__}:{cls.__qualname__}"
    if kwargs is not None:
        return {"type": "class", "target": target, "kwargs": kwargs}
    recovered, reason = recover_kwargs(module)
    if recovered is None:
        return {"type": "class", "target": target, "kwargs": None, "reason": reason}
    return {"type": "class", "target": target, "kwargs": recovered}


# ---------------------------------------------------------------------- recovering constructor arguments
class _Opaque:
    """A value whose equality cannot be checked (a plain tensor attribute): never equal."""

    def __eq__(self, other: object) -> bool:
        return False

    __hash__ = None  # type: ignore[assignment]


def _canon(v: Any) -> Any:
    if isinstance(v, Tensor):
        return _Opaque()
    if isinstance(v, (tuple, list)):
        return [_canon(x) for x in v]
    if isinstance(v, dict):
        return {k: _canon(x) for k, x in v.items()}
    return v


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if type(a) is not type(b):
        return False
    try:
        return bool(a == b)
    except Exception:  # arrays and other objects without a truth value
        return False


def _structure(module: nn.Module) -> list[tuple]:
    """Everything a module's forward can depend on except parameter and buffer values."""
    out = []
    for name, m in module.named_modules(remove_duplicate=False):
        params = [(k, None if p is None else tuple(p.shape)) for k, p in m._parameters.items()]
        buffers = [(k, None if b is None else tuple(b.shape)) for k, b in m._buffers.items()]
        attrs = {k: _canon(v) for k, v in vars(m).items()
                 if k not in _MODULE_INTERNALS and k not in ("_parameters", "_buffers", "_modules")}
        out.append((name, type(m), params, buffers, attrs))
    return out


def _first_difference(a: list[tuple], b: list[tuple]) -> str | None:
    if [(n, t) for n, t, *_ in a] != [(n, t) for n, t, *_ in b]:
        return "its submodules differ"
    for (name, _, pa, ba, xa), (_, _, pb, bb, xb) in zip(a, b):
        where = f"submodule {name!r}" if name else "the module"
        for kind, xs, ys in (("parameter", pa, pb), ("buffer", ba, bb)):
            if [k for k, _ in xs] != [k for k, _ in ys]:
                return f"{where} has {kind}s {[k for k, _ in xs]}, the rebuilt one {[k for k, _ in ys]}"
            for (k, sx), (_, sy) in zip(xs, ys):
                if sx != sy:
                    return f"{kind} {k!r} of {where} has shape {sx}, the rebuilt one {sy}"
        if xa.keys() != xb.keys():
            return f"{where} has different attributes"
        for k in xa:
            if not _equal(xa[k], xb[k]):
                return f"attribute {k!r} of {where} differs"
    return None


@lru_cache(maxsize=64)
def _built_structure(cls: type[nn.Module], kwargs_json: str) -> list[tuple] | str:
    """The structure of ``cls(**kwargs)``, or the error it raised. Built on the meta device (no memory);
    a constructor that reads tensor values (``.item()``) is built again on the CPU."""
    kwargs = json.loads(kwargs_json)
    try:
        with torch.device("meta"):
            return _structure(cls(**kwargs))
    except Exception:  # retried on the CPU below, where a real error shows
        pass
    try:
        return _structure(cls(**kwargs))
    except Exception as e:  # any constructor failure means these arguments do not rebuild the module
        return f"{type(e).__name__}: {e}"


def recover_kwargs(module: nn.Module) -> tuple[dict[str, Any] | None, str]:
    """Constructor arguments that rebuild ``module``'s architecture (verified), or None and why not."""
    cls = type(module)
    target = f"{cls.__module__}:{cls.__qualname__}"
    if "<locals>" in cls.__qualname__:
        return None, f"{cls.__qualname__} is defined inside a function, so it cannot be imported again"
    try:
        found = import_object(target)
    except QegraphError as e:
        return None, str(e)
    if found is not cls:
        return None, f"{target} does not import as the class of the module"
    try:
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        return None, f"the constructor signature of {cls.__qualname__} cannot be read"
    read: dict[str, Any] = {}
    required: list[str] = []
    for p in params:
        if p.name in _SKIP_ARGS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.kind is p.POSITIONAL_ONLY:
            return None, f"{cls.__qualname__}'s constructor has positional-only arguments"
        value = getattr(module, p.name, _MISSING)
        if p.name == "bias" and (value is None or isinstance(value, Tensor)):
            value = value is not None
        if value is not _MISSING and _is_json(value):
            read[p.name] = _jsonable(value)
        elif p.default is p.empty:
            return None, (f"its constructor argument {p.name!r} cannot be read back from the module "
                          "(no attribute of that name holding a JSON value)")
        if p.default is p.empty:
            required.append(p.name)
    mine = _structure(module)
    whys = []
    # first every readable argument, then only the required ones (attributes may mean something else)
    for candidate in (read, {k: read[k] for k in required}):
        built = _built_structure(cls, json.dumps(candidate, sort_keys=True))
        why = built if isinstance(built, str) else _first_difference(mine, built)
        if why is None:
            return candidate, ""
        whys.append(why)
    return None, f"{cls.__qualname__}(**{read}) does not rebuild the module: {whys[0]}"


# ---------------------------------------------------------------------- rebuilding
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
        target, kwargs = arch["target"], arch.get("kwargs")
        if kwargs is None:
            raise QegraphError(
                f"the graph records the class {target} but not its constructor arguments "
                f"({arch.get('reason') or 'they were not recorded'}); pass a module of the right architecture, "
                "graph.to_module(template=...), or keep each constructor argument in an attribute of the same "
                "name (self.width = width) so that to_graph() can record it"
            )
        return build(target, kwargs)
    raise QegraphError(f"unknown architecture record type {kind!r}")


def build(target: str, kwargs: dict[str, Any]) -> nn.Module:
    """Call the class or factory function ``target`` with ``kwargs`` after checking that it builds an
    ``nn.Module`` (see the module docstring); the result is checked too."""
    obj = import_object(target)
    if isinstance(obj, type):
        if not issubclass(obj, nn.Module):
            raise QegraphError(f"architecture {target!r} is not an nn.Module subclass; refusing to call it")
    elif not _declares_module(obj):
        raise QegraphError(
            f"architecture {target!r} is not an nn.Module subclass nor a function annotated to return one; refusing "
            "to call it (a factory function must declare its result, e.g. 'def make(...) -> nn.Module:')"
        )
    for name in _DOWNLOAD_ARGS:
        if kwargs.get(name) not in (None, False):
            raise QegraphError(f"architecture {target!r}: argument {name}={kwargs[name]!r} would load pretrained "
                               "weights; the weights come from the checkpoint, so leave it out")
    _check_arguments(target, obj, kwargs)
    try:
        module = obj(**kwargs)
    except Exception as e:  # a constructor can fail in any way; report it on one line with its cause
        raise QegraphError(f"building {target}(**{kwargs}) failed: {type(e).__name__}: {e}") from e
    if not isinstance(module, nn.Module):
        raise QegraphError(f"architecture {target!r} returned a {type(module).__name__}, not an nn.Module")
    return module


def _declares_module(fn: Any) -> bool:
    """True if ``fn`` is a function whose return annotation is an nn.Module subclass."""
    if not callable(fn) or isinstance(fn, type):
        return False
    try:
        ret = inspect.signature(fn, eval_str=True).return_annotation
    except Exception:  # unresolvable string annotations, builtins without a signature
        return False
    return isinstance(ret, type) and issubclass(ret, nn.Module)


def _check_arguments(target: str, obj: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """A clear error for missing or unknown constructor arguments, before the call."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(**kwargs)
    except TypeError as e:
        missing = [n for n, p in sig.parameters.items()
                   if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n not in kwargs]
        if not missing:
            raise QegraphError(f"cannot build {target} with kwargs {kwargs}: {e}") from None
        raise QegraphError(
            f"cannot build {target}: it needs {', '.join(repr(n) for n in missing)}. Give JSON values with "
            "--arch-kwargs (or in the spec's kwargs); for arguments that are not JSON values (classes, config "
            "objects), write a factory function that builds the network, e.g. 'def make() -> nn.Module: return "
            f"{target.rsplit(':', 1)[-1]}(...)' in mynets.py in the current directory, and pass --arch mynets:make"
        ) from None


def import_object(target: str) -> Any:
    """Import ``"pkg.module:Qualified.Name"``, looking in the current directory first."""
    if ":" not in target:
        raise QegraphError(f"--arch must look like 'package.module:ClassName', got {target!r}")
    mod_name, qual = target.split(":", 1)
    cwd = os.getcwd()
    sys.path.insert(0, cwd)
    importlib.invalidate_caches()  # a file written since start-up (e.g. ./mynets.py) must be found
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as e:
        raise QegraphError(f"cannot import module {mod_name!r} for architecture {target!r}: {e}") from None
    except Exception as e:  # a module that fails while importing (e.g. a broken optional dependency)
        raise QegraphError(f"importing {mod_name!r} for architecture {target!r} failed: "
                           f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}") from e
    finally:
        sys.path.remove(cwd)  # the first occurrence: the entry inserted above
    if not hasattr(obj, qual.split(".")[0]) and mod_name in _MODEL_NAMESPACES:
        obj = importlib.import_module(_MODEL_NAMESPACES[mod_name])
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
