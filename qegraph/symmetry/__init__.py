"""Symmetry groups of parameter graphs (DESIGN §4): groups, their action, canonical sections."""

from qegraph.symmetry.group import GroupElement, SymmetryGroup, symmetry_group
from qegraph.symmetry.canonical import canonicalize, from_canonical, is_canonical
from qegraph.symmetry.align import align, align_batch, canonical_distance

__all__ = ["GroupElement", "SymmetryGroup", "align", "align_batch", "canonical_distance", "canonicalize",
           "from_canonical", "is_canonical", "symmetry_group"]
