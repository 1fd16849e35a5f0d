"""The on-disk zoo format: integrity errors name the file, spec/weights mismatches are caught, CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from qegraph.data.cli import add_zoo_parser, run_zoo
from qegraph.data.generate import generate_zoo
from qegraph.data.store import Zoo
from qegraph.data.zoo_cnn import CNNFamily
from qegraph.errors import CheckpointError, QegraphError


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    mp = pytest.MonkeyPatch()
    mp.setattr(CNNFamily, "checkpoint_steps", (0, 5))
    out = tmp_path_factory.mktemp("zoo") / "cnn"
    generate_zoo("cnn", out, 4, seed=0, chunk_size=2, progress=False)
    mp.undo()
    return out


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_format_files(zoo_dir: Path) -> None:
    names = sorted(p.name for p in zoo_dir.rglob("*") if p.is_file())
    assert names == ["manifest.json", "metadata.jsonl", "shard-00000.safetensors", "shard-00001.safetensors", "spec.json"]
    spec = json.loads((zoo_dir / "spec.json").read_text())
    assert set(spec) >= {"architectures", "preprocessing", "checkpoint_steps"}
    assert len(spec["preprocessing"]["test_indices"]) == 450
    zoo = Zoo(zoo_dir)
    assert {r["shard"] for r in zoo.rows} == {0, 1} and len(zoo.rows) == 8


def test_corrupted_shard_names_the_file(zoo_dir: Path, tmp_path: Path) -> None:
    z = _copy(zoo_dir, tmp_path / "z")
    shard = z / "shards" / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    zoo = Zoo(z)
    with pytest.raises(CheckpointError, match="shard-00001.safetensors: corrupted"):
        list(zoo.iter_state_dicts())
    shard.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CheckpointError, match="shard-00001.safetensors: corrupted or truncated"):
        list(zoo.iter_state_dicts())
    # chunk 0 stays readable
    assert len(list(zoo.iter_state_dicts([r for r in zoo.rows if r["shard"] == 0]))) == 4


def test_spec_and_weights_disagree(zoo_dir: Path, tmp_path: Path) -> None:
    z = _copy(zoo_dir, tmp_path / "z")
    spec = json.loads((z / "spec.json").read_text())
    for arch in spec["architectures"].values():
        arch["layers"][2]["out_channels"] = 8
        arch["layers"][4]["in_channels"] = 8
    (z / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(QegraphError, match=r"shard-00000.safetensors \(checkpoint 0.*does not match the architecture at key '2\.(weight|bias)'"):
        list(Zoo(z).iter_state_dicts())


def test_damaged_metadata_and_missing_zoo(zoo_dir: Path, tmp_path: Path) -> None:
    z = _copy(zoo_dir, tmp_path / "z")
    lines = (z / "metadata.jsonl").read_text().splitlines()
    (z / "metadata.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(QegraphError, match="7 rows, manifest.json lists 8"):
        Zoo(z)
    (z / "metadata.jsonl").write_text("\n".join(lines[:-1] + ['{"id": 7,']) + "\n")
    with pytest.raises(QegraphError, match="metadata.jsonl:8: not valid JSON"):
        Zoo(z)
    with pytest.raises(QegraphError, match="not a qegraph zoo"):
        Zoo(tmp_path)


def test_cli_info_and_errors(zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_zoo_parser(parser.add_subparsers(dest="command"))
    run_zoo(parser.parse_args(["zoo", "info", str(zoo_dir)]))
    out = capsys.readouterr().out
    assert "cnn zoo, 4 runs, 8 checkpoints, 2 shards" in out and "test_accuracy" in out and "4,970 parameters" in out
    with pytest.raises(QegraphError, match="not a qegraph zoo"):
        run_zoo(parser.parse_args(["zoo", "info", str(tmp_path)]))
    args = parser.parse_args(["zoo", "cnn", "--out", str(tmp_path / "n"), "--num-models", "2", "--chunk-size", "2"])
    assert (args.num_models, args.seed, args.chunk_size) == (2, 0, 2)
