"""Public layouts: Small CNN Zoo (TF order) and NFN SIREN folders, from fixture files, both directions."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from qegraph.data.layouts import export_cnn_zoo, export_nfn_siren, import_cnn_zoo, import_nfn_siren
from qegraph.data.store import Zoo
from qegraph.errors import CheckpointError, QegraphError


def _keras_like_cnn(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 16, 3), nn.Tanh(), nn.Conv2d(16, 16, 3), nn.Tanh(), nn.Conv2d(16, 16, 3),
                         nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def write_cnn_zoo_fixture(root: Path, nets: list[nn.Sequential]) -> None:
    """A Small CNN Zoo folder written independently of qegraph's exporter (TF HWIO / (in, out) order)."""
    root.mkdir(parents=True)
    names = ["conv2d", "conv2d_1", "conv2d_2", "dense"]
    layout, rows = [], []
    for net in nets:
        flat, start, layout = [], 0, []
        for name, layer in zip(names, [net[0], net[2], net[4], net[8]]):
            w = layer.weight.detach().numpy()
            kernel = w.transpose(2, 3, 1, 0) if w.ndim == 4 else w.T
            for var, arr in ((f"sequential/{name}/kernel:0", kernel), (f"sequential/{name}/bias:0", layer.bias.detach().numpy())):
                layout.append([var, start, start + arr.size, str(tuple(arr.shape))])
                flat.append(arr.reshape(-1))
                start += arr.size
        rows.append(np.concatenate(flat))
    np.save(root / "weights.npy", np.stack(rows).astype(np.float32))
    with open(root / "layout.csv", "w", newline="") as f:
        csv.writer(f).writerows([["varname", "start_idx", "end_idx", "shape"], *layout])
    with gzip.open(root / "metrics.csv.gz", "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(["modeldir", "step", "test_accuracy", "config.activation", "config.optimizer"])
        for i in range(len(nets)):
            w.writerow([f"m{i // 2}", 10 * (i % 2), 0.5 + 0.1 * i, "tanh", "adam"])


def test_small_cnn_zoo_import_matches_the_networks(tmp_path: Path) -> None:
    nets = [_keras_like_cnn(s) for s in range(4)]
    write_cnn_zoo_fixture(tmp_path / "src", nets)
    zoo = Zoo(import_cnn_zoo(tmp_path / "src", tmp_path / "zoo"))
    assert [r["run"] for r in zoo.rows] == [0, 0, 1, 1] and [r["step"] for r in zoo.rows] == [0, 10, 0, 10]
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for (row, sd), net in zip(zoo.iter_state_dicts(), nets):
        assert row["test_accuracy"] == pytest.approx(0.5 + 0.1 * row["id"]) and row["config.optimizer"] == "adam"
        assert list(sd) == list(net.state_dict())
        for key, value in net.state_dict().items():
            assert sd[key].dtype == value.dtype and torch.equal(sd[key], value), key
        with torch.no_grad():  # the same float32 weights and ops: the same bits
            assert torch.equal(zoo.module(row, sd)(x), net(x))
    # and back out: the exported files equal the fixture
    export_cnn_zoo(tmp_path / "zoo", tmp_path / "back")
    np.testing.assert_array_equal(np.load(tmp_path / "back" / "weights.npy"), np.load(tmp_path / "src" / "weights.npy"))
    src_layout = list(csv.reader(open(tmp_path / "src" / "layout.csv")))
    assert list(csv.reader(open(tmp_path / "back" / "layout.csv"))) == src_layout
    with gzip.open(tmp_path / "back" / "metrics.csv.gz", "rt") as f:
        back = list(csv.DictReader(f))
    assert [float(r["test_accuracy"]) for r in back] == pytest.approx([0.5, 0.6, 0.7, 0.8])


def test_generated_zoo_round_trips_through_the_cnn_zoo_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qegraph.data.generate import generate_zoo
    from qegraph.data.zoo_cnn import CNNFamily

    monkeypatch.setattr(CNNFamily, "checkpoint_steps", (0, 4))
    generate_zoo("cnn", tmp_path / "zoo", 4, seed=2, progress=False)
    export_cnn_zoo(tmp_path / "zoo", tmp_path / "exported")
    again = Zoo(import_cnn_zoo(tmp_path / "exported", tmp_path / "again"))
    original = Zoo(tmp_path / "zoo")
    for (ra, sa), (rb, sb) in zip(original.iter_state_dicts(), again.iter_state_dicts()):
        assert (ra["run"], ra["step"], ra["arch"], ra["test_accuracy"]) == (rb["run"], rb["step"], rb["arch"], rb["test_accuracy"])
        assert {k: ra[k] for k in ra if k.startswith("config.")} == {k: rb[k] for k in rb if k.startswith("config.")}
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_small_cnn_zoo_errors_name_the_file(tmp_path: Path) -> None:
    write_cnn_zoo_fixture(tmp_path / "src", [_keras_like_cnn(0), _keras_like_cnn(1)])
    (tmp_path / "src" / "weights.npy").write_bytes((tmp_path / "src" / "weights.npy").read_bytes()[:200])
    with pytest.raises(CheckpointError, match="weights.npy: not a readable"):
        import_cnn_zoo(tmp_path / "src", tmp_path / "zoo")
    np.save(tmp_path / "src" / "weights.npy", np.zeros((2, 4000), dtype=np.float32))
    with pytest.raises(QegraphError, match=r"layout.csv:\d+: sequential/conv2d_2/kernel:0 spans"):
        import_cnn_zoo(tmp_path / "src", tmp_path / "zoo")
    with pytest.raises(QegraphError, match="layout.csv: missing"):
        import_cnn_zoo(tmp_path / "nothing", tmp_path / "zoo")


class _Siren(nn.Module):
    """A SIREN with other key names than qegraph's (as in third-party INR code)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.ModuleList([nn.Linear(2, 32), nn.Linear(32, 32), nn.Linear(32, 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net[:-1]:
            x = torch.sin(30.0 * layer(x))
        return self.net[-1](x)


def test_nfn_siren_round_trip(tmp_path: Path) -> None:
    nets = {}
    for label in (3, 7):
        for idx in (0, 1):
            torch.manual_seed(10 * label + idx)
            net = _Siren()
            (tmp_path / "src" / f"mnist_{label}s").mkdir(parents=True, exist_ok=True)
            torch.save(net.state_dict(), tmp_path / "src" / f"mnist_{label}s" / f"net{idx}.pth")
            nets[(label, idx)] = net
    zoo = Zoo(import_nfn_siren(tmp_path / "src", tmp_path / "zoo"))
    assert [(r["config.label"], r["config.index"]) for r in zoo.rows] == sorted(nets)
    coords = torch.rand(16, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for row, sd in zoo.iter_state_dicts():
        net = nets[(row["config.label"], row["config.index"])]
        assert [torch.equal(a, b) for a, b in zip(sd.values(), net.state_dict().values())] == [True] * 6
        with torch.no_grad():  # sin(30 · Wx + b) in both: the same bits
            assert torch.equal(zoo.module(row, sd)(coords), net(coords))
    export_nfn_siren(tmp_path / "zoo", tmp_path / "back")
    for (label, idx), net in nets.items():
        back = torch.load(tmp_path / "back" / f"mnist_{label}s" / f"net{idx}.pth", weights_only=True)
        assert [torch.equal(a, b) for a, b in zip(back.values(), net.state_dict().values())] == [True] * 6


def test_nfn_siren_errors_name_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "src" / "mnist_1s"
    folder.mkdir(parents=True)
    torch.save(_Siren().state_dict(), folder / "net0.pth")
    (folder / "net1.pth").write_bytes((folder / "net0.pth").read_bytes()[:300])
    with pytest.raises(CheckpointError, match="net1.pth: cannot be read"):
        import_nfn_siren(tmp_path / "src", tmp_path / "zoo")
    with pytest.raises(QegraphError, match="no <prefix>_<label>s/net<idx>.pth"):
        import_nfn_siren(tmp_path / "empty", tmp_path / "zoo2")
