"""Safe on-disk format for parameter graphs (``.qeg``).

A ``.qeg`` file is a safetensors file: every stored tensor field of the graph — the ragged edge
values ``edge_val`` (one value per weight), node features, the edge-block and symmetry tables; nothing
per edge is stored or rebuilt, so a file costs about one value per parameter — plus the graph's
metadata (architecture record, parameter → slot index, unit layers) as JSON in the safetensors
header. Integer index tables (node types, unit groups, edge blocks …) are written as int32 when their
values fit and read back as int64; ``aux_int`` (the network's own integer buffers) keeps its dtype.
Loading never executes code. Files are written atomically (temporary file, then rename), so an
interrupted save never leaves a partial file behind.

Format version 1 files (a padded ``edge_attr [E, S]`` and a boolean ``eblock_dense``) are converted on
load: ``eblock_groups`` = 1 for dense blocks and n_src for diagonal ones, the valid slots become
``edge_val``, the parameter index is moved to ``edge_val`` offsets, and every unit group gets the
unstructured permutation metadata (``sym_blocks`` = 1, its own coupling class).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from qegraph.errors import CheckpointError, QegraphError
from qegraph.graph.blocks import BlockTable, value_offset
from qegraph.graph.parameter_graph import GraphMeta, ParameterGraph

_META_KEY = "qegraph"
_INT32_KEY = "qegraph_int32"  # header entry: the int64 tables stored as int32
_I32 = torch.iinfo(torch.int32)
_REQUIRED = ("x", "eblock_size", "eblock_src", "eblock_dst", "eblock_nsrc", "eblock_width", "sym_kind")


def atomic_write(path: str | Path, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)`` and move the result to ``path`` only if it succeeded."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_graph(graph: ParameterGraph, path: str | Path) -> None:
    """Write ``graph`` to ``path`` (safetensors + JSON metadata, atomic)."""
    if isinstance(graph.meta, list):
        raise QegraphError("save_graph() takes a single graph; save the graphs of a batch one by one")
    tensors = {k: v.contiguous() for k, v in graph.to_dict().items() if isinstance(v, torch.Tensor)}
    narrow = [k for k, v in tensors.items() if k != "aux_int" and v.dtype == torch.int64 and _fits_int32(v)]
    for k in narrow:
        tensors[k] = tensors[k].to(torch.int32)
    meta = {_META_KEY: json.dumps(graph.meta.data), _INT32_KEY: json.dumps(narrow)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def _fits_int32(t: torch.Tensor) -> bool:
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    return _I32.min <= int(lo) and int(hi) <= _I32.max


def load_graph(path: str | Path) -> ParameterGraph:
    """Read a graph written by :func:`save_graph`; raises :class:`CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable qegraph graph (truncated or corrupted?): {e}") from None
    version1 = "edge_attr" in tensors and "eblock_dense" in tensors
    if _META_KEY not in header or any(k not in tensors for k in _REQUIRED) or not (version1 or "edge_val" in tensors):
        raise CheckpointError(f"{path}: a safetensors file but not a qegraph graph (no graph metadata)")
    try:
        meta = json.loads(header[_META_KEY])
        narrow = json.loads(header.get(_INT32_KEY, "[]"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: corrupted graph metadata: {e}") from None
    for k in narrow:
        if k in tensors:
            tensors[k] = tensors[k].to(torch.int64)
    if version1:
        return _from_version1(tensors, meta, path)
    g = ParameterGraph(**tensors, meta=GraphMeta(meta))
    n_values = int((g.eblock_size * g.eblock_width).sum())
    if g.edge_val.numel() != n_values:
        raise CheckpointError(f"{path}: edge blocks describe {n_values} edge values, edge_val has {g.edge_val.numel()}")
    return g


def _from_version1(tensors: dict[str, torch.Tensor], meta: dict, path: Path) -> ParameterGraph:
    """A format-1 graph (padded ``edge_attr``, boolean ``eblock_dense``) in the current format."""
    edge_attr = tensors.pop("edge_attr")
    dense = tensors.pop("eblock_dense")
    if edge_attr.size(0) != int(tensors["eblock_size"].sum()):
        raise CheckpointError(f"{path}: edge blocks describe {int(tensors['eblock_size'].sum())} edges, "
                              f"edge_attr has {edge_attr.size(0)}")
    tensors["eblock_groups"] = torch.where(dense, torch.ones_like(tensors["eblock_nsrc"]), tensors["eblock_nsrc"])
    groups = tensors["sym_kind"].numel()
    tensors.setdefault("sym_blocks", torch.ones(groups, dtype=torch.long))
    tensors.setdefault("sym_couple", torch.arange(groups))
    g = ParameterGraph(**tensors, edge_attr=edge_attr, meta=GraphMeta(meta))
    bt = BlockTable.of(g)
    for p in meta["params"]:
        if p["table"] == "edge_attr":
            p["block"] = int(torch.searchsorted(bt.eoff + bt.size, torch.tensor(p["start"]), right=True))
            p["table"], p["start"] = "edge_val", value_offset(bt, p["start"], p["col"])
            p["col"] = 0
    meta["version"] = 2
    return g
