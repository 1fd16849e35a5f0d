"""Normalization for zoos of near-identical networks: dataset RMS scaling, precise BatchNorm moments,
standardized StatNN inputs and a normalized invariant readout — all without losing exact invariance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch

from controls import INV_RTOL, permutation_invariance
from nn_nets import graphs, modules
from qegraph.data.datamodule import ZooDataModule
from qegraph.data.generate import generate_zoo
from qegraph.data.store import Zoo
from qegraph.nn import PermGMN, QuasiGMN, StatNN, StrictGMN
from qegraph.tasks.norm_stats import batchnorm_layers, recompute_batchnorm_stats
from qegraph.testing import assert_invariant


@pytest.fixture(scope="module")
def inr_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("norm") / "inr"
    generate_zoo("inr", out, 10, seed=0, progress=False)
    return out


def _tables(dm: ZooDataModule, split: str) -> tuple[torch.Tensor, torch.Tensor, list]:
    graphs_ = [dm.splits[split][i] for i in range(len(dm.splits[split]))]
    return torch.stack([g.edge_attr for g in graphs_]), torch.stack([g.x for g in graphs_]), graphs_


def test_dataset_rms_scaling(inr_zoo: Path, tmp_path: Path) -> None:
    kw = dict(target="label", steps=None, val_fraction=0.2, test_fraction=0.2, cache_dir=str(tmp_path), augment_k=None)
    raw, scaled = ZooDataModule(str(inr_zoo), **kw), ZooDataModule(str(inr_zoo), normalize=True, **kw)
    raw.setup()
    scaled.setup()
    (arch,) = scaled.scales
    c = scaled.scales[arch]
    assert bool((c["edge_blocks"] > 0).all()) and bool((c["node_columns"] > 0).all())
    g0 = scaled.splits["train"][0]
    blocks = torch.repeat_interleave(torch.arange(g0.eblock_size.numel()), g0.eblock_size)
    for split in ("train", "test"):
        ea_raw, x_raw, _ = _tables(raw, split)
        ea, x, _ = _tables(scaled, split)
        # exactly the raw tensors divided by the constants (a fixed positive rescaling per tensor / column)
        torch.testing.assert_close(ea * c["edge_blocks"][blocks].view(1, -1, 1), ea_raw, rtol=1e-6, atol=0)
        torch.testing.assert_close(x * c["node_columns"][g0.layer].unsqueeze(0), x_raw, rtol=1e-6, atol=0)
    # on the training split every weight tensor now has root mean square 1
    ea, _, _ = _tables(scaled, "train")
    mask = g0.edge_mask
    for b in range(g0.eblock_size.numel()):
        vals = ea[:, blocks == b][:, mask[blocks == b]]
        assert float(vals.pow(2).mean().sqrt()) == pytest.approx(1.0, rel=1e-5)
    # the stored weights are untouched: the scaled graph times the constants is the zoo's state_dict
    zoo = Zoo(inr_zoo)
    row, sd = next(zoo.iter_state_dicts([r for r in zoo.rows if r["id"] == int(g0.zoo_id)]))
    g = g0.with_features(x=g0.x * c["node_columns"][g0.layer], edge_attr=g0.edge_attr * c["edge_blocks"][blocks].unsqueeze(1))
    back = g.to_state_dict()
    for k in sd:
        torch.testing.assert_close(back[k], sd[k], rtol=1e-6, atol=1e-9)


def test_precise_batchnorm_moments() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    net.eval()
    gen = torch.Generator().manual_seed(1)
    data = [torch.randn(5, 3, generator=gen) * 3 + 1 for _ in range(4)]
    n = recompute_batchnorm_stats(net, data)
    assert n == 4
    h = net[0](torch.cat(data)).detach()
    bn = net[1]
    torch.testing.assert_close(bn.running_mean, h.mean(0))
    # cumulative average of the per-batch unbiased variances (equal batch sizes)
    torch.testing.assert_close(bn.running_var, torch.stack([net[0](d).detach().var(0) for d in data]).mean(0))
    assert not bn.training and not net[2].training and bn.momentum == 0.1  # modes and momentum restored


@pytest.mark.parametrize("cls", [QuasiGMN, StrictGMN, PermGMN])
def test_readout_norm_keeps_invariance(cls: type) -> None:
    """readout_norm: the BatchNorm's moments after one pass are exactly those of the readout vectors of
    the batch, and the model stays invariant (full group; permutations for PermGMN) in eval mode."""
    g = graphs(modules())
    torch.manual_seed(1)
    extra = {"stats": False} if cls is QuasiGMN else {}  # QuasiGMN's statistics path has a BatchNorm of its own
    model = cls(out_dim=3, hidden_dim=8, num_layers=2, readout_norm=True, **extra).double()
    (norm,) = batchnorm_layers(model)
    batch = Batch.from_data_list([g["relu_mlp"], g["siren"], g["cnn_relu"]])
    seen: list[torch.Tensor] = []
    hook = norm.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    assert recompute_batchnorm_stats(model, [batch]) == 1
    hook.remove()
    (z,) = seen
    assert z.shape[0] == 3 and float(z.var(0).min()) > 0
    torch.testing.assert_close(norm.running_mean, z.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(norm.running_var, z.var(0), rtol=1e-12, atol=1e-12)  # unbiased, as BatchNorm
    model.eval()
    with torch.no_grad():  # eval mode: the stored moments standardize the readout vectors of the batch
        model(batch)
        standardized = (seen[-1] - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps)
        assert torch.allclose(standardized.mean(0), torch.zeros_like(standardized[0]), atol=1e-9)
    for arch in ("relu_mlp", "siren", "transformer"):
        if cls is PermGMN:
            assert permutation_invariance(model, g[arch]) <= INV_RTOL
        else:
            err = assert_invariant(model, g[arch], n=2, scale_range=(1.0, 1e4), generator=torch.Generator().manual_seed(3),
                                   rtol=INV_RTOL)
            assert err <= INV_RTOL


def test_statnn_standardizes_its_inputs(inr_zoo: Path, tmp_path: Path) -> None:
    dm = ZooDataModule(str(inr_zoo), target="label", steps=None, val_fraction=0.2, test_fraction=0.2,
                       cache_dir=str(tmp_path), augment_k=None, batch_size=6)
    dm.setup()
    batch = next(iter(dm.eval_train_dataloader()))
    torch.manual_seed(0)
    model = StatNN(out_dim=10)
    model.train()
    model(batch)  # sizes the lazy layers; BatchNorm in training mode standardizes with batch moments
    feats = model.norm(StatNN.features(batch))
    var = StatNN.features(batch).var(0, unbiased=False)
    torch.testing.assert_close(feats.mean(0), torch.zeros_like(feats.mean(0)), atol=1e-3, rtol=0)
    resolved = var > 1e-6  # eps = 1e-8 is negligible against these variances: unit variance
    assert int(resolved.sum()) > 10
    torch.testing.assert_close(feats[:, resolved].std(0, unbiased=False), torch.ones(int(resolved.sum())), atol=1e-2, rtol=0)


def test_moment_pass_sees_the_training_augmentation(inr_zoo: Path, tmp_path: Path) -> None:
    """The BatchNorm moment pass applies the training augmentation (for non-invariant models the
    moments of augmented inputs differ from the plain ones); without augmentation it is the identity."""
    kw = dict(target="label", steps=None, val_fraction=0.2, test_fraction=0.2, cache_dir=str(tmp_path), batch_size=6)
    plain, augmented = ZooDataModule(str(inr_zoo), augment_k=None, **kw), ZooDataModule(str(inr_zoo), augment_k=0.0, **kw)
    plain.setup()
    augmented.setup()
    batch = next(iter(plain.eval_train_dataloader()))
    gen = torch.Generator().manual_seed(0)
    assert plain.augment_like_training(batch, gen) is batch
    moved = augmented.augment_like_training(batch, gen)
    assert not torch.equal(moved.edge_attr, batch.edge_attr)  # hidden units permuted / sign-flipped
    assert torch.equal(moved.edge_attr.abs().sort(0).values, batch.edge_attr.abs().sort(0).values)
