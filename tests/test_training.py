"""Training end to end on a tiny CNN zoo: the ``qegraph fit`` CLI, resume from a checkpoint, and DDP.

The zoo (8 runs × 5 checkpoints) is split by run into 4 train runs (20 graphs), 1 val run (5) and
3 test runs (15); the metanetwork is a QuasiGMN with hidden width 8 and one layer. The split seed is
chosen so that the validation run is one that learns (test accuracy 0.09 → 0.93 over its checkpoints):
the validation metrics compared below are real numbers, not the NaN of a run whose checkpoints tie.
The fits are ``slow``; the argument checks of the CLI are not (they fail before any data is read).
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

from qegraph.cli import main
from qegraph.data import ZooDataModule, generate_zoo
from qegraph.nn import QuasiGMN
from qegraph.tasks import GeneralizationPrediction

SPLIT = {"val_fraction": 0.125, "test_fraction": 0.375, "seed": 2}  # 1 val run, 3 test runs: odd sizes 5, 15
METRICS = ("kendall_tau", "r2", "mae")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("zoo") / "cnn"
    generate_zoo("cnn", path, 8, seed=0, progress=False)
    ZooDataModule(str(path), **SPLIT).prepare_data()  # convert to graphs once, before any parallel run
    return str(path)


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["qegraph"])  # LightningCLI warns when pytest's argv is present


def write_config(tmp: Path, zoo: str, *, max_epochs: int = 1, batch_size: int = 8, augment_k: float | None = 1.0,
                 monitor: str | None = "val/kendall_tau", model: dict | None = None) -> Path:
    ckpt = {"dirpath": str(tmp / "ckpt"), "save_last": True}
    if monitor:
        ckpt.update(monitor=monitor, mode="max")
    cfg = {
        "seed_everything": 0,
        "test_after_fit": True,
        "trainer": {
            "max_epochs": max_epochs, "accelerator": "cpu", "devices": 1, "log_every_n_steps": 1,
            "enable_progress_bar": False, "enable_model_summary": False,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(tmp / "logs"), "name": "run", "version": 0}},
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": ckpt}],
        },
        "model": {"class_path": "qegraph.tasks.GeneralizationPrediction",
                  "init_args": {"lr": 0.003, "model": {"class_path": "qegraph.nn.QuasiGMN",
                                                       "init_args": model or {"hidden_dim": 8, "num_layers": 1,
                                                                              "stats": False}}}},
        "data": {"class_path": "qegraph.data.ZooDataModule",
                 "init_args": {"zoo_dir": zoo, "batch_size": batch_size, "augment_k": augment_k, **SPLIT}},
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def logged(tmp: Path) -> dict[str, list[float]]:
    """Every non-empty value of every column of the CSV logger's metrics.csv, in row order."""
    out: dict[str, list[float]] = {}
    with open(tmp / "logs" / "run" / "version_0" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                if v != "":
                    out.setdefault(k, []).append(float(v))
    return out


# ---------------------------------------------------------------------------------------------- CLI


@pytest.mark.slow
def test_cli_fit_writes_checkpoints_and_tests_the_best(zoo: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = write_config(tmp_path, zoo)
    assert main(["fit", "--config", str(cfg), "--trainer.max_epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "test/kendall_tau" in out
    ckpts = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert "last.ckpt" in ckpts and any(n.startswith("epoch=0") for n in ckpts), ckpts
    metrics = logged(tmp_path)
    for name in METRICS:
        assert len(metrics[f"test/{name}"]) == 1 and math.isfinite(metrics[f"test/{name}"][0])
        assert len(metrics[f"val/{name}"]) == 1 and math.isfinite(metrics[f"val/{name}"][0])


@pytest.mark.parametrize(("flag", "value", "key"), [
    ("--model.init_args.no_such_key", "3", "no_such_key"),
    ("--model.init_args.lr", "abc", "lr"),
    ("--model.init_args.loss", "hinge", "loss"),  # a str before: ValueError traceback at instantiation
    ("--trainer.max_epochs", "many", "max_epochs"),
    ("--data.init_args.batch_size", "1.5", "batch_size"),
])
def test_cli_reports_unknown_keys_and_bad_values(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 flag: str, value: str, key: str) -> None:
    cfg = write_config(tmp_path, str(tmp_path / "no-zoo-needed"))  # refused while parsing, before any data
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", str(cfg), flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err, err
    assert not (tmp_path / "ckpt").exists()  # refused before training


# ------------------------------------------------------------------------------------------- resume


def _fit(zoo: str, ckpt_dir: Path, max_epochs: int, ckpt_path: str | None = None,  # noqa: ANN202
         stats_transform: str = "standardize"):
    L.seed_everything(0, verbose=False)
    model = QuasiGMN(hidden_dim=8, num_layers=1, stats_transform=stats_transform, stats_max_depth=8)
    task = GeneralizationPrediction(model, lr=0.003, max_lr_epochs=2)
    dm = ZooDataModule(zoo, batch_size=8, augment_k=1.0, **SPLIT)
    trainer = L.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, deterministic=True, logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[ModelCheckpoint(dirpath=ckpt_dir, save_last=True)])
    trainer.fit(task, datamodule=dm, ckpt_path=ckpt_path)
    val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    test = trainer.test(task, datamodule=dm, verbose=False)[0]
    params = {k: v.detach().clone() for k, v in task.state_dict().items()}
    return val, test, params


@pytest.mark.slow
@pytest.mark.parametrize("stats_transform", ["standardize", "quantile"])
def test_resumed_run_matches_uninterrupted_run(zoo: str, tmp_path: Path, stats_transform: str) -> None:
    """2 epochs straight vs 1 epoch, stop, resume from last.ckpt for the 2nd: bitwise the same
    parameters, val and test metrics, with training augmentation on (augment_k=1: random
    scalings/permutations seeded by the global step, and an epoch-seeded shuffle). Exact equality
    matters: the metanetwork is nearly invariant to the augmentation, so drawing other group
    elements (e.g. from the unrestored global RNG) moves the results only in the last bits. Both
    statistics paths: BatchNorm moments re-estimated before validation, QuantileNorm knots fitted at the
    first fit start and restored from the checkpoint on resume."""
    val_a, test_a, params_a = _fit(zoo, tmp_path / "a", 2, stats_transform=stats_transform)
    _, _, params_1 = _fit(zoo, tmp_path / "b", 1, stats_transform=stats_transform)
    val_b, test_b, params_b = _fit(zoo, tmp_path / "b2", 2, ckpt_path=str(tmp_path / "b" / "last.ckpt"),
                                   stats_transform=stats_transform)
    if stats_transform == "quantile":
        assert bool(params_b["model.readout.stats_norm.fitted"])

    assert params_a.keys() == params_b.keys()
    for k in params_a:
        assert torch.equal(params_a[k], params_b[k]), (k, (params_a[k] - params_b[k]).abs().max())
    assert any(not torch.equal(params_1[k], params_a[k]) for k in params_a)  # epoch 2 did train
    assert {f"val/{m}" for m in METRICS} <= val_a.keys() and val_a.keys() == val_b.keys()
    for k in val_a:
        assert math.isfinite(val_a[k]) and val_b[k] == val_a[k], (k, val_a[k], val_b[k])
    assert test_a.keys() == test_b.keys() and {f"test/{m}" for m in METRICS} <= test_a.keys()
    for k in test_a:
        assert test_b[k] == test_a[k], k
    assert math.isfinite(test_a["test/kendall_tau"])


# ---------------------------------------------------------------------------------------------- DDP


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_a_single_process(zoo: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``qegraph fit --trainer.strategy ddp --trainer.devices 2`` (gloo, 2 CPU processes launched by
    Lightning) for 2 epochs of one step each vs a single process, same seed, no augmentation.

    "Match" means: the same trained parameters and the same val/test metrics (to float tolerance).
    This holds because each epoch is one full-batch step: the single process sees all 20 training
    graphs in one batch of 20, each DDP rank a disjoint half (batch 10) and DDP averages the two
    gradients, which is the full-batch mean gradient. Both runs use QuasiGMN with its statistics skip
    path through their training CDF (``stats_transform="quantile"``): every rank fits the same knots from
    the whole training split at fit start, so the skip path is the same function on both ranks. (With
    standardized statistics the runs legitimately differ: BatchNorm's batch moments are per rank under
    DDP; ``--trainer.sync_batchnorm true`` synchronises them, on GPUs only.) Val/test metrics are scored on predictions
    gathered from both ranks; the val (5) and test (15) sets have odd sizes, so the distributed
    sampler pads them with a repeated graph, which must be dropped (by ``zoo_id``) for R², MAE and
    Kendall τ to equal the single-process values.
    """
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    single.mkdir()
    ddp.mkdir()
    model = {"hidden_dim": 8, "num_layers": 1, "stats_transform": "quantile", "stats_max_depth": 8}
    assert main(["fit", "--config", str(write_config(single, zoo, max_epochs=2, batch_size=20, augment_k=None,
                                                      monitor=None, model=model))]) == 0
    capsys.readouterr()
    cfg = write_config(ddp, zoo, max_epochs=2, batch_size=10, augment_k=None, monitor=None, model=model)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "qegraph.cli", "fit", "--config", str(cfg),
         "--trainer.strategy", "ddp", "--trainer.devices", "2"],
        capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "MEMBER: 2/2" in proc.stderr + proc.stdout  # really two processes

    m1, m2 = logged(single), logged(ddp)
    for stage in ("val", "test"):
        for name in METRICS:
            key = f"{stage}/{name}"
            assert len(m1[key]) == len(m2[key]) == (2 if stage == "val" else 1), key
            assert all(math.isfinite(v) for v in m1[key] + m2[key]), (key, m1[key], m2[key])
            assert m2[key] == pytest.approx(m1[key], rel=1e-4, abs=1e-5), key

    sd1 = torch.load(single / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    sd2 = torch.load(ddp / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert sd1.keys() == sd2.keys() and bool(sd1["model.readout.stats_norm.fitted"])
    for k in sd1:
        assert torch.allclose(sd1[k], sd2[k], rtol=0, atol=1e-5), (k, (sd1[k] - sd2[k]).abs().max())
