"""Conversion cost next to ``torch.save`` of the same state_dict, measured side by side in one run.

    python benchmarks/convert.py            # all cases (needs ~4 GB of memory, a few minutes)
    python benchmarks/convert.py --quick    # small versions of the cases, a few seconds each

For every case, each measurement runs in a fresh subprocess: build the network (float32), then reset
the peak-RSS counter (``/proc/self/clear_refs``) and measure wall time and peak extra resident memory
(VmHWM minus the RSS before the step) of

* ``torch.save``: writing the state_dict to a file;
* ``to_graph``: converting the module to a ParameterGraph in memory;
* ``to_graph+save``: converting and writing the ``.qeg`` file (its size is reported);
* ``load``: reading the ``.qeg`` file back (written before the counter is reset);
* ``act``: one random element of the graph's symmetry group applied to the graph (converted before
  the counter is reset), in the graph's dtype.

Cases: ResNet-50 (plain torch, the layer shapes of torchvision's ``resnet50``: 25.6M parameters, a
7×7 stem, 1×1 and 3×3 convs, BatchNorm), a ViT-B/16-sized encoder (plain torch: a 16×16 patch-embedding
conv, cls token, position embeddings, 12 ``nn.TransformerEncoderLayer`` of width 768 with 12 heads:
86M), a BERT-base-sized encoder (110M) in the Hugging Face key layout (``bert_to_graph``), and the
earlier VGG-style CNN (~25M) and ReLU MLP (~92M).

Targets (issue 15): ``.qeg`` bytes ≤ 1.2 × parameter bytes + int32 index bytes (4 bytes per entry of
the graph's integer node / block / group tables), peak extra memory of ``to_graph`` and of ``act`` ≤ 4 ×
the parameter bytes. Prints a table and writes ``benchmarks/results/convert.json``.
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


# ---------------------------------------------------------------------- networks (plain torch)
class Bottleneck(nn.Module):
    """torchvision's ResNet bottleneck: 1×1 → 3×3 (stride) → 1×1 (×4), BatchNorm, residual, ReLU."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return torch.relu(h + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """torchvision's ResNet layout: 7×7/2 stem, max-pool, four stages of bottlenecks, average pool, fc."""

    def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3), width: int = 64, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages, inplanes = [], width
        for i, n in enumerate(layers):
            planes = width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(Bottleneck(inplanes, planes, stride=2 if (i > 0 and j == 0) else 1))
                inplanes = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ViT(nn.Module):
    """ViT-B/16 layout: 16×16 patch conv, cls token, position embeddings, pre-norm encoder, head."""

    def __init__(self, image: int = 224, patch: int = 16, dim: int = 768, depth: int = 12, heads: int = 12,
                 mlp: int = 3072, num_classes: int = 1000) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, mlp, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.encoder(x))[:, 0])


def resnet50(quick: bool) -> nn.Module:
    return ResNet((1, 1, 1, 1), width=8, num_classes=10) if quick else ResNet()


def vit_b16(quick: bool) -> nn.Module:
    return ViT(32, 16, 64, 2, 4, 128, 10) if quick else ViT()


def bert_base(quick: bool) -> nn.Module:
    """A BERT-base-sized encoder (110M parameters) in the Hugging Face key layout, converted with
    ``bert_to_graph`` (12 heads); ``--quick``: 2 layers of width 64."""
    from qegraph.models import BertLayout

    if quick:
        return BertLayout(1000, 64, 2, 4, 256, 64, 2, pooler=True, prefix="bert.", position_ids=False)
    return BertLayout(30522, 768, 12, 12, 3072, 512, 2, pooler=True, prefix="bert.", position_ids=False)


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
    """A ReLU MLP 1024 → 6×4096 → 1000, ~92M parameters."""
    w = [1024] + [4096] * 6 + [1000] if not quick else [64] + [256] * 6 + [10]
    layers: list[nn.Module] = []
    for a, b in zip(w, w[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


#: name → builder(quick) -> nn.Module. BERT layouts go through bert_to_graph, the rest through to_graph.
CASES: dict[str, Callable[[bool], nn.Module]] = {
    "resnet50": resnet50, "vit_b16": vit_b16, "bert_base": bert_base, "cnn_25m": cnn_25m, "mlp_100m": mlp_100m,
}
STEPS = ("torch.save", "to_graph", "to_graph+save", "load", "act")


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


def _index_bytes(g) -> int:  # noqa: ANN001
    """int32 bytes of the graph's integer index tables (everything integer but the network's own buffers)."""
    return sum(4 * v.numel() for k, v in g.to_dict().items()
               if isinstance(v, torch.Tensor) and not v.is_floating_point() and v.dtype != torch.bool and k != "aux_int")


def measure(case: str, what: str, quick: bool) -> dict[str, float]:
    """Run in a subprocess: build ``case``, then time ``what`` and its peak extra memory."""
    import qegraph

    torch.manual_seed(0)
    module = CASES[case](quick).eval()
    sd = module.state_dict()
    param_bytes = sum(t.numel() * t.element_size() for t in sd.values())
    n_params = sum(t.numel() for t in sd.values())
    out: dict[str, float] = {"param_bytes": float(param_bytes), "params": float(n_params)}
    with tempfile.TemporaryDirectory() as tmp:
        qeg = os.path.join(tmp, "g.qeg")
        g = None
        if what == "load":
            qegraph.save_graph(_convert(case, module, quick), qeg)
        if what == "act":
            g = _convert(case, module, quick)
            element = qegraph.symmetry_group(g).sample(generator=torch.Generator().manual_seed(0))
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        base = _rss_kib("VmRSS")
        t0 = time.perf_counter()
        if what == "torch.save":
            torch.save(sd, os.path.join(tmp, "sd.pt"))
        elif what == "to_graph":
            g = _convert(case, module, quick)
        elif what == "to_graph+save":
            g = _convert(case, module, quick)
            qegraph.save_graph(g, qeg)
        elif what == "load":
            g = qegraph.load_graph(qeg)
        elif what == "act":
            acted = element.act(g)
        else:
            raise ValueError(what)
        out["seconds"] = time.perf_counter() - t0
        out["peak_extra_bytes"] = (_rss_kib("VmHWM") - base) * 1024.0
        if what == "act":
            out["act_changed"] = float(not torch.equal(acted.edge_val, g.edge_val))
        if g is not None:
            out["graph_bytes"] = float(sum(v.numel() * v.element_size() for v in g.to_dict().values()
                                           if isinstance(v, torch.Tensor)))
            out["index_bytes"] = float(_index_bytes(g))
        if what == "to_graph+save":
            out["file_bytes"] = float(os.path.getsize(qeg))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small versions of every case")
    ap.add_argument("--cases", nargs="*", default=list(CASES))
    ap.add_argument("--repeats", type=int, default=2, help="runs per measurement (the fastest time is kept)")
    ap.add_argument("--out", default=str(RESULTS / ("convert_quick.json" if "--quick" in sys.argv else "convert.json")))
    ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        print(json.dumps(measure(args._child[0], args._child[1], args.quick)))
        return

    rows = []
    for case in args.cases:
        res: dict[str, dict[str, float]] = {}
        for what in STEPS:
            runs = []
            for _ in range(args.repeats):
                cmd = [sys.executable, __file__, "--_child", case, what] + (["--quick"] if args.quick else [])
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode:
                    raise RuntimeError(f"{case} / {what} failed:\n{proc.stderr[-4000:]}")
                runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            best = min(runs, key=lambda r: r["seconds"])
            best["peak_extra_bytes"] = max(r["peak_extra_bytes"] for r in runs)
            res[what] = best
        save, pb = res["torch.save"], res["torch.save"]["param_bytes"]
        file_target = 1.2 * pb + res["to_graph+save"]["index_bytes"]
        row = {
            "case": case,
            "params": int(save["params"]),
            "param_bytes": int(pb),
            "file_bytes": int(res["to_graph+save"]["file_bytes"]),
            "index_bytes_int32": int(res["to_graph+save"]["index_bytes"]),
            "file_x_param_bytes": res["to_graph+save"]["file_bytes"] / pb,
            "file_vs_target": res["to_graph+save"]["file_bytes"] / file_target,
            "graph_bytes_per_param": res["to_graph"]["graph_bytes"] / save["params"],
            "torch_save_s": save["seconds"],
            "to_graph_s": res["to_graph"]["seconds"],
            "to_graph_save_s": res["to_graph+save"]["seconds"],
            "load_s": res["load"]["seconds"],
            "act_s": res["act"]["seconds"],
            "act_changed_values": bool(res["act"]["act_changed"]),
            "torch_save_peak_extra_x": save["peak_extra_bytes"] / pb,
            "to_graph_peak_extra_x": res["to_graph"]["peak_extra_bytes"] / pb,
            "to_graph_save_peak_extra_x": res["to_graph+save"]["peak_extra_bytes"] / pb,
            "load_peak_extra_x": res["load"]["peak_extra_bytes"] / pb,
            "act_peak_extra_x": res["act"]["peak_extra_bytes"] / pb,
        }
        row["targets_met"] = bool(row["file_vs_target"] <= 1 and row["to_graph_peak_extra_x"] <= 4
                                  and row["act_peak_extra_x"] <= 4)
        rows.append(row)

    head = (f"{'case':<10}{'params':>13}{'.qeg MB':>9}{'file/p':>8}{'vs tgt':>8}{'save s':>8}{'graph s':>9}"
            f"{'+write s':>9}{'load s':>8}{'act s':>7}{'mem graph':>10}{'mem +w':>8}{'mem load':>9}{'mem act':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['case']:<10}{r['params']:>13,}{r['file_bytes'] / 2**20:>9.1f}{r['file_x_param_bytes']:>8.3f}"
              f"{r['file_vs_target']:>8.3f}{r['torch_save_s']:>8.2f}{r['to_graph_s']:>9.2f}{r['to_graph_save_s']:>9.2f}"
              f"{r['load_s']:>8.2f}{r['act_s']:>7.2f}{r['to_graph_peak_extra_x']:>9.2f}x"
              f"{r['to_graph_save_peak_extra_x']:>7.2f}x{r['load_peak_extra_x']:>8.2f}x{r['act_peak_extra_x']:>7.2f}x")
    print("file/p = .qeg bytes / parameter bytes; vs tgt = .qeg bytes / (1.2 × parameter bytes + int32 index bytes) "
          "(target ≤ 1); mem = peak extra RSS / parameter bytes (target ≤ 4 for to_graph and act)")
    meta = {"machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}, torch {torch.__version__}",
            "command": "python benchmarks/convert.py" + (" --quick" if args.quick else ""), "quick": args.quick,
            "repeats": args.repeats}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
