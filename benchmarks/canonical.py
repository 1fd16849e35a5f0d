"""Cost of the canonical section (issue 12), measured side by side with what it must stay below.

    python benchmarks/canonical.py            # BERT-base-sized graph + a batch of 256 zoo CNNs
    python benchmarks/canonical.py --quick    # small versions, a few seconds

* **BERT-base-sized** (hidden 768, 12 layers × 12 heads, FFN 3072, vocab 30,522; float32): time of
  ``bert_to_graph`` on its state_dict vs ``canonicalize`` of the graph (target: ≤ 2×).
* **256 zoo CNN graphs** (the Small CNN Zoo architecture of the quickstart, ReLU, float32, one PyG
  batch): ``canonicalize(batch)`` vs one training step of ``StrictGMN`` (hidden 64, 3 layers: the
  quickstart's size; forward, backward, Adam step) on the same batch (target: canonicalization < one step).

Each time is the median of ``--repeats`` runs in this process, the two sides of a ratio interleaved.
Prints a table and writes ``benchmarks/results/canonical.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch_geometric.data import Batch

import qegraph
from qegraph.models import BertLayout
from qegraph.nn import StrictGMN

RESULTS = Path(__file__).parent / "results"


def _median_pair(a: Callable[[], object], b: Callable[[], object], repeats: int) -> tuple[float, float]:
    ta, tb = [], []
    for _ in range(repeats):
        for fn, out in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def bert_case(quick: bool, repeats: int) -> dict[str, object]:
    torch.manual_seed(0)
    dims = (1000, 64, 2, 4, 256, 64, 2) if quick else (30522, 768, 12, 12, 3072, 512, 2)
    sd = BertLayout(*dims, pooler=True).state_dict()
    heads = dims[3]
    graph = qegraph.bert_to_graph(sd, heads)
    t_convert, t_canon = _median_pair(lambda: qegraph.bert_to_graph(sd, heads), lambda: qegraph.canonicalize(graph),
                                      repeats)
    return {"case": "bert_base" if not quick else "bert_small", "params": graph.num_params,
            "to_graph_s": t_convert, "canonicalize_s": t_canon, "ratio": t_canon / t_convert, "target": "<= 2"}


def zoo_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def cnn_batch_case(quick: bool, repeats: int) -> dict[str, object]:
    torch.manual_seed(0)
    n = 32 if quick else 256
    batch = Batch.from_data_list([qegraph.to_graph(zoo_cnn()) for _ in range(n)])
    batch.y = torch.rand(n, 1)
    model = StrictGMN(out_dim=1, hidden_dim=64, num_layers=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(batch), batch.y)
        loss.backward()
        opt.step()

    step()  # warm-up
    qegraph.canonicalize(batch)
    t_canon, t_step = _median_pair(lambda: qegraph.canonicalize(batch), step, repeats)
    return {"case": f"zoo_cnn_batch_{n}", "graphs": n, "canonicalize_s": t_canon, "strict_step_s": t_step,
            "ratio": t_canon / t_step, "target": "< 1"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rows = [bert_case(args.quick, args.repeats), cnn_batch_case(args.quick, args.repeats)]
    print(f"{'case':<22} {'ours (s)':>10} {'reference (s)':>14} {'ratio':>7}  target")
    for r in rows:
        ref = r.get("to_graph_s", r.get("strict_step_s"))
        print(f"{r['case']:<22} {r['canonicalize_s']:>10.3f} {ref:>14.3f} {r['ratio']:>7.2f}  {r['target']}")
    out = {"machine": platform.platform(), "threads": torch.get_num_threads(), "quick": args.quick, "cases": rows}
    RESULTS.mkdir(exist_ok=True)
    name = "canonical_quick.json" if args.quick else "canonical.json"
    (RESULTS / name).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    main()
