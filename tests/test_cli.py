"""`qegraph convert` / `qegraph inspect`: checkpoints, architecture sources, and bad input (exit code 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import qegraph
from cli_helpers import assert_refused, run
from qegraph.errors import UnsupportedOpError
from nets import SmallCNN, Upsampler, make

TESTS = str(Path(__file__).parent)


@pytest.fixture(autouse=True)
def _tests_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(TESTS)


def test_convert_state_dict_with_arch_and_load_back(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    m = SmallCNN(width=6).double()
    torch.save(m.state_dict(), tmp_path / "cnn.pt")
    code, out, _ = run(["convert", str(tmp_path / "cnn.pt"), "--arch", "nets:SmallCNN", "--arch-kwargs",
                        '{"width": 6}', "-o", str(tmp_path / "cnn.qeg")], capsys)
    assert code == 0
    assert "parameters : 130" in out and "symmetry per unit layer" in out and "scale" in out
    g = qegraph.load_graph(tmp_path / "cnn.qeg")
    rebuilt = g.to_module()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(rebuilt(x), m(x))


def test_convert_safetensors_linear_chain_with_activation(tmp_path: Path, capsys) -> None:
    m, x = make("tanh_mlp", torch.float32)
    save_file({f"net.{k}": v for k, v in m.state_dict().items()}, str(tmp_path / "mlp.safetensors"))
    code, out, _ = run(["convert", str(tmp_path / "mlp.safetensors"), "--activation", "tanh", "-o",
                        str(tmp_path / "mlp.qeg")], capsys)
    assert code == 0 and "sign" in out
    g = qegraph.load_graph(tmp_path / "mlp.qeg")
    assert list(g.to_state_dict()) == [f"net.{k}" for k in m.state_dict()]
    assert torch.equal(g.to_module()(x), m(x))


def test_convert_with_yaml_spec(tmp_path: Path, capsys) -> None:
    m, x = make("cnn_zoo_relu", torch.float32)
    torch.save(m.state_dict(), tmp_path / "zoo.pth")
    (tmp_path / "spec.yaml").write_text(
        "layers:\n"
        "  - {type: Conv2d, in_channels: 1, out_channels: 16, kernel_size: 3}\n  - ReLU\n"
        "  - {type: Conv2d, in_channels: 16, out_channels: 16, kernel_size: 3}\n  - ReLU\n"
        "  - {type: Conv2d, in_channels: 16, out_channels: 16, kernel_size: 3}\n  - ReLU\n"
        "  - {type: AdaptiveAvgPool2d, output_size: 1}\n  - Flatten\n"
        "  - {type: Linear, in_features: 16, out_features: 10}\n"
    )
    code, _, _ = run(["convert", str(tmp_path / "zoo.pth"), "--spec", str(tmp_path / "spec.yaml"), "-o",
                      str(tmp_path / "zoo.qeg")], capsys)
    assert code == 0
    assert torch.equal(qegraph.load_graph(tmp_path / "zoo.qeg").to_module()(x), m(x))


def test_inspect_prints_summary_and_plots(tmp_path: Path, capsys) -> None:
    g = qegraph.to_graph(make("lenet", torch.float32)[0])
    qegraph.save_graph(g, tmp_path / "g.qeg")
    code, out, _ = run(["inspect", str(tmp_path / "g.qeg"), "--plot", str(tmp_path / "g.png")], capsys)
    assert code == 0 and "edges" in out and "flatten" in out
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "subsampled" in out  # lenet has layers wider than the plot's 16 units


def test_truncated_checkpoint(tmp_path: Path, capsys) -> None:
    m, _ = make("relu_mlp", torch.float32)
    torch.save(m.state_dict(), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    out = tmp_path / "o.qeg"
    code, _, err = run(["convert", str(tmp_path / "cut.pt"), "-o", str(out)], capsys)
    assert_refused(code, err, out, "cut.pt", "truncated")
    save_file(m.state_dict(), str(tmp_path / "full.safetensors"))
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-7])
    code, _, err = run(["convert", str(tmp_path / "cut.safetensors"), "-o", str(out)], capsys)
    assert_refused(code, err, out, "cut.safetensors")


def test_nonfinite_weights_refused_unless_allowed(tmp_path: Path, capsys) -> None:
    m, _ = make("relu_mlp", torch.float32)
    sd = m.state_dict()
    sd["2.weight"][3, 1] = float("nan")
    torch.save(sd, tmp_path / "nan.pt")
    out = tmp_path / "o.qeg"
    code, _, err = run(["convert", str(tmp_path / "nan.pt"), "-o", str(out)], capsys)
    assert_refused(code, err, out, "'2.weight'", "NaN", "--allow-nonfinite")
    code, _, _ = run(["convert", str(tmp_path / "nan.pt"), "--allow-nonfinite", "-o", str(out)], capsys)
    assert code == 0
    assert torch.isnan(qegraph.load_graph(out).to_state_dict()["2.weight"][3, 1])


def test_state_dict_not_matching_architecture(tmp_path: Path, capsys) -> None:
    torch.save(SmallCNN(width=6).state_dict(), tmp_path / "cnn.pt")
    out = tmp_path / "o.qeg"
    code, _, err = run(["convert", str(tmp_path / "cnn.pt"), "--arch", "nets:SmallCNN", "-o", str(out)], capsys)
    assert_refused(code, err, out, "'conv.weight'", "(6, 1, 3, 3)", "(8, 1, 3, 3)")


def test_unsupported_op_names_module_and_op(tmp_path: Path, capsys) -> None:
    with pytest.raises(UnsupportedOpError, match=r"Upsampler\b.*\bup\b.*Upsample"):  # module path and op
        qegraph.to_graph(Upsampler())
    torch.save(Upsampler().state_dict(), tmp_path / "up.pt")
    out = tmp_path / "o.qeg"
    code, _, err = run(["convert", str(tmp_path / "up.pt"), "--arch", "nets:Upsampler", "-o", str(out)], capsys)
    assert_refused(code, err, out, "Upsample")


def test_unsupported_function_op() -> None:
    class CumSum(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Linear(3, 4)

        def forward(self, x):
            return torch.cumsum(self.a(x), 1)

    with pytest.raises(UnsupportedOpError, match=r"CumSum \(fx node 'cumsum'\): unsupported op 'cumsum'"):
        qegraph.to_graph(CumSum())


def test_unknown_layout_and_arch_errors(tmp_path: Path, capsys) -> None:
    torch.save({"conv.weight": torch.zeros(2, 1, 3, 3)}, tmp_path / "c.pt")
    out = tmp_path / "o.qeg"
    code, _, err = run(["convert", str(tmp_path / "c.pt"), "-o", str(out)], capsys)
    assert_refused(code, err, out, "cannot infer the architecture", "--arch")
    code, _, err = run(["convert", str(tmp_path / "c.pt"), "--arch", "nets:NoSuchNet", "-o", str(out)], capsys)
    assert_refused(code, err, out, "NoSuchNet")
    code, _, err = run(["convert", str(tmp_path / "c.pt"), "--arch", "os:system", "-o", str(out)], capsys)
    assert_refused(code, err, out, "not an nn.Module subclass")


def test_pickled_module_needs_trust_pickle(tmp_path: Path, capsys) -> None:
    m, x = make("relu_mlp", torch.float32)
    torch.save(m, tmp_path / "whole.pt")
    out = tmp_path / "o.qeg"
    code, _, err = run(["convert", str(tmp_path / "whole.pt"), "-o", str(out)], capsys)
    assert_refused(code, err, out, "--trust-pickle")
    code, _, _ = run(["convert", str(tmp_path / "whole.pt"), "--trust-pickle", "-o", str(out)], capsys)
    assert code == 0
    assert torch.equal(qegraph.load_graph(out).to_module(template=m)(x), m(x))


@pytest.mark.slow
def test_console_entry_point_exit_codes(tmp_path: Path) -> None:
    """Through a real process (``python -m qegraph.cli``): exit code 2 and one line, then success."""
    import os

    m, x = make("relu_mlp", torch.float32)
    torch.save(m, tmp_path / "whole.pt")
    out = tmp_path / "o.qeg"
    cmd = [sys.executable, "-m", "qegraph.cli", "convert", str(tmp_path / "whole.pt"), "-o", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (TESTS, os.environ.get("PYTHONPATH")) if p)}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 2 and "--trust-pickle" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()
    res = subprocess.run([*cmd, "--trust-pickle"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert torch.equal(qegraph.load_graph(out).to_module(template=m)(x), m(x))


def _tiny_bert(prefix: str = "") -> dict[str, torch.Tensor]:
    from qegraph.models import BertLayout

    torch.manual_seed(0)
    m = BertLayout(100, 16, 2, 4, 32, 12, 2, pooler=True, prefix=prefix, position_ids=False)
    return m.state_dict()


def test_convert_bert_layout_reads_heads_from_config_json(tmp_path: Path, capsys) -> None:
    sd = _tiny_bert("bert.")
    save_file(sd, str(tmp_path / "model.safetensors"))
    out = tmp_path / "b.qeg"
    code, _, err = run(["convert", str(tmp_path / "model.safetensors"), "--layout", "bert", "-o", str(out)], capsys)
    assert_refused(code, err, out, "--num-heads")
    (tmp_path / "config.json").write_text('{"num_attention_heads": 4, "hidden_size": 16}')
    code, out_text, _ = run(["convert", str(tmp_path / "model.safetensors"), "--layout", "bert", "-o", str(out)], capsys)
    assert code == 0 and "heads" in out_text
    g = qegraph.load_graph(out)
    back = g.to_state_dict()
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    assert int((g.gl_role > 0).sum()) == 2 * 3 * 16  # 2 layers × (q, k, v) × 16 coordinates
    g2 = qegraph.convert(tmp_path / "model.safetensors", layout="bert", num_heads=4)
    assert torch.equal(g2.edge_attr, g.edge_attr)
