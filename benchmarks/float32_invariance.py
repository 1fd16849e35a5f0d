"""Invariance error of QuasiGMN / StrictGMN in float32 under random group elements with scales up to
10^k (relative error max|y(gθ) − y(θ)| / max|y(θ)|, worst over samples).

Run: ``python benchmarks/float32_invariance.py``. Prints a markdown table and writes
``benchmarks/results/float32_invariance.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from nn_nets import graphs, modules  # noqa: E402

from qegraph import symmetry_group  # noqa: E402
from qegraph.nn import QuasiGMN, StrictGMN  # noqa: E402

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


def main(n: int = 5) -> dict:
    torch.set_num_threads(1)
    gs = {a: g.with_features(x=g.x.float(), edge_attr=g.edge_attr.float()) for a, g in graphs(modules()).items()}
    results: dict = {}
    for cls in (QuasiGMN, StrictGMN):
        torch.manual_seed(0)
        model = cls(out_dim=4).float()  # default configuration
        results[cls.__name__] = {a: {k: worst_error(model, gs[a], k, n, k) for k in EXPONENTS} for a in ARCHS}
    print("| model | architecture | " + " | ".join(f"10^{k}" for k in EXPONENTS) + " |")
    print("|---|---|" + "---|" * len(EXPONENTS))
    for m, per in results.items():
        for a, row in per.items():
            print(f"| {m} | {a} | " + " | ".join(f"{row[k]:.1e}" for k in EXPONENTS) + " |")
    out = Path(__file__).parent / "results" / "float32_invariance.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
