"""ZooDataModule(canonical=True), train_runs, reference graphs, and QuasiGMN(align=True) end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch_geometric.data import Batch

import qegraph
from qegraph.data.datamodule import ZooDataModule
from qegraph.data.generate import generate_zoo
from qegraph.data.store import Zoo
from qegraph.data.zoo_cnn import CNNFamily
from qegraph.graph.types import SymKind
from qegraph.nn import QuasiGMN
from qegraph.symmetry import canonicalize, is_canonical, symmetry_group


@pytest.fixture(scope="module")
def cnn_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 runs × 3 checkpoints (short training: these tests check the data path, not accuracies)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(CNNFamily, "checkpoint_steps", (0, 3, 8))
    out = tmp_path_factory.mktemp("cz") / "cnn"
    try:
        generate_zoo("cnn", out, 8, seed=3, progress=False)
    finally:
        mp.undo()
    return out


def _double(g: qegraph.ParameterGraph) -> qegraph.ParameterGraph:
    return g.apply(lambda t: t.double() if t.is_floating_point() else t)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


def test_canonical_graphs_are_cached_and_exact(cnn_zoo: Path, tmp_path: Path) -> None:
    raw = ZooDataModule(str(cnn_zoo), augment_k=None, val_fraction=0.25, test_fraction=0.25, cache_dir=str(tmp_path))
    can = ZooDataModule(str(cnn_zoo), augment_k=None, val_fraction=0.25, test_fraction=0.25, cache_dir=str(tmp_path),
                        canonical=True)
    raw.setup()
    can.setup()
    assert sorted(p.name.split("-")[0] for p in tmp_path.iterdir()) == ["canonical", "graphs"]
    for split in ("train", "val", "test"):
        assert [it[2] for it in raw.splits[split].items] == [it[2] for it in can.splits[split].items]
    zoo = Zoo(cnn_zoo)
    for i in range(0, len(raw.splits["train"]), 5):
        g, c = raw.splits["train"][i], can.splits["train"][i]
        assert is_canonical(c) and not is_canonical(g)
        ref, _ = canonicalize(g)
        assert torch.equal(c.sym_kind, ref.sym_kind) and torch.equal(c.sym_cont, g.sym_kind)
        assert _rel(ref.edge_val, c.edge_val) <= 1e-6  # float32 tables, canonicalized in chunks
        row = next(r for r in zoo.rows if r["id"] == int(g.zoo_id))
        module = zoo.module(row, g.to_state_dict())
        x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(i))
        qegraph.testing.assert_functionally_equal(module, c.to_module(), x, rtol=1e-5)


def test_augmenting_canonical_graphs_draws_from_the_residual_group(cnn_zoo: Path, tmp_path: Path) -> None:
    """On canonical graphs the augmentation samples permutations only (ReLU zoo: SCALE → PERM), and the
    continuous part of the original group is a no-op on the section: canonicalize(g·θ) = π·θ̂."""
    can = ZooDataModule(str(cnn_zoo), augment_k=3.0, cache_dir=str(tmp_path), canonical=True)
    can.setup()
    batch = Batch.from_data_list([can.splits["train"][i] for i in range(4)])
    assert set(batch.sym_kind.tolist()) <= {int(SymKind.FIXED), int(SymKind.PERM), int(SymKind.SIGN)}
    el = symmetry_group(batch).sample(generator=torch.Generator().manual_seed(0), scale_range=(1.0, 1e3))
    assert bool((el.scale.abs() == 1).all())
    raw = ZooDataModule(str(cnn_zoo), augment_k=None, cache_dir=str(tmp_path))
    raw.setup()
    g = raw.splits["train"][0]
    full = symmetry_group(g).sample(generator=torch.Generator().manual_seed(1), scale_range=(1.0, 1e3))
    a, _ = canonicalize(full.act(g))
    b = qegraph.GroupElement(symmetry_group(g), full.perm, full.scale.sign()).act(canonicalize(g)[0])
    assert _rel(b.edge_val, a.edge_val) <= 1e-5  # float32 graph


def test_train_runs_keeps_the_first_runs_and_the_other_splits(cnn_zoo: Path, tmp_path: Path) -> None:
    full = ZooDataModule(str(cnn_zoo), augment_k=None, val_fraction=0.25, test_fraction=0.25, cache_dir=str(tmp_path))
    few = ZooDataModule(str(cnn_zoo), augment_k=None, val_fraction=0.25, test_fraction=0.25, cache_dir=str(tmp_path),
                        train_runs=2)
    full.setup()
    few.setup()
    zoo = Zoo(cnn_zoo)
    run_of = {r["id"]: r["run"] for r in zoo.rows}
    runs_full = {run_of[it[2]] for it in full.splits["train"].items}
    runs_few = {run_of[it[2]] for it in few.splits["train"].items}
    assert len(runs_few) == 2 and runs_few < runs_full
    for split in ("val", "test"):
        assert [it[2] for it in full.splits[split].items] == [it[2] for it in few.splits[split].items]
    with pytest.raises(qegraph.QegraphError, match="train_runs"):
        ZooDataModule(str(cnn_zoo), train_runs=0)
    ref = few.reference_graphs()  # the first training graph of each architecture (ReLU and tanh CNNs here)
    items = few.splits["train"].items
    firsts = [next(it[2] for it in items if it[0] == arch) for arch in dict.fromkeys(it[0] for it in items)]
    assert [int(g.zoo_id) for g in ref] == firsts and len(ref) == len({it[0] for it in items})


@torch.no_grad()
def test_aligned_model_is_invariant_with_a_reference_of_another_network(cnn_zoo: Path, tmp_path: Path) -> None:
    dm = ZooDataModule(str(cnn_zoo), augment_k=None, cache_dir=str(tmp_path), canonical=True)
    dm.setup()
    torch.manual_seed(0)
    model = QuasiGMN(out_dim=2, hidden_dim=8, num_layers=1, align=True, flat=True).double()
    model.set_references([_double(g) for g in dm.reference_graphs()])
    model.train()
    model(_double(Batch.from_data_list([dm.splits["train"][i] for i in range(3)])))  # sizes the lazy flat head
    model.eval()
    raw = ZooDataModule(str(cnn_zoo), augment_k=None, cache_dir=str(tmp_path))
    raw.setup()
    g = _double(raw.splits["val"][0])  # not the reference
    y = model(g)
    for seed in range(3):
        el = symmetry_group(g).sample(generator=torch.Generator().manual_seed(seed), scale_range=(1.0, 1e6))
        assert _rel(y, model(el.act(g))) <= 1e-12
    # the references are part of the model's state: a fresh model with the state gives the same outputs
    state = model.state_dict()
    fresh = QuasiGMN(out_dim=2, hidden_dim=8, num_layers=1, align=True, flat=True).double()
    fresh.train()
    fresh(_double(Batch.from_data_list([dm.splits["train"][i] for i in range(3)])))
    fresh.load_state_dict(state)
    fresh.eval()
    assert torch.equal(fresh(g), y)


def test_flat_head_needs_alignment_and_one_architecture() -> None:
    with pytest.raises(qegraph.QegraphError, match="needs align=True"):
        QuasiGMN(flat=True)
    torch.manual_seed(0)
    a = qegraph.to_graph(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)))
    b = qegraph.to_graph(torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2)))
    model = QuasiGMN(hidden_dim=8, num_layers=1, align=True, flat=True)
    with pytest.raises(qegraph.QegraphError, match="mixes architectures"):
        model(Batch.from_data_list([a, b]))


def test_loading_a_zoo_leaves_the_global_random_state_alone(cnn_zoo: Path, tmp_path: Path) -> None:
    """Converting (first use) or loading (cached) a zoo draws nothing from torch's global generator: a
    model built after ``setup()`` gets the same initial weights either way (experiment grids rely on it)."""
    states = []
    for _ in range(2):  # the first pass builds the cache in tmp_path, the second loads it
        torch.manual_seed(0)
        dm = ZooDataModule(str(cnn_zoo), augment_k=None, val_fraction=0.25, test_fraction=0.25, cache_dir=str(tmp_path))
        dm.prepare_data()
        dm.setup()
        states.append(torch.get_rng_state())
    torch.manual_seed(0)
    assert torch.equal(states[0], torch.get_rng_state()) and torch.equal(states[1], states[0])


@pytest.mark.slow  # two short Lightning fits (~20 s)
def test_training_task_fits_quantile_norms_on_the_training_split_once(cnn_zoo: Path, tmp_path: Path) -> None:
    """At fit start the task fits the QuantileNorm of QuasiGMN(stats_transform="quantile") and of
    StatNN(quantile=True) to the training split (the knots equal a direct fit on it); a second fit of the
    same model (resumed or fine-tuned) keeps them."""
    import lightning as L

    from qegraph.nn import StatNN
    from qegraph.tasks import GeneralizationPrediction, fit_quantile_norms

    dm = ZooDataModule(str(cnn_zoo), augment_k=1.0, val_fraction=0.25, test_fraction=0.25, cache_dir=str(tmp_path),
                       batch_size=8)
    for make in (lambda: QuasiGMN(hidden_dim=8, num_layers=1, stats_transform="quantile", stats_max_depth=8),
                 lambda: StatNN(hidden_dim=16, quantile=True)):
        torch.manual_seed(0)
        task = GeneralizationPrediction(make(), lr=1e-3)
        trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, limit_train_batches=1,
                            limit_val_batches=1, num_sanity_val_steps=0)
        trainer.fit(task, dm)
        qn = next(m for m in task.model.modules() if isinstance(m, qegraph.nn.QuantileNorm))
        gen = torch.Generator().manual_seed(0)  # the training task's draw for its fitting pass (epoch 0)
        augmented = [dm.augment_like_training(b, gen) for b in dm.eval_train_dataloader()]
        plain = list(dm.eval_train_dataloader())
        refs = []
        for batches in (augmented, plain):
            ref_model = make()
            fit_quantile_norms(ref_model, batches)
            refs.append(next(m for m in ref_model.modules() if isinstance(m, qegraph.nn.QuantileNorm)))
        # fitted on what the model is trained on: the augmented split (k = 1)
        assert torch.equal(qn.knots, refs[0].knots) and torch.equal(qn.constant, refs[0].constant)
        if isinstance(task.model, QuasiGMN):  # statistics of θ̂: invariant, the augmentation changes nothing
            assert torch.allclose(qn.knots, refs[1].knots, rtol=1e-5, atol=1e-7)
        else:  # raw statistics move under the group elements
            assert not torch.allclose(qn.knots, refs[1].knots, rtol=1e-3)
        knots = qn.knots.clone()
        trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, limit_train_batches=1,
                            limit_val_batches=1, num_sanity_val_steps=0)
        with torch.no_grad():
            qn.knots.add_(1.0)  # a marker: a refit would overwrite it
        trainer.fit(task, dm)
        assert torch.equal(qn.knots, knots + 1.0)



@pytest.mark.slow  # two one-step Lightning fits
def test_quantile_norms_need_a_datamodule_or_a_prior_fit(cnn_zoo: Path, tmp_path: Path) -> None:
    """trainer.fit with bare loaders cannot know the training split: a clear error before any step; fitting
    first with fit_quantile_norms makes the same call train."""
    import lightning as L

    from qegraph.tasks import GeneralizationPrediction, fit_quantile_norms
    from torch_geometric.loader import DataLoader

    dm = ZooDataModule(str(cnn_zoo), augment_k=None, val_fraction=0.25, test_fraction=0.25, cache_dir=str(tmp_path),
                       batch_size=8)
    dm.setup()
    loader = DataLoader(dm.splits["train"], batch_size=8)
    model = QuasiGMN(hidden_dim=8, num_layers=1, stats_transform="quantile", stats_max_depth=8)

    def trainer() -> L.Trainer:
        return L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_train_batches=1)

    with pytest.raises(qegraph.QegraphError, match="pass a LightningDataModule"):
        trainer().fit(GeneralizationPrediction(model), train_dataloaders=loader)
    fit_quantile_norms(model, loader)
    trainer().fit(GeneralizationPrediction(model), train_dataloaders=loader)
    assert bool(model.readout.stats_norm.fitted)
