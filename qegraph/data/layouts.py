"""Public zoo layouts, both directions: the Small CNN Zoo and NFN-style SIREN folders.

**Small CNN Zoo** (Unterthiner et al., 2020): ``weights.npy`` ``[checkpoints, parameters]`` float32, each
row the network's variables flattened in TensorFlow order (conv kernels HWIO, dense kernels
``(in, out)``); ``layout.csv`` (``varname,start_idx,end_idx,shape``) locating each variable in a row;
``metrics.csv.gz`` with one row per weights row (``test_accuracy``, ``step``, ``config.*`` …).

**NFN SIREN folders** (as used by the NFN / neural-functional INR data sets):
``<prefix>_<label>s/net<idx>.pth``, each a SIREN ``state_dict`` (loaded with ``weights_only=True``).
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from qegraph.data.store import Zoo, ZooWriter, atomic_write
from qegraph.data.train import TrainedCheckpoint
from qegraph.data.zoo_inr import siren_arch
from qegraph.errors import CheckpointError, QegraphError

SHARD_CHECKPOINTS = 5000
_META_COLUMNS = ("id", "run", "step", "arch", "shard")
_ACT_LAYER = {"relu": "ReLU", "tanh": "Tanh"}


# ---------------------------------------------------------------------------------------------- helpers
def _parse(value: str) -> Any:
    if value in ("True", "False"):
        return value == "True"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def _sequential_linears(arch: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The Conv2d/Linear layer records of a sequential arch and their state_dict prefixes."""
    if arch.get("type") != "sequential":
        raise QegraphError(f"only sequential architectures can be exported, got {arch.get('type')!r}")
    layers, prefixes = [], []
    for i, rec in enumerate(arch["layers"]):
        if isinstance(rec, dict) and rec.get("type") in ("Conv2d", "Linear"):
            layers.append(rec)
            prefixes.append(str(i))
    return layers, prefixes


def _write_imported(out: str | Path, kind: str, source: str, archs: dict[str, dict[str, Any]],
                    preprocessing: dict[str, Any], checkpoints: list[TrainedCheckpoint]) -> Path:
    runs = len({c.run for c in checkpoints})
    header = {"kind": kind, "num_models": runs, "seed": None, "chunk_size": SHARD_CHECKPOINTS,
              "command": f"qegraph zoo import {source}"}
    spec = {"kind": kind, "architectures": archs, "preprocessing": preprocessing,
            "checkpoint_steps": sorted({c.step for c in checkpoints})}
    writer = ZooWriter(out, header, spec)
    for k in range(math.ceil(len(checkpoints) / SHARD_CHECKPOINTS)):
        if k not in writer.done:
            writer.write_chunk(k, checkpoints[k * SHARD_CHECKPOINTS : (k + 1) * SHARD_CHECKPOINTS])
    writer.finish()
    return Path(out)


# ---------------------------------------------------------------------------------------------- Small CNN Zoo
def _tf_name(kind: str, i: int) -> str:
    return f"sequential/{kind}{'' if i == 0 else f'_{i}'}"


def export_cnn_zoo(zoo_dir: str | Path, out: str | Path) -> Path:
    """Write a (CNN) zoo in the Small CNN Zoo layout: ``weights.npy``, ``layout.csv``, ``metrics.csv.gz``."""
    zoo = Zoo(zoo_dir)
    layouts: dict[str, list[tuple[str, str]]] = {}
    for key, arch in zoo.architectures.items():
        layers, prefixes = _sequential_linears(arch)
        entries, n_conv, n_dense = [], 0, 0
        for rec, prefix in zip(layers, prefixes):
            if rec["type"] == "Conv2d":
                name, n_conv = _tf_name("conv2d", n_conv), n_conv + 1
            else:
                name, n_dense = _tf_name("dense", n_dense), n_dense + 1
            entries += [(f"{name}/kernel:0", f"{prefix}.weight"), (f"{name}/bias:0", f"{prefix}.bias")]
        layouts[key] = entries
    if len({tuple(e[0] for e in v) for v in layouts.values()}) > 1:
        raise QegraphError(f"{zoo.root}: architectures {sorted(layouts)} have different layouts; the Small CNN Zoo "
                           "layout holds one architecture shape per file (filter by activation instead)")
    rows, flat, csv_layout = [], [], None
    for row, sd in zoo.iter_state_dicts():
        parts, layout = [], []
        start = 0
        for varname, key in layouts[row["arch"]]:
            t = sd[key]
            tf = t.permute(2, 3, 1, 0) if t.dim() == 4 else (t.T if t.dim() == 2 else t)
            parts.append(tf.reshape(-1))
            layout.append((varname, start, start + tf.numel(), tuple(tf.shape)))
            start += tf.numel()
        csv_layout = csv_layout or layout
        flat.append(torch.cat(parts).to(torch.float32).numpy())
        rows.append(row)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = np.stack(flat)

    def save_npy(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, weights, allow_pickle=False)

    atomic_write(out / "weights.npy", save_npy)
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(["varname", "start_idx", "end_idx", "shape"])
    for varname, s, e, shape in csv_layout or []:
        w.writerow([varname, s, e, str(shape)])
    atomic_write(out / "layout.csv", lambda tmp: Path(tmp).write_text(text.getvalue()))
    columns = ["modeldir", "step"] + [k for k in rows[0] if k not in _META_COLUMNS]
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([f"run-{r['run']:06d}", r["step"]] + [r.get(c) for c in columns[2:]])
    atomic_write(out / "metrics.csv.gz", lambda tmp: Path(tmp).write_bytes(gzip.compress(text.getvalue().encode(), mtime=0)))
    return out


def _read_csv(path: Path, opener: Any = open) -> list[dict[str, str]]:
    try:
        with opener(path, "rt", newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        raise QegraphError(f"{path}: missing (a Small CNN Zoo folder holds weights.npy, layout.csv, metrics.csv.gz)") from None
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from None


def import_cnn_zoo(src: str | Path, out: str | Path, conv_stride: int = 1, activation: str | None = None) -> Path:
    """Convert a Small CNN Zoo folder into a qegraph zoo (architecture inferred from ``layout.csv``).

    ``activation`` is used where ``metrics.csv.gz`` has no ``config.activation`` column;
    ``conv_stride`` is recorded in the architecture (it does not change the parameters).
    """
    src = Path(src)
    layout = _read_csv(src / "layout.csv")
    metrics = _read_csv(src / "metrics.csv.gz", gzip.open)
    try:
        weights = np.load(src / "weights.npy", mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise QegraphError(f"{src / 'weights.npy'}: missing") from None
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{src / 'weights.npy'}: not a readable .npy array ({e})") from None
    if weights.ndim != 2 or weights.shape[0] != len(metrics):
        raise QegraphError(f"{src / 'weights.npy'}: shape {weights.shape} does not match the {len(metrics)} rows of metrics.csv.gz")
    need = {"varname", "start_idx", "end_idx", "shape"}
    if not layout or not need <= set(layout[0]):
        raise QegraphError(f"{src / 'layout.csv'}: needs columns {sorted(need)}")
    variables = []
    for i, v in enumerate(layout):
        shape = tuple(int(s) for s in re.findall(r"\d+", v["shape"]))
        start, end = int(v["start_idx"]), int(v["end_idx"])
        if end - start != math.prod(shape) or end > weights.shape[1]:
            raise QegraphError(f"{src / 'layout.csv'}:{i + 2}: {v['varname']} spans [{start}, {end}) but has shape "
                               f"{shape} (weights rows have {weights.shape[1]} values)")
        variables.append((v["varname"], start, end, shape))
    kernels = [v for v in variables if "kernel" in v[0]]
    if not kernels or any(len(v[3]) not in (2, 4) for v in kernels) or len(variables) != 2 * len(kernels):
        raise QegraphError(f"{src / 'layout.csv'}: expected conv (HWIO) / dense (in, out) kernels each with a bias")
    layer_recs: list[dict[str, Any]] = []
    for varname, _, _, shape in kernels:
        if len(shape) == 4:
            layer_recs.append({"type": "Conv2d", "in_channels": shape[2], "out_channels": shape[3],
                               "kernel_size": [shape[0], shape[1]], "stride": conv_stride})
        else:
            layer_recs.append({"type": "Linear", "in_features": shape[0], "out_features": shape[1]})

    def arch_for(act: str) -> dict[str, Any]:
        recs: list[Any] = []
        for rec in layer_recs:
            recs += [rec, _ACT_LAYER[act]] if rec["type"] == "Conv2d" else [
                {"type": "AdaptiveAvgPool2d", "output_size": 1}, {"type": "Flatten"}, rec]
        return {"type": "sequential", "layers": recs}

    positions = _sequential_linears(arch_for("relu"))[1]
    torch_keys = []  # state_dict key of every layout variable, in layout order
    layer = -1
    for varname, _, _, _ in variables:
        layer += "kernel" in varname
        torch_keys.append(f"{positions[layer]}.{'weight' if 'kernel' in varname else 'bias'}")
    checkpoints, archs, runs = [], {}, {}
    for i, m in enumerate(metrics):
        act = m.get("config.activation") or activation
        if act not in _ACT_LAYER:
            raise QegraphError(f"{src / 'metrics.csv.gz'}: row {i + 2} has activation {act!r}; pass --activation relu|tanh")
        key = f"cnn-{act}"
        archs.setdefault(key, arch_for(act))
        row = weights[i]
        sd: dict[str, Tensor] = {}
        for (_, start, end, shape), tkey in zip(variables, torch_keys):
            t = torch.from_numpy(np.array(row[start:end], dtype=np.float32)).reshape(shape)
            sd[tkey] = (t.permute(3, 2, 0, 1) if t.dim() == 4 else (t.T if t.dim() == 2 else t)).contiguous()
        run = runs.setdefault(m.get("modeldir", str(i)), len(runs))
        config = {k[len("config."):]: _parse(v) for k, v in m.items() if k.startswith("config.")}
        values = {k: _parse(v) for k, v in m.items() if not k.startswith("config.") and k not in ("modeldir", "step")}
        checkpoints.append(TrainedCheckpoint(run=run, step=int(_parse(m.get("step", "0"))), arch=key, state_dict=sd,
                                             config=config, metrics=values))
    prep = {"source": f"imported from the Small CNN Zoo layout at {src.name}; inputs as in the original zoo"}
    return _write_imported(out, "cnn", f"{src.name} --format cnn-zoo", archs, prep, checkpoints)


# ---------------------------------------------------------------------------------------------- NFN SIREN
_FOLDER = re.compile(r"^(?P<prefix>.+)_(?P<label>\d+)s$")
_FILE = re.compile(r"^net(?P<idx>\d+)\.pth$")


def import_nfn_siren(src: str | Path, out: str | Path, w0: float = 30.0) -> Path:
    """Convert ``<prefix>_<label>s/net<idx>.pth`` SIREN state_dicts into a qegraph INR zoo (label = digit)."""
    src = Path(src)
    files = []
    for folder in sorted(p for p in src.iterdir() if p.is_dir()) if src.is_dir() else []:
        match = _FOLDER.match(folder.name)
        if match:
            for f in folder.iterdir():
                fm = _FILE.match(f.name)
                if fm:
                    files.append((int(match["label"]), int(fm["idx"]), match["prefix"], f))
    if not files:
        raise QegraphError(f"{src}: no <prefix>_<label>s/net<idx>.pth files found")
    checkpoints, archs = [], {}
    for run, (label, idx, prefix, f) in enumerate(sorted(files, key=lambda t: (t[0], t[1]))):
        try:
            sd = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for damaged or unsafe pickles
            raise CheckpointError(f"{f}: cannot be read as a weights-only state_dict ({type(e).__name__}: {e})") from None
        if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
            raise CheckpointError(f"{f}: expected a state_dict of tensors")
        weights = [k for k, v in sd.items() if k.endswith("weight") and v.dim() == 2]
        if not weights:
            raise CheckpointError(f"{f}: no 2-d weight matrices (not a SIREN state_dict)")
        dims = [sd[weights[0]].shape[1]] + [sd[k].shape[0] for k in weights]
        hidden = dims[1]
        if any(d != hidden for d in dims[1:-1]):
            raise CheckpointError(f"{f}: hidden widths {dims[1:-1]} differ; only uniform-width SIRENs are supported")
        arch = siren_arch(hidden=hidden, depth=len(weights) - 1, w0=w0, in_features=dims[0], out_features=dims[-1])
        key = f"siren-{len(weights) - 1}x{hidden}"
        archs[key] = arch
        ours = {}
        for j, k in enumerate(weights):
            ours[f"{2 * j}.weight"] = sd[k]
            bias = k[: -len("weight")] + "bias"
            if bias not in sd:
                raise CheckpointError(f"{f}: {k} has no bias {bias!r}")
            ours[f"{2 * j}.bias"] = sd[bias]
        if len(ours) != len(sd):
            extra = sorted(set(sd) - set(weights) - {k[: -len('weight')] + 'bias' for k in weights})
            raise CheckpointError(f"{f}: unexpected keys {extra} for a SIREN")
        checkpoints.append(TrainedCheckpoint(run=run, step=0, arch=key, state_dict=ours,
                                             config={"label": label, "index": idx, "prefix": prefix}, metrics={}))
    prep = {"source": f"imported NFN SIREN folders from {src.name}; coordinates and targets as in the original set"}
    return _write_imported(out, "inr", f"{src.name} --format nfn-siren", archs, prep, checkpoints)


def export_nfn_siren(zoo_dir: str | Path, out: str | Path, prefix: str = "siren") -> Path:
    """Write an INR zoo as ``<prefix>_<label>s/net<idx>.pth`` (idx counts the INRs of each label)."""
    zoo = Zoo(zoo_dir)
    out = Path(out)
    counts: dict[int, int] = {}
    for row, sd in zoo.iter_state_dicts():
        label = row.get("config.label")
        if not isinstance(label, int):
            raise QegraphError(f"{zoo.root}: checkpoint {row['id']} has no integer config.label")
        idx = row.get("config.index", counts.get(label, 0))
        counts[label] = counts.get(label, 0) + 1
        path = out / f"{row.get('config.prefix', prefix)}_{label}s" / f"net{idx}.pth"
        atomic_write(path, lambda tmp: torch.save(sd, tmp))
    return out


EXPORTERS = {"cnn-zoo": export_cnn_zoo, "nfn-siren": export_nfn_siren}
IMPORTERS = {"cnn-zoo": import_cnn_zoo, "nfn-siren": import_nfn_siren}
