"""qegraph: parameter graphs of neural networks and quasi-equivariant graph metanetworks."""

from qegraph.convert import to_graph
from qegraph.convert.bert import bert_to_graph
from qegraph.convert.checkpoint import convert, load_checkpoint
from qegraph.convert.hf import hf_to_graph
from qegraph.errors import QegraphError
from qegraph.graph.io import load_graph, save_graph
from qegraph.graph import EdgeType, GLRole, NodeType, ParameterGraph, SymKind, pad_to_common_slots
from qegraph.modules import ChainMLP, Sine
from qegraph.symmetry import GroupElement, SymmetryGroup, symmetry_group
from qegraph.symmetry.canonical import canonicalize
from qegraph import testing

__version__ = "0.1.0"

__all__ = [
    "ChainMLP", "EdgeType", "GLRole", "GroupElement", "NodeType", "ParameterGraph", "QegraphError", "Sine",
    "SymKind", "SymmetryGroup", "bert_to_graph", "canonicalize", "convert", "hf_to_graph", "load_checkpoint", "load_graph", "pad_to_common_slots", "save_graph",
    "symmetry_group", "testing", "to_graph",
]
