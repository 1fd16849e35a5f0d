"""Probe: how much accuracy signal do per-layer weight statistics carry, and which learner gets it out?

The probe behind QuasiGMN's ``stats_transform="quantile"`` (docs/results.md, search section). On one split
of a generalization zoo (default: the CNN zoo's 200-network training split, as ``cnn_generalization_small``)
it computes, for every network, StatNN's per-tensor statistics of the raw weights and of the canonical
weights (``StatNN.features``), then fits

* ridge regression, gradient-boosted trees and extra trees (scikit-learn) on standardized features,
* an MLP like StatNN's (hidden 256, 3 linear layers, BCE, AdamW lr 3e-3, cosine, 30 epochs, batch 32,
  best epoch by validation τ) on standardized features and on features through their training CDF
  (:class:`qegraph.nn.QuantileNorm`),

and prints validation and test Kendall τ (mean over seeds) as a table, and writes them as JSON.

    python benchmarks/stats_probe.py --zoo outputs/experiments/zoos/cnn --out benchmarks/results/stats_probe.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import kendalltau
from torch import Tensor, nn

from qegraph.data import ZooDataModule
from qegraph.nn import QuantileNorm, StatNN
from qegraph.nn.baselines import _even_canonical

SPLITS = ("train", "val", "test")


def features(dm: ZooDataModule) -> dict[str, dict[str, Tensor]]:
    """``{split: {"raw", "canonical", "y"}}``: StatNN's statistics of θ and of θ̂, and the targets."""
    loaders = {"train": dm.eval_train_dataloader(), "val": dm.val_dataloader(), "test": dm.test_dataloader()}
    out = {}
    for split, loader in loaders.items():
        raw, can, ys = [], [], []
        for b in loader:
            raw.append(StatNN.features(b).double())
            can.append(StatNN.features(_even_canonical(b)).double())
            ys.append(b.y.view(-1).double())
        out[split] = {"raw": torch.cat(raw), "canonical": torch.cat(can), "y": torch.cat(ys)}
    return out


def _tau(pred: np.ndarray, y: np.ndarray) -> float:
    return float(kendalltau(pred, y)[0])


def sklearn_scores(x: dict[str, np.ndarray], y: dict[str, np.ndarray], seeds: int) -> dict[str, list[float]]:
    from sklearn.ensemble import ExtraTreesRegressor, HistGradientBoostingRegressor
    from sklearn.linear_model import RidgeCV
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x["train"])
    z = {s: np.nan_to_num(scaler.transform(x[s])) for s in SPLITS}
    leaf = max(1, min(20, len(y["train"]) // 10))  # scikit-learn's default 20, smaller for tiny zoos
    makers = {
        "ridge": lambda s: RidgeCV(alphas=np.logspace(-2, 4, 20)),
        "gradient-boosted trees": lambda s: HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05,
                                                                          min_samples_leaf=leaf, random_state=s),
        "extra trees": lambda s: ExtraTreesRegressor(300, min_samples_leaf=2, random_state=s, n_jobs=1),
    }
    out = {}
    for name, make in makers.items():
        runs = []
        for seed in range(1 if name == "ridge" else seeds):
            model = make(seed).fit(z["train"], y["train"])
            runs.append([_tau(model.predict(z[s]), y[s]) for s in ("val", "test")])
        out[name] = np.mean(runs, axis=0).tolist()
    return out


def mlp_score(x: dict[str, Tensor], y: dict[str, Tensor], transform: str, seed: int, epochs: int = 30) -> list[float]:
    """(val τ, test τ) at the best validation epoch of a StatNN-like MLP."""
    torch.manual_seed(seed)
    if transform == "quantile":
        norm = QuantileNorm(x["train"].size(1))
        norm.fit(x["train"])
    else:
        mu, sd = x["train"].mean(0), x["train"].std(0, unbiased=False) + 1e-8
        norm = lambda t: (t - mu) / sd  # noqa: E731
    z = {s: norm(x[s]).float() for s in SPLITS}
    target = {s: y[s].float() for s in SPLITS}
    h = 256
    net = nn.Sequential(nn.Linear(z["train"].size(1), h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1))  # StatNN's head
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    n = z["train"].size(0)
    best = [-2.0, float("nan")]
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(n).split(32):
            loss = F.binary_cross_entropy_with_logits(net(z["train"][idx]).squeeze(1), target["train"][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        net.eval()
        with torch.no_grad():
            val = _tau(net(z["val"]).squeeze(1).numpy(), target["val"].numpy())
            if val > best[0]:
                best = [val, _tau(net(z["test"]).squeeze(1).numpy(), target["test"].numpy())]
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoo", default="outputs/experiments/zoos/cnn", help="a generalization zoo (qegraph zoo cnn)")
    p.add_argument("--train-runs", type=int, default=50, help="training runs kept (default 50: 200 networks)")
    p.add_argument("--steps", type=int, nargs="*", default=[10, 40, 100, 200])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/stats_probe.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    dm = ZooDataModule(args.zoo, target="test_accuracy", batch_size=64, seed=args.split_seed, augment_k=None,
                       train_runs=args.train_runs, steps=args.steps or None, val_fraction=args.val_fraction,
                       test_fraction=args.test_fraction)
    dm.prepare_data()
    dm.setup()
    data = features(dm)
    y = {s: data[s]["y"] for s in SPLITS}
    rows = []
    for kind in ("raw", "canonical"):
        x = {s: data[s][kind] for s in SPLITS}
        scores = sklearn_scores({s: x[s].numpy() for s in SPLITS}, {s: y[s].numpy() for s in SPLITS}, args.seeds)
        for transform in ("standardize", "quantile"):
            runs = [mlp_score(x, y, transform, seed) for seed in range(args.seeds)]
            scores[f"MLP ({transform})"] = np.mean(runs, axis=0).tolist()
        rows += [{"weights": kind, "learner": k, "val_tau": v[0], "test_tau": v[1]} for k, v in scores.items()]
    sizes = {s: int(y[s].numel()) for s in SPLITS}
    print(f"networks: {sizes}; features: {data['train']['raw'].size(1)} per network; seeds {args.seeds}")
    print(f"{'weights':10s} {'learner':24s} {'val τ':>7s} {'test τ':>7s}")
    for r in rows:
        print(f"{r['weights']:10s} {r['learner']:24s} {r['val_tau']:7.3f} {r['test_tau']:7.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"zoo": args.zoo, "train_runs": args.train_runs, "steps": args.steps, "seeds": args.seeds,
                               "networks": sizes, "rows": rows, "seconds": time.time() - t0}, indent=1))
    print(f"wrote {out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
