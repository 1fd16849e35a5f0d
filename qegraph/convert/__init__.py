"""Converters: modules, checkpoint files and key layouts → ParameterGraph."""

from qegraph.convert.fx_converter import register_module_handler, to_graph

__all__ = ["register_module_handler", "to_graph"]
