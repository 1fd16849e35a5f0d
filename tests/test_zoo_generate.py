"""Zoo generation: determinism, kill-and-resume, argument checks, every family end to end."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest
import torch

from qegraph.data import generate as generate_mod
from qegraph.data import store as store_mod
from qegraph.data.digits import load_digits_data, pixel_grid
from qegraph.data.generate import generate_zoo
from qegraph.data.store import Zoo
from qegraph.data.zoo_cnn import CNNFamily
from qegraph.data.zoo_inr import INRFamily
from qegraph.data.zoo_transformer import TransformerFamily
from qegraph.errors import QegraphError


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def assert_same_zoo(a: Path, b: Path) -> None:
    assert _files(a) == _files(b)
    for name in _files(a):
        assert filecmp.cmp(a / name, b / name, shallow=False), name


@pytest.fixture
def short_cnn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fewer optimizer steps: these tests check the machinery, not the accuracies."""
    monkeypatch.setattr(CNNFamily, "checkpoint_steps", (0, 3, 8))


@pytest.mark.slow
def test_deterministic_for_a_seed(tmp_path: Path, short_cnn: None) -> None:
    generate_zoo("cnn", tmp_path / "a", 6, seed=3, chunk_size=3, progress=False)
    generate_zoo("cnn", tmp_path / "b", 6, seed=3, chunk_size=3, progress=False)
    generate_zoo("cnn", tmp_path / "c", 6, seed=4, chunk_size=3, progress=False)
    assert_same_zoo(tmp_path / "a", tmp_path / "b")
    assert not filecmp.cmp(tmp_path / "a" / "metadata.jsonl", tmp_path / "c" / "metadata.jsonl", shallow=False)
    zoo = Zoo(tmp_path / "a")
    assert len(zoo.rows) == 6 * 3 and [r["id"] for r in zoo.rows] == list(range(18))
    assert {r["step"] for r in zoo.rows} == {0, 3, 8}


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_zoo(tmp_path: Path, short_cnn: None, monkeypatch: pytest.MonkeyPatch) -> None:
    generate_zoo("cnn", tmp_path / "ref", 7, seed=1, chunk_size=3, progress=False)

    class Killed(Exception):
        pass

    def kill_after_first(k: int) -> None:
        if k == 0:
            raise Killed

    out = tmp_path / "resumed"
    with pytest.raises(Killed):
        generate_zoo("cnn", out, 7, seed=1, chunk_size=3, progress=False, on_chunk=kill_after_first)
    with pytest.raises(QegraphError, match="incomplete"):
        Zoo(out)
    # a second interruption in the middle of writing a shard leaves only a temporary file behind
    real_save = store_mod.save_file

    def torn_write(tensors: dict, path: str, metadata: dict) -> None:
        real_save(tensors, path, metadata=metadata)
        Path(path).write_bytes(Path(path).read_bytes()[:100])
        raise Killed

    monkeypatch.setattr(store_mod, "save_file", torn_write)
    with pytest.raises(Killed):
        generate_zoo("cnn", out, 7, seed=1, chunk_size=3, progress=False)
    monkeypatch.setattr(store_mod, "save_file", real_save)
    trained: list[int] = []
    real_train = CNNFamily.train_chunk

    def counting(self: CNNFamily, runs: list, seed: int, chunk: int, progress: object) -> list:
        trained.append(chunk)
        return real_train(self, runs, seed, chunk, progress)

    monkeypatch.setattr(CNNFamily, "train_chunk", counting)
    generate_zoo("cnn", out, 7, seed=1, chunk_size=3, progress=False)
    assert trained == [1, 2]  # chunk 0 was not redone
    assert_same_zoo(tmp_path / "ref", out)


def test_resume_with_other_arguments_is_refused(tmp_path: Path, short_cnn: None) -> None:
    generate_zoo("cnn", tmp_path / "z", 2, seed=0, chunk_size=2, progress=False)
    with pytest.raises(QegraphError, match="seed: 0 → 1"):
        generate_zoo("cnn", tmp_path / "z", 2, seed=1, chunk_size=2, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(QegraphError, match="not a qegraph zoo"):
        generate_zoo("cnn", tmp_path / "other", 2, progress=False)
    with pytest.raises(QegraphError, match="unknown zoo kind"):
        generate_zoo("resnet", tmp_path / "r", 2, progress=False)
    with pytest.raises(QegraphError, match="between 1 and 1797"):
        generate_zoo("inr", tmp_path / "i", 5000, progress=False)


@pytest.mark.slow
def test_cnn_zoo_spreads_and_reproduces_its_accuracies(tmp_path: Path) -> None:
    generate_zoo("cnn", tmp_path / "z", 12, seed=0, progress=False)
    zoo = Zoo(tmp_path / "z")
    assert zoo.architectures["cnn-relu"]["layers"][0]["type"] == "Conv2d"
    d = load_digits_data()
    x, y = d.test
    final = max(zoo.spec["checkpoint_steps"])
    accs = []
    for row, sd in zoo.iter_state_dicts():
        module = zoo.module(row, sd)
        assert sum(p.numel() for p in module.parameters()) == 4970
        with torch.no_grad():
            acc = (module(x).argmax(1) == y).float().mean().item()
        assert acc == pytest.approx(row["test_accuracy"], abs=1e-6)
        if row["step"] == final:
            accs.append(acc)
    assert max(accs) > 0.8 and min(r["test_accuracy"] for r in zoo.rows) < 0.2
    assert torch.tensor([r["test_accuracy"] for r in zoo.rows]).std() > 0.1
    assert {r["config.activation"] for r in zoo.rows} == {"relu", "tanh"}
    text = zoo.summary()
    assert "12 runs" in text and "test_accuracy" in text and "cnn-relu" in text


@pytest.mark.slow
def test_mlp_zoo_mixes_architectures(tmp_path: Path) -> None:
    generate_zoo("mlp", tmp_path / "z", 10, seed=0, progress=False)
    zoo = Zoo(tmp_path / "z")
    assert len(zoo.architectures) > 3
    x, y = load_digits_data().test
    final = max(zoo.spec["checkpoint_steps"])
    for row, sd in zoo.iter_state_dicts([r for r in zoo.rows if r["step"] == final]):
        with torch.no_grad():
            acc = (zoo.module(row, sd)(x).argmax(1) == y).float().mean().item()
        assert acc == pytest.approx(row["test_accuracy"], abs=1e-6)


def test_inr_zoo_fits_the_images(tmp_path: Path) -> None:
    generate_zoo("inr", tmp_path / "z", 12, seed=0, progress=False)
    zoo = Zoo(tmp_path / "z")
    d = load_digits_data()
    for row, sd in zoo.iter_state_dicts():
        assert row["config.label"] == int(d.labels[row["config.image_index"]])
        with torch.no_grad():
            pred = zoo.module(row, sd)(pixel_grid(8)).squeeze(-1)
        target = 2 * d.images[row["config.image_index"]].reshape(-1) - 1
        assert row["psnr"] > 30 and row["mse"] < 1e-3
        assert ((pred - target) ** 2).mean().item() == pytest.approx(row["mse"], abs=1e-5)


@pytest.mark.slow
def test_transformer_zoo_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TransformerFamily, "checkpoint_steps", (0, 10))
    generate_zoo("transformer", tmp_path / "z", 4, seed=0, progress=False)
    zoo = Zoo(tmp_path / "z")
    from qegraph.data.digits import row_tokens

    x, y = load_digits_data().test
    for row, sd in zoo.iter_state_dicts():
        module = zoo.module(row, sd)
        assert isinstance(module.encoder, torch.nn.TransformerEncoder)
        with torch.no_grad():
            acc = (module(row_tokens(x)).argmax(1) == y).float().mean().item()
        assert acc == pytest.approx(row["test_accuracy"], abs=1e-6)


def test_families_are_registered() -> None:
    assert set(generate_mod.FAMILIES) == {"cnn", "mlp", "inr", "transformer"}


@pytest.mark.slow
def test_worker_processes_give_the_same_zoo(tmp_path: Path) -> None:
    generate_zoo("inr", tmp_path / "one", 6, seed=0, chunk_size=2, progress=False, workers=1)
    generate_zoo("inr", tmp_path / "two", 6, seed=0, chunk_size=2, progress=False, workers=2)
    assert_same_zoo(tmp_path / "one", tmp_path / "two")


@pytest.mark.parametrize("init", ["shared", "independent"])
def test_inr_initialisation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, init: str) -> None:
    """``shared``: every INR of the zoo (across chunks) starts from one SIREN initialisation drawn from
    the zoo seed; ``independent``: each starts from its own. The choice is recorded, and resuming the
    folder with the other choice is refused."""
    monkeypatch.setattr(INRFamily, "fit_steps", 0)  # the stored weights are the initialisation itself
    generate_zoo("inr", tmp_path / "z", 4, seed=3, chunk_size=2, progress=False, options={"init": init})
    zoo = Zoo(tmp_path / "z")
    sds = [sd for _, sd in zoo.iter_state_dicts()]
    same = [all(torch.equal(sds[0][k], sd[k]) for k in sd) for sd in sds[1:]]
    assert same == ([True] * 3 if init == "shared" else [False] * 3)
    assert {r["config.init"] for r in zoo.rows} == {init}
    other = "independent" if init == "shared" else "shared"
    with pytest.raises(QegraphError, match="other arguments"):
        generate_zoo("inr", tmp_path / "z", 4, seed=3, chunk_size=2, progress=False, options={"init": other})
    with pytest.raises(QegraphError, match="invalid options"):
        generate_zoo("inr", tmp_path / "bad", 4, progress=False, options={"init": "zeros"})
