"""Graph metanetworks (DESIGN §1, §5).

* :class:`QuasiGMN` (:mod:`qegraph.nn.quasi`): the model of this package — the canonical section, learned
  gauges, unconstrained message passing respecting the finite residual group, an invariant readout
  with a statistics skip path; :class:`WeightSpaceGMN` (:mod:`qegraph.nn.section_decoder`) decodes
  weights on the section and maps them back.
* :class:`StrictGMN`, :class:`AlphaBetaGMN`, :class:`AlphaBetaWeightSpaceGMN` (:mod:`qegraph.nn.models`):
  strictly G-equivariant layers (β) with or without the paper's gauge α (inert for invariant heads).
* Baselines: :class:`PermGMN`, :class:`FlatMLP`, :class:`StatNN`.
* :class:`QuantileNorm`: features through their training CDF (the statistics paths' input map).
"""

from qegraph.nn.baselines import FlatMLP, StatNN
from qegraph.nn.context import GraphContext
from qegraph.nn.conv import EquivariantConv
from qegraph.nn.decoder import WeightDecoder
from qegraph.nn.encoders import EdgeEncoder, NodeEncoder
from qegraph.nn.gauge import QuasiGauge
from qegraph.nn.layer import QuasiLayer
from qegraph.nn.models import AlphaBetaGMN, AlphaBetaWeightSpaceGMN, GMNBackbone, PermGMN, StrictGMN
from qegraph.nn.quantile_norm import QuantileNorm
from qegraph.nn.quasi import QuasiGMN, SectionBackbone
from qegraph.nn.readout import InvariantReadout
from qegraph.nn.section import LearnedGauge, SectionContext
from qegraph.nn.section_decoder import SectionDecoder, WeightSpaceGMN
from qegraph.nn.sign_conv import SignEquivariantConv
from qegraph.nn.types import Canonicalizer, FeatureType

__all__ = [
    "AlphaBetaGMN", "AlphaBetaWeightSpaceGMN", "Canonicalizer", "EdgeEncoder", "EquivariantConv", "FeatureType",
    "FlatMLP", "GMNBackbone", "GraphContext", "InvariantReadout", "LearnedGauge", "NodeEncoder", "PermGMN",
    "QuantileNorm", "QuasiGMN", "QuasiGauge", "QuasiLayer", "SectionBackbone", "SectionContext", "SectionDecoder",
    "SignEquivariantConv", "StatNN", "StrictGMN", "WeightDecoder", "WeightSpaceGMN",
]
