"""The ``qegraph experiment`` grid runner: aggregation, resume and failure reporting.

Training jobs are replaced by a function returning known metrics, so what is tested is the runner
(the training itself is covered by tests/test_training.py).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from qegraph.errors import QegraphError
from qegraph.tasks import experiment as exp_mod

MODELS = ["QuasiGMN", "StrictGMN"]


def _fake_job(calls: list[tuple[Any, ...]], fail: str | None = None):
    def run_job(name: str, zoo: str, model: str, seed: int, train_k: float | None, test_ks: list[float],
                *options: Any, **kw: Any) -> dict[str, Any]:  # options: epochs, … (whatever the runner passes)
        calls.append((model, seed, train_k))
        if model == fail:
            raise RuntimeError("out of memory")
        base = 0.5 + 0.1 * MODELS.index(model) + 0.01 * seed
        preds = [0.1, 0.2, 0.3, 0.4] if seed % 2 == 0 else [0.4, 0.25, 0.2, 0.1]  # seed 1 ranks backwards
        return {"model": model, "seed": seed, "train_k": train_k, "params": 7, "test_none": base + 0.1, "best_val": base,
                "pred_none": preds, "y_none": [0.0, 1.0, 2.0, 3.0],
                **{f"test_k{k:g}": base - 0.001 * k for k in test_ks}}

    return run_job


@pytest.fixture
def no_zoo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exp_mod, "ensure_zoo", lambda *a, **k: None)


def test_grid_tables_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_zoo: None) -> None:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(exp_mod, "run_job", _fake_job(calls))
    md = exp_mod.run_experiment("cnn_generalization", tmp_path, seeds=3, test_ks=[0, 2], train_ks=[2],
                                models=MODELS, command="qegraph experiment cnn_generalization")
    assert len(calls) == 2 * 3 * 2  # (plain + one augmented k) × seeds × models
    with open(tmp_path / "results.csv") as f:
        rows = {(r["model"], r["train"], r["test_k"] if r["test_k"] in ("none", "val") else float(r["test_k"])): r
                for r in csv.DictReader(f)}
    strict = rows[("StrictGMN", "plain", 2.0)]
    assert float(strict["mean"]) == pytest.approx(0.6 + 0.01 - 0.002)  # seeds 0, 1, 2 → mean offset 0.01
    assert float(strict["std"]) == pytest.approx(0.01)
    assert int(strict["n"]) == 3
    assert float(rows[("StrictGMN", "plain", "none")]["mean"]) == pytest.approx(0.71)
    assert ("QuasiGMN", "augmented", 2.0) in rows and ("QuasiGMN", "augmented", 0.0) not in rows
    assert float(rows[("StrictGMN", "plain", "val")]["mean"]) == pytest.approx(0.61)  # best validation score
    assert "| model | params | train | val (best epoch) | no action | k=0 | k=2 |" in md
    assert "| StrictGMN | 7 | plain | 0.610 ± 0.010 | 0.710 ± 0.010 | 0.610 ± 0.010 | 0.608 ± 0.010 |" in md
    assert "| StrictGMN | 7 | augmented (k) | — | — | — | 0.608 ± 0.010 |" in md
    # the mean of the 3 seeds' predictions, (0.2, 0.217, 0.267, 0.3), ranks like the targets: τ = 1
    assert "| StrictGMN | 7 | mean of 3 seeds' predictions | — | 1.000 | — | — |" in md
    assert "pred_none" not in (tmp_path / "runs.csv").read_text()
    assert (tmp_path / "results.png").stat().st_size > 0
    calls.clear()
    exp_mod.run_experiment("cnn_generalization", tmp_path, seeds=3, test_ks=[0, 2], train_ks=[2], models=MODELS)
    assert calls == []  # every job was already in runs.jsonl


def test_failed_job_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_zoo: None) -> None:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(exp_mod, "run_job", _fake_job(calls, fail="StrictGMN"))
    with pytest.raises(QegraphError, match=r"job StrictGMN \(seed 0, train_k None\) failed: out of memory"):
        exp_mod.run_experiment("cnn_generalization", tmp_path, seeds=2, test_ks=[0], train_ks=[], models=MODELS)
    kept = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert [(r["model"], r["seed"]) for r in kept] == [("QuasiGMN", 0)]


def test_unknown_names(tmp_path: Path, no_zoo: None) -> None:
    with pytest.raises(QegraphError, match="unknown experiment"):
        exp_mod.run_experiment("nope", tmp_path)
    with pytest.raises(QegraphError, match="unknown model"):
        exp_mod.run_experiment("transformer_generalization", tmp_path, models=["StatNN"])


def test_best_validation_state_restores_the_best_finite_epoch() -> None:
    """run_job tests the epoch with the best validation metric: later worse or NaN epochs do not replace it."""
    from types import SimpleNamespace

    import torch
    from torch import nn

    from qegraph.tasks.best_state import BestValidationState

    net = nn.Linear(3, 2)
    cb = BestValidationState("val/kendall_tau")
    cb.restore(net)  # nothing seen yet: a no-op
    states = {}
    for epoch, value in enumerate([0.2, 0.5, float("nan"), 0.4]):
        with torch.no_grad():
            net.weight.fill_(float(epoch))
        states[epoch] = net.weight.clone()
        cb.on_validation_end(SimpleNamespace(callback_metrics={"val/kendall_tau": torch.tensor(value)},
                                             current_epoch=epoch), net)
    assert (cb.epoch, cb.score) == (1, 0.5)
    cb.restore(net)
    assert torch.equal(net.weight, states[1])


def test_training_options_apply_model_overrides_then_the_epochs_flag() -> None:
    base = exp_mod.training_options("cnn_search_small", "base (hidden 64, 3 layers, lr 3e-3)")
    assert base == {"lr": 3e-3, "weight_decay": 0.0, "epochs": 15}
    assert exp_mod.training_options("cnn_search_small", "weight decay 0.1")["weight_decay"] == 0.1
    assert exp_mod.training_options("cnn_search_small", "lr 1e-3")["lr"] == 1e-3
    small = exp_mod.training_options("cnn_generalization_small", "QuasiGMN")
    assert small == {"lr": 3e-3, "weight_decay": 0.0, "epochs": 15}  # the model's override of the grid's 30
    assert exp_mod.training_options("cnn_generalization_small", "StatNN")["epochs"] == 30
    assert exp_mod.training_options("cnn_generalization_small", "QuasiGMN", epochs=5)["epochs"] == 5


def test_one_seed_cells_show_no_spread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_zoo: None) -> None:
    monkeypatch.setattr(exp_mod, "run_job", _fake_job([]))
    md = exp_mod.run_experiment("cnn_generalization", tmp_path, seeds=1, test_ks=[0], train_ks=[], models=MODELS)
    assert "| StrictGMN | 7 | plain | 0.600 (1 seed) | 0.700 (1 seed) | 0.600 (1 seed) |" in md
