r"""Hugging Face ``transformers`` checkpoints → ParameterGraph, chosen by ``config.json``'s ``model_type``.

Families (one small module each, all planned with the shared head / stream planner of
:mod:`qegraph.convert.transformer`; what each claims and refuses: ``docs/transformers.md``):

* ``bert``, ``roberta`` (:mod:`~qegraph.convert.hf.bert`), ``distilbert``
  (:mod:`~qegraph.convert.hf.distilbert`): post-norm encoders;
* ``gpt2`` (:mod:`~qegraph.convert.hf.gpt2`): pre-norm causal decoder, ``Conv1D`` weights, fused
  ``c_attn``;
* ``vit`` (:mod:`~qegraph.convert.hf.vit`): patch-embedding conv, cls token, position embeddings;
* ``llama``, ``qwen2``, ``mistral`` (:mod:`~qegraph.convert.hf.llama`): RMSNorm, SwiGLU, rotary
  embeddings, grouped-query attention.

:func:`hf_to_graph` converts a state_dict with its config values (no ``transformers`` needed);
:func:`model_to_graph` a ``transformers`` model object. ``graph.to_module()`` rebuilds the library's own
class from the recorded config (:class:`qegraph.models.hf.HFModel`; needs ``transformers``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from qegraph.convert.hf import bert, distilbert, gpt2, llama, vit
from qegraph.convert.hf.base import Conversion, HFConfig, KeyLayout
from qegraph.errors import QegraphError
from qegraph.graph.parameter_graph import ParameterGraph

REBUILD_TARGET = "qegraph.models.hf:HFModel"


@dataclass(frozen=True)
class Family:
    """One module's model types: key layouts, library defaults of the config fields it reads, and the
    planning function (returns the base class's extra constructor arguments)."""

    layouts: Mapping[str, KeyLayout]
    defaults: Mapping[str, Mapping[str, Any]]
    build: Callable[[Conversion], dict[str, Any]]
    heads_field: str  # the config field holding the number of attention heads


FAMILIES: dict[str, Family] = {}
for _module in (bert, distilbert, gpt2, vit, llama):
    for _mt in _module.LAYOUTS:
        FAMILIES[_mt] = Family(_module.LAYOUTS, _module.DEFAULTS, _module.build,
                               getattr(_module, "HEADS_FIELD", "num_attention_heads"))


def supported_model_types() -> list[str]:
    return sorted(FAMILIES)


def family_of(model_type: str | None, source: str) -> Family:
    if model_type is None:
        raise QegraphError(f"{source}: the model type is unknown: put the model's config.json (with its "
                           f"'model_type') next to the checkpoint, or pass --layout "
                           f"({', '.join(supported_model_types())})")
    if model_type not in FAMILIES:
        raise QegraphError(f"{source}: Hugging Face model_type {model_type!r} is not supported; supported: "
                           f"{', '.join(supported_model_types())}")
    return FAMILIES[model_type]


def detect_layout(state_dict: Mapping[str, Tensor], model_type: str, source: str = "state_dict") -> tuple[str, str]:
    """(key prefix, library class) of a state_dict of ``model_type``; raises naming the first key that
    does not fit (done before any question about the config)."""
    fam = family_of(model_type, source)
    layout = fam.layouts[model_type]
    prefix, head = layout.detect(list(state_dict), model_type, source)
    return prefix, head.library_class if head else layout.base_class


def hf_to_graph(
    state_dict: Mapping[str, Tensor],
    config: Mapping[str, Any],
    *,
    model_type: str | None = None,
    allow_nonfinite: bool = False,
    source: str = "state_dict",
    arch: dict[str, Any] | None = None,
) -> ParameterGraph:
    """Convert a Hugging Face state_dict with its config values (``config.json`` as a dict).

    ``model_type`` overrides ``config["model_type"]``. The graph's ``to_state_dict()`` returns the
    state_dict bit for bit in the same key order; ``to_module()`` rebuilds the library's class (``arch``
    replaces that record). Raises :class:`~qegraph.errors.QegraphError` naming the key or config field
    for anything not modelled.
    """
    given = config.get("model_type")
    mt = model_type or given
    fam = family_of(mt, source)
    assert mt is not None
    if model_type is not None and given is not None and given != model_type:
        raise QegraphError(f"{source}: config.json says model_type {given!r}, not {model_type!r}; the "
                           f"{model_type} layout would compute a different function (drop --layout or use "
                           f"--layout {given})")
    sd = dict(state_dict)
    layout = fam.layouts[mt]
    prefix, head = layout.detect(list(sd), mt, source)
    c = Conversion(sd, HFConfig(config, fam.defaults[mt], mt, source), prefix, head, source)
    init = fam.build(c)
    record = arch
    if record is None:
        kwargs: dict[str, Any] = {"library_class": head.library_class if head else layout.base_class,
                                  "config": c.cfg.record()}
        if head is None:
            kwargs["init"] = init
            if prefix:
                kwargs["prefix"] = prefix.rstrip(".")
        if c.buffers:
            kwargs["buffers"] = c.buffers
        record = {"type": "class", "target": REBUILD_TARGET, "kwargs": kwargs}
    return c.finish(record, allow_nonfinite)


def is_hf_model(module: object) -> bool:
    """Whether ``module`` is a ``transformers`` model (checked without importing transformers)."""
    return any(c.__name__ == "PreTrainedModel" and c.__module__.startswith("transformers.")
               for c in type(module).__mro__)


def model_to_graph(model: nn.Module, *, allow_nonfinite: bool = False, name: str | None = None) -> ParameterGraph:
    """Convert a ``transformers`` model object (its state_dict and ``model.config``)."""
    source = name or type(model).__name__
    config = getattr(model, "config", None)
    mt = getattr(config, "model_type", None)
    fam = family_of(mt, source)
    assert mt is not None and config is not None
    sd = model.state_dict()
    prefix, cls = detect_layout(sd, mt, source)
    if type(model).__name__ != cls or prefix and cls == fam.layouts[mt].base_class:
        classes = [fam.layouts[mt].base_class, *(h.library_class for h in fam.layouts[mt].heads)]
        raise QegraphError(f"{source}: {type(model).__name__} is not supported for model_type {mt!r} "
                           f"(supported classes: {', '.join(classes)})")
    return hf_to_graph(sd, config.to_dict(), model_type=mt, allow_nonfinite=allow_nonfinite, source=source)


__all__ = ["FAMILIES", "detect_layout", "family_of", "hf_to_graph", "is_hf_model", "model_to_graph",
           "supported_model_types"]
