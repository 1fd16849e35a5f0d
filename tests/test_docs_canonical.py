"""Every Python block of docs/canonical.md runs and its assertions hold (the page's examples are real)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "canonical.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_page_has_examples() -> None:
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_example_runs(i: int) -> None:
    exec(compile(BLOCKS[i], f"{DOC.name}[block {i}]", "exec"), {"__name__": "__docs__"})
