"""qegraph: parameter graphs of neural networks and quasi-equivariant graph metanetworks."""

from qegraph.convert import to_graph
from qegraph.errors import QegraphError
from qegraph.graph import EdgeType, NodeType, ParameterGraph, SymKind, pad_to_common_slots
from qegraph.modules import ChainMLP, Sine
from qegraph.symmetry import GroupElement, SymmetryGroup, symmetry_group

__version__ = "0.1.0"

__all__ = [
    "ChainMLP", "EdgeType", "GroupElement", "NodeType", "ParameterGraph", "QegraphError", "Sine",
    "SymKind", "SymmetryGroup", "pad_to_common_slots", "symmetry_group", "to_graph",
]
