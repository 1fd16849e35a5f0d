"""ZooDataModule: exact conversion, run-level splits, filters, targets, caching, function-keeping augmentation."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch_geometric.data import Batch

import qegraph.data.datamodule as dm_mod
from qegraph.convert import to_graph
from qegraph.data.datamodule import ZooDataModule
from qegraph.data.digits import load_digits_data, row_tokens
from qegraph.data.generate import generate_zoo
from qegraph.data.store import Zoo
from qegraph.data.zoo_cnn import CNNFamily
from qegraph.data.zoo_mlp import MLPFamily
from qegraph.data.zoo_transformer import TransformerFamily
from qegraph.errors import QegraphError
from qegraph.graph.types import SymKind
from qegraph.testing import assert_functionally_equal


@pytest.fixture(scope="module")
def cnn_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 runs × 4 checkpoints (short training: these tests check the data module, not accuracies)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(CNNFamily, "checkpoint_steps", (0, 2, 6, 15))
    out = tmp_path_factory.mktemp("dm") / "cnn"
    try:
        generate_zoo("cnn", out, 10, seed=5, progress=False)
    finally:
        mp.undo()
    return out


def _accuracy(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (module(x).argmax(1) == y).float().mean().item()


def test_fill_graph_tables_is_exact(cnn_zoo: Path, tmp_path: Path) -> None:
    """Every graph the data module serves holds its checkpoint exactly: ``to_state_dict()`` equals the
    stored state_dict bit for bit, and equals ``to_graph`` of the checkpoint's module (public outputs
    only, whatever the layout of the cached tables)."""
    zoo = Zoo(cnn_zoo)
    sds = {row["id"]: (row, sd) for row, sd in zoo.iter_state_dicts()}
    dm = ZooDataModule(str(cnn_zoo), val_fraction=0.0, test_fraction=0.0, augment_k=None, cache_dir=str(tmp_path))
    dm.setup()
    train = dm.splits["train"]
    assert len(train) == len(sds)
    for i in range(len(train)):
        g = train[i]
        row, sd = sds[int(g.zoo_id)]
        back = g.to_state_dict()
        assert list(back) == list(sd) and all(back[k].dtype == sd[k].dtype and torch.equal(back[k], sd[k]) for k in sd)
        if i < 4:  # the same parameter → slot placement as converting the module itself
            ref = to_graph(zoo.module(row, sd))
            assert torch.equal(g.x, ref.x) and torch.equal(g.edge_attr, ref.edge_attr)


def test_splits_are_by_run_and_deterministic(cnn_zoo: Path, tmp_path: Path) -> None:
    zoo = Zoo(cnn_zoo)
    run_of = {r["id"]: r["run"] for r in zoo.rows}

    def ids(dm: ZooDataModule) -> dict[str, list[int]]:
        dm.setup()
        return {s: [int(dm.splits[s][i].zoo_id) for i in range(len(dm.splits[s]))] for s in ("train", "val", "test")}

    a = ids(ZooDataModule(str(cnn_zoo), val_fraction=0.2, test_fraction=0.2, seed=1, cache_dir=str(tmp_path)))
    b = ids(ZooDataModule(str(cnn_zoo), val_fraction=0.2, test_fraction=0.2, seed=1, cache_dir=str(tmp_path)))
    c = ids(ZooDataModule(str(cnn_zoo), val_fraction=0.2, test_fraction=0.2, seed=2, cache_dir=str(tmp_path)))
    assert a == b and a != c
    runs = {s: {run_of[i] for i in v} for s, v in a.items()}
    assert not (runs["train"] & runs["val"]) and not (runs["train"] & runs["test"]) and not (runs["val"] & runs["test"])
    assert (len(runs["train"]), len(runs["val"]), len(runs["test"])) == (6, 2, 2)
    assert sorted(sum(a.values(), [])) == sorted(run_of)


def test_filters_targets_and_cache(cnn_zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    zoo = Zoo(cnn_zoo)
    final = max(zoo.spec["checkpoint_steps"])
    dm = ZooDataModule(str(cnn_zoo), activation="relu", steps=[final], cache_dir=str(tmp_path), val_fraction=0.0,
                       test_fraction=0.0)
    dm.prepare_data()
    dm.setup()
    rows = {r["id"]: r for r in zoo.rows}
    train = dm.splits["train"]
    assert len(train) == sum(r["config.activation"] == "relu" and r["step"] == final for r in zoo.rows) > 0
    for i in range(len(train)):
        g = train[i]
        assert rows[int(g.zoo_id)]["config.activation"] == "relu" and rows[int(g.zoo_id)]["step"] == final
        assert g.y.dtype == torch.float32 and float(g.y) == pytest.approx(rows[int(g.zoo_id)]["test_accuracy"])
    # the cache is reused: no conversion happens again
    monkeypatch.setattr(dm_mod, "fill_graph_tables", lambda *a: pytest.fail("graphs converted twice"))
    again = ZooDataModule(str(cnn_zoo), target="train_loss", cache_dir=str(tmp_path))
    again.setup()
    assert len(again.splits["train"]) + len(again.splits["val"]) + len(again.splits["test"]) == len(zoo.rows)
    with pytest.raises(QegraphError, match="no metadata column 'nope'"):
        ZooDataModule(str(cnn_zoo), target="nope", cache_dir=str(tmp_path)).setup()
    with pytest.raises(QegraphError, match="no checkpoint matches"):
        ZooDataModule(str(cnn_zoo), activation="gelu", cache_dir=str(tmp_path)).setup()


def test_augmentation_keeps_each_models_recorded_accuracy(cnn_zoo: Path, tmp_path: Path) -> None:
    zoo = Zoo(cnn_zoo)
    rows = {r["id"]: r for r in zoo.rows}
    steps = zoo.spec["checkpoint_steps"][-2:]
    dm = ZooDataModule(str(cnn_zoo), batch_size=64, augment_k=2.0, cache_dir=str(tmp_path), val_fraction=0.0,
                       test_fraction=0.0, steps=steps)
    dm.setup()
    dm.trainer = SimpleNamespace(training=True, global_step=0, global_rank=0)
    x, y = load_digits_data().test
    checked = 0
    for batch in dm.train_dataloader():
        augmented = dm.on_after_batch_transfer(batch, 0)
        assert not torch.allclose(augmented.edge_attr, batch.edge_attr)
        for i in range(augmented.num_graphs):
            g = augmented.get_example(i)
            acc = _accuracy(g.to_module(), x, y)
            assert abs(acc - rows[int(g.zoo_id)]["test_accuracy"]) <= 1 / len(y) + 1e-6
            checked += 1
    assert checked == 20
    dm.trainer = SimpleNamespace(training=False, global_step=0, global_rank=0)
    batch = next(iter(dm.train_dataloader()))
    assert dm.on_after_batch_transfer(batch, 0) is batch


@pytest.mark.slow
def test_mixed_mlp_zoo_batches_and_inr_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MLPFamily, "checkpoint_steps", (0, 5, 20))  # short: the batching is tested, not accuracy
    generate_zoo("mlp", tmp_path / "mlp", 8, seed=1, progress=False)
    dm = ZooDataModule(str(tmp_path / "mlp"), steps=[max(Zoo(tmp_path / "mlp").spec["checkpoint_steps"])], batch_size=8, val_fraction=0.0, test_fraction=0.0, augment_k=None)
    dm.setup()
    zoo = Zoo(tmp_path / "mlp")
    rows = {r["id"]: r for r in zoo.rows}
    batch = next(iter(dm.train_dataloader()))
    assert len({rows[int(i)]["arch"] for i in batch.zoo_id}) > 1
    x, y = load_digits_data().test
    for i in range(batch.num_graphs):
        g = batch.get_example(i)
        assert _accuracy(g.to_module(), x, y) == pytest.approx(rows[int(g.zoo_id)]["test_accuracy"], abs=1e-6)
    generate_zoo("inr", tmp_path / "inr", 20, seed=0, progress=False)
    dm = ZooDataModule(str(tmp_path / "inr"), target="label", batch_size=20, val_fraction=0.0, test_fraction=0.0)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    labels = {r["id"]: r["config.label"] for r in Zoo(tmp_path / "inr").rows}
    assert batch.y.dtype == torch.long and batch.y.tolist() == [labels[int(i)] for i in batch.zoo_id]


@pytest.mark.slow
def test_transformer_zoo_graphs_and_gl_augmentation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The training augmentation of transformer graphs (head permutations and per-head GL matrices):
    checked in float64 (rtol 1e-10) on float64 copies of the zoo's networks, and the query weights
    really move by more than a permutation (their multiset of magnitudes changes)."""
    monkeypatch.setattr(TransformerFamily, "checkpoint_steps", (0, 10))
    generate_zoo("transformer", tmp_path / "tf", 3, seed=0, progress=False)
    dm = ZooDataModule(str(tmp_path / "tf"), batch_size=6, augment_k=1.0, val_fraction=0.0, test_fraction=0.0)
    dm.setup()
    dm.trainer = SimpleNamespace(training=True, global_step=0, global_rank=0)
    batch = next(iter(dm.train_dataloader()))
    assert batch.num_graphs == 6 and int(SymKind.HEADS) in batch.sym_kind.tolist()
    nets = [batch.get_example(i).to_module().double() for i in range(batch.num_graphs)]
    graphs = [to_graph(m, arch=batch.get_example(i).arch) for i, m in enumerate(nets)]
    batch64 = Batch.from_data_list(graphs)
    augmented = dm.on_after_batch_transfer(batch64, 0)
    tokens = row_tokens(load_digits_data().test[0][:64]).double()
    for i, net in enumerate(nets):
        aug = augmented.get_example(i).to_module()
        assert_functionally_equal(net, aug, tokens, rtol=1e-10)
        w, w_aug = (m.state_dict()["encoder.layers.0.self_attn.in_proj_weight"] for m in (net, aug))
        d = w.shape[1]
        q, q_aug = w[:d].abs().flatten().sort().values, w_aug[:d].abs().flatten().sort().values
        assert float((q - q_aug).abs().max()) > 1e-3 * float(q.max()), "no GL matrix acted on the queries"
