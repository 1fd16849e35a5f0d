"""Safe on-disk format for parameter graphs (``.qeg``).

A ``.qeg`` file is a safetensors file: every tensor field of the graph except ``edge_index`` (which
is rebuilt from the edge-block table on load, so files cost about one value per parameter), plus the
graph's metadata (architecture record, parameter → slot index, unit layers) as JSON in the
safetensors header. Loading never executes code. Files are written atomically (temporary file, then
rename), so an interrupted save never leaves a partial file behind.
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
from qegraph.graph.parameter_graph import GraphMeta, ParameterGraph, edge_index_from_blocks

_META_KEY = "qegraph"
_REQUIRED = ("x", "edge_attr", "eblock_size", "eblock_src", "eblock_dst", "eblock_nsrc", "eblock_dense", "sym_kind")


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
    tensors = {
        k: v.contiguous()
        for k, v in graph.to_dict().items()
        if isinstance(v, torch.Tensor) and k != "edge_index"
    }
    meta = {_META_KEY: json.dumps(graph.meta.data)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


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
    if _META_KEY not in header or any(k not in tensors for k in _REQUIRED):
        raise CheckpointError(f"{path}: a safetensors file but not a qegraph graph (no graph metadata)")
    try:
        meta = json.loads(header[_META_KEY])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: corrupted graph metadata: {e}") from None
    g = ParameterGraph(**tensors, meta=GraphMeta(meta))
    g.edge_index = edge_index_from_blocks(g)
    if g.edge_index.size(1) != g.edge_attr.size(0):
        raise CheckpointError(f"{path}: edge blocks describe {g.edge_index.size(1)} edges, edge_attr has {g.edge_attr.size(0)}")
    return g
