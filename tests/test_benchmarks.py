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
