"""Parameter graphs: the data contract (DESIGN §3)."""

from qegraph.graph.parameter_graph import ParameterGraph, pad_to_common_slots
from qegraph.graph.types import HEAD_KINDS, NODE_SLOTS, EdgeType, GLRole, NodeType, SymKind

__all__ = ["ParameterGraph", "pad_to_common_slots", "HEAD_KINDS", "NODE_SLOTS", "EdgeType", "GLRole", "NodeType", "SymKind"]
