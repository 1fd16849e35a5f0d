"""Enumerations of the parameter-graph data contract (DESIGN §3–§4).

The integer values are part of the on-disk format: append new members, never renumber.
"""

from __future__ import annotations

from enum import IntEnum


class NodeType(IntEnum):
    INPUT = 0  # input feature / channel (fixed, has a position)
    HIDDEN = 1  # neuron or conv channel written by a Linear/Conv
    OUTPUT = 2  # final output unit (fixed, has a position)
    NORM = 3  # units created by a normalization layer (carry γ, β, running stats)
    RESIDUAL = 4  # units of a residual sum x + f(x)
    QUERY = 5  # attention query coordinate
    KEY = 6  # attention key coordinate
    VALUE = 7  # attention value coordinate
    FFN = 8  # transformer feed-forward hidden unit
    STREAM = 9  # transformer residual-stream coordinate
    EMBED = 10  # embedding-table unit (token / position / segment)


class EdgeType(IntEnum):
    LINEAR = 0  # scalar weight of a Linear
    CONV = 1  # conv kernel (k_h·k_w slots)
    FLATTEN = 2  # H·W block of a Linear that reads a flattened feature map
    RESIDUAL = 3  # parameter-free edge of a residual addition
    NORM = 4  # parameter-free identity edge into the units of a norm layer
    QK_PAIR = 5  # parameter-free pairing of a head's query and key coordinates
    EMBED = 6  # embedding-table block


class SymKind(IntEnum):
    """Which group acts on a unit group (DESIGN §4). Permutations act on every kind but FIXED."""

    FIXED = 0  # nothing (inputs, outputs)
    PERM = 1  # permutations only
    SCALE = 2  # permutations × positive scalings q > 0
    SIGN = 3  # permutations × sign flips s ∈ {±1}
    NONZERO = 4  # permutations × nonzero scalings λ ≠ 0
    HEADS = 5  # attention heads: head permutation × per head A ∈ GL(d_k) on Q, A^{-T} on K, B ∈ GL(d_v)
    #            on V, B^{-1} on O's columns; members are heads (see docs/transformers.md)
    HEAD_SIGNS = 6  # attention heads in canonical form (the residual group left by the section): head
    #                 permutation × per head A = diag(s_q), B = diag(s_v), s ∈ {±1}^d (A^{-T} = A on K)


#: Kinds whose members are attention heads (per-head matrices act on the head's coordinates).
HEAD_KINDS: frozenset[int] = frozenset({int(SymKind.HEADS), int(SymKind.HEAD_SIGNS)})


class GLRole(IntEnum):
    """``ParameterGraph.gl_role`` of a node: how the per-head GL matrices act on it (ρ_v)."""

    NONE = 0  # not in an attention head
    QUERY = 1  # ρ = A
    KEY = 2  # ρ = A^{-T}
    VALUE = 3  # ρ = B


#: Node-feature columns of ``ParameterGraph.x``; zero (and masked) where a slot does not apply.
NODE_SLOTS: tuple[str, ...] = ("bias", "norm_weight", "norm_bias", "running_mean", "running_var")
