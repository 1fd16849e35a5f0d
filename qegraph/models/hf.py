"""Rebuild a Hugging Face ``transformers`` model from the config recorded in a graph.

Graphs of Hugging Face layouts (``qegraph.convert.hf``) record the architecture as

    {"type": "class", "target": "qegraph.models.hf:HFModel",
     "kwargs": {"library_class": "BertModel", "config": {...config.json...}, "init": {...},
                "prefix": "bert", "buffers": ["embeddings.position_ids"]}}

and ``graph.to_module()`` calls ``HFModel(**kwargs)``, which returns an instance of the library's own
class (``transformers.BertModel(BertConfig(**config), **init)``), not of ``HFModel``: the function is
the library's, with every config field honoured. ``prefix``: the checkpoint's keys carry a prefix
without a task head (``bert.embeddings…``); the model is then the ``prefix`` attribute of a plain
container whose ``forward`` calls it. ``buffers``: integer buffers that the checkpoint holds but the
installed library keeps non-persistent (``position_ids`` of older checkpoints); they are made
persistent so that the state_dicts match.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from qegraph.errors import QegraphError


class Prefixed(nn.Module):
    """A container holding ``model`` under the attribute ``prefix``; ``forward`` calls the model."""

    def __init__(self, prefix: str, model: nn.Module) -> None:
        super().__init__()
        self.prefix = prefix
        self.add_module(prefix, model)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, self.prefix)(*args, **kwargs)


def _transformers() -> Any:
    try:
        return importlib.import_module("transformers")
    except ImportError as e:
        raise QegraphError(f"rebuilding a Hugging Face model needs the transformers package ({e}); "
                           "pip install transformers, or pass a template module to to_module()") from None


def build_hf_model(library_class: str, config: dict[str, Any], init: dict[str, Any] | None = None,
                   prefix: str = "", buffers: list[str] | None = None) -> nn.Module:
    """``transformers.<library_class>(<its config class>(**config), **init)`` (see the module docstring)."""
    tf = _transformers()
    cls = getattr(tf, library_class, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise QegraphError(f"transformers has no model class {library_class!r} (installed version "
                           f"{getattr(tf, '__version__', '?')})")
    model_type = config.get("model_type")
    mapping = tf.CONFIG_MAPPING
    if model_type not in mapping:
        raise QegraphError(f"transformers {getattr(tf, '__version__', '?')} does not know model_type {model_type!r}")
    cfg = mapping[model_type].from_dict({k: v for k, v in config.items() if k != "model_type"})
    model = cls(cfg, **(init or {}))
    for name in buffers or []:
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        owner.register_buffer(attr, getattr(owner, attr).clone(), persistent=True)
    model = model.eval()
    return Prefixed(prefix, model).eval() if prefix else model


class HFModel(nn.Module):
    """Architecture-record entry point: ``HFModel(**kwargs)`` returns :func:`build_hf_model`'s result,
    an instance of the library's class (this class is never instantiated itself)."""

    def __new__(cls, library_class: str, config: dict[str, Any], init: dict[str, Any] | None = None,
                prefix: str = "", buffers: list[str] | None = None) -> nn.Module:  # type: ignore[misc]
        return build_hf_model(library_class, config, init, prefix, buffers)


__all__ = ["HFModel", "Prefixed", "build_hf_model"]
