"""Checkpoint files → ParameterGraph: safe loading and architecture resolution.

* ``.safetensors`` files are read with safetensors; everything else with
  ``torch.load(weights_only=True)``. Whole pickled modules load only with ``trust_pickle=True``.
* The architecture comes from ``arch="pkg.module:Class"`` (+ ``arch_kwargs``), a YAML ``spec``
  (see ``qegraph.graph.arch``), a Hugging Face layout chosen by ``config.json``'s ``model_type``
  (``config=``, or a ``config.json`` next to the checkpoint; ``layout=`` overrides the model type,
  ``arch="transformers:BertModel"`` names the class), or, for a plain chain of Linear ``*.weight`` /
  ``*.bias`` keys, is recognised as an MLP (activation from ``activation``).
* ``strip_prefix="module."`` removes a wrapper's key prefix first. When every key carries a
  ``module.`` (DataParallel) or ``model.`` (Lightning) prefix and the conversion fails, the error names
  the prefix and the option.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from qegraph.convert import to_graph
from qegraph.convert.hf import FAMILIES, detect_layout, hf_to_graph, supported_model_types
from qegraph.errors import CheckpointError, NonFiniteError, QegraphError
from qegraph.graph.arch import check_state_dict_matches, module_from_arch
from qegraph.graph.parameter_graph import ParameterGraph
from qegraph.modules import activation_fn

#: ``--layout`` names: the Hugging Face model types (``qegraph.convert.hf``).
LAYOUTS: tuple[str, ...] = tuple(supported_model_types())

#: Key prefixes that training wrappers add to every key.
WRAPPER_PREFIXES = {"module.": "as saved from DataParallel / DistributedDataParallel",
                    "model.": "as saved from a Lightning module"}


def wrapper_prefix(sd: dict[str, Tensor]) -> str | None:
    """``"module."`` or ``"model."`` when every key starts with it, else None."""
    return next((p for p in WRAPPER_PREFIXES if sd and all(k.startswith(p) for k in sd)), None)


def strip_key_prefix(sd: dict[str, Tensor], prefix: str, source: str) -> dict[str, Tensor]:
    """``sd`` with ``prefix`` removed from every key (each key must carry it)."""
    bad = next((k for k in sd if not k.startswith(prefix)), None)
    if bad is not None:
        raise QegraphError(f"{source}: --strip-prefix {prefix!r}: key {bad!r} does not start with it")
    return {k[len(prefix):]: v for k, v in sd.items()}


def read_config(path: str | Path | None, checkpoint: Path) -> dict[str, Any] | None:
    """The model's config values: the ``path`` file, else ``config.json`` next to the checkpoint, else None."""
    file = Path(path) if path is not None else checkpoint.parent / "config.json"
    if path is None and not file.is_file():
        return None
    try:
        value = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise QegraphError(f"{file}: cannot read the config: {e}") from None
    if not isinstance(value, dict):
        raise QegraphError(f"{file}: a config must be a JSON object")
    return value


def hf_layout(sd: dict[str, Tensor], path: Path, config: dict[str, Any] | None, *, model_type: str | None = None,
              num_heads: int | None = None, library_class: str | None = None,
              allow_nonfinite: bool = False) -> ParameterGraph:
    """A Hugging Face layout: ``model_type`` (or the config's), key checks first, then the config
    (``num_heads`` fills or must agree with the family's head-count field)."""
    cfg = dict(config or {})
    source = str(path)
    mt = model_type or cfg.get("model_type")
    if mt is None:
        raise QegraphError(f"{source}: the model type is unknown: pass --config config.json (with 'model_type') "
                           f"or --layout ({', '.join(LAYOUTS)})")
    if mt not in FAMILIES:
        raise QegraphError(f"{source}: unknown layout / model_type {mt!r}; supported: {', '.join(LAYOUTS)}")
    _, detected = detect_layout(sd, mt, source)
    if library_class is not None and detected != library_class:
        raise QegraphError(f"{source}: the keys are those of transformers.{detected}, not {library_class}")
    if num_heads is not None:
        field = FAMILIES[mt].heads_field
        if cfg.get(field) is not None and int(cfg[field]) != num_heads:
            raise QegraphError(f"{source}: --num-heads {num_heads} contradicts the config's {field}={cfg[field]}")
        cfg[field] = int(num_heads)
    return hf_to_graph(sd, cfg, model_type=mt, allow_nonfinite=allow_nonfinite, source=source)


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
    config: str | Path | None = None,
    num_heads: int | None = None,
    strip_prefix: str | None = None,
    activation: str = "relu",
    trust_pickle: bool = False,
    allow_nonfinite: bool = False,
) -> ParameterGraph:
    """Convert a checkpoint file to a :class:`ParameterGraph` (see the module docstring)."""
    path = Path(path)
    given = [n for n, v in (("arch", arch), ("spec", spec), ("layout", layout)) if v is not None]
    if len(given) > 1:
        raise QegraphError(f"give only one of --arch, --spec, --layout (got {', '.join(given)})")
    loaded = load_checkpoint(path, trust_pickle=trust_pickle)
    opts = {"allow_nonfinite": allow_nonfinite, "name": path.name}
    if isinstance(loaded, nn.Module):
        return to_graph(loaded, **opts)
    sd = loaded if strip_prefix is None else strip_key_prefix(loaded, strip_prefix, str(path))
    try:
        return _convert_state_dict(sd, path, arch, arch_kwargs, spec, layout=layout, config=config,
                                   num_heads=num_heads, activation=activation, allow_nonfinite=allow_nonfinite)
    except NonFiniteError:
        raise
    except QegraphError as e:
        prefix = None if strip_prefix is not None else wrapper_prefix(sd)
        if prefix is None:
            raise
        raise QegraphError(f"{path}: every key starts with {prefix!r} ({WRAPPER_PREFIXES[prefix]}); pass "
                           f"--strip-prefix {prefix} to remove it (as it is: {e})") from None


def _convert_state_dict(sd: dict[str, Tensor], path: Path, arch: str | None, arch_kwargs: dict[str, Any] | None,
                        spec: str | Path | None, *, layout: str | None, config: str | Path | None,
                        num_heads: int | None, activation: str, allow_nonfinite: bool) -> ParameterGraph:
    hf_arch = arch is not None and arch.startswith("transformers:")
    wants = config is not None or layout is not None or hf_arch or (arch is None and spec is None)
    cfg = read_config(config, path) if wants else None
    if hf_arch:
        assert arch is not None
        if cfg is None:
            raise QegraphError(f"--arch {arch} is built from the model's config: pass --config config.json")
        if arch_kwargs:
            raise QegraphError(f"--arch {arch} takes no --arch-kwargs: its constructor arguments come from "
                               "--config and from the checkpoint's keys (e.g. a pooler)")
        return hf_layout(sd, path, cfg, num_heads=num_heads, library_class=arch.split(":", 1)[1],
                         allow_nonfinite=allow_nonfinite)
    if layout is not None or (arch is None and spec is None and cfg is not None and "model_type" in cfg):
        return hf_layout(sd, path, cfg, model_type=layout, num_heads=num_heads, allow_nonfinite=allow_nonfinite)
    if num_heads is not None:
        raise QegraphError("--num-heads applies to Hugging Face layouts only (--layout or a config.json)")
    if arch is not None:
        record = {"type": "class", "target": arch, "kwargs": arch_kwargs or {}}
    elif spec is not None:
        record = read_spec(spec)
    else:
        chain = linear_chain(sd)
        if chain is None:
            raise QegraphError(
                f"{path}: cannot infer the architecture (its keys are not a plain chain of Linear "
                "weight/bias tensors); pass --arch pkg.module:Class, --spec spec.yaml, or the model's config.json"
            )
        try:
            activation_fn(activation)
        except ValueError as e:
            raise QegraphError(str(e)) from None
        record = {"type": "chain_mlp", "layers": chain, "activation": activation}
    module = _module_for(sd, record, source=str(path))
    return to_graph(module, arch=record, allow_nonfinite=allow_nonfinite, name=path.name)


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


__all__ = ["LAYOUTS", "convert", "hf_layout", "linear_chain", "load_checkpoint", "parse_json_kwargs", "read_config",
           "read_spec", "strip_key_prefix", "wrapper_prefix"]
