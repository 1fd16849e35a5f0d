"""Every config under ``configs/`` parses with the LightningCLI parser (``qegraph fit --config X
--print_config``), without instantiating anything: no zoo is generated, no training runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from qegraph.cli import main
from qegraph.data import ZooDataModule
from qegraph.tasks.cli import run_lightning

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").rglob("*.yaml"))


def _never(*args, **kwargs):  # noqa: ANN002, ANN003
    raise AssertionError("--print_config must not prepare or set up the data module")


@pytest.fixture
def no_side_effects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import qegraph.data.generate

    monkeypatch.chdir(tmp_path)  # configs use relative zoo / output paths
    monkeypatch.setattr(sys, "argv", ["qegraph"])  # LightningCLI warns when pytest's argv is present
    monkeypatch.setattr(qegraph.data.generate, "generate_zoo", _never)
    monkeypatch.setattr(ZooDataModule, "prepare_data", _never)
    monkeypatch.setattr(ZooDataModule, "setup", _never)
    return tmp_path


def _print_config(path: Path, *extra: str) -> int:
    try:
        run_lightning(["fit", "--config", str(path), "--print_config", *extra])
    except SystemExit as e:
        return 0 if e.code is None else e.code
    return 0


def test_configs_are_found() -> None:
    names = {str(p.relative_to(p.parents[1])) for p in CONFIGS}
    expected = {f"cnn_generalization/{m}.yaml" for m in ("quasi", "strict", "perm", "flatmlp", "statnn")}
    expected |= {f"{e}/{m}.yaml" for e in ("mlp_generalization", "transformer_generalization")
                 for m in ("quasi", "strict", "perm", "statnn")}
    expected |= {f"inr_classification/{m}.yaml" for m in ("quasi", "strict", "perm", "flatmlp", "statnn")}
    assert expected <= names, expected - names
    assert "configs/quickstart.yaml" in {str(p.relative_to(p.parents[1])) for p in CONFIGS if p.parent.name == "configs"}


def _fast_or_slow(path: Path) -> object:
    """The quickstart and every experiment's QuasiGMN config parse in the fast loop; the rest are slow."""
    fast = path.name in ("quickstart.yaml", "quasi.yaml")
    return pytest.param(path, id=f"{path.parent.name}/{path.name}", marks=() if fast else pytest.mark.slow)


@pytest.mark.parametrize("path", [_fast_or_slow(p) for p in CONFIGS])
def test_config_parses(path: Path, no_side_effects: Path, capsys: pytest.CaptureFixture) -> None:
    assert _print_config(path) == 0
    out = capsys.readouterr().out
    cfg = yaml.safe_load(out)
    src = yaml.safe_load(path.read_text())
    assert cfg["model"]["class_path"] == src["model"]["class_path"]
    assert cfg["model"]["init_args"]["model"]["class_path"] == src["model"]["init_args"]["model"]["class_path"]
    assert cfg["data"]["init_args"]["zoo_dir"] == src["data"]["init_args"]["zoo_dir"]
    assert cfg["test_after_fit"] is True
    assert list(no_side_effects.iterdir()) == []  # nothing generated, no logs written


def test_broken_config_is_refused(tmp_path: Path, no_side_effects: Path, capsys: pytest.CaptureFixture) -> None:
    """The check above is not vacuous: a misspelt key in a config file exits with code 2."""
    src = (CONFIGS[0].parent.parent / "cnn_generalization" / "quasi.yaml").read_text()
    bad = tmp_path.parent / f"{tmp_path.name}-bad.yaml"
    assert "hidden_dim: 64" in src
    bad.write_text(src.replace("hidden_dim: 64", "hiden_dim: 64"))
    assert _print_config(bad) == 2
    assert "hiden_dim" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", str(bad), "--print_config"])
    assert e.value.code == 2
