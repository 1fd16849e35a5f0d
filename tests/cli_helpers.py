"""Shared helpers for the command-line tests: run ``qegraph`` in-process, check a one-line refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from qegraph.cli import main


def run(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """``qegraph ARGS`` in this process: (exit code, stdout, stderr)."""
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(code: int, err: str, out_file: Path, *needles: str, command: str = "convert") -> None:
    """Exit code 2, one error line naming every needle, and no output file (nor a temporary one)."""
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"qegraph {command}: error:"), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert not out_file.exists()
    assert not any(p.name.startswith(f".{out_file.name}") for p in out_file.parent.iterdir())
