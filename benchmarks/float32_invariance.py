"""Invariance error of QuasiGMN / StrictGMN / AlphaBetaGMN in float32 under random group elements with scales up to
10^k (relative error max|y(gθ) − y(θ)| / max|y(θ)|, worst over samples).

Run: ``python benchmarks/float32_invariance.py``. Prints a markdown table and writes
``benchmarks/results/float32_invariance.json``. With ``--checkpoint CKPT --config CONFIG`` it also
measures a trained model: the ``GeneralizationPrediction`` checkpoint of a ``qegraph fit`` run on the
test split of that config's data, acted on batch-wise by ``qegraph.data.augment`` (row ``trained``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from nn_nets import graphs, modules  # noqa: E402

from qegraph import symmetry_group  # noqa: E402
from qegraph.nn import AlphaBetaGMN, QuasiGMN, StrictGMN  # noqa: E402

ARCHS = ["relu_mlp", "siren", "cnn_relu", "cnn_tanh", "res_cnn", "transformer"]
EXPONENTS = [0, 1, 2, 3, 4]


@torch.no_grad()
def worst_error(model: torch.nn.Module, graph: object, k: int, n: int, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    ref = model(graph)
    errs = []
    for _ in range(n):
        out = model(symmetry_group(graph).sample(generator=gen, scale_range=(1.0, 10.0**k)).act(graph))
        errs.append(float((out - ref).abs().max() / ref.abs().max()))
    return max(errs)


@torch.no_grad()
def trained_errors(checkpoint: str, config: str, n: int = 5) -> dict[int, float]:
    """Worst relative output change of a trained checkpoint on its config's test split, per k."""
    import yaml

    from qegraph.data import ZooDataModule
    from qegraph.data.augment import augment
    from qegraph.tasks import GeneralizationPrediction

    cfg = yaml.safe_load(Path(config).read_text())
    spec = cfg["model"]["init_args"]["model"]
    module, _, name = spec["class_path"].rpartition(".")
    net = getattr(__import__(module, fromlist=[name]), name)(**spec.get("init_args", {}))
    task = GeneralizationPrediction.load_from_checkpoint(checkpoint, model=net, map_location="cpu", weights_only=True)
    task.eval()
    data = cfg["data"]["init_args"]
    dm = ZooDataModule(**{k: v for k, v in data.items() if k != "generate"})
    dm.prepare_data()
    dm.setup()
    batches = list(dm.test_dataloader())
    refs = [task(b) for b in batches]
    out: dict[int, float] = {}
    for k in EXPONENTS:
        gen = torch.Generator().manual_seed(k)
        worst = 0.0
        for _ in range(n):
            for b, ref in zip(batches, refs):
                y = task(augment(b, float(k), gen))
                worst = max(worst, float((y - ref).abs().max() / ref.abs().max()))
        out[k] = worst
    return out


def main(n: int = 5, checkpoint: str | None = None, config: str | None = None) -> dict:
    torch.set_num_threads(1)
    gs = {a: g.with_features(x=g.x.float(), edge_attr=g.edge_attr.float()) for a, g in graphs(modules()).items()}
    results: dict = {}
    for cls in (QuasiGMN, StrictGMN, AlphaBetaGMN):
        torch.manual_seed(0)
        model = cls(out_dim=4).float()  # default configuration
        results[cls.__name__] = {a: {k: worst_error(model, gs[a], k, n, k) for k in EXPONENTS} for a in ARCHS}
    print("| model | architecture | " + " | ".join(f"10^{k}" for k in EXPONENTS) + " |")
    print("|---|---|" + "---|" * len(EXPONENTS))
    if checkpoint is not None:
        if config is None:
            raise SystemExit("--checkpoint needs --config (the qegraph fit config whose data it was trained on)")
        results["trained"] = {Path(checkpoint).name: trained_errors(checkpoint, config, n)}
    for m, per in results.items():
        for a, row in per.items():
            print(f"| {m} | {a} | " + " | ".join(f"{row[k]:.1e}" for k in EXPONENTS) + " |")
    out = Path(__file__).parent / "results" / "float32_invariance.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", help="a GeneralizationPrediction checkpoint (.ckpt) to measure as well")
    parser.add_argument("--config", help="the qegraph fit config the checkpoint was trained with")
    args = parser.parse_args()
    main(checkpoint=args.checkpoint, config=args.config)
