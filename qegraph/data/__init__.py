"""Model zoos: generation on scikit-learn digits, the on-disk format, public layouts, the DataModule."""

from qegraph.data.augment import augment
from qegraph.data.datamodule import ZooDataModule, ZooGraphDataset, convert_zoo, fill_graph_tables
from qegraph.data.digits import load_digits_data
from qegraph.data.generate import FAMILIES, generate_zoo
from qegraph.data.layouts import export_cnn_zoo, export_nfn_siren, import_cnn_zoo, import_nfn_siren
from qegraph.data.store import Zoo

__all__ = [
    "FAMILIES", "Zoo", "ZooDataModule", "ZooGraphDataset", "augment", "convert_zoo", "export_cnn_zoo",
    "export_nfn_siren", "fill_graph_tables", "generate_zoo", "import_cnn_zoo", "import_nfn_siren", "load_digits_data",
]
