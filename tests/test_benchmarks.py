"""The benchmark scripts run and write valid results (no timing assertions: timings are machine-dependent)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

METANET_KEYS = ("speedup_vs_dense", "speedup_vs_dense_large", "memory_ratio_vs_dense", "alpha_overhead",
                "loader_to_step_ratio")


def test_metanet_quick(tmp_path: Path) -> None:
    out = tmp_path / "metanet_quick.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "metanet.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(out.read_text())
    for key in METANET_KEYS:
        value = res[key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)
    assert res["dense_check_rel_err"] < 1e-9
    assert "speedup_vs_dense" in proc.stdout


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


def test_tau_ceiling_on_a_small_zoo(tmp_path: Path) -> None:
    import yaml

    from qegraph.data.generate import generate_zoo

    generate_zoo("cnn", tmp_path / "zoo", 10, seed=1, progress=False)
    data = {"zoo_dir": str(tmp_path / "zoo"), "target": "test_accuracy", "steps": [10, 40, 100, 200],
            "val_fraction": 0.2, "test_fraction": 0.3, "cache_dir": str(tmp_path / "cache")}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"class_path": "qegraph.data.ZooDataModule", "init_args": data}}))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tau_ceiling.py"), "--config", str(cfg),
                           "--out", str(tmp_path / "t.json")], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads((tmp_path / "t.json").read_text())
    assert res["test_checkpoints"] == 3 * 4  # 3 held-out runs × 4 steps
    assert -1 <= res["tau_train_accuracy"] <= 1 and 0 < res["tau_test_resampled"] <= 1
