"""Conversion cost next to ``torch.save`` of the same state_dict, measured side by side in one run.

    python benchmarks/convert.py            # all cases (needs ~4 GB of memory)
    python benchmarks/convert.py --quick    # small versions of the cases, a few seconds

For every case, each measurement runs in a fresh subprocess: build the network, then reset the
peak-RSS counter (``/proc/self/clear_refs``) and measure wall time and peak extra resident memory of

* ``torch.save``: writing the state_dict to a file;
* ``to_graph``: converting the module to a ParameterGraph in memory;
* ``to_graph+save``: converting and writing the ``.qeg`` file.

Cases: a ~25M-parameter VGG-style CNN, a ~92M-parameter MLP, and a BERT-base-sized encoder (110M)
in the Hugging Face key layout (converted with ``bert_to_graph``). Targets (issues 2 and 3): conversion within 3× of torch.save's time; peak extra memory ≤ 6× the parameter
bytes. Prints a table and writes ``benchmarks/results/convert.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

RESULTS = Path(__file__).parent / "results"


def cnn_25m(quick: bool) -> nn.Module:
    """A VGG-style CNN, ~25M parameters (3×3 convs, a Flatten→Linear reading a 1024×2×2 map)."""
    c = [3, 128, 256, 512, 512, 512, 1024, 1024] if not quick else [3, 16, 32, 32, 32, 32, 64, 64]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(c, c[1:])):
        layers += [nn.Conv2d(a, b, 3, padding=1), nn.ReLU()]
        if i % 2 == 1:
            layers.append(nn.MaxPool2d(2))
    layers += [nn.Flatten(), nn.Linear(c[-1] * 2 * 2, c[-1]), nn.ReLU(), nn.Linear(c[-1], 10)]
    return nn.Sequential(*layers)


def mlp_100m(quick: bool) -> nn.Module:
    """A ReLU MLP 1024 → 6×4096 → 1000, ~100M parameters."""
    w = [1024] + [4096] * 6 + [1000] if not quick else [64] + [256] * 6 + [10]
    layers: list[nn.Module] = []
    for a, b in zip(w, w[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def bert_base(quick: bool) -> nn.Module:
    """A BERT-base-sized encoder (110M parameters) in the Hugging Face key layout, converted with
    ``bert_to_graph`` (12 heads); ``--quick``: 2 layers of width 64."""
    from qegraph.models import BertLayout

    if quick:
        return BertLayout(1000, 64, 2, 4, 256, 64, 2, pooler=True, prefix="bert.", position_ids=False)
    return BertLayout(30522, 768, 12, 12, 3072, 512, 2, pooler=True, prefix="bert.", position_ids=False)


#: name → builder(quick) -> nn.Module. BERT layouts go through bert_to_graph, the rest through to_graph.
CASES: dict[str, Callable[[bool], nn.Module]] = {"cnn_25m": cnn_25m, "mlp_100m": mlp_100m, "bert_base": bert_base}


def _convert(case: str, module: nn.Module, quick: bool):
    import qegraph

    if case == "bert_base":
        return qegraph.bert_to_graph(module.state_dict(), 4 if quick else 12)
    return qegraph.to_graph(module)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def measure(case: str, what: str, quick: bool) -> dict[str, float]:
    """Run in a subprocess: build ``case``, then time ``what`` and its peak extra memory."""
    import qegraph

    torch.manual_seed(0)
    module = CASES[case](quick).eval()
    sd = module.state_dict()
    param_bytes = sum(t.numel() * t.element_size() for t in sd.values())
    n_params = sum(t.numel() for t in sd.values())
    with tempfile.TemporaryDirectory() as tmp:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        base = _rss_kib("VmRSS")
        t0 = time.perf_counter()
        if what == "torch.save":
            torch.save(sd, os.path.join(tmp, "sd.pt"))
        elif what == "to_graph":
            g = _convert(case, module, quick)
        elif what == "to_graph+save":
            g = _convert(case, module, quick)
            qegraph.save_graph(g, os.path.join(tmp, "g.qeg"))
        else:
            raise ValueError(what)
        seconds = time.perf_counter() - t0
        peak = _rss_kib("VmHWM")
        out = {"seconds": seconds, "peak_extra_bytes": (peak - base) * 1024.0, "param_bytes": float(param_bytes),
               "params": float(n_params)}
        if what != "torch.save":
            out["graph_bytes"] = float(sum(v.numel() * v.element_size() for v in g.to_dict().values()
                                           if isinstance(v, torch.Tensor)))
        if what == "to_graph+save":
            out["file_bytes"] = float(os.path.getsize(os.path.join(tmp, "g.qeg")))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small versions of every case")
    ap.add_argument("--cases", nargs="*", default=list(CASES))
    ap.add_argument("--repeats", type=int, default=3, help="runs per measurement (the fastest time is kept)")
    ap.add_argument("--out", default=str(RESULTS / ("convert_quick.json" if "--quick" in sys.argv else "convert.json")))
    ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        print(json.dumps(measure(args._child[0], args._child[1], args.quick)))
        return

    rows = []
    for case in args.cases:
        res: dict[str, dict[str, float]] = {}
        for what in ("torch.save", "to_graph", "to_graph+save"):
            runs = []
            for _ in range(args.repeats):
                cmd = [sys.executable, __file__, "--_child", case, what] + (["--quick"] if args.quick else [])
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                runs.append(json.loads(out.strip().splitlines()[-1]))
            best = min(runs, key=lambda r: r["seconds"])
            best["peak_extra_bytes"] = max(r["peak_extra_bytes"] for r in runs)
            res[what] = best
        save = res["torch.save"]
        row = {
            "case": case,
            "params": int(save["params"]),
            "param_bytes": int(save["param_bytes"]),
            "torch_save_s": save["seconds"],
            "to_graph_s": res["to_graph"]["seconds"],
            "to_graph_save_s": res["to_graph+save"]["seconds"],
            "time_ratio_vs_save": res["to_graph"]["seconds"] / save["seconds"],
            "time_ratio_with_write_vs_save": res["to_graph+save"]["seconds"] / save["seconds"],
            "torch_save_peak_extra_x": save["peak_extra_bytes"] / save["param_bytes"],
            "to_graph_peak_extra_x": res["to_graph"]["peak_extra_bytes"] / save["param_bytes"],
            "to_graph_save_peak_extra_x": res["to_graph+save"]["peak_extra_bytes"] / save["param_bytes"],
            "graph_bytes_per_param": res["to_graph"]["graph_bytes"] / save["params"],
            "file_bytes_per_param": res["to_graph+save"]["file_bytes"] / save["params"],
        }
        rows.append(row)

    head = (f"{'case':<12}{'params':>13}{'save s':>9}{'graph s':>9}{'+write s':>10}{'ratio':>7}{'ratio+w':>9}"
            f"{'mem save':>10}{'mem graph':>10}{'mem +w':>8}{'B/param':>9}{'file B/p':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['case']:<12}{r['params']:>13,}{r['torch_save_s']:>9.3f}{r['to_graph_s']:>9.3f}{r['to_graph_save_s']:>10.3f}"
              f"{r['time_ratio_vs_save']:>7.2f}{r['time_ratio_with_write_vs_save']:>9.2f}"
              f"{r['torch_save_peak_extra_x']:>9.2f}x{r['to_graph_peak_extra_x']:>9.2f}x{r['to_graph_save_peak_extra_x']:>7.2f}x"
              f"{r['graph_bytes_per_param']:>9.2f}{r['file_bytes_per_param']:>9.2f}")
    print("ratio = to_graph time / torch.save time (target ≤ 3); mem = peak extra RSS / parameter bytes (target ≤ 6)")
    meta = {"machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}, torch {torch.__version__}",
            "command": "python benchmarks/convert.py" + (" --quick" if args.quick else ""), "quick": args.quick}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
