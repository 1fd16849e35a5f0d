"""WeightEditing: differentiable INR rendering from graph batches, the trivial baseline, training."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import Batch

import qegraph
from qegraph.data import Zoo, ZooDataModule, generate_zoo
from qegraph.data.digits import pixel_grid
from qegraph.data.zoo_inr import siren_arch
from qegraph.graph.arch import module_from_arch
from qegraph.nn import AlphaBetaWeightSpaceGMN, WeightSpaceGMN
from qegraph.tasks import WeightEditing
from qegraph.tasks.editing import transform_image


@pytest.fixture(scope="module")
def inr_zoo(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("zoo") / "inr"
    generate_zoo("inr", out, num_models=8, seed=0, progress=False)
    return str(out)


@pytest.fixture(scope="module")
def datamodule(inr_zoo, tmp_path_factory) -> ZooDataModule:
    dm = ZooDataModule(inr_zoo, target="label", batch_size=8, val_fraction=0.25, test_fraction=0.25,
                       augment_k=None, cache_dir=str(tmp_path_factory.mktemp("cache")))
    dm.prepare_data()
    dm.setup()
    return dm


class Unchanged(nn.Module):
    """The trivial edit θ′ = θ."""

    def forward(self, batch):
        return batch


def test_render_matches_to_module_float64(inr_zoo):
    torch.manual_seed(0)
    zoo = Zoo(inr_zoo)
    graphs = [qegraph.to_graph(zoo.module(row, sd).double(), arch=zoo.architectures[row["arch"]])
              for row, sd in zoo.iter_state_dicts(zoo.rows[:4])]
    # a second architecture in the same batch (other node / edge counts) exercises the offsets
    small = siren_arch(hidden=16)
    graphs.insert(2, qegraph.to_graph(module_from_arch(small).double(), arch=small))
    batch = Batch.from_data_list(graphs)
    assert batch.x.dtype == torch.float64
    task = WeightEditing(Unchanged())
    got = task.renderer(batch, pixel_grid(8).double())
    grid = pixel_grid(8).double()
    for i, g in enumerate(batch.to_data_list()):
        ref = g.to_module()(grid)
        assert ref.dtype == torch.float64
        torch.testing.assert_close(got[i], ref, rtol=0, atol=1e-12)


def test_identity_edit_equals_baseline(datamodule):
    batch = next(iter(datamodule.train_dataloader()))
    for transform in ("dilate", "invert"):
        task = WeightEditing(Unchanged(), transform=transform)
        y = task.target(batch)
        loss = task.loss(task(batch), y)
        baseline = F.mse_loss(y[:, 1], y[:, 0])
        assert float(loss) == pytest.approx(float(baseline), rel=1e-6)
        metrics = task.epoch_metrics(task.predict_values(task(batch)), y)
        assert metrics["mse"] == pytest.approx(metrics["baseline_mse"], rel=1e-6)
        assert metrics["baseline_mse"] > 0
    # invert in the INR scale [-1, 1] is 1 - p on pixels p = (v + 1) / 2
    v = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.testing.assert_close((transform_image(v, "invert") + 1) / 2, 1 - (v + 1) / 2)


@pytest.mark.slow
def test_training_reduces_loss_and_gradients_reach_model(datamodule):
    torch.manual_seed(0)
    batch = next(iter(datamodule.train_dataloader()))
    task = WeightEditing(WeightSpaceGMN(hidden_dim=8, num_layers=2), transform="invert", lr=3e-3)  # the configs' lr
    opt = task.configure_optimizers()
    y = task.target(batch)
    losses = []
    for step in range(8):
        opt.zero_grad()
        loss = task.loss(task(batch), y)
        loss.backward()
        if step == 0:
            for name in ("decoder", "backbone"):
                grads = [p.grad for n, p in task.model.named_parameters() if n.startswith(name)]
                assert any(g is not None and g.abs().sum() > 0 for g in grads), name
        losses.append(loss.item())
        opt.step()
    assert losses[-1] < 0.9 * losses[0]


def _rendered(graph) -> torch.Tensor:  # noqa: ANN001
    with torch.no_grad():
        return graph.to_module()(pixel_grid(8)).reshape(-1)


@pytest.mark.slow
def test_lightning_fit_and_test_logs_both_mses(datamodule, tmp_path):
    """The logged test metrics equal the function-space MSEs recomputed network by network: the
    baseline from f_θ and T(f_θ), the edit from the decoded networks f_θ′ (each rebuilt with to_module)."""
    torch.manual_seed(0)
    task = WeightEditing(AlphaBetaWeightSpaceGMN(hidden_dim=8, num_layers=1, gauge=False), transform="dilate")
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(task, datamodule=datamodule)
    (res,) = trainer.test(task, datamodule=datamodule, verbose=False)
    assert {"test/mse", "test/baseline_mse", "test/loss"} <= set(res)
    task.eval()
    src, tgt, edited = [], [], []
    for batch in datamodule.test_dataloader():
        with torch.no_grad():
            out = task(batch)
        for g, e in zip(batch.to_data_list(), out.to_data_list()):
            f = _rendered(g)
            src.append(f)
            tgt.append(transform_image(f.reshape(1, 8, 8), "dilate").reshape(-1))
            edited.append(_rendered(e))
    src, tgt, edited = torch.stack(src), torch.stack(tgt), torch.stack(edited)
    assert len(src) == len(datamodule.splits["test"]) > 0
    assert res["test/baseline_mse"] == pytest.approx(F.mse_loss(src, tgt).item(), rel=1e-5)
    assert res["test/mse"] == pytest.approx(F.mse_loss(edited, tgt).item(), rel=1e-5)
    assert res["test/mse"] != pytest.approx(res["test/baseline_mse"], rel=1e-3)  # the edit is not the identity
