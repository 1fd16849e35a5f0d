"""How high can Kendall τ go on a generalization-prediction split? Reference rankings from the zoo's metadata.

Run ``python benchmarks/tau_ceiling.py --config configs/quickstart.yaml`` (the data section of a
``qegraph fit`` config picks the zoo, the checkpoint filters and the split). On that config's *test*
checkpoints it prints, and writes to ``benchmarks/results/tau_ceiling.json``:

* ``tau_train_accuracy``: τ between each checkpoint's **train** accuracy and its test accuracy — a
  predictor that has seen the data, far more than the weights alone tell;
* ``tau_test_resampled``: the expected τ between the recorded test accuracies and the accuracies the
  *same* networks would score on a fresh test set of the same size (binomial resampling): the
  measurement noise of the target itself;
* ``chance_fraction``: the share of test checkpoints below 30 % accuracy, whose mutual order is mostly
  noise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy.stats import kendalltau

from qegraph.data.datamodule import ZooDataModule
from qegraph.data.digits import load_digits_data
from qegraph.data.store import Zoo

RESULTS = Path(__file__).parent / "results" / "tau_ceiling.json"


def ceiling(data_args: dict[str, Any], resamples: int = 200) -> dict[str, Any]:
    """Reference τ values on the test split of a ``ZooDataModule`` built from ``data_args``."""
    dm = ZooDataModule(**{k: v for k, v in data_args.items() if k != "generate"})
    dm.prepare_data()
    dm.setup()
    ids = {ckpt for _, _, ckpt in dm.splits["test"].items}
    rows = [r for r in Zoo(dm.zoo_dir).rows if r["id"] in ids]
    test = np.array([r["test_accuracy"] for r in rows])
    train = np.array([r["train_accuracy"] for r in rows])
    n_test = len(load_digits_data().test_idx)
    rng = np.random.default_rng(0)
    resampled = [kendalltau(test, rng.binomial(n_test, test) / n_test)[0] for _ in range(resamples)]
    return {
        "zoo": str(dm.zoo_dir),
        "test_checkpoints": len(rows),
        "test_images": n_test,
        "chance_fraction": round(float((test < 0.3).mean()), 3),
        "tau_train_accuracy": round(float(kendalltau(train, test)[0]), 3),
        "tau_test_resampled": round(float(np.mean(resampled)), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/quickstart.yaml", help="a qegraph fit config (its data section)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON output (default {RESULTS})")
    args = parser.parse_args()
    config = yaml.safe_load(Path(args.config).read_text())
    result = {"config": args.config, **ceiling(config["data"]["init_args"])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    width = max(map(len, result))
    for k, v in result.items():
        print(f"{k:<{width}}  {v}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
