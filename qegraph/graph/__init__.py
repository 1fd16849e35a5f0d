"""Parameter graphs: the data contract (DESIGN §3)."""

from qegraph.graph.parameter_graph import ParameterGraph, pad_to_common_slots
from qegraph.graph.types import NODE_SLOTS, EdgeType, GLRole, NodeType, SymKind

__all__ = ["ParameterGraph", "pad_to_common_slots", "NODE_SLOTS", "EdgeType", "GLRole", "NodeType", "SymKind"]
