"""The on-disk zoo format (see docs/zoo.md): safetensors shards, a JSONL metadata table, a spec, a manifest.

::

    DIR/manifest.json        format/version, generator arguments, chunking, the finished shards (sha256)
    DIR/spec.json            architecture records (key → record), input preprocessing, checkpoint steps
    DIR/metadata.jsonl       one row per checkpoint: id, run, step, arch, shard, config.*, metrics
    DIR/shards/shard-KKKKK.safetensors   tensors named "<id>/<state_dict key>"

Every file is written atomically (temporary file in the same folder, then ``os.replace``), shards
first, then the metadata table, then the manifest, so an interrupted generation leaves the last
consistent state behind and a re-run continues from it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from qegraph.data.train import TrainedCheckpoint
from qegraph.errors import CheckpointError, QegraphError
from qegraph.graph.arch import check_state_dict_matches, module_from_arch
from qegraph.graph.io import atomic_write

FORMAT = "qegraph-zoo"
VERSION = 1


def write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=1) + "\n"))


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Atomically write one JSON object per line."""
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in rows)))


def read_json(path: Path) -> Any:
    """Read a JSON file, naming it in any error."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise QegraphError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise QegraphError(f"{path}: not valid JSON ({e}); the file is damaged, regenerate or re-import the zoo") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL table, naming the file and line in any error."""
    rows = []
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise QegraphError(f"{path}: missing") from None
    for i, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise QegraphError(f"{path}:{i}: not valid JSON ({e}); regenerate or re-import the zoo") from None
    return rows


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shard_name(k: int) -> str:
    return f"shards/shard-{k:05d}.safetensors"


def checkpoint_row(ckpt_id: int, shard: int, c: TrainedCheckpoint) -> dict[str, Any]:
    """The metadata row of a checkpoint."""
    row: dict[str, Any] = {"id": ckpt_id, "run": c.run, "step": c.step, "arch": c.arch, "shard": shard}
    row.update({f"config.{k}": v for k, v in c.config.items()})
    row.update(c.metrics)
    return row


class ZooWriter:
    """Writes a zoo chunk by chunk; re-opening the same folder with the same arguments resumes."""

    def __init__(self, root: str | Path, header: dict[str, Any], spec: dict[str, Any]) -> None:
        self.root = Path(root)
        mpath = self.root / "manifest.json"
        if mpath.exists():
            manifest = read_json(mpath)
            old = {k: manifest.get(k) for k in header}
            if old != header:
                diff = ", ".join(f"{k}: {old[k]!r} → {header[k]!r}" for k in header if old[k] != header[k])
                raise QegraphError(
                    f"{self.root} holds a zoo generated with other arguments ({diff}); re-run with the "
                    "original arguments to resume it, or choose a new --out folder"
                )
            self.manifest = manifest
            rows = read_jsonl(self.root / "metadata.jsonl") if (self.root / "metadata.jsonl").exists() else []
            done = {s["index"] for s in manifest["shards"]}
            self.rows = [r for r in rows if r["shard"] in done]
        else:
            if self.root.exists() and any(self.root.iterdir()):
                raise QegraphError(f"{self.root} exists and is not a qegraph zoo; choose an empty or new --out folder")
            self.manifest = {"format": FORMAT, "version": VERSION, **header, "complete": False, "shards": []}
            self.rows = []
        for stale in self.root.rglob(".*.tmp"):
            stale.unlink()
        write_json(self.root / "spec.json", spec)

    @property
    def done(self) -> set[int]:
        """Indices of the chunks already written."""
        return {s["index"] for s in self.manifest["shards"]}

    def write_chunk(self, k: int, checkpoints: Sequence[TrainedCheckpoint]) -> None:
        """Write chunk ``k``'s shard, then the metadata table, then the manifest (each atomically)."""
        first = len(self.rows)
        tensors: dict[str, Tensor] = {}
        rows = []
        for i, c in enumerate(checkpoints):
            rows.append(checkpoint_row(first + i, k, c))
            tensors.update({f"{first + i}/{key}": v.contiguous() for key, v in c.state_dict.items()})
        path = self.root / shard_name(k)
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT}))
        self.rows += rows
        write_jsonl(self.root / "metadata.jsonl", self.rows)
        self.manifest["shards"].append(
            {"index": k, "file": shard_name(k), "sha256": sha256(path), "checkpoints": len(rows)}
        )
        write_json(self.root / "manifest.json", self.manifest)

    def finish(self) -> None:
        """Mark the zoo complete."""
        self.manifest["complete"] = True
        write_json(self.root / "manifest.json", self.manifest)


class Zoo:
    """A zoo folder opened for reading: ``rows`` (metadata table), ``spec``, lazy, verified weights."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        mpath = self.root / "manifest.json"
        if not mpath.is_file():
            raise QegraphError(
                f"{self.root}: not a qegraph zoo (no manifest.json); generate one with `qegraph zoo cnn --out DIR` "
                "or convert a public zoo with `qegraph zoo import`"
            )
        self.manifest = read_json(mpath)
        if self.manifest.get("format") != FORMAT or self.manifest.get("version") != VERSION:
            raise QegraphError(f"{mpath}: unknown format {self.manifest.get('format')!r} v{self.manifest.get('version')}")
        if not self.manifest.get("complete"):
            raise QegraphError(
                f"{self.root}: the zoo is incomplete (its generation was interrupted); re-run the generating "
                f"command with the same arguments to finish it: {self.manifest.get('command', '')}".rstrip(": ")
            )
        self.spec = read_json(self.root / "spec.json")
        self.rows = read_jsonl(self.root / "metadata.jsonl")
        expected = sum(s["checkpoints"] for s in self.manifest["shards"])
        if len(self.rows) != expected:
            raise QegraphError(f"{self.root / 'metadata.jsonl'}: {len(self.rows)} rows, manifest.json lists {expected}")
        self._shards = {s["index"]: s for s in self.manifest["shards"]}
        self._modules: dict[str, nn.Module] = {}

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def architectures(self) -> dict[str, dict[str, Any]]:
        return self.spec["architectures"]

    def load_shard(self, k: int) -> dict[str, Tensor]:
        """All tensors of shard ``k``, after checking its size and SHA-256 against the manifest."""
        info = self._shards.get(k)
        if info is None:
            raise QegraphError(f"{self.root / 'manifest.json'}: no shard {k}")
        path = self.root / info["file"]
        if not path.is_file():
            raise CheckpointError(f"{path}: shard missing; regenerate or re-import the zoo")
        if sha256(path) != info["sha256"]:
            raise CheckpointError(
                f"{path}: corrupted or truncated (its SHA-256 differs from manifest.json); regenerate or re-import the zoo"
            )
        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None

    def template(self, arch: str) -> nn.Module:
        """A (shared, do not modify) module of architecture ``arch`` from the spec. Built without touching
        the global random state (its initial weights are never used), so that what a training run draws
        after loading a zoo does not depend on whether the zoo's graphs were cached already."""
        if arch not in self._modules:
            if arch not in self.architectures:
                raise QegraphError(f"{self.root / 'spec.json'}: no architecture {arch!r} (used by metadata.jsonl)")
            with torch.random.fork_rng(devices=[]):
                self._modules[arch] = module_from_arch(self.architectures[arch])
        return self._modules[arch]

    def iter_state_dicts(self, rows: Sequence[dict[str, Any]] | None = None) -> Iterator[tuple[dict[str, Any], dict[str, Tensor]]]:
        """``(row, state_dict)`` for the given rows (default: all), loading each shard once; each
        state_dict is checked against its architecture in the spec and keeps the module's key order."""
        rows = self.rows if rows is None else rows
        by_shard: dict[int, list[dict[str, Any]]] = {}
        for r in rows:
            by_shard.setdefault(int(r["shard"]), []).append(r)
        for k in sorted(by_shard):
            tensors = self.load_shard(k)
            path = self.root / self._shards[k]["file"]
            for r in by_shard[k]:
                prefix = f"{r['id']}/"
                sd = {key[len(prefix):]: t for key, t in tensors.items() if key.startswith(prefix)}
                template = self.template(r["arch"])
                check_state_dict_matches(
                    template, sd, source=f"{path} (checkpoint {r['id']}, architecture {r['arch']!r} of spec.json)",
                )
                yield r, {key: sd[key] for key in template.state_dict()}

    def module(self, row: dict[str, Any], sd: dict[str, Tensor]) -> nn.Module:
        """A runnable module (eval mode) of ``row``'s architecture holding ``sd``."""
        m = module_from_arch(self.architectures[row["arch"]])
        m.load_state_dict(sd)
        return m.eval()

    def summary(self) -> str:
        """Counts, architectures and the distribution of the recorded metrics."""
        runs = {r["run"] for r in self.rows}
        lines = [f"{self.root}: {self.kind} zoo, {len(runs):,} runs, {len(self.rows):,} checkpoints, "
                 f"{len(self.manifest['shards'])} shards"]
        counts: dict[str, int] = {}
        for r in self.rows:
            counts[r["arch"]] = counts.get(r["arch"], 0) + 1
        lines.append("architectures:")
        for key in sorted(counts):
            n_params = sum(p.numel() for p in self.template(key).parameters())
            lines.append(f"  {key:<24} {counts[key]:>7,} checkpoints  {n_params:>7,} parameters")
        steps = sorted({r["step"] for r in self.rows})
        lines.append(f"steps: {', '.join(map(str, steps))}")
        metrics = [k for k in self.rows[0] if k not in ("id", "run", "step", "arch", "shard")
                   and not k.startswith("config.") and all(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) for r in self.rows)] if self.rows else []
        if metrics:
            lines.append(f"{'metric':<16}" + "".join(f"{h:>10}" for h in ("mean", "std", "min", "q25", "median", "q75", "max")))
            for k in metrics:
                v = torch.tensor([float(r[k]) for r in self.rows], dtype=torch.float64)
                q = torch.quantile(v, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
                stats = [v.mean(), v.std(unbiased=False), *q]
                lines.append(f"{k:<16}" + "".join(f"{float(x):>10.4g}" for x in stats))
        return "\n".join(lines)
