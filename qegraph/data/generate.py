"""``generate_zoo``: train a zoo chunk by chunk into a folder, resumably (see :mod:`qegraph.data.store`).

On a CPU, chunks are trained one at a time (single-threaded), in ``workers`` processes. On a GPU,
several consecutive chunks (up to ``models_at_once`` runs) are trained together in one vectorized
call in this process; each chunk keeps its own generators, so the zoo is the one the CPU generates
for the same arguments, up to floating-point rounding.
"""

from __future__ import annotations

import math
import multiprocessing as mp
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from queue import Empty
from typing import Any

import torch
from tqdm.auto import tqdm

from qegraph.data.family import ZooFamily
from qegraph.data.store import ZooWriter
from qegraph.data.train import TrainedCheckpoint, resolve_device
from qegraph.data.zoo_cnn import CNNFamily
from qegraph.data.zoo_inr import INRFamily
from qegraph.data.zoo_mlp import MLPFamily
from qegraph.data.zoo_transformer import TransformerFamily
from qegraph.errors import QegraphError

FAMILIES: dict[str, type[ZooFamily]] = {
    "cnn": CNNFamily, "mlp": MLPFamily, "inr": INRFamily, "transformer": TransformerFamily,
}
#: runs trained at once on a GPU unless ``models_at_once`` says otherwise
GPU_MODELS_AT_ONCE = 2000


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _train_in_worker(kind: str, options: dict[str, Any], runs: list[tuple[int, dict[str, Any]]], seed: int,
                     chunk: int, queue: Any) -> list[TrainedCheckpoint]:
    """Train one chunk in a worker process (single-threaded, progress sent through ``queue``)."""
    torch.set_num_threads(1)
    return FAMILIES[kind](**options).train_chunk(runs, seed, chunk, queue.put)


def generate_zoo(
    kind: str,
    out: str | Path,
    num_models: int,
    seed: int = 0,
    chunk_size: int | None = None,
    progress: bool = True,
    on_chunk: Callable[[int], None] | None = None,
    workers: int = 1,
    options: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    models_at_once: int | None = None,
) -> Path:
    """Train ``num_models`` runs of zoo ``kind`` (``cnn``, ``mlp``, ``inr``, ``transformer``) into ``out``.

    Deterministic for ``(kind, num_models, seed, chunk_size)``, whatever the number of ``workers``
    or cores: runs are trained ``chunk_size`` at a time (vectorized), each chunk single-threaded (small
    kernels gain little from threads and suffer badly from oversubscribed cores), in ``workers``
    processes; each chunk is one shard, written in order. Re-running with the same arguments after an
    interruption skips the finished chunks. ``on_chunk(k)`` is called after chunk ``k`` is on disk.
    ``options`` are family-specific keyword arguments (e.g. ``{"init": "independent"}`` for ``inr``).

    ``device``: ``cpu`` (default), ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available). Random
    numbers are drawn on the CPU in every case, so the device changes only floating-point rounding.
    ``models_at_once``: how many runs to train in one vectorized call (whole consecutive chunks, at
    least one); default one chunk on the CPU, :data:`GPU_MODELS_AT_ONCE` on other devices. Neither is
    part of the zoo's identity (a zoo may be resumed on another device). ``workers`` > 1 needs the CPU.
    """
    if kind not in FAMILIES:
        raise QegraphError(f"unknown zoo kind {kind!r}; choose from {', '.join(FAMILIES)}")
    options = dict(options or {})
    try:
        family = FAMILIES[kind](**options)
    except (TypeError, ValueError) as e:
        raise QegraphError(f"invalid options {options} for a {kind} zoo: {e}") from None
    limit = family.max_runs()
    if num_models < 1 or (limit is not None and num_models > limit):
        raise QegraphError(f"--num-models must be between 1 and {limit or 'any'} for a {kind} zoo, got {num_models}")
    chunk = int(chunk_size or family.chunk_size)
    if chunk < 1 or workers < 1:
        raise QegraphError(f"chunk size and workers must be positive, got {chunk} and {workers}")
    dev = resolve_device(device)
    if dev.type != "cpu" and workers > 1:
        raise QegraphError(f"--workers {workers} runs CPU processes; on device {dev} chunks are trained in "
                           "this process, many at once (--models-at-once): use --workers 1")
    if models_at_once is not None and (models_at_once < 1 or workers > 1):
        raise QegraphError(f"--models-at-once must be positive and needs --workers 1, got {models_at_once} "
                           f"with {workers} workers")
    at_once = models_at_once or (chunk if dev.type == "cpu" else GPU_MODELS_AT_ONCE)
    per_call = max(1, at_once // chunk)  # whole chunks per vectorized call
    configs = [family.sample_config(seed, r) for r in range(num_models)]
    archs = dict(family.arch(c) for c in configs)
    spec = {
        "kind": kind,
        "architectures": {k: archs[k] for k in sorted(archs)},
        "preprocessing": family.preprocessing(),
        "checkpoint_steps": list(getattr(family, "checkpoint_steps", ())),
    }
    flags = "".join(f" --{k.replace('_', '-')} {v}" for k, v in sorted(family.options.items()))
    command = f"qegraph zoo {kind} --num-models {num_models} --seed {seed} --chunk-size {chunk}{flags} --out <this folder>"
    header = {"kind": kind, "num_models": num_models, "seed": seed, "chunk_size": chunk, "command": command}
    if family.options:
        header["options"] = family.options
    writer = ZooWriter(out, header, spec)
    todo = [k for k in range(math.ceil(num_models / chunk)) if k not in writer.done]
    chunk_runs = {k: [(r, configs[r]) for r in range(k * chunk, min(num_models, (k + 1) * chunk))] for k in todo}
    remaining = sum(len(v) for v in chunk_runs.values())
    with tqdm(total=num_models, initial=num_models - remaining, unit="model", desc=f"{kind} zoo",
              disable=not progress, smoothing=0, bar_format="{l_bar}{bar}| {n:.0f}/{total} [{elapsed}<{remaining}, {rate_fmt}]") as bar:
        if workers == 1 or len(todo) == 1:
            with _torch_threads(1):
                for i in range(0, len(todo), per_call):
                    ks = todo[i : i + per_call]
                    if len(ks) == 1 and dev.type == "cpu":
                        results = [family.train_chunk(chunk_runs[ks[0]], seed, ks[0], bar.update)]
                    else:
                        results = family.train_chunks([(k, chunk_runs[k]) for k in ks], seed, bar.update, dev)
                    for k, checkpoints in zip(ks, results):
                        writer.write_chunk(k, checkpoints)
                        if on_chunk is not None:
                            on_chunk(k)
        else:
            ctx = mp.get_context("spawn")
            with ctx.Manager() as manager, ProcessPoolExecutor(min(workers, len(todo)), mp_context=ctx) as pool:
                queue = manager.Queue()
                futures = {k: pool.submit(_train_in_worker, kind, options, chunk_runs[k], seed, k, queue) for k in todo}
                try:
                    for k in todo:
                        while not futures[k].done():
                            try:
                                bar.update(queue.get(timeout=0.2))
                            except Empty:
                                pass
                        writer.write_chunk(k, futures[k].result())
                        if on_chunk is not None:
                            on_chunk(k)
                except BaseException:  # interrupted: do not wait for the queued chunks
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
        bar.n = num_models
        bar.refresh()
    writer.finish()
    return Path(out)
