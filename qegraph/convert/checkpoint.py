"""Checkpoint files → ParameterGraph: safe loading and architecture resolution.

* ``.safetensors`` files are read with safetensors; everything else with
  ``torch.load(weights_only=True)``. Whole pickled modules load only with ``trust_pickle=True``.
* The architecture comes from ``arch="pkg.module:Class"`` (+ ``arch_kwargs``), a YAML ``spec``
  (see ``qegraph.graph.arch``), a key layout (``layout="bert"``), or, for a plain chain of Linear
  ``*.weight`` / ``*.bias`` keys, is recognised as an MLP (activation from ``activation``).
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from qegraph.convert.bert import bert_to_graph
from qegraph.convert.fx_converter import to_graph
from qegraph.errors import CheckpointError, QegraphError
from qegraph.graph.arch import check_state_dict_matches, module_from_arch
from qegraph.graph.parameter_graph import ParameterGraph
from qegraph.modules import activation_fn

def _bert_layout(sd: dict[str, Tensor], path: Path, *, allow_nonfinite: bool = False,
                 num_heads: int | None = None) -> ParameterGraph:
    """BERT layout: ``num_heads`` from the argument, else from ``config.json`` next to the checkpoint."""
    config = path.parent / "config.json"
    if num_heads is None and config.is_file():
        try:
            num_heads = int(json.loads(config.read_text())["num_attention_heads"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise QegraphError(f"{config}: cannot read num_attention_heads ({e}); pass --num-heads") from None
    if num_heads is None:
        raise QegraphError(f"{path}: the number of attention heads is unknown: pass --num-heads "
                           "(or put a config.json with num_attention_heads next to the checkpoint)")
    return bert_to_graph(sd, num_heads, allow_nonfinite=allow_nonfinite, source=str(path))


#: Layout converters: name → fn(state_dict, path, allow_nonfinite=..., **options) -> ParameterGraph.
LAYOUTS: dict[str, Callable[..., ParameterGraph]] = {"bert": _bert_layout}

_NESTED_KEYS = ("state_dict", "model_state_dict", "model")


def load_checkpoint(path: str | Path, trust_pickle: bool = False) -> dict[str, Tensor] | nn.Module:
    """Read a checkpoint file safely; returns a state_dict (or a module, if pickled and trusted)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: cannot read safetensors file (truncated or corrupted?): {e}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" not in str(e) and "Weights only" not in str(e):
            raise CheckpointError(f"{path}: cannot read checkpoint (truncated or corrupted?): {e}") from None
        if not trust_pickle:
            raise CheckpointError(
                f"{path} contains pickled Python objects (e.g. a whole nn.Module); loading them can execute "
                "code. Save a state_dict instead, or pass --trust-pickle if you trust this file"
            ) from None
        obj = torch.load(path, map_location="cpu", weights_only=False)  # explicit user opt-in
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read checkpoint (truncated or corrupted?): {str(e).splitlines()[0]}") from None
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, dict):
        for key in _NESTED_KEYS:
            if isinstance(obj.get(key), dict) and not isinstance(obj.get(key), Tensor):
                obj = obj[key]
                break
        bad = next((k for k, v in obj.items() if not isinstance(v, Tensor)), None)
        if bad is None:
            return dict(obj)
        raise CheckpointError(f"{path}: entry {bad!r} is a {type(obj[bad]).__name__}, not a tensor; expected a state_dict")
    raise CheckpointError(f"{path}: expected a state_dict, got a {type(obj).__name__}")


def _natural_key(text: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def linear_chain(sd: dict[str, Tensor]) -> list[list[Any]] | None:
    """``[[prefix, in, out, bias], …]`` if ``sd`` is a plain chain of Linear layers, else None.

    Layers are ordered by the natural order of their prefixes (``net.2`` before ``net.10``), since
    safetensors files do not keep insertion order; the shapes must then chain.
    """
    weights: dict[str, Tensor] = {}
    biases: dict[str, Tensor] = {}
    for key, t in sd.items():
        prefix, _, leaf = key.rpartition(".")
        if not prefix or leaf not in ("weight", "bias"):
            return None
        (weights if leaf == "weight" else biases)[prefix] = t
    if not weights or any(t.dim() != 2 for t in weights.values()) or not set(biases) <= set(weights):
        return None
    layers = [
        [p, int(weights[p].shape[1]), int(weights[p].shape[0]), p in biases]
        for p in sorted(weights, key=_natural_key)
    ]
    if any(p in biases and biases[p].shape != (weights[p].shape[0],) for p in weights):
        return None
    if any(a[2] != b[1] for a, b in zip(layers, layers[1:])):
        return None
    return layers


def _module_for(sd: dict[str, Tensor], arch: dict[str, Any], source: str) -> nn.Module:
    with torch.device("meta"):
        module = module_from_arch(arch)
    check_state_dict_matches(module, sd, source=source)
    module.load_state_dict(sd, strict=True, assign=True)
    return module


def read_spec(path: str | Path) -> dict[str, Any]:
    """A YAML architecture spec: ``layers: [...]`` (sequential) or ``target:`` + ``kwargs:`` (a class)."""
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise QegraphError(f"{path}: cannot read the spec: {e}") from None
    if isinstance(spec, dict) and "layers" in spec:
        return {"type": "sequential", "layers": spec["layers"]}
    if isinstance(spec, dict) and "target" in spec:
        return {"type": "class", "target": spec["target"], "kwargs": spec.get("kwargs") or {}}
    raise QegraphError(f"{path}: a spec needs a 'layers:' list (an nn.Sequential) or a 'target:' class")


def convert(
    path: str | Path,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    spec: str | Path | None = None,
    *,
    layout: str | None = None,
    activation: str = "relu",
    trust_pickle: bool = False,
    allow_nonfinite: bool = False,
    num_slots: int | None = None,
    **layout_options: Any,
) -> ParameterGraph:
    """Convert a checkpoint file to a :class:`ParameterGraph` (see the module docstring)."""
    path = Path(path)
    given = [n for n, v in (("arch", arch), ("spec", spec), ("layout", layout)) if v is not None]
    if len(given) > 1:
        raise QegraphError(f"give only one of --arch, --spec, --layout (got {', '.join(given)})")
    loaded = load_checkpoint(path, trust_pickle=trust_pickle)
    opts = {"allow_nonfinite": allow_nonfinite, "num_slots": num_slots, "name": path.name}
    if isinstance(loaded, nn.Module):
        return to_graph(loaded, **opts)
    sd = loaded
    if layout is not None:
        if layout not in LAYOUTS:
            raise QegraphError(f"unknown layout {layout!r}; available: {', '.join(sorted(LAYOUTS)) or 'none'}")
        return LAYOUTS[layout](sd, path, allow_nonfinite=allow_nonfinite, **layout_options)
    if arch is not None:
        record = {"type": "class", "target": arch, "kwargs": arch_kwargs or {}}
    elif spec is not None:
        record = read_spec(spec)
    else:
        chain = linear_chain(sd)
        if chain is None:
            raise QegraphError(
                f"{path}: cannot infer the architecture (its keys are not a plain chain of Linear "
                "weight/bias tensors); pass --arch pkg.module:Class or --spec spec.yaml"
            )
        try:
            activation_fn(activation)
        except ValueError as e:
            raise QegraphError(str(e)) from None
        record = {"type": "chain_mlp", "layers": chain, "activation": activation}
    module = _module_for(sd, record, source=str(path))
    return to_graph(module, arch=record, **opts)


def parse_json_kwargs(text: str | None) -> dict[str, Any] | None:
    """``--arch-kwargs '{"width": 64}'`` → dict (clear error on bad JSON)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise QegraphError(f"--arch-kwargs is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise QegraphError("--arch-kwargs must be a JSON object, e.g. '{\"width\": 64}'")
    return value


__all__ = ["LAYOUTS", "convert", "linear_chain", "load_checkpoint", "parse_json_kwargs", "read_spec"]
