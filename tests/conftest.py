"""Shared pytest configuration.

* ``@pytest.mark.cuda`` tests are skipped (with the reason shown) when no CUDA device is available,
  unless ``QEGRAPH_TEST_DEVICE`` forces a device (``QEGRAPH_TEST_DEVICE=cpu`` runs their code paths on the CPU).
* ``@pytest.mark.slow`` marks the expensive tests; ``python -m pytest -m "not slow" -q`` is the fast loop
  and ``python -m pytest -q`` (what ``.ci/run`` runs) runs everything.
* Tests run torch on one intra-op thread: their tensors are tiny, and OpenMP threads on a shared or
  2-core machine only add contention (measured: 2× the CPU time of the fast run with 2 threads on a
  loaded machine). Subprocesses started by tests (DDP, notebooks, benchmarks) choose their own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available() or os.environ.get("QEGRAPH_TEST_DEVICE"):
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
