"""``ZooDataModule``: a zoo folder as cached ParameterGraphs with run-level splits and group augmentation.

Conversion runs once per architecture: the graph *structure* comes from ``qegraph.to_graph`` on a
module of that architecture, and every checkpoint's parameters are written into the node table ``x``
and the ragged edge values ``edge_val`` (one value per weight) through the graph's explicit parameter →
slot index (``meta["params"]``), which is the exact inverse of ``ParameterGraph.to_state_dict``. The
stacked tables (``x [C, N, 5]``, ``edge_val [C, K]``, ``aux_int``, ``emb_attr``) are cached in a
safetensors file keyed by the zoo's manifest hash, so later runs skip conversion. Graphs of different
architectures share a batch as they are (each batch pads its own edge features when a model reads them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import Dataset
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader
from tqdm.auto import tqdm

from qegraph.convert import to_graph
from qegraph.data.augment import augment
from qegraph.data.store import Zoo, atomic_write
from qegraph.errors import QegraphError
from qegraph.graph.parameter_graph import ParameterGraph, param_to_stored
from qegraph.symmetry.canonical import canonicalize

CACHE_VERSION = 2  # 2: ragged edge values (1 stored padded edge_attr)


#: Tables filled per checkpoint (``emb_attr`` only where the architecture has embedding tables).
TABLES = ("x", "edge_val", "aux_int", "emb_attr")


def fill_graph_tables(template: ParameterGraph, state_dicts: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stacked ``x`` ``[C, N, 5]``, ``edge_val`` ``[C, K]``, ``aux_int`` ``[C, A]`` (and ``emb_attr``
    ``[C, M]`` when the template has embedding tables) holding the given state_dicts of ``template``'s
    architecture (the inverse of ``to_state_dict``)."""
    k = len(state_dicts)
    tables = {name: torch.zeros(k, *getattr(template, name).shape, dtype=getattr(template, name).dtype)
              for name in TABLES if getattr(template, name, None) is not None}
    for p in template.meta["params"]:
        table = tables[p["table"]]
        values = torch.stack([param_to_stored(sd[p["key"]], p) for sd in state_dicts]).to(table.dtype)
        if table.dim() == 2:
            table[:, p["start"] : p["start"] + p["rows"] * p["width"]] = values.reshape(k, -1)
        else:
            table[:, p["start"] : p["start"] + p["rows"], p["col"]] = values.reshape(k, p["rows"])
    return tables


def normalize_tables(template: ParameterGraph, tables: dict[str, Tensor], arch: str,
                     rows: Sequence[int]) -> dict[str, Tensor]:
    """Divide ``tables[arch/edge_val]`` per edge block and ``tables[arch/x]`` per (depth, column) by
    their root mean square over the checkpoints ``rows`` (valid slots only; 1 where all are zero), in
    place. Returns the constants: ``edge_blocks`` ``[num_blocks]``, ``node_columns`` ``[depths, 5]``."""
    idx = torch.as_tensor(list(rows), dtype=torch.long)
    ev, x = tables[f"{arch}/edge_val"], tables[f"{arch}/x"]
    nblk = template.eblock_size.numel()
    blocks = torch.repeat_interleave(torch.arange(nblk), template.eblock_size * template.eblock_width)
    e_sq = torch.zeros(nblk, dtype=torch.float64).index_add_(0, blocks, (ev[idx].to(torch.float64) ** 2).sum(0))
    e_cnt = torch.bincount(blocks, minlength=nblk).to(torch.float64) * len(idx)
    e_rms = _safe_rms(e_sq, e_cnt)
    xmask = template.x_mask.to(torch.float64)
    depth = template.layer
    ndepth = int(depth.max()) + 1
    x_sq = torch.zeros(ndepth, x.size(-1), dtype=torch.float64).index_add_(0, depth, (x[idx].to(torch.float64) ** 2 * xmask).sum(0))
    x_cnt = torch.zeros(ndepth, x.size(-1), dtype=torch.float64).index_add_(0, depth, xmask * len(idx))
    x_rms = _safe_rms(x_sq, x_cnt)
    tables[f"{arch}/edge_val"] = ev / e_rms[blocks].to(ev.dtype).unsqueeze(0)
    tables[f"{arch}/x"] = x / x_rms[depth].to(x.dtype).unsqueeze(0)
    return {"edge_blocks": e_rms.float(), "node_columns": x_rms.float()}


def _safe_rms(sq: Tensor, count: Tensor) -> Tensor:
    rms = (sq / count.clamp(min=1)).sqrt()
    return torch.where(rms > 0, rms, torch.ones_like(rms))


def _zoo_fingerprint(zoo: Zoo) -> str:
    return hashlib.sha256((zoo.root / "manifest.json").read_bytes()).hexdigest()[:16]


def convert_zoo(zoo: Zoo, cache_dir: str | Path, progress: bool = True) -> Path:
    """Convert every checkpoint of ``zoo`` to graph feature tables (once) and return the cache file."""
    path = Path(cache_dir) / f"graphs-v{CACHE_VERSION}-{_zoo_fingerprint(zoo)}.safetensors"
    if path.is_file():
        return path
    by_arch: dict[str, list[tuple[int, dict[str, Tensor]]]] = {}
    for row, sd in tqdm(zoo.iter_state_dicts(), total=len(zoo.rows), desc="graphs", unit="ckpt", disable=not progress):
        by_arch.setdefault(row["arch"], []).append((int(row["id"]), sd))
    out: dict[str, Tensor] = {}
    for arch, items in by_arch.items():
        template = to_graph(zoo.template(arch), arch=zoo.architectures[arch])
        for name, table in fill_graph_tables(template, [sd for _, sd in items]).items():
            out[f"{arch}/{name}"] = table
        out[f"{arch}/ids"] = torch.tensor([i for i, _ in items])
    atomic_write(path, lambda tmp: save_file(out, tmp))
    return path


def canonical_tables(template: ParameterGraph, tables: dict[str, Tensor], arch: str, chunk: int = 256,
                     progress: bool = True) -> dict[str, Tensor]:
    """The tables of ``arch`` with every checkpoint replaced by its canonical form
    (:func:`qegraph.canonicalize`, all graphs of a chunk at once)."""
    x, ev = tables[f"{arch}/x"], tables[f"{arch}/edge_val"]
    emb = tables.get(f"{arch}/emb_attr")
    out = {f"{arch}/x": x.clone(), f"{arch}/edge_val": ev.clone()}
    if emb is not None:
        out[f"{arch}/emb_attr"] = emb.clone()
    for i in tqdm(range(0, x.size(0), chunk), desc=f"canonical {arch}", unit="chunk", disable=not progress):
        graphs = []
        for j in range(i, min(i + chunk, x.size(0))):
            g = template.with_features(x=x[j], edge_val=ev[j])
            if emb is not None:
                g.emb_attr = emb[j]
            graphs.append(g)
        c, _ = canonicalize(Batch.from_data_list(graphs))
        k = len(graphs)
        out[f"{arch}/x"][i : i + k] = c.x.view(k, *x.shape[1:])
        out[f"{arch}/edge_val"][i : i + k] = c.edge_val.view(k, -1)
        if emb is not None:
            out[f"{arch}/emb_attr"][i : i + k] = c.emb_attr.view(k, -1)
    return out


def convert_zoo_canonical(zoo: Zoo, cache_dir: str | Path, progress: bool = True) -> Path:
    """The canonical forms of every checkpoint of ``zoo`` (once; cached next to the raw graph tables)."""
    raw = convert_zoo(zoo, cache_dir, progress)
    path = Path(cache_dir) / f"canonical-v{CACHE_VERSION}-{_zoo_fingerprint(zoo)}.safetensors"
    if path.is_file():
        return path
    tables = load_file(raw)
    out = dict(tables)
    for arch in sorted({k.split("/")[0] for k in tables}):
        template = to_graph(zoo.template(arch), arch=zoo.architectures[arch])
        out.update(canonical_tables(template, tables, arch, progress=progress))
    atomic_write(path, lambda tmp: save_file(out, tmp))
    return path


class ZooGraphDataset(Dataset):
    """Graphs of selected checkpoints: ``templates[arch].with_features(...)`` plus ``y`` and ``zoo_id``."""

    def __init__(self, templates: dict[str, ParameterGraph], tables: dict[str, Tensor],
                 items: Sequence[tuple[str, int, int]], targets: Tensor) -> None:
        self.templates, self.tables, self.items, self.targets = templates, tables, list(items), targets

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> ParameterGraph:
        arch, j, ckpt_id = self.items[i]
        g = self.templates[arch].with_features(x=self.tables[f"{arch}/x"][j], edge_val=self.tables[f"{arch}/edge_val"][j])
        g.aux_int = self.tables[f"{arch}/aux_int"][j]
        if f"{arch}/emb_attr" in self.tables:
            g.emb_attr = self.tables[f"{arch}/emb_attr"][j]
        g.y = self.targets[i : i + 1]
        g.zoo_id = torch.tensor([ckpt_id])
        return g


class ZooDataModule(L.LightningDataModule):
    """A zoo folder as train / val / test graph loaders.

    Args:
        zoo_dir: a zoo written by ``qegraph zoo …`` or ``qegraph zoo import``.
        target: the metadata column predicted (``test_accuracy``, ``label``, ``psnr``…; a
            ``config.*`` column may be named without the prefix). Integer columns give class labels.
        activation: keep only checkpoints whose ``config.activation`` equals this.
        steps: keep only checkpoints taken at these steps.
        batch_size: graphs per batch.
        val_fraction, test_fraction: fractions of *runs* (all checkpoints of a run land in one split).
        seed: seeds the split and the augmentation.
        augment_k: training batches are acted on by random group elements with scales in
            ``[1, 10**augment_k]``; ``None`` disables augmentation.
        cache_dir: where converted graphs are cached (default ``<zoo_dir>/.graph-cache``).
        num_workers: DataLoader workers.
        generate: if the zoo folder is absent, generate it first with these ``generate_zoo`` arguments,
            e.g. ``{"kind": "cnn", "num_models": 300, "seed": 0}`` (the quickstart does this).
        normalize: divide every weight tensor (edge block) and every node-parameter column of every
            layer by its root mean square over the training split (one positive constant per
            architecture, tensor and column; kept in ``self.scales``; an architecture without
            training checkpoints uses all of its checkpoints — weights only, never targets). Fixed
            positive constants commute with every symmetry action, so invariant models stay exactly
            invariant. It matters when the networks of a zoo are close to each other, e.g. INRs
            fitted from one shared initialisation, whose weight tensors differ in scale by 30×
            between layers.
        canonical: serve the canonical form of every checkpoint (:func:`qegraph.canonicalize`,
            computed once and cached); augmentation then draws only from the residual group, the rest
            of the group being a no-op on the section. Normalization constants are those of the
            canonical weights.
        train_runs: keep only this many training runs (the first ones of the seeded split), e.g. for
            small-data experiments; validation and test splits are unchanged.
    """

    def __init__(
        self,
        zoo_dir: str,
        target: str = "test_accuracy",
        activation: str | None = None,
        steps: list[int] | None = None,
        batch_size: int = 32,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        augment_k: float | None = 1.0,
        cache_dir: str | None = None,
        num_workers: int = 0,
        generate: dict[str, Any] | None = None,
        normalize: bool = False,
        canonical: bool = False,
        train_runs: int | None = None,
    ) -> None:
        super().__init__()
        if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
            raise QegraphError(f"val_fraction + test_fraction must be in [0, 1), got {val_fraction} + {test_fraction}")
        self.save_hyperparameters()
        self.zoo_dir, self.target, self.activation = zoo_dir, target, activation
        self.steps = None if steps is None else [int(s) for s in steps]
        self.batch_size, self.val_fraction, self.test_fraction = batch_size, val_fraction, test_fraction
        self.seed, self.augment_k, self.num_workers = seed, augment_k, num_workers
        self.cache_dir = cache_dir or str(Path(zoo_dir) / ".graph-cache")
        self.generate = generate
        self.normalize = normalize
        self.canonical = canonical
        if train_runs is not None and train_runs < 1:
            raise QegraphError(f"train_runs must be a positive number of runs, got {train_runs}")
        self.train_runs = train_runs
        self.scales: dict[str, dict[str, Tensor]] = {}
        self.splits: dict[str, ZooGraphDataset] = {}

    def prepare_data(self) -> None:
        """Generate the zoo if it is absent and ``generate`` is set; convert it to graphs once (cached)."""
        if self.generate is not None and not (Path(self.zoo_dir) / "manifest.json").is_file():
            from qegraph.data.generate import generate_zoo

            opts = dict(self.generate)
            kind = opts.pop("kind", None)
            if kind is None:
                raise QegraphError("data.generate needs a 'kind' (cnn, mlp, inr, transformer)")
            print(f"zoo {self.zoo_dir} is absent: generating it ({kind}, {opts})")
            generate_zoo(kind, self.zoo_dir, **opts)
        (convert_zoo_canonical if self.canonical else convert_zoo)(Zoo(self.zoo_dir), self.cache_dir)

    def _target_column(self, row: dict[str, Any]) -> str:
        for col in (self.target, f"config.{self.target}"):
            if col in row:
                return col
        options = sorted(k for k in row if k not in ("id", "shard"))
        raise QegraphError(f"{self.zoo_dir}: no metadata column {self.target!r}; choose one of {', '.join(options)}")

    def setup(self, stage: str | None = None) -> None:
        """Load the cached graphs, filter the checkpoints and split them by run."""
        if self.splits:
            return
        zoo = Zoo(self.zoo_dir)
        path = (convert_zoo_canonical if self.canonical else convert_zoo)(zoo, self.cache_dir)
        try:
            tables = load_file(path)
        except (SafetensorError, OSError) as e:
            raise QegraphError(f"{path}: unreadable graph cache ({e}); delete it and it will be rebuilt") from None
        rows = [r for r in zoo.rows
                if (self.activation is None or r.get("config.activation") == self.activation)
                and (self.steps is None or r["step"] in self.steps)]
        if not rows:
            raise QegraphError(f"{self.zoo_dir}: no checkpoint matches activation={self.activation!r}, steps={self.steps}")
        column = self._target_column(rows[0])
        values = [r.get(column) for r in rows]
        if any(v is None or isinstance(v, (str, bool)) for v in values):
            raise QegraphError(f"{self.zoo_dir}: column {column!r} is not numeric for every selected checkpoint")
        integer = all(isinstance(v, int) for v in values)
        targets = torch.tensor(values, dtype=torch.long if integer else torch.float32)
        archs = sorted({r["arch"] for r in rows})
        templates = {a: to_graph(zoo.template(a), arch=zoo.architectures[a]) for a in archs}
        if self.canonical:  # the structure and residual group of the section (every checkpoint's own
            # canonical values come from the cache)
            templates = {a: _canonical_template(t) for a, t in templates.items()}
        position = {a: {int(i): j for j, i in enumerate(tables[f"{a}/ids"].tolist())} for a in archs}
        runs = sorted({r["run"] for r in rows})
        order = np.random.default_rng(self.seed).permutation(len(runs))
        n_val, n_test = round(self.val_fraction * len(runs)), round(self.test_fraction * len(runs))
        split_of = {}
        for rank, i in enumerate(order):
            split_of[runs[i]] = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
        if self.train_runs is not None:
            train = [runs[i] for i in order if split_of[runs[i]] == "train"]
            for run in train[self.train_runs:]:
                split_of[run] = "unused"
        if self.normalize:
            for a in archs:
                train = [position[a][int(r["id"])] for r in rows if r["arch"] == a and split_of[r["run"]] == "train"]
                self.scales[a] = normalize_tables(templates[a], tables, a, train or sorted(position[a].values()))
        for name in ("train", "val", "test"):
            sel = [i for i, r in enumerate(rows) if split_of[r["run"]] == name]
            items = [(rows[i]["arch"], position[rows[i]["arch"]][int(rows[i]["id"])], int(rows[i]["id"])) for i in sel]
            self.splits[name] = ZooGraphDataset(templates, tables, items, targets[sel])

    def reference_graphs(self) -> list[ParameterGraph]:
        """The first training graph of each architecture (in split order): the networks a model that
        aligns its inputs (``QuasiGMN(align=True)``) uses as references."""
        seen: dict[str, ParameterGraph] = {}
        ds = self.splits["train"]
        for i, (arch, _, _) in enumerate(ds.items):
            if arch not in seen:
                seen[arch] = ds[i]
        return list(seen.values())

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        sampler = EpochShuffleSampler(len(self.splits[split]), self.seed) if shuffle else None
        return DataLoader(self.splits[split], batch_size=self.batch_size, sampler=sampler,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def augment_like_training(self, batch: Batch, generator: torch.Generator) -> Batch:
        """The training augmentation (if any) drawn from ``generator``: for passes that must see the
        training distribution, such as re-estimating BatchNorm moments."""
        return batch if self.augment_k is None else augment(batch, self.augment_k, generator)

    def eval_train_dataloader(self) -> DataLoader:
        """The training split in order, without augmentation, drawing nothing from the global RNG
        (used to re-estimate BatchNorm moments; does not disturb resumable training)."""
        return DataLoader(self.splits["train"], batch_size=self.batch_size, shuffle=False,
                          generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        """Act on training batches with a random element of their symmetry group."""
        trainer = self.trainer
        if self.augment_k is not None and trainer is not None and trainer.training:
            # seeded by the step, so a run resumed from a checkpoint draws the same elements
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + trainer.global_step * 7 + trainer.global_rank)
            return augment(batch, self.augment_k, gen)
        return batch


def _canonical_template(template: ParameterGraph) -> ParameterGraph:
    """A template carrying the section's metadata (residual kinds, ``sym_cont``, the ``canonical`` flag)."""
    c, _ = canonicalize(template)
    c.meta["canonical"] = {"version": 1, "source": "ZooDataModule(canonical=True)"}  # no per-network statistics
    return c


class EpochShuffleSampler(torch.utils.data.Sampler[int]):
    """A shuffling sampler whose order depends only on (seed, epoch): Lightning calls ``set_epoch``
    at every epoch, so a run resumed from a checkpoint sees the same batches as an uninterrupted one."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):  # noqa: ANN204
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=gen).tolist())
