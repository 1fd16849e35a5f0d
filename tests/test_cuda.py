"""The pipeline on a CUDA device: model invariance, CUDA vs CPU, zoo generation, Lightning fits, AMP.

Every test marked ``cuda`` runs on ``torch.device("cuda")``; ``tests/conftest.py`` skips them (with
the reason) when ``torch.cuda.is_available()`` is False and ``QEGRAPH_TEST_DEVICE`` is unset. The
variable forces a device: ``QEGRAPH_TEST_DEVICE=cpu python -m pytest tests/test_cuda.py -m cuda`` runs
the same code paths on the CPU, ``cuda:1`` picks another GPU. The Lightning fits are also ``slow``.

What is compared with what:

* QuasiGMN, StrictGMN and PermGMN on a batch of seven architectures on the device are invariant to
  random group elements (drawn and acted on the CPU, then moved: here the device only runs the
  models) in float64 and float32, and agree with the same models on the CPU;
* a CPU-drawn group element acting on a batch that lives on the device (what the data module's
  augmentation does after the batch transfer) gives the CPU result;
* WeightSpaceGMN on the device decodes functionally identical networks from functionally identical
  inputs;
* vectorized zoo training on the device, two seeded run groups in one call, equals per-group training
  on the CPU: step 0 bit for bit (random numbers are drawn on the CPU), later steps within float
  tolerance (SGD runs, so no sign-normalised update amplifies round-off; the CNN tolerance allows
  cuDNN's TF32 convolutions); CNN, transformer and INR zoos generated on the device store metrics
  that their stored weights reproduce on the CPU;
* a two-epoch fit of ``configs/quickstart.yaml`` (small zoo) gets the device from ``accelerator:
  auto`` and its checkpoint predicts on the device what it predicts on the CPU; with mixed precision,
  training steps run in float16 / bfloat16, evaluation in float32, and the trained model is still
  invariant in float32.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn
from torch_geometric.data import Batch

import qegraph
from nn_nets import inputs, modules
from qegraph.data.digits import load_digits_data, pixel_grid
from qegraph.data.generate import generate_zoo
from qegraph.data.store import Zoo
from qegraph.data.train import (
    ClassificationData, DropoutBeforeHead, resolve_device, seeded_generator, train_classifiers,
)
from qegraph.data.zoo_cnn import CNNFamily, cnn_arch
from qegraph.data.zoo_inr import INRFamily
from qegraph.data.zoo_mlp import mlp_arch
from qegraph.data.zoo_transformer import TransformerFamily
from qegraph.errors import QegraphError
from qegraph.graph.arch import module_from_arch
from qegraph.nn import PermGMN, QuasiGMN, StrictGMN, WeightSpaceGMN
from qegraph.tasks import GraphTask
from qegraph.tasks.cli import QegraphCLI
from qegraph.testing import assert_functionally_equal

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
FORCED = os.environ.get("QEGRAPH_TEST_DEVICE")

ARCHS = ["relu_mlp", "tanh_mlp", "siren", "cnn_relu", "cnn_tanh", "res_cnn", "transformer"]
#: relative tolerance of invariance and of CPU agreement (float32: round-off under scalings up to 1e4)
RTOL = {torch.float64: 1e-9, torch.float32: 1e-4}
DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])


@pytest.fixture(scope="module")
def device() -> torch.device:
    return resolve_device(FORCED or "cuda")


@pytest.fixture(scope="module")
def batches() -> dict[torch.dtype, Batch]:
    """One CPU batch of the seven test architectures per dtype (converted from modules of that dtype)."""
    mods = modules()
    return {dt: Batch.from_data_list([qegraph.to_graph(mods[a].to(dt)) for a in ARCHS])
            for dt in (torch.float64, torch.float32)}


def _to(graph: Batch, device: torch.device) -> Batch:
    """A copy of ``graph`` on ``device`` (PyG's ``Data.to`` moves the object itself)."""
    return graph.clone().to(device)


def _rel(ref: torch.Tensor, other: torch.Tensor) -> float:
    return float((ref - other).abs().max() / ref.abs().max())


# -------------------------------------------------------------------------------------------- devices
def test_device_resolution(tmp_path: Path) -> None:
    """Runs everywhere: ``auto`` follows CUDA's availability, impossible devices are refused clearly."""
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(QegraphError, match="unknown device 'tpu9'"):
        resolve_device("tpu9")
    if torch.cuda.is_available():
        with pytest.raises(QegraphError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(QegraphError, match="is_available"):
            resolve_device("cuda")
        with pytest.raises(QegraphError, match="is_available"):
            generate_zoo("cnn", tmp_path / "zoo", 1, device="cuda", progress=False)
        assert not (tmp_path / "zoo").exists()


# -------------------------------------------------------------------------------------------- models
@pytest.mark.cuda
@DTYPES
@pytest.mark.parametrize("cls", [QuasiGMN, StrictGMN, PermGMN])
def test_models_invariant_on_device(batches: dict, device: torch.device, cls: type, dtype: torch.dtype) -> None:
    batch = batches[dtype]
    torch.manual_seed(1)
    model = cls(out_dim=3, hidden_dim=8, num_layers=2).to(dtype).eval().to(device)
    group = qegraph.symmetry_group(batch)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        ref = model(_to(batch, device))
        assert ref.device.type == device.type and ref.dtype == dtype
        for _ in range(2):
            if cls is PermGMN:  # permutation-equivariant only: permutations, no scalings, signs or GL gauges
                g = group.sample(generator=gen, rescale=False, gl=False)
            else:
                g = group.sample(generator=gen, scale_range=(1.0, 1e4))
            assert _rel(ref, model(_to(g.act(batch), device))) <= RTOL[dtype]
        cpu = model.cpu()(batch)  # the same parameters on the CPU compute the same outputs
        assert _rel(cpu, ref.cpu()) <= RTOL[dtype]
        if cls is PermGMN:  # not vacuous: PermGMN does see the scalings the other models are invariant to
            g = group.sample(generator=gen, scale_range=(10.0, 1e4), permute=False, gl=False)
            assert _rel(cpu, model(g.act(batch))) > 1e-3


@pytest.mark.cuda
@DTYPES
def test_group_action_on_a_device_batch(batches: dict, device: torch.device, dtype: torch.dtype) -> None:
    """What ``ZooDataModule.on_after_batch_transfer`` does: a CPU-drawn element acting on a batch on the
    device gives the CPU result, on the device."""
    batch = batches[dtype]
    g = qegraph.symmetry_group(batch).sample(generator=torch.Generator().manual_seed(5), scale_range=(1.0, 1e4))
    ref = g.act(batch)
    out = g.act(_to(batch, device))
    assert out.x.device.type == device.type
    assert not torch.equal(ref.x, batch.x)  # the element does move the features
    tol = {"rtol": 1e-12, "atol": 0.0} if dtype == torch.float64 else {"rtol": 1e-6, "atol": 0.0}
    for key in ("x", "edge_attr"):
        torch.testing.assert_close(getattr(out, key).cpu(), getattr(ref, key), **tol)


@pytest.mark.cuda
@pytest.mark.parametrize("arch", ["relu_mlp", "siren", "cnn_tanh", "res_cnn"])
def test_weight_space_model_preserves_functional_identity_on_device(device: torch.device, arch: str) -> None:
    tmpl = modules()[arch]
    graph = Batch.from_data_list([qegraph.to_graph(tmpl)])
    torch.manual_seed(4)
    model = WeightSpaceGMN(hidden_dim=8, num_layers=2).double().eval().to(device)
    g = qegraph.symmetry_group(graph).sample(generator=torch.Generator().manual_seed(5), scale_range=(1.0, 1e4))
    with torch.no_grad():
        out, out_g = model(_to(graph, device)), model(_to(g.act(graph), device))
    assert out.x.device.type == device.type
    net, net_g = (o.to_data_list()[0].cpu().to_module(tmpl) for o in (out, out_g))
    assert_functionally_equal(net, net_g, inputs(arch), rtol=1e-8)
    with pytest.raises(AssertionError, match="modules differ"):  # the model changed the network: not vacuous
        assert_functionally_equal(net, tmpl, inputs(arch), rtol=1e-6)


# ----------------------------------------------------------------------------------------------- zoos
def _sgd_runs(first: int, n: int) -> list[tuple[int, dict[str, Any]]]:
    return [(first + i, {"optimizer": "sgd", "learning_rate": 0.05 + 0.01 * i, "l2reg": 1e-4, "w_init": "glorot_normal",
                         "init_std": 0.1, "dropout": 0.25, "train_fraction": 0.5}) for i in range(n)]


def _digits() -> ClassificationData:
    d = load_digits_data()
    (trx, try_), (tex, tey) = d.train, d.test
    return ClassificationData(trx[:256], try_[:256], tex[:128], tey[:128])


@pytest.mark.cuda
@pytest.mark.parametrize("kind, tol", [("mlp", {"rtol": 1e-4, "atol": 1e-5}), ("cnn", {"rtol": 1e-3, "atol": 5e-4})])
def test_vectorized_training_on_device_matches_cpu(device: torch.device, kind: str, tol: dict[str, float]) -> None:
    """Two run groups (own generators) trained in one call on the device vs one call per group on the CPU."""
    arch = mlp_arch("tanh", [16]) if kind == "mlp" else cnn_arch("relu")
    model = DropoutBeforeHead(module_from_arch(arch))
    runs = [_sgd_runs(0, 3), _sgd_runs(3, 2)]
    steps, data = (0, 1, 4), _digits()
    on_device = train_classifiers(model, kind, [(r, seeded_generator(7, k)) for k, r in enumerate(runs)], data, steps,
                                  batch_size=16, device=device)
    on_cpu = [c for k, r in enumerate(runs)
              for c in train_classifiers(model, kind, [(r, seeded_generator(7, k))], data, steps, batch_size=16)]
    assert [(c.run, c.step) for c in on_device] == [(c.run, c.step) for c in on_cpu] and len(on_cpu) == 5 * 3
    for a, b in zip(on_device, on_cpu):
        assert all(v.device.type == "cpu" for v in a.state_dict.values())  # checkpoints come back to the host
        for key in b.state_dict:
            if a.step == 0:
                assert torch.equal(a.state_dict[key], b.state_dict[key])
            else:
                torch.testing.assert_close(a.state_dict[key], b.state_dict[key], **tol)
        assert a.metrics["test_loss"] == pytest.approx(b.metrics["test_loss"], rel=1e-2)
        assert abs(a.metrics["test_accuracy"] - b.metrics["test_accuracy"]) <= 2 / 128
        assert a.metrics["diverged"] is b.metrics["diverged"] is False
    first = next(k for k in on_cpu[0].state_dict if k.endswith("weight"))
    assert not torch.equal(on_cpu[1].state_dict[first], on_cpu[2].state_dict[first])  # training moved it


def _assert_metrics_reproduce(zoo: Zoo, x: torch.Tensor, y: torch.Tensor) -> None:
    for row, sd in zoo.iter_state_dicts():
        assert all(v.device.type == "cpu" for v in sd.values())
        with torch.no_grad():
            acc = (zoo.module(row, sd)(x).argmax(-1) == y).double().mean().item()
        assert abs(acc - row["test_accuracy"]) <= 2 / len(y), row["id"]  # a near-tie argmax may differ (TF32)


@pytest.mark.cuda
def test_zoo_generation_on_device(device: torch.device, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CNNFamily, "checkpoint_steps", (0, 3, 8))
    monkeypatch.setattr(TransformerFamily, "checkpoint_steps", (0, 2))
    monkeypatch.setattr(INRFamily, "fit_steps", 30)
    generate_zoo("cnn", tmp_path / "cnn", 5, seed=1, chunk_size=2, progress=False, device=device, models_at_once=4)
    generate_zoo("cnn", tmp_path / "cnn_cpu", 5, seed=1, chunk_size=2, progress=False)
    gpu, cpu = Zoo(tmp_path / "cnn"), Zoo(tmp_path / "cnn_cpu")
    assert [r["run"] for r in gpu.rows] == [r["run"] for r in cpu.rows] and len(gpu.rows) == 15
    for (ra, sa), (rb, sb) in zip(gpu.iter_state_dicts(), cpu.iter_state_dicts()):
        assert ra["config.optimizer"] == rb["config.optimizer"]
        if ra["step"] == 0:  # initialisations are drawn on the CPU: the same bits on every device
            assert all(torch.equal(sa[k], sb[k]) for k in sb)
    d = load_digits_data()
    x, y = d.test
    _assert_metrics_reproduce(gpu, x, y)
    generate_zoo("transformer", tmp_path / "tf", 2, seed=0, progress=False, device=device)
    _assert_metrics_reproduce(Zoo(tmp_path / "tf"), TransformerFamily().data().test_x, y)
    generate_zoo("inr", tmp_path / "inr", 3, seed=0, progress=False, device=device, options={"init": "independent"})
    for row, sd in Zoo(tmp_path / "inr").iter_state_dicts():
        with torch.no_grad():
            pred = Zoo(tmp_path / "inr").module(row, sd)(pixel_grid(8)).squeeze(-1)
        mse = ((pred - (2 * d.images[row["config.image_index"]].reshape(-1) - 1)) ** 2).mean().item()
        assert mse == pytest.approx(row["mse"], rel=1e-3)


# ------------------------------------------------------------------------------------------ Lightning
@pytest.fixture(scope="module")
def small_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("zoo") / "cnn"
    generate_zoo("cnn", path, 8, seed=0, progress=False)
    return path


def _quickstart(tmp: Path, zoo: Path, device: torch.device, *extra: str) -> QegraphCLI:
    """``qegraph fit --config configs/quickstart.yaml`` on ``zoo``, 2 epochs, built but not run."""
    args = ["--config", str(QUICKSTART), f"--data.init_args.zoo_dir={zoo}", "--data.init_args.generate=null",
            f"--data.init_args.cache_dir={tmp / 'cache'}", "--trainer.max_epochs=2",
            f"--trainer.logger.init_args.save_dir={tmp / 'logs'}", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false"]
    if device.type == "cpu":  # forced CPU run; on a CUDA machine the config's `accelerator: auto` must pick the GPU
        args.append("--trainer.accelerator=cpu")
    elif device.index is not None:
        args.append(f"--trainer.devices=[{device.index}]")
    return QegraphCLI(GraphTask, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                      save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False, args=[*args, *extra],
                      run=False)


def _dtypes_seen(model: nn.Module) -> list[tuple[bool, torch.dtype]]:
    """(training?, output dtype) of every forward call of ``model`` from now on."""
    seen: list[tuple[bool, torch.dtype]] = []
    model.register_forward_hook(lambda m, i, o: seen.append((m.training, o.dtype)))
    return seen


def _test_predictions(task: GraphTask, dm: L.LightningDataModule, device: torch.device) -> torch.Tensor:
    task.eval().to(device)
    with torch.no_grad():
        return torch.cat([task.predict_values(task(b.to(device))).cpu() for b in dm.test_dataloader()])


def _assert_invariant_float32(task: GraphTask, dm: L.LightningDataModule, device: torch.device) -> None:
    batch = next(iter(dm.test_dataloader()))
    g = qegraph.symmetry_group(batch).sample(generator=torch.Generator().manual_seed(9), scale_range=(1.0, 1e4))
    model = task.model.eval().to(device)
    with torch.no_grad():
        ref, out = model(_to(batch, device)), model(_to(g.act(batch), device))
    assert ref.dtype == torch.float32 and _rel(ref, out) <= RTOL[torch.float32]


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["qegraph"])  # LightningCLI warns when pytest's argv is present


@pytest.mark.cuda
@pytest.mark.slow
def test_quickstart_fits_on_device(device: torch.device, small_zoo: Path, tmp_path: Path) -> None:
    cli = _quickstart(tmp_path, small_zoo, device)
    seen = _dtypes_seen(cli.model.model)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.strategy.root_device.type == device.type and cli.trainer.num_devices == 1
    assert cli.trainer.current_epoch == 2 and math.isfinite(float(cli.trainer.callback_metrics["train/loss"]))
    assert {dt for _, dt in seen} == {torch.float32}
    (metrics,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)
    assert {"test/kendall_tau", "test/r2", "test/mae", "test/loss"} <= set(metrics)
    assert math.isfinite(metrics["test/loss"]) and metrics["test/mae"] >= 0
    # the checkpoint predicts on the device what it predicts on the CPU
    cpu, dev = (_test_predictions(cli.model, cli.datamodule, d) for d in (torch.device("cpu"), device))
    torch.testing.assert_close(dev, cpu, rtol=1e-4, atol=1e-6)
    _assert_invariant_float32(cli.model, cli.datamodule, device)


def _amp_precisions() -> list[str]:
    dev = torch.device(FORCED) if FORCED else torch.device("cuda")
    return ["bf16-mixed"] if dev.type == "cpu" else ["16-mixed", "bf16-mixed"]


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.parametrize("precision", _amp_precisions())
def test_mixed_precision_training_keeps_float32_invariance(device: torch.device, small_zoo: Path, tmp_path: Path,
                                                           precision: str) -> None:
    cli = _quickstart(tmp_path, small_zoo, device, f"--trainer.precision={precision}")
    seen = _dtypes_seen(cli.model.model)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    half = torch.bfloat16 if precision.startswith("bf16") else torch.float16
    assert {dt for training, dt in seen if training} == {half}  # training steps ran under autocast
    assert {dt for training, dt in seen if not training} == {torch.float32}  # evaluation did not
    assert math.isfinite(float(cli.trainer.callback_metrics["train/loss"]))
    assert all(p.dtype == torch.float32 for p in cli.model.parameters())  # master weights stay float32
    _assert_invariant_float32(cli.model, cli.datamodule, device)
