"""`qegraph convert` on Hugging Face checkpoints (layout by config.json's model_type), wrapper key
prefixes (--strip-prefix), key checks before head-count questions, and a start-up that does not import
Lightning (a broken optional package cannot break the conversion of a plain torch model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import qegraph
from qegraph.cli import main
from cli_helpers import assert_refused, run

try:  # imported at collection (seconds: the modeling modules load lazily), so that no test pays for it
    import transformers

    _MODEL_CLASSES = (transformers.BertModel, transformers.RobertaModel, transformers.ViTForImageClassification)
    NO_TRANSFORMERS = ""
except ImportError as e:  # absent, or a broken install
    transformers = None
    NO_TRANSFORMERS = f"transformers cannot be imported ({e})"

NET = '''
import torch
from torch import nn


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 5)
        self.fc2 = nn.Linear(5, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))
'''


@pytest.fixture
def two_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> nn.Module:
    (tmp_path / "mynets.py").write_text(NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    from mynets import TwoLayer  # type: ignore[import-not-found]

    torch.manual_seed(0)
    return TwoLayer().double()


def save_hf(model: nn.Module, folder: Path, prefix: str = "", config: bool = True) -> Path:
    """A checkpoint as a user has it: model.safetensors + the model's config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({prefix + k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    if config:
        model.config.to_json_file(str(folder / "config.json"))
    return folder / "model.safetensors"


def tiny(kind: str) -> nn.Module:
    if transformers is None:
        pytest.skip(NO_TRANSFORMERS)
    tf = transformers
    torch.manual_seed(0)
    common = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24, vocab_size=50,
                  max_position_embeddings=20)
    if kind == "bert":
        return tf.BertModel(tf.BertConfig(**common)).eval()
    if kind == "roberta":
        return tf.RobertaModel(tf.RobertaConfig(**common)).eval()
    if kind == "vit":
        return tf.ViTForImageClassification(tf.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=4,
                                                         intermediate_size=24, image_size=8, patch_size=4,
                                                         num_labels=3)).eval()
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["bert", "vit"])
def test_layout_chosen_by_model_type(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = tiny(kind)
    ckpt = save_hf(model, tmp_path / kind)
    out = tmp_path / "g.qeg"
    code, text, err = run(["convert", str(ckpt), "-o", str(out)], capsys)
    assert code == 0, err
    assert "heads" in text
    g = qegraph.load_graph(out)
    sd, back = model.state_dict(), g.to_state_dict()
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    rebuilt = g.to_module()
    assert type(rebuilt) is type(model)
    x = (torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(0)) if kind == "bert"
         else torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        ref, got = model(x), rebuilt(x)
    key = "pooler_output" if kind == "bert" else "logits"
    assert torch.equal(ref[key], got[key])


def test_roberta_given_the_bert_layout_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = save_hf(tiny("roberta"), tmp_path / "roberta")
    out = tmp_path / "r.qeg"
    code, _, err = run(["convert", str(ckpt), "--layout", "bert", "-o", str(out)], capsys)
    assert_refused(code, err, out, "model_type 'roberta', not 'bert'", "--layout roberta")
    code, _, err = run(["convert", str(ckpt), "-o", str(out)], capsys)  # by its config.json: RoBERTa
    assert code == 0, err
    assert qegraph.load_graph(out).arch["kwargs"]["library_class"] == "RobertaModel"
    (tmp_path / "roberta" / "config.json").unlink()  # without config: RoBERTa's zero padding rows give it away
    out2 = tmp_path / "r2.qeg"
    code, _, err = run(["convert", str(ckpt), "--layout", "bert", "--num-heads", "4", "-o", str(out2)], capsys)
    assert_refused(code, err, out2, "as in a RoBERTa checkpoint", "--layout roberta")
    code, _, err = run(["convert", str(ckpt), "--layout", "roberta", "--num-heads", "4", "-o", str(out2)], capsys)
    assert code == 0, err


def test_layout_without_config_needs_heads_after_the_key_check(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                two_layer: nn.Module) -> None:
    torch.save(two_layer.state_dict(), tmp_path / "mlp.pt")
    out = tmp_path / "o.qeg"
    code, _, err = run(["convert", str(tmp_path / "mlp.pt"), "--layout", "bert", "-o", str(out)], capsys)
    assert_refused(code, err, out, "not a bert checkpoint", "'embeddings.word_embeddings.weight'")
    assert "--num-heads" not in err  # the keys are checked before the head count is asked for
    model = tiny("bert")
    ckpt = save_hf(model, tmp_path / "bert", config=False)
    code, _, err = run(["convert", str(ckpt), "--layout", "bert", "-o", str(out)], capsys)
    assert_refused(code, err, out, "num_attention_heads", "--num-heads")
    code, _, err = run(["convert", str(ckpt), "--layout", "bert", "--num-heads", "4", "-o", str(out)], capsys)
    assert code == 0, err
    cfg = qegraph.load_graph(out).arch["kwargs"]["config"]
    assert (cfg["num_attention_heads"], cfg["hidden_size"], cfg["num_hidden_layers"]) == (4, 16, 2)
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert", "num_attention_heads": 2}))
    out2 = tmp_path / "o2.qeg"
    code, _, err = run(["convert", str(ckpt), "--num-heads", "4", "-o", str(out2)], capsys)
    assert_refused(code, err, out2, "--num-heads 4 contradicts", "num_attention_heads=2")


def test_transformers_class_with_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = tiny("bert")
    ckpt = save_hf(model, tmp_path / "ckpt", config=False)
    model.config.to_json_file(str(tmp_path / "my_config.json"))
    out = tmp_path / "b.qeg"
    code, _, err = run(["convert", str(ckpt), "--arch", "transformers:BertModel", "-o", str(out)], capsys)
    assert_refused(code, err, out, "--config config.json")
    code, _, err = run(["convert", str(ckpt), "--arch", "transformers:GPT2Model", "--config",
                        str(tmp_path / "my_config.json"), "-o", str(out)], capsys)
    assert_refused(code, err, out, "transformers.BertModel, not GPT2Model")
    code, _, err = run(["convert", str(ckpt), "--arch", "transformers:BertModel", "--arch-kwargs",
                        '{"add_pooling_layer": false}', "--config", str(tmp_path / "my_config.json"), "-o", str(out)],
                       capsys)
    assert_refused(code, err, out, "takes no --arch-kwargs")
    code, _, err = run(["convert", str(ckpt), "--arch", "transformers:BertModel", "--config",
                        str(tmp_path / "my_config.json"), "-o", str(out)], capsys)
    assert code == 0, err


def test_unsupported_model_type_lists_the_supported_ones(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                         two_layer: nn.Module) -> None:
    torch.save(two_layer.state_dict(), tmp_path / "m.pt")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    out = tmp_path / "o.qeg"
    code, _, err = run(["convert", str(tmp_path / "m.pt"), "-o", str(out)], capsys)
    assert_refused(code, err, out, "'t5'", "bert, distilbert, gpt2, llama, mistral, qwen2, roberta, vit")


@pytest.mark.parametrize("prefix", ["module.", "model."])
def test_wrapper_prefix_is_named_and_stripped(prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture,
                                              two_layer: nn.Module) -> None:
    sd = two_layer.state_dict()
    torch.save({prefix + k: v for k, v in sd.items()}, tmp_path / "wrapped.pt")
    out = tmp_path / "w.qeg"
    args = ["convert", str(tmp_path / "wrapped.pt"), "--arch", "mynets:TwoLayer", "-o", str(out)]
    code, _, err = run(args, capsys)
    assert_refused(code, err, out, f"every key starts with '{prefix}'", f"--strip-prefix {prefix}")
    code, _, err = run([*args, "--strip-prefix", prefix], capsys)
    assert code == 0, err
    back = qegraph.load_graph(out).to_state_dict()
    assert list(back) == list(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    out.unlink()
    code, _, err = run([*args, "--strip-prefix", "net."], capsys)
    assert_refused(code, err, out, "--strip-prefix 'net.'", f"'{prefix}fc1.weight'")


def test_wrapper_prefix_on_a_hugging_face_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = save_hf(tiny("bert"), tmp_path / "bert", prefix="module.")
    out = tmp_path / "b.qeg"
    code, _, err = run(["convert", str(ckpt), "-o", str(out)], capsys)
    assert_refused(code, err, out, "every key starts with 'module.'", "--strip-prefix module.")
    code, _, err = run(["convert", str(ckpt), "--strip-prefix", "module.", "-o", str(out)], capsys)
    assert code == 0, err


def _python(args: list[str], cwd: Path, extra_path: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*extra_path, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_convert_does_not_import_lightning_and_survives_a_broken_package(tmp_path: Path, two_layer: nn.Module) -> None:
    """In fresh interpreters: a torchvision that raises on import (as a CUDA-only wheel does on a CPU
    torch) does not break `convert`, which imports no Lightning; `experiment --help` builds its parser."""
    broken = tmp_path / "broken" / "torchvision"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    torch.save(two_layer.state_dict(), tmp_path / "m.pt")
    script = ("import sys; from qegraph.cli import main; "
              f"code = main(['convert', {str(tmp_path / 'm.pt')!r}, '--arch', 'mynets:TwoLayer', '-o', "
              f"{str(tmp_path / 'm.qeg')!r}]); "
              "assert 'lightning' not in sys.modules, 'lightning was imported'; sys.exit(code)")
    res = _python(["-c", script], tmp_path, [str(tmp_path / "broken"), str(tmp_path)])
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "m.qeg").exists()
    res = _python(["-m", "qegraph.cli", "experiment", "--help"], tmp_path, [])
    assert res.returncode == 0 and "usage: qegraph experiment" in res.stdout, res.stderr


def test_help_lists_every_command(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for command in ("convert", "inspect", "zoo", "experiment"):
        assert command in text
