"""Converters: modules, checkpoint files and key layouts → ParameterGraph."""

from qegraph.convert.fx_converter import register_module_handler, to_graph
from qegraph.convert import transformer as _transformer  # noqa: F401  (registers attention/encoder handlers)

__all__ = ["register_module_handler", "to_graph"]
