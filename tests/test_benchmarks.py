"""The benchmark scripts run and write valid, self-consistent results (no timing assertions: timings are
machine-dependent; the ratios the README quotes are checked against the raw times they are made of)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_metanet_quick(tmp_path: Path) -> None:
    out = tmp_path / "metanet_quick.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "metanet.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(out.read_text())
    # the dense reference computes the same function as the sparse layer (float64 round-off)
    assert res["dense_check_rel_err"] < 1e-12
    zoo, deep, loader = res["zoo"], res["deep"], res["loader"]
    steps, gps = zoo["step_s_median"], zoo["graphs_per_s"]
    for value in [*steps.values(), *gps.values(), *deep["step_s_median"].values(),
                  *deep["peak_step_bytes"].values(), loader["graphs_per_s"]]:
        assert _positive(value), value
    # every ratio is the quotient of the measurements it is derived from
    for key in ("quasi", "strict", "dense"):
        assert gps[key] == pytest.approx(zoo["graphs"] / steps[key], rel=1e-12)
    assert res["speedup_vs_dense"] == pytest.approx(gps["quasi"] / gps["dense"], rel=1e-12)
    assert res["alpha_overhead"] == pytest.approx(steps["quasi"] / steps["strict"], rel=1e-12)
    assert res["speedup_vs_dense_large"] == pytest.approx(deep["step_s_median"]["dense"] / deep["step_s_median"]["quasi"],
                                                          rel=1e-12)
    assert res["memory_ratio_vs_dense"] == pytest.approx(
        deep["peak_step_bytes"]["quasi"] / deep["peak_step_bytes"]["dense"], rel=1e-12)
    assert res["loader_to_step_ratio"] == pytest.approx(loader["graphs_per_s"] / gps["quasi"], rel=1e-12)
    assert f"speedup_vs_dense {res['speedup_vs_dense']:.2f}x" in proc.stdout  # the printed table shows the value


def test_zoo_roofline_counts_known_macs() -> None:
    """Small CNN Zoo net on 8×8 digits: conv 6·6·16·9 + conv 4·4·16·144 + conv 2·2·16·144 + linear 10·16."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import zoo as zoo_bench
    finally:
        sys.path.pop(0)
    import torch

    from qegraph.data.zoo_cnn import cnn_arch
    from qegraph.graph.arch import module_from_arch

    net = module_from_arch(cnn_arch("relu"))
    assert zoo_bench.forward_macs(net, torch.zeros(1, 1, 8, 8)) == 5184 + 36864 + 9216 + 160
    assert zoo_bench.forward_macs(net, torch.zeros(3, 1, 8, 8)) == 3 * 51424


@pytest.fixture(scope="module")
def cnn_zoo_10(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CNN zoo of 10 runs × 5 checkpoints (seed 1)."""
    from qegraph.data.generate import generate_zoo

    path = tmp_path_factory.mktemp("bench") / "zoo"
    generate_zoo("cnn", path, 10, seed=1, progress=False)
    return path


@pytest.mark.slow
def test_tau_ceiling_on_a_small_zoo(tmp_path: Path, cnn_zoo_10: Path) -> None:
    import numpy as np
    import yaml
    from scipy.stats import kendalltau

    from qegraph.data import ZooDataModule
    from qegraph.data.store import Zoo

    data = {"zoo_dir": str(cnn_zoo_10), "target": "test_accuracy", "steps": [10, 40, 100, 200],
            "val_fraction": 0.2, "test_fraction": 0.3, "cache_dir": str(tmp_path / "cache")}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"class_path": "qegraph.data.ZooDataModule", "init_args": data}}))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tau_ceiling.py"), "--config", str(cfg),
                           "--out", str(tmp_path / "t.json")], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads((tmp_path / "t.json").read_text())
    assert res["test_checkpoints"] == 3 * 4  # 3 held-out runs × 4 steps
    # the reference values, recomputed here from the zoo's metadata on the same test split
    dm = ZooDataModule(**data)
    dm.setup()
    ids = {ckpt for _, _, ckpt in dm.splits["test"].items}
    rows = [r for r in Zoo(cnn_zoo_10).rows if r["id"] in ids]
    test = np.array([r["test_accuracy"] for r in rows])
    train = np.array([r["train_accuracy"] for r in rows])
    assert len(rows) == 12 and len(set(test.tolist())) > 6  # a spread of accuracies: τ is informative
    assert res["tau_train_accuracy"] == round(float(kendalltau(train, test)[0]), 3)
    assert res["chance_fraction"] == round(float((test < 0.3).mean()), 3)
    assert 0.5 < res["tau_test_resampled"] <= 1  # resampling 450 test images barely reorders 12 accuracies


@pytest.mark.slow
def test_stats_probe_on_a_tiny_zoo(tmp_path: Path, cnn_zoo_10: Path) -> None:
    """benchmarks/stats_probe.py runs end to end and reports every (weights, learner) pair once."""
    out = tmp_path / "probe.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "stats_probe.py"), "--zoo", str(cnn_zoo_10),
                           "--train-runs", "4", "--val-fraction", "0.2", "--test-fraction", "0.3", "--seeds", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(out.read_text())
    assert res["networks"] == {"train": 16, "val": 8, "test": 12}  # runs × 4 checkpoints (step 0 left out)
    learners = ["ridge", "gradient-boosted trees", "extra trees", "MLP (standardize)", "MLP (quantile)"]
    assert [(r["weights"], r["learner"]) for r in res["rows"]] == [(w, k) for w in ("raw", "canonical") for k in learners]
    # τ is NaN where a learner predicts one value for a whole split (trees on 16 networks can); MLPs do not
    taus = [(r["learner"], r[k]) for r in res["rows"] for k in ("val_tau", "test_tau")]
    assert all(-1 <= v <= 1 or (math.isnan(v) and not name.startswith("MLP")) for name, v in taus)
    assert "canonical  MLP (quantile)" in proc.stdout
