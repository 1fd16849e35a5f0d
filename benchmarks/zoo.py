"""Zoo generation benchmark: vectorized vs one-by-one training, accuracy spread, graph conversion, augmentation.

Run ``python benchmarks/zoo.py [--num-models 1000] [--baseline-models 16] [--device cuda]``. Prints a
table and writes ``benchmarks/results/zoo.json`` (``zoo_cuda.json`` on a GPU; ``--out`` overrides).
The baseline trains the first ``--baseline-models`` runs of the same zoo one after another with plain
PyTorch (``nn.Sequential`` + ``torch.optim``, same hyperparameters, steps, batch size and checkpoint
evaluations), in the same process, on the same device, single-threaded like each CPU generation
worker. On a GPU, ``generate_zoo`` trains ``--models-at-once`` runs per vectorized call (default
:data:`qegraph.data.generate.GPU_MODELS_AT_ONCE`), and both sides are timed after a warm-up (CUDA
context, cuDNN handles).

The roofline rows say how far batching can go at all on this device: ``*_gflops_per_s`` is the
training arithmetic (2 FLOPs per multiply-accumulate, backward = 2× forward, checkpoint evaluations
included) per second and per worker; ``dense_conv_gflops_per_s`` is one network's forward + backward
on one large batch (4,096 images on a CPU, 65,536 on a GPU: large, dense kernels);
``speedup_ceiling`` = dense / one-by-one is the most any vectorization could gain over the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from qegraph.data.augment import augment
from qegraph.data.datamodule import ZooDataModule
from qegraph.data.digits import load_digits_data
from qegraph.data.generate import GPU_MODELS_AT_ONCE, generate_zoo
from qegraph.data.store import Zoo
from qegraph.data.train import init_stacked, resolve_device
from qegraph.data.zoo_cnn import CNNFamily
from qegraph.graph.arch import module_from_arch

RESULTS = Path(__file__).parent / "results" / "zoo.json"


def _optimizer(params: Any, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    lr = cfg["learning_rate"]
    if cfg["optimizer"] == "adam":
        return torch.optim.Adam(params, lr=lr, eps=1e-7)
    if cfg["optimizer"] == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=1e-7)
    return torch.optim.SGD(params, lr=lr)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_one_by_one(family: CNNFamily, seed: int, n: int, device: torch.device = torch.device("cpu")) -> float:
    """Seconds to train runs 0…n−1 one at a time with plain PyTorch (same work per model) on ``device``
    (random numbers drawn on the CPU, as ``generate_zoo`` does)."""
    d = family.data()
    train_x, train_y, test_x, test_y = (t.to(device) for t in (d.train_x, d.train_y, d.test_x, d.test_y))
    gen = torch.Generator().manual_seed(seed)
    sync(device)
    start = time.perf_counter()
    for run in range(n):
        cfg = family.sample_config(seed, run)
        net = module_from_arch(family.arch(cfg)[1]).to(device)
        init = init_stacked(net, [cfg], gen)
        net.load_state_dict({k: v[0] for k, v in init.items()})
        opt = _optimizer(net.parameters(), cfg)
        n_sub = max(family.batch_size, round(cfg["train_fraction"] * d.train_x.size(0)))
        subset = torch.randperm(d.train_x.size(0), generator=gen)[:n_sub]
        keep = 1 - cfg["dropout"]
        for step in range(max(family.checkpoint_steps) + 1):
            if step in family.checkpoint_steps:
                with torch.no_grad():
                    sub = subset.to(device)
                    for x, y in ((train_x[sub], train_y[sub]), (test_x, test_y)):
                        logits = net(x)
                        (logits.argmax(1) == y).float().mean().item(), F.cross_entropy(logits, y).item()
            if step == max(family.checkpoint_steps):
                break
            idx = subset[torch.randint(n_sub, (family.batch_size,), generator=gen)].to(device)
            feats = net[:-1](train_x[idx])
            feats = feats * (torch.rand(feats.shape, generator=gen) < keep).to(device) / keep
            loss = F.cross_entropy(net[-1](feats), train_y[idx])
            loss = loss + cfg["l2reg"] * sum((p**2).sum() for p in net.parameters() if p.dim() >= 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
    sync(device)
    return time.perf_counter() - start


def forward_macs(net: torch.nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass of ``net`` on ``x`` (Conv2d and Linear layers)."""
    total = 0

    def hook(m: torch.nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, torch.nn.Conv2d):
            total += out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, torch.nn.Linear):
            total += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in net.modules()]
    with torch.no_grad():
        net(x)
    for h in handles:
        h.remove()
    return total


def training_flops(family: CNNFamily, seed: int, n: int) -> float:
    """FLOPs to train runs 0…n−1 (2 per MAC; backward = 2× forward; plus the checkpoint evaluations)."""
    d = family.data()
    per_sample = forward_macs(module_from_arch(family.arch(family.sample_config(seed, 0))[1]), d.train_x[:1])
    steps, evals = max(family.checkpoint_steps), len(family.checkpoint_steps)
    total = 0.0
    for run in range(n):
        cfg = family.sample_config(seed, run)
        n_sub = max(family.batch_size, round(cfg["train_fraction"] * d.train_x.size(0)))
        total += 2 * per_sample * (3 * steps * family.batch_size + evals * (n_sub + d.test_x.size(0)))
    return total


def dense_conv_gflops(family: CNNFamily, batch: int = 4096, repeats: int = 10,
                      device: torch.device = torch.device("cpu")) -> float:
    """GFLOP/s of one Small CNN Zoo network's forward + backward on a large batch: what this device's
    convolution kernels reach when nothing is small (an upper bound for any batching of the zoo)."""
    net = module_from_arch(family.arch(family.sample_config(0, 0))[1]).to(device)
    x = torch.randn(batch, *family.data().train_x.shape[1:]).to(device)
    flops = 2 * 3 * forward_macs(net, x)
    for _ in range(3):
        net(x).square().mean().backward()
    sync(device)
    t = time.perf_counter()
    for _ in range(repeats):
        net(x).square().mean().backward()
    sync(device)
    return flops * repeats / (time.perf_counter() - t) / 1e9


def augmentation_times(zoo_dir: Path, cache: Path, n: int = 512, batch: int = 64) -> tuple[float, float]:
    """Seconds to augment n graphs one by one vs as collated batches (collation excluded)."""
    dm = ZooDataModule(str(zoo_dir), batch_size=batch, cache_dir=str(cache), val_fraction=0.0, test_fraction=0.0)
    dm.setup()
    ds = dm.splits["train"]
    graphs = [ds[i] for i in range(min(n, len(ds)))]
    gen = torch.Generator().manual_seed(0)
    t = time.perf_counter()
    for g in graphs:
        augment(g, 1.0, gen)
    per_graph = time.perf_counter() - t
    batches = [b for _, b in zip(range(len(graphs) // batch), dm.train_dataloader())]
    t = time.perf_counter()
    for b in batches:
        augment(b, 1.0, gen)
    per_batch = (time.perf_counter() - t) * len(graphs) / (len(batches) * batch)
    return per_graph, per_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-models", type=int, default=1000)
    parser.add_argument("--baseline-models", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="generation processes (each single-threaded; CPU only)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    parser.add_argument("--models-at-once", type=int, default=None,
                        help="runs per vectorized call (default: one chunk on a CPU, GPU_MODELS_AT_ONCE on a GPU)")
    parser.add_argument("--skip-data", action="store_true",
                        help="skip the graph-conversion and augmentation timings (CPU-side data pipeline)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default results/zoo.json, zoo_cuda.json)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    out = args.out or (RESULTS if device.type == "cpu" else RESULTS.with_name(f"zoo_{device.type}.json"))
    torch.manual_seed(0)
    torch.set_num_threads(1)  # the baseline runs single-threaded, like every generation worker
    load_digits_data()
    work = Path(tempfile.mkdtemp(prefix="qegraph-zoo-bench-"))
    try:
        if device.type != "cpu":  # warm-up: CUDA context, cuDNN and cuBLAS handles, kernel caches
            generate_zoo("cnn", work / "warmup", 4, seed=args.seed + 1, progress=False, device=device)
            train_one_by_one(CNNFamily(), args.seed + 1, 1, device)
        t = time.perf_counter()
        generate_zoo("cnn", work / "cnn", args.num_models, seed=args.seed, workers=args.workers, device=device,
                     models_at_once=args.models_at_once)
        gen_s = time.perf_counter() - t
        zoo = Zoo(work / "cnn")
        final = max(zoo.spec["checkpoint_steps"])
        acc_all = [r["test_accuracy"] for r in zoo.rows]
        acc_final = [r["test_accuracy"] for r in zoo.rows if r["step"] == final]
        base_s = train_one_by_one(CNNFamily(), args.seed, args.baseline_models, device)
        vec_gflops = training_flops(CNNFamily(), args.seed, args.num_models) / gen_s / 1e9
        base_gflops = training_flops(CNNFamily(), args.seed, args.baseline_models) / base_s / 1e9
        dense_gflops = dense_conv_gflops(CNNFamily(), batch=4096 if device.type == "cpu" else 65536, device=device)
        if not args.skip_data:
            t = time.perf_counter()
            ZooDataModule(str(work / "cnn"), cache_dir=str(work / "cache")).prepare_data()
            convert_s = time.perf_counter() - t
            aug_graph, aug_batch = augmentation_times(work / "cnn", work / "cache")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    vec_rate, base_rate = args.num_models / gen_s, args.baseline_models / base_s
    cpu = f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end"
    result = {
        "device": f"CPU ({cpu})" if device.type == "cpu" else f"{torch.cuda.get_device_name(device)} (host: {cpu})",
        "torch": torch.__version__,
        "generation_workers": args.workers,
        "models_at_once": args.models_at_once or (CNNFamily.chunk_size if device.type == "cpu" else GPU_MODELS_AT_ONCE),
        "num_models": args.num_models,
        "checkpoints": len(acc_all),
        "checkpoint_steps": zoo.spec["checkpoint_steps"],
        "generation_seconds": round(gen_s, 1),
        "vectorized_models_per_s": round(vec_rate, 2),
        "one_by_one_models": args.baseline_models,
        "one_by_one_models_per_s": round(base_rate, 3),
        "speedup": round(vec_rate / base_rate, 1),
        "vectorized_gflops_per_s": round(vec_gflops / args.workers, 2),
        "one_by_one_gflops_per_s": round(base_gflops, 2),
        "dense_conv_gflops_per_s": round(dense_gflops, 2),
        "speedup_ceiling": round(dense_gflops / base_gflops, 1),
        "test_accuracy_std_all_checkpoints": round(statistics.pstdev(acc_all), 4),
        "test_accuracy_std_final_step": round(statistics.pstdev(acc_final), 4),
        "test_accuracy_final_min_median_max": [round(min(acc_final), 4), round(statistics.median(acc_final), 4),
                                               round(max(acc_final), 4)],
    }
    if not args.skip_data:
        result.update({"graph_conversion_seconds": round(convert_s, 2),
                       "augment_512_graphs_seconds_per_graph": round(aug_graph, 3),
                       "augment_512_graphs_seconds_batched": round(aug_batch, 3)})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    width = max(map(len, result))
    for k, v in result.items():
        print(f"{k:<{width}}  {v}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
