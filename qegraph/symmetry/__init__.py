"""Symmetry groups of parameter graphs (DESIGN §4)."""

from qegraph.symmetry.group import GroupElement, SymmetryGroup, symmetry_group

__all__ = ["GroupElement", "SymmetryGroup", "symmetry_group"]
