"""``qegraph experiment NAME``: comparison grids with results tables (markdown + CSV + PNG).

For every model and seed the grid trains

* once without augmentation, then tests on the test networks as they are (column *no action*) and
  under random group elements with scales in [1, 10^k] for every k in ``test_ks`` (k = 0 still
  permutes units and flips signs) (*train plain, test augmented*), and
* once per k in ``train_ks`` with training augmentation at that k, tested at the same k
  (*train augmented*).

Every training job is independent and runs in its own process (``--workers``), one thread each.
The table reports mean ± std over seeds, each model's parameter count, the best validation score (the
epoch restored before testing) and, for generalization grids, the metric of the mean of all seeds'
test predictions (networks as they are): what averaging k trained models buys.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qegraph.errors import QegraphError


#: A model of a grid: class path, constructor kwargs and optionally training overrides of the
#: experiment's defaults (``lr``, ``weight_decay``, ``epochs``).
ModelSpec = tuple[str, dict[str, Any]] | tuple[str, dict[str, Any], dict[str, Any]]


@dataclass
class Experiment:
    """A named grid: a zoo, a task, the models to compare and how long to train them."""

    zoo_kind: str
    zoo_models: int
    task: str  # "generalization" | "classification"
    target: str
    models: dict[str, ModelSpec]
    metric: str
    epochs: int = 20
    batch_size: int = 32
    lr: float = 3e-3
    data: dict[str, Any] = field(default_factory=dict)


_GMN = {"hidden_dim": 64, "num_layers": 3}
_GMN_SMALL = {"hidden_dim": 32, "num_layers": 3}  # INRs and transformers (many nodes per graph, or tiny graphs)
_BASELINES = {
    "PermGMN": ("qegraph.nn.PermGMN", _GMN),
    "FlatMLP": ("qegraph.nn.FlatMLP", {}),
    "StatNN": ("qegraph.nn.StatNN", {}),
    "StatNN (canonical)": ("qegraph.nn.StatNN", {"canonical": True}),
    "StatNN (quantile)": ("qegraph.nn.StatNN", {"quantile": True}),
    "StatNN (canonical, quantile)": ("qegraph.nn.StatNN", {"canonical": True, "quantile": True}),
}
#: QuasiGMN (learned gauges on the canonical section) and its ablations: the section alone, one learned
#: input gauge, a gauge per layer (the default), the paper's α·β construction, the strict model.
_SECTION_MODELS = {
    "QuasiGMN": ("qegraph.nn.QuasiGMN", _GMN),
    "QuasiGMN (input gauge)": ("qegraph.nn.QuasiGMN", {**_GMN, "gauge": "input"}),
    "QuasiGMN (section only)": ("qegraph.nn.QuasiGMN", {**_GMN, "gauge": "none"}),
    "AlphaBetaGMN (paper)": ("qegraph.nn.AlphaBetaGMN", _GMN),
    "StrictGMN": ("qegraph.nn.StrictGMN", _GMN),
}
_CNN_MODELS = {**_SECTION_MODELS, **_BASELINES}
_CLS = {"out_dim": 10}

EXPERIMENTS: dict[str, Experiment] = {
    # checkpoints at steps 10–200 (step 0 is untrained: chance accuracy, its rank is noise)
    # (+ QuasiGMN with its statistics through their training CDF, the setting chosen on the small split)
    "cnn_generalization": Experiment(
        "cnn", 300, "generalization", "test_accuracy",
        {"QuasiGMN": _CNN_MODELS["QuasiGMN"],
         "QuasiGMN (quantile statistics)": ("qegraph.nn.QuasiGMN", {**_GMN, "stats_transform": "quantile"}),
         **_CNN_MODELS},
        "kendall_tau", epochs=12, data={"steps": [10, 40, 100, 200]}),
    # the same zoo and splits, 50 training runs (200 networks: 4 checkpoints each); QuasiGMN with the
    # settings chosen on validation by cnn_search_small (dropout 0.2, statistics through their training
    # CDF, 15 epochs)
    "cnn_generalization_small": Experiment(
        "cnn", 300, "generalization", "test_accuracy",
        {**_CNN_MODELS, "QuasiGMN": ("qegraph.nn.QuasiGMN", {**_GMN, "dropout": 0.2, "stats_transform": "quantile"},
                                     {"epochs": 15})},
        "kendall_tau", epochs=30, data={"train_runs": 50, "steps": [10, 40, 100, 200]}),
    # hyperparameter search for QuasiGMN on validation (the small split: the regime where it matters);
    # selection by the mean best validation τ (column "val"), never by test
    "cnn_search_small": Experiment(
        "cnn", 300, "generalization", "test_accuracy", {
            "base (hidden 64, 3 layers, lr 3e-3)": ("qegraph.nn.QuasiGMN", _GMN),
            "dropout 0.1": ("qegraph.nn.QuasiGMN", {**_GMN, "dropout": 0.1}),
            "dropout 0.2": ("qegraph.nn.QuasiGMN", {**_GMN, "dropout": 0.2}),
            "weight decay 0.01": ("qegraph.nn.QuasiGMN", _GMN, {"weight_decay": 0.01}),
            "weight decay 0.1": ("qegraph.nn.QuasiGMN", _GMN, {"weight_decay": 0.1}),
            "hidden 32": ("qegraph.nn.QuasiGMN", _GMN_SMALL),
            "2 layers": ("qegraph.nn.QuasiGMN", {**_GMN, "num_layers": 2}),
            "lr 1e-3": ("qegraph.nn.QuasiGMN", _GMN, {"lr": 1e-3}),
            "dropout 0.2, quantile statistics": ("qegraph.nn.QuasiGMN", {**_GMN, "dropout": 0.2,
                                                                         "stats_transform": "quantile"}),
        }, "kendall_tau", epochs=15, data={"train_runs": 50, "steps": [10, 40, 100, 200]}),
    "mlp_generalization": Experiment(
        "mlp", 300, "generalization", "test_accuracy",
        {k: v for k, v in _CNN_MODELS.items() if not k.startswith(("FlatMLP", "StatNN"))},
        "kendall_tau"),
    "transformer_generalization": Experiment(  # mixed architectures: no FlatMLP / StatNN (fixed-size inputs)
        "transformer", 300, "generalization", "test_accuracy",
        {"QuasiGMN": ("qegraph.nn.QuasiGMN", _GMN_SMALL), "StrictGMN": ("qegraph.nn.StrictGMN", _GMN_SMALL),
         "PermGMN": ("qegraph.nn.PermGMN", _GMN_SMALL)}, "kendall_tau", epochs=5, data={"steps": [50, 150, 300]}),
    # INRs fitted from one shared start differ by small deviations: weight tensors are rescaled by their
    # training-set RMS and the graph models standardize their invariant readout (docs/zoo.md, nn.md);
    # QuasiGMN also aligns every INR to a reference INR (a section of the permutations and signs)
    "inr_classification": Experiment(
        "inr", 600, "classification", "label",
        {"QuasiGMN (aligned)": ("qegraph.nn.QuasiGMN", {**_GMN_SMALL, **_CLS, "readout_norm": True, "align": True,
                                                         "flat": True}),
         "QuasiGMN": ("qegraph.nn.QuasiGMN", {**_GMN_SMALL, **_CLS, "readout_norm": True}),
         "StrictGMN": ("qegraph.nn.StrictGMN", {**_GMN_SMALL, **_CLS, "readout_norm": True}),
         "PermGMN": ("qegraph.nn.PermGMN", {**_GMN_SMALL, **_CLS, "readout_norm": True}),
         "FlatMLP": ("qegraph.nn.FlatMLP", _CLS),
         "StatNN": ("qegraph.nn.StatNN", _CLS),
         "StatNN (canonical)": ("qegraph.nn.StatNN", {**_CLS, "canonical": True})},
        "acc", epochs=24, data={"steps": None, "normalize": True}),
    "epsilon_ablation": Experiment(  # the paper's α·β construction (inert for an invariant head)
        "cnn", 300, "generalization", "test_accuracy",
        {"alpha off": ("qegraph.nn.AlphaBetaGMN", {**_GMN_SMALL, "gauge": False}),
         "eps 0.1 fixed": ("qegraph.nn.AlphaBetaGMN", {**_GMN_SMALL, "epsilon": 0.1}),
         "eps 0.5 fixed": ("qegraph.nn.AlphaBetaGMN", {**_GMN_SMALL, "epsilon": 0.5}),
         "eps 0.9 fixed": ("qegraph.nn.AlphaBetaGMN", {**_GMN_SMALL, "epsilon": 0.9}),
         "eps learned": ("qegraph.nn.AlphaBetaGMN", {**_GMN_SMALL, "epsilon_max": 0.9})},
        "kendall_tau"),
}


def _import(path: str) -> Callable[..., Any]:
    mod, _, name = path.rpartition(".")
    return getattr(__import__(mod, fromlist=[name]), name)


def training_options(exp_name: str, model: str, epochs: int | None = None) -> dict[str, Any]:
    """``lr``, ``weight_decay`` and ``epochs`` of one model of a grid: the experiment's defaults, the
    model's overrides, then ``epochs`` (the ``--epochs`` flag) if given."""
    exp = EXPERIMENTS[exp_name]
    spec = exp.models[model]
    train = {"lr": exp.lr, "weight_decay": 0.0, "epochs": exp.epochs, **(spec[2] if len(spec) > 2 else {})}
    if epochs:
        train["epochs"] = epochs
    return train


def run_job(exp_name: str, zoo_dir: str, model: str, seed: int, train_k: float | None,
            test_ks: list[float], epochs: int | None = None, accelerator: str = "auto") -> dict[str, Any]:
    """Train one model on one seed (Lightning ``accelerator``: auto, cpu, gpu…; one device); return its
    test metric under each test k, evaluated on the training device in float32."""
    import lightning as L

    from qegraph.data import ZooDataModule
    from qegraph.data.augment import augment
    from qegraph.tasks import GeneralizationPrediction, INRClassification
    from qegraph.tasks.best_state import BestValidationState

    torch.set_num_threads(1)
    exp = EXPERIMENTS[exp_name]
    L.seed_everything(seed, verbose=False)
    dm = ZooDataModule(zoo_dir, target=exp.target, batch_size=exp.batch_size, seed=0, augment_k=train_k, **exp.data)
    dm.prepare_data()
    dm.setup()
    cls_path, kwargs = exp.models[model][:2]
    train = training_options(exp_name, model, epochs)
    net = _import(cls_path)(**kwargs)
    max_epochs = train["epochs"]
    task_cls = GeneralizationPrediction if exp.task == "generalization" else INRClassification
    task = task_cls(net, lr=train["lr"], weight_decay=train["weight_decay"], max_lr_epochs=max_epochs)
    best = BestValidationState(f"val/{exp.metric}")
    trainer = L.Trainer(max_epochs=max_epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator=accelerator, devices=1, deterministic=False,
                        callbacks=[best])
    t0 = time.time()
    trainer.fit(task, dm)
    best.restore(task)  # model selection on the validation split, as the configs' ModelCheckpoint does
    device = trainer.strategy.root_device
    task.eval().to(device)  # Lightning moves the module back to the CPU after fit
    n_params = sum(p.numel() for p in net.parameters())  # after fit: baselines size lazy layers on first use
    results: dict[str, Any] = {"model": model, "seed": seed, "train_k": train_k, "params": n_params,
                               "train_seconds": time.time() - t0, "best_epoch": best.epoch, "best_val": best.score}
    gen = torch.Generator().manual_seed(10_000 + seed)
    for k in [None, *test_ks]:  # None: the test networks as they are, no group element applied
        preds, ys = [], []
        with torch.no_grad():
            for batch in dm.test_dataloader():
                batch = (batch if k is None else augment(batch, k, gen)).to(device)  # drawn and acted on the CPU
                preds.append(task.predict_values(task(batch)))
                ys.append(task.target(batch))
        metrics = task.epoch_metrics(torch.cat(preds), torch.cat(ys))
        results["test_none" if k is None else f"test_k{k:g}"] = metrics[exp.metric]
        if k is None and exp.task == "generalization":  # for the mean over seeds (write_tables)
            results["pred_none"] = torch.cat(preds).double().cpu().tolist()
            results["y_none"] = torch.cat(ys).double().cpu().tolist()
    return results


def ensure_zoo(exp: Experiment, zoo_dir: Path, seed: int = 0, workers: int = 2) -> None:
    from qegraph.data import generate_zoo

    if not (zoo_dir / "manifest.json").is_file():
        generate_zoo(exp.zoo_kind, zoo_dir, exp.zoo_models, seed=seed, workers=workers)


def _mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    return m, (sum((v - m) ** 2 for v in vals) / max(len(vals) - 1, 1)) ** 0.5


def _cell(mean: float, std: float, n: int) -> str:
    """A table cell: mean ± std over n seeds ("—" for none; one seed has no spread to show)."""
    return "—" if n == 0 else f"{mean:.3f} (1 seed)" if n == 1 else f"{mean:.3f} ± {std:.3f}"


def _seed_mean(rows: list[dict[str, Any]]) -> tuple[float, int] | None:
    """Kendall τ of the mean of the test predictions (networks as they are) of ≥ 2 seeds, and the number of
    seeds; ``None`` without stored predictions."""
    from qegraph.tasks.metrics import kendall_tau

    with_pred = [r for r in rows if r.get("pred_none")]
    if len(with_pred) < 2:
        return None
    ys = [r["y_none"] for r in with_pred]
    if any(y != ys[0] for y in ys):
        raise QegraphError("test targets differ between seeds: the splits are not the same")
    pred = torch.tensor([r["pred_none"] for r in with_pred], dtype=torch.float64).mean(0)
    return kendall_tau(pred, torch.tensor(ys[0], dtype=torch.float64)), len(with_pred)


def write_tables(exp_name: str, rows: list[dict[str, Any]], out: Path, test_ks: list[float], command: str) -> str:
    """Aggregate job rows into results.csv / results.md / results.png; returns the markdown."""
    exp = EXPERIMENTS[exp_name]
    out.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for r in rows for k in r} - {"pred_none", "y_none"})
    with open(out / "runs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = [f"### {exp_name}: test {exp.metric} (mean ± std over seeds)", "", f"Command: `{command}`", ""]
    cols: list[float | None] = ([None] if any("test_none" in r for r in rows) else []) + list(test_ks)
    key = {k: "test_none" if k is None else f"test_k{k:g}" for k in cols}
    head = ("| model | params | train | val (best epoch) | "
            + " | ".join("no action" if k is None else f"k={k:g}" for k in cols) + " |")
    lines += [head, "|" + "---|" * (4 + len(cols))]
    summary = []
    for model in exp.models:
        mrows = [r for r in rows if r["model"] == model]
        if not mrows:
            continue
        params = mrows[0]["params"]
        plain = [r for r in mrows if r["train_k"] is None]
        cells = []
        for k in cols:
            vals = [r[key[k]] for r in plain if key[k] in r]
            m, s = _mean_std(vals)
            cells.append(_cell(m, s, len(vals)))
            if vals:
                summary.append({"model": model, "train": "plain", "test_k": "none" if k is None else k, "mean": m,
                                "std": s, "n": len(vals), "params": params})
        vals = [r["best_val"] for r in plain if r.get("best_val") is not None]
        m, s = _mean_std(vals)
        val = _cell(m, s, len(vals))
        if vals:
            summary.append({"model": model, "train": "plain", "test_k": "val", "mean": m, "std": s, "n": len(vals),
                            "params": params})
        lines.append(f"| {model} | {params:,} | plain | {val} | " + " | ".join(cells) + " |")
        aug_cells = ["—", "—"] if None in cols else ["—"]
        for k in test_ks:
            sel = [r[f"test_k{k:g}"] for r in mrows if r["train_k"] is not None and float(r["train_k"]) == float(k)]
            m, s = _mean_std(sel)
            aug_cells.append(_cell(m, s, len(sel)))
            if sel:
                summary.append({"model": model, "train": "augmented", "test_k": k, "mean": m, "std": s, "n": len(sel), "params": params})
        ens = _seed_mean(plain) if None in cols else None
        if ens is not None:
            tau, n = ens
            summary.append({"model": model, "train": f"mean of {n} seeds", "test_k": "none", "mean": tau, "std": 0.0,
                            "n": 1, "params": params})
            lines.append(f"| {model} | {params:,} | mean of {n} seeds' predictions | — | {tau:.3f} |"
                         + " — |" * (len(cols) - 1))
        if any(c != "—" for c in aug_cells[1:]):
            lines.append(f"| {model} | {params:,} | augmented (k) | " + " | ".join(aug_cells) + " |")
    md = "\n".join(lines) + "\n"
    (out / "results.md").write_text(md)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["model", "train", "test_k", "mean", "std", "n", "params"])
        w.writeheader()
        w.writerows(summary)
    _plot(exp_name, summary, out / "results.png", exp.metric)
    return md


def _plot(exp_name: str, summary: list[dict[str, Any]], path: Path, metric: str) -> None:
    """The metric against test k per model (nothing is drawn, and no file written, for a grid without test k)."""
    from matplotlib.figure import Figure

    if not any(r["test_k"] not in ("none", "val") for r in summary):
        return

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for model in dict.fromkeys(r["model"] for r in summary):
        for train, style in (("plain", "-o"), ("augmented", "--s")):
            pts = [r for r in summary if r["model"] == model and r["train"] == train and r["test_k"] not in ("none", "val")]
            if pts:
                ax.errorbar([r["test_k"] for r in pts], [r["mean"] for r in pts], yerr=[r["std"] for r in pts],
                            fmt=style, capsize=3, label=f"{model} ({train})")
    ax.set_title(f"{exp_name}: test {metric} under scale augmentation")
    ax.set_xlabel("test-time scales log-uniform in [1, 10^k]: k")
    ax.set_ylabel(f"test {metric}")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run_experiment(
    name: str,
    out: str | Path,
    zoo_dir: str | Path | None = None,
    seeds: int = 3,
    test_ks: list[float] | None = None,
    train_ks: list[float] | None = None,
    models: list[str] | None = None,
    epochs: int | None = None,
    workers: int = 1,
    command: str = "",
    accelerator: str = "auto",
) -> str:
    """Run the grid of experiment ``name`` and write its tables to ``out``; returns the markdown table.
    Training jobs run on Lightning's ``accelerator`` (one device each; ``workers`` jobs at a time)."""
    if name not in EXPERIMENTS:
        raise QegraphError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
    exp = EXPERIMENTS[name]
    out = Path(out)
    zoo = Path(zoo_dir) if zoo_dir else out / "zoo"
    ensure_zoo(exp, zoo, workers=workers)
    test_ks = [0, 1, 2, 3, 4] if test_ks is None else test_ks
    train_ks = [] if train_ks is None else train_ks
    chosen = list(exp.models) if models is None else models
    unknown = [m for m in chosen if m not in exp.models]
    if unknown:
        raise QegraphError(f"unknown model(s) {unknown} for {name}; choose from {list(exp.models)}")
    jobs = [(m, s, None, test_ks) for s in range(seeds) for m in chosen]
    jobs += [(m, s, float(k), [float(k)]) for k in train_ks for s in range(seeds) for m in chosen]
    rows: list[dict[str, Any]] = []
    done_path = out / "runs.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    if done_path.is_file():  # resume: skip finished jobs
        rows = [json.loads(line) for line in done_path.read_text().splitlines() if line.strip()]
    finished = {(r["model"], r["seed"], r["train_k"]) for r in rows}
    todo = [j for j in jobs if (j[0], j[1], j[2]) not in finished]
    from tqdm.auto import tqdm

    spawn = multiprocessing.get_context("spawn")  # never fork a process that may have initialised CUDA
    with ExitStack() as stack:
        log = stack.enter_context(open(done_path, "a"))
        bar = stack.enter_context(tqdm(total=len(todo), desc=name, unit="run"))
        if workers > 1:
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=workers, mp_context=spawn))
            futures = {pool.submit(run_job, name, str(zoo), m, s, tk, ks, epochs, accelerator): (m, s, tk)
                       for m, s, tk, ks in todo}
            outcomes: Iterator[tuple[tuple[Any, ...], Future]] = ((futures[f], f) for f in as_completed(futures))
        else:
            futures = {}
            outcomes = (((m, s, tk), _call(run_job, name, str(zoo), m, s, tk, ks, epochs, accelerator))
                        for m, s, tk, ks in todo)
        for (model, seed, train_k), fut in outcomes:
            if fut.exception() is not None:  # stop at the first failure; queued jobs are cancelled
                for other in futures:
                    other.cancel()
                raise QegraphError(f"experiment {name}: job {model} (seed {seed}, train_k {train_k}) failed: "
                                   f"{fut.exception()}; finished jobs are kept in {done_path}") from fut.exception()
            row = fut.result()
            rows.append(row)
            log.write(json.dumps(row) + "\n")
            log.flush()
            bar.update()
    return write_tables(name, rows, out, test_ks, command or f"qegraph experiment {name}")


def _call(fn: Callable[..., Any], *args: Any) -> Future:
    """Run ``fn(*args)`` now; its result or exception in a completed Future (the ``workers=1`` path)."""
    fut: Future = Future()
    try:
        fut.set_result(fn(*args))
    except Exception as e:  # noqa: BLE001 - reported by the caller like a worker's exception
        fut.set_exception(e)
    return fut


def add_experiment_parser(sub: Any) -> None:
    p = sub.add_parser("experiment", help="run a comparison grid and write results tables")
    p.add_argument("name", choices=sorted(EXPERIMENTS))
    p.add_argument("--out", help="output folder (default outputs/experiments/NAME)")
    p.add_argument("--zoo", help="zoo folder (generated there if absent; default OUT/zoo)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--test-ks", type=float, nargs="*", default=[0, 1, 2, 3, 4])
    p.add_argument("--train-ks", type=float, nargs="*", default=[2, 4], help="k values trained with augmentation")
    p.add_argument("--models", nargs="*", help="subset of the experiment's models")
    p.add_argument("--epochs", type=int, help="override the experiment's epochs")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)))
    p.add_argument("--accelerator", default="auto",
                   help="Lightning accelerator of every training job: auto (a GPU when there is one), cpu, gpu")


def run_experiment_cli(args: Any, argv: list[str]) -> None:
    md = run_experiment(args.name, args.out or f"outputs/experiments/{args.name}", args.zoo, args.seeds, args.test_ks,
                        args.train_ks, args.models, args.epochs, args.workers, command="qegraph " + " ".join(argv),
                        accelerator=args.accelerator)
    print(md)
