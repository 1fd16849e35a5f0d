"""Quasi-equivariant graph metanetworks (DESIGN §5): feature types, encoders, strictly equivariant
message passing (β), the quasi gauge (α), readouts, decoders, models and baselines."""

from qegraph.nn.baselines import FlatMLP, StatNN
from qegraph.nn.context import GraphContext
from qegraph.nn.conv import EquivariantConv
from qegraph.nn.decoder import WeightDecoder
from qegraph.nn.encoders import EdgeEncoder, NodeEncoder
from qegraph.nn.gauge import QuasiGauge
from qegraph.nn.layer import QuasiLayer
from qegraph.nn.models import GMNBackbone, PermGMN, QuasiGMN, StrictGMN, WeightSpaceGMN
from qegraph.nn.readout import InvariantReadout
from qegraph.nn.types import Canonicalizer, FeatureType

__all__ = [
    "Canonicalizer", "EdgeEncoder", "EquivariantConv", "FeatureType", "FlatMLP", "GMNBackbone", "GraphContext",
    "InvariantReadout", "NodeEncoder", "PermGMN", "QuasiGMN", "QuasiGauge", "QuasiLayer", "StatNN", "StrictGMN",
    "WeightDecoder", "WeightSpaceGMN",
]
