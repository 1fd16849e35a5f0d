"""Parameter overhead of the quasi gauge α over the strict model, per configuration.

Run: ``python benchmarks/alpha_overhead.py``. Prints a table and writes
``benchmarks/results/alpha_overhead.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from qegraph.nn import AlphaBetaGMN, StrictGMN

CONFIGS = [
    {"hidden_dim": 32, "num_layers": 4},
    {"hidden_dim": 64, "num_layers": 4},
    {"hidden_dim": 64, "num_layers": 6},
    {"hidden_dim": 128, "num_layers": 4},
]


def count(model: object) -> int:
    return sum(p.numel() for p in model.parameters())  # type: ignore[attr-defined]


def main() -> list[dict[str, float]]:
    rows = []
    for cfg in CONFIGS:
        strict, quasi = count(StrictGMN(out_dim=1, **cfg)), count(AlphaBetaGMN(out_dim=1, **cfg))
        rows.append({**cfg, "strict_params": strict, "quasi_params": quasi,
                     "overhead_pct": round(100.0 * (quasi - strict) / strict, 2)})
    print(f"{'hidden':>6} {'layers':>6} {'strict':>10} {'quasi':>10} {'alpha overhead':>15}")
    for r in rows:
        print(f"{r['hidden_dim']:>6} {r['num_layers']:>6} {r['strict_params']:>10,} {r['quasi_params']:>10,} "
              f"{r['overhead_pct']:>14.2f}%")
    out = Path(__file__).parent / "results" / "alpha_overhead.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
