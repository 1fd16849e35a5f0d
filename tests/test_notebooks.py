"""Execute every ``notebooks/*.ipynb`` top to bottom; a failing cell fails the test.

Runs in the default test run (``python -m pytest -q``; marked ``slow``, so not in the fast loop) with
``QEGRAPH_NB_SMALL=1`` (small models), one test per notebook,
so new notebooks are picked up automatically. The kernel is started with the Python running the
tests (``sys.executable``), not whatever ``python3`` kernelspec happens to be installed, so it sees
the same environment (and the same qegraph) as pytest. The notebooks run in a temporary directory
and are not written back: nothing is left in the repository.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 300

missing = [m for m in ("nbformat", "nbclient", "ipykernel") if importlib.util.find_spec(m) is None]
pytestmark = [
    pytest.mark.slow,  # each notebook starts a kernel (a new Python process importing torch)
    pytest.mark.skipif(bool(missing), reason=f"notebook tests need {', '.join(missing)} (pip install -e '.[dev]')"),
]


def _kernel_manager():
    """A kernel manager that launches ipykernel with this interpreter."""
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    class ThisPython(KernelSpecManager):
        def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
            return KernelSpec(
                argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                display_name=f"Python ({sys.executable})", language="python", name=kernel_name,
            )

    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=ThisPython())


def test_notebooks_exist() -> None:
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path) -> None:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    env = {**os.environ, "QEGRAPH_NB_SMALL": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    client = NotebookClient(
        nb, km=_kernel_manager(), timeout=CELL_TIMEOUT_S, kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # working directory of the kernel
    )
    try:
        client.execute(env=env)
    except CellExecutionError as err:  # names the cell and shows the traceback
        pytest.fail(f"{path.name}: a cell failed\n{err}", pytrace=False)
