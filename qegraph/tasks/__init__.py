"""LightningModules for weight-space tasks (DESIGN §2): any ``qegraph.nn`` model plugs in as ``model``."""

from qegraph.tasks.base import GraphTask
from qegraph.tasks.classification import INRClassification
from qegraph.tasks.editing import WeightEditing
from qegraph.tasks.generalization import GeneralizationPrediction
from qegraph.tasks.norm_stats import fit_quantile_norms, recompute_batchnorm_stats

__all__ = ["GraphTask", "GeneralizationPrediction", "INRClassification", "WeightEditing", "fit_quantile_norms", "recompute_batchnorm_stats"]
