"""Converters: modules, checkpoint files and key layouts → ParameterGraph.

:func:`to_graph` routes a ``transformers`` model (a ``PreTrainedModel``) to the Hugging Face layout of
its ``config.model_type`` (:mod:`qegraph.convert.hf`) and every other module to the ``torch.fx``
converter (:mod:`qegraph.convert.fx_converter`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from qegraph.convert import fx_converter
from qegraph.convert import transformer as _transformer  # noqa: F401  (registers attention/encoder handlers)
from qegraph.convert.fx_converter import register_module_handler
from qegraph.convert.hf import is_hf_model, model_to_graph
from qegraph.errors import QegraphError
from qegraph.graph.parameter_graph import ParameterGraph


def to_graph(
    module: nn.Module,
    *,
    arch: dict[str, Any] | None = None,
    allow_nonfinite: bool = False,
    name: str | None = None,
) -> ParameterGraph:
    """Convert ``module`` to a :class:`ParameterGraph` (parameters and buffers, exact inverse).

    A ``transformers`` model is converted by the layout of its ``config.model_type`` (the graph's
    ``to_module()`` rebuilds the library's class from the config; unsupported model types are refused
    with the list of supported ones); any other module by tracing it with ``torch.fx``
    (:func:`qegraph.convert.fx_converter.to_graph`: ``arch`` is the architecture record to store).
    """
    if is_hf_model(module):
        if arch is not None:
            raise QegraphError(f"{name or type(module).__name__}: a transformers model records its own config; "
                               "do not pass arch")
        return model_to_graph(module, allow_nonfinite=allow_nonfinite, name=name)
    return fx_converter.to_graph(module, arch=arch, allow_nonfinite=allow_nonfinite, name=name)


__all__ = ["register_module_handler", "to_graph"]
