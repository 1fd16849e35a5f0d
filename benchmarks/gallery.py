r"""The gallery: every supported architecture, converted from random weights, with its graph, group and checks.

    python benchmarks/gallery.py            # every row (about 6 min on 2 CPU cores, peak ~5 GB in one
                                            # subprocess); writes docs/gallery.md, benchmarks/results/gallery.json
    python benchmarks/gallery.py --quick    # the small rows only (seconds)
    python benchmarks/gallery.py --rows resnext BERT-base   # some rows (names as in the table)

``--quick`` and ``--rows`` print the table and write files only where ``--md`` / ``--json`` say.

For every architecture (built with random weights from a seed; nothing is downloaded):

* **sizes**, on the float32 model (the dtype checkpoints ship in): parameters (every scalar of the
  state_dict, buffers included), graph nodes and edges, the largest slot width S (values of the widest
  edge: k_h·k_w of a conv kernel, H·W of a flatten block, 1 for a Linear weight), the graph's tensors in
  memory (``qegraph.graph.summary.graph_nbytes``) and the ``.qeg`` file written by ``save_graph``, both
  also as a multiple of the state_dict's bytes;
* **time**: ``qegraph.to_graph(model)``, median of 3 runs, one thread;
* **group**: the unit groups of ``qegraph.symmetry_group(graph)`` counted by kind (fixed, perm, scale,
  sign, nonzero, heads), the attention heads (members of the head groups) and which per-head GL gauges
  are claimed (A on queries/keys, B on values), and the unit groups whose permutations are restricted to
  blocks by grouped convolutions (with their number of coupling classes);
* **checks**: the round trip is bit-identical (``to_state_dict()`` of the float32 graph, of the graph
  read back from the ``.qeg`` file and of a float64 graph equal the model's state_dict: same keys in the
  same order, dtypes, shapes and bytes), and the function is kept under the group: for 2 random elements
  g (scales log-uniform in [1, 10³], GL condition numbers ≤ 10) the float64 model rebuilt from g·θ by
  ``to_module()`` computes the same output as the original, worst relative error
  max|Δy| / max|y| ≤ 1e-9 (a check only counts if g moved the values). Plain-torch models are rebuilt
  into a copy of the module (``to_module(template=model)``), Hugging Face models into the library's own
  class from the recorded config (``to_module()``). The output is the logits, else the pooler output,
  else the last hidden states.

``transformers``' RMSNorm computes in float32 even in a float64 model, so reordering the float64 sums
that feed it (a permutation) changes its result at float32 round-off (~1e-7); the function check gives
RMSNorm modules a float64 forward (the same formula in the input dtype), as ``tests/test_hf_layouts.py``
does. Families the converter refuses today are rows with the refusal message; Hugging Face rows are
skipped with a reason when ``transformers`` is not importable. Full-size rows each run in their own
subprocess so that their memory is freed. The script exits with status 1 if any check fails.

The plain-torch vision networks are those of ``tests/real_nets.py`` (torchvision / timm code paths
without torchvision), the transformer encoders and the ViT-style classifier those of ``tests/nets.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # real_nets.py, nets.py: plain-torch architectures

import qegraph  # noqa: E402
from qegraph.errors import QegraphError  # noqa: E402
from qegraph.graph.summary import graph_nbytes  # noqa: E402
from qegraph.graph.types import HEAD_KINDS, GLRole, SymKind  # noqa: E402

MD_OUT = ROOT / "docs" / "gallery.md"
JSON_OUT = ROOT / "benchmarks" / "results" / "gallery.json"
TOLERANCE = 1e-9
TOL_TEXT = "1e-9"
ELEMENTS = 2
REPEATS = 3
KINDS = ("fixed", "perm", "scale", "sign", "nonzero", "heads")

Inputs = tuple[Tensor, ...]


@dataclass(frozen=True)
class Entry:
    """One row: ``build()`` returns the float64 model (eval mode, random weights) and an input batch."""

    name: str
    family: str  # section of the table
    source: str  # where the architecture comes from (markdown)
    build: Callable[[], tuple[nn.Module, Inputs]]
    full: bool = False  # full size: own subprocess, not in --quick
    hf: bool = False  # needs transformers


# ----------------------------------------------------------------------------------- plain torch
def _real(name: str) -> Callable[[], tuple[nn.Module, Inputs]]:
    def build() -> tuple[nn.Module, Inputs]:
        from real_nets import make_real

        m, x = make_real(name)
        return m, (x,)
    return build


def _real_full(which: str) -> Callable[[], tuple[nn.Module, Inputs]]:
    def build() -> tuple[nn.Module, Inputs]:
        from real_nets import MOBILENET_V2_FULL, BasicBlock, Bottleneck, MobileNetV2, ResNet, randomize

        torch.manual_seed(0)
        m = {"resnet18": lambda: ResNet(BasicBlock, [2, 2, 2, 2], planes=(64, 128, 256, 512), stem=64,
                                        num_classes=1000),
             "resnet50": lambda: ResNet(Bottleneck, [3, 4, 6, 3], planes=(64, 128, 256, 512), stem=64,
                                        num_classes=1000),
             "mobilenet_v2": lambda: MobileNetV2(num_classes=1000, settings=MOBILENET_V2_FULL, input_channel=32,
                                                 last_channel=1280)}[which]()
        return randomize(m, 0), (_seeded((2, 3, 64, 64), 1),)
    return build


def _seeded(shape: tuple[int, ...], seed: int) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _normal(m: nn.Module, seed: int, std: float) -> nn.Module:
    """float64, eval; every parameter N(0, std²) from a seeded generator, norm scales N(1, std²)."""
    gen = torch.Generator().manual_seed(seed)
    m = m.double().eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype) * std
            norm = p.dim() == 1 and name.endswith("weight") and any(
                s in name.lower() for s in ("norm", "ln_", "layernorm"))
            p.copy_(1.0 + noise if norm else noise)
    return m


def _arch(record: Callable[[], dict[str, Any]], shape: tuple[int, ...], std: float = 0.3) -> Callable[
        [], tuple[nn.Module, Inputs]]:
    def build() -> tuple[nn.Module, Inputs]:
        from qegraph.graph.arch import module_from_arch

        torch.manual_seed(0)
        return _normal(module_from_arch(record()), 0, std), (_seeded(shape, 1),)
    return build


def _zoo_cnn(act: str) -> dict[str, Any]:
    from qegraph.data.zoo_cnn import cnn_arch

    return cnn_arch(act)


def _zoo_mlp(act: str, widths: list[int]) -> dict[str, Any]:
    from qegraph.data.zoo_mlp import mlp_arch

    return mlp_arch(act, widths)


def _siren() -> dict[str, Any]:
    from qegraph.data.zoo_inr import siren_arch

    return siren_arch()


def _zoo_transformer(d: int, h: int, layers: int, act: str) -> dict[str, Any]:
    from qegraph.data.zoo_transformer import transformer_arch

    return transformer_arch(d, h, layers, act)


def _encoder(norm_first: bool, activation: str) -> Callable[[], tuple[nn.Module, Inputs]]:
    def build() -> tuple[nn.Module, Inputs]:
        from nets import D_MODEL, encoder

        return encoder(norm_first, activation), (_seeded((3, 6, D_MODEL), 1),)
    return build


def _vit_plain() -> tuple[nn.Module, Inputs]:
    from nets import vit

    return vit("cls"), (_seeded((3, 3, 8, 8), 2),)


# ----------------------------------------------------------------------------------- Hugging Face
def _hf(cls: str, cfg: str, kw: dict[str, Any], init: dict[str, Any] | None = None, pixels: int = 0,
        std: float = 0.3) -> Callable[[], tuple[nn.Module, Inputs]]:
    """``transformers.<cls>(<cfg>(**kw), **init)`` with N(0, std²) weights; inputs: 2 sequences of 7
    token ids, or 2 RGB images of ``pixels``² pixels."""
    def build() -> tuple[nn.Module, Inputs]:
        import transformers as t

        torch.manual_seed(0)
        model = _normal(getattr(t, cls)(getattr(t, cfg)(**kw), **(init or {})), 0, std)
        gen = torch.Generator().manual_seed(1)
        if pixels:
            return model, (torch.randn(2, 3, pixels, pixels, generator=gen, dtype=torch.float64),)
        vocab = int(getattr(model.config, "vocab_size"))
        return model, (torch.randint(0, vocab, (2, 7), generator=gen),)
    return build


_V, _D, _H, _FF, _L = 60, 32, 4, 48, 2
_SMALL = {"hidden_size": _D, "num_hidden_layers": _L, "num_attention_heads": _H, "intermediate_size": _FF,
          "vocab_size": _V}
_POS = {"max_position_embeddings": 20}
_DISTIL = {"dim": _D, "n_layers": _L, "n_heads": _H, "hidden_dim": _FF, "vocab_size": _V, **_POS}
_VIT = {"hidden_size": _D, "num_hidden_layers": _L, "num_attention_heads": _H, "intermediate_size": _FF,
        "image_size": 8, "patch_size": 4}
_GPT2 = {"n_embd": _D, "n_layer": _L, "n_head": _H, "vocab_size": _V, "n_positions": 20, "bos_token_id": 0,
         "eos_token_id": 0}
#: a ~100M-parameter Llama-style decoder (hidden 768, 12 layers of 12 heads, SwiGLU 2048, vocab 32000)
_LLAMA_100M = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "num_key_value_heads": 12,
               "intermediate_size": 2048, "vocab_size": 32000}
_TF = "Hugging Face `transformers`"
_FULL_STD = 0.02  # the configs' initializer_range: keeps full-size activations in range


def _src(cls: str, cfg: str) -> str:
    return f"{_TF} `{cls}({cfg})`"


ENTRIES: list[Entry] = [
    # --- plain torch: torchvision / timm code paths at test size (tests/real_nets.py)
    *[Entry(name, "vision (plain torch)", f"plain torch, tests/real_nets.py `{name}`", _real(name)) for name in (
        "resnet_basic", "resnet_basic_nobn", "resnet_bottleneck", "resnext", "resnext_nobn", "mobilenet_v2",
        "mobilenet_v2_nobn", "mobilenet_v2_relu_nobn", "efficientnet", "efficientnet_nobn", "efficientnet_timm_se",
        "efficientnet_senet_se", "mobilenet_v3", "mobilenet_v3_nobn", "vgg_bn", "vgg_nobn")],
    Entry("ResNet-18 (full size)", "vision (plain torch)",
          "plain torch, torchvision `resnet18` layout (tests/real_nets.py `ResNet`)", _real_full("resnet18"),
          full=True),
    Entry("ResNet-50 (full size)", "vision (plain torch)",
          "plain torch, torchvision `resnet50` layout (tests/real_nets.py `ResNet`)", _real_full("resnet50"),
          full=True),
    Entry("MobileNetV2 (full size)", "vision (plain torch)",
          "plain torch, torchvision `mobilenet_v2` layout (tests/real_nets.py `MobileNetV2`)",
          _real_full("mobilenet_v2"), full=True),
    # --- the zoos of qegraph.data
    Entry("Small CNN Zoo (ReLU)", "zoo architectures", "torch.nn, `qegraph.data.zoo_cnn.cnn_arch('relu')`",
          _arch(lambda: _zoo_cnn("relu"), (4, 1, 8, 8))),
    Entry("Small CNN Zoo (tanh)", "zoo architectures", "torch.nn, `qegraph.data.zoo_cnn.cnn_arch('tanh')`",
          _arch(lambda: _zoo_cnn("tanh"), (4, 1, 8, 8))),
    Entry("zoo MLP (ReLU, 3×64)", "zoo architectures", "torch.nn, `qegraph.data.zoo_mlp.mlp_arch('relu', [64]*3)`",
          _arch(lambda: _zoo_mlp("relu", [64, 64, 64]), (4, 64))),
    Entry("zoo MLP (tanh, 1×16)", "zoo architectures", "torch.nn, `qegraph.data.zoo_mlp.mlp_arch('tanh', [16])`",
          _arch(lambda: _zoo_mlp("tanh", [16]), (4, 64))),
    Entry("SIREN INR", "zoo architectures", "torch.nn + `qegraph.Sine`, `qegraph.data.zoo_inr.siren_arch()`",
          _arch(_siren, (16, 2), std=0.1)),
    Entry("zoo transformer (d16, 2 heads, 1 layer, ReLU)", "zoo architectures",
          "`qegraph.data.zoo_transformer.TokenTransformer` (`nn.TransformerEncoder`)",
          _arch(lambda: _zoo_transformer(16, 2, 1, "relu"), (3, 8, 16))),
    Entry("zoo transformer (d32, 4 heads, 2 layers, GELU)", "zoo architectures",
          "`qegraph.data.zoo_transformer.TokenTransformer` (`nn.TransformerEncoder`)",
          _arch(lambda: _zoo_transformer(32, 4, 2, "gelu"), (3, 8, 16))),
    # --- torch.nn transformers
    Entry("nn.TransformerEncoder (post-norm, ReLU)", "torch.nn transformers",
          "torch.nn `TransformerEncoder` (tests/nets.py `encoder`)", _encoder(False, "relu")),
    Entry("nn.TransformerEncoder (pre-norm, GELU)", "torch.nn transformers",
          "torch.nn `TransformerEncoder` (tests/nets.py `encoder`)", _encoder(True, "gelu")),
    Entry("ViT-style classifier", "torch.nn transformers",
          "plain torch: patch conv, cls token, pos. embedding, `nn.TransformerEncoder` (tests/nets.py `ViT`)",
          _vit_plain),
    # --- Hugging Face, small configs
    Entry("BertModel", "Hugging Face (small configs)", _src("BertModel", "BertConfig"),
          _hf("BertModel", "BertConfig", {**_SMALL, **_POS}), hf=True),
    Entry("BertForSequenceClassification (ReLU)", "Hugging Face (small configs)",
          _src("BertForSequenceClassification", "BertConfig"),
          _hf("BertForSequenceClassification", "BertConfig", {**_SMALL, **_POS, "hidden_act": "relu", "num_labels": 3}),
          hf=True),
    Entry("RobertaModel", "Hugging Face (small configs)", _src("RobertaModel", "RobertaConfig"),
          _hf("RobertaModel", "RobertaConfig", {**_SMALL, **_POS}), hf=True),
    Entry("RobertaForSequenceClassification", "Hugging Face (small configs)",
          _src("RobertaForSequenceClassification", "RobertaConfig"),
          _hf("RobertaForSequenceClassification", "RobertaConfig", {**_SMALL, **_POS}), hf=True),
    Entry("DistilBertModel", "Hugging Face (small configs)", _src("DistilBertModel", "DistilBertConfig"),
          _hf("DistilBertModel", "DistilBertConfig", _DISTIL), hf=True),
    Entry("DistilBertForSequenceClassification (ReLU)", "Hugging Face (small configs)",
          _src("DistilBertForSequenceClassification", "DistilBertConfig"),
          _hf("DistilBertForSequenceClassification", "DistilBertConfig", {**_DISTIL, "activation": "relu",
                                                                           "num_labels": 3}), hf=True),
    Entry("ViTModel", "Hugging Face (small configs)", _src("ViTModel", "ViTConfig"),
          _hf("ViTModel", "ViTConfig", _VIT, pixels=8), hf=True),
    Entry("ViTForImageClassification", "Hugging Face (small configs)", _src("ViTForImageClassification", "ViTConfig"),
          _hf("ViTForImageClassification", "ViTConfig", {**_VIT, "num_labels": 5}, pixels=8), hf=True),
    Entry("GPT2Model", "Hugging Face (small configs)", _src("GPT2Model", "GPT2Config"),
          _hf("GPT2Model", "GPT2Config", _GPT2), hf=True),
    Entry("LlamaModel", "Hugging Face (small configs)", _src("LlamaModel", "LlamaConfig"),
          _hf("LlamaModel", "LlamaConfig", _SMALL), hf=True),
    Entry("LlamaModel (grouped-query, 2 kv heads)", "Hugging Face (small configs)", _src("LlamaModel", "LlamaConfig"),
          _hf("LlamaModel", "LlamaConfig", {**_SMALL, "num_key_value_heads": 2}), hf=True),
    Entry("Qwen2Model", "Hugging Face (small configs)", _src("Qwen2Model", "Qwen2Config"),
          _hf("Qwen2Model", "Qwen2Config", {**_SMALL, "num_key_value_heads": _H}), hf=True),
    Entry("MistralForCausalLM (untied head)", "Hugging Face (small configs)",
          _src("MistralForCausalLM", "MistralConfig"),
          _hf("MistralForCausalLM", "MistralConfig", {**_SMALL, "num_key_value_heads": _H,
                                                      "tie_word_embeddings": False}), hf=True),
    # --- Hugging Face, one full-size config per family
    Entry("BERT-base", "Hugging Face (full size)", _src("BertModel", "BertConfig()"),
          _hf("BertModel", "BertConfig", {}, std=_FULL_STD), full=True, hf=True),
    Entry("RoBERTa-base", "Hugging Face (full size)", _src("RobertaModel", "RobertaConfig()"),
          _hf("RobertaModel", "RobertaConfig", {}, std=_FULL_STD), full=True, hf=True),
    Entry("DistilBERT-base", "Hugging Face (full size)", _src("DistilBertModel", "DistilBertConfig()"),
          _hf("DistilBertModel", "DistilBertConfig", {}, std=_FULL_STD), full=True, hf=True),
    Entry("ViT-B/16", "Hugging Face (full size)", _src("ViTForImageClassification", "ViTConfig(num_labels=1000)"),
          _hf("ViTForImageClassification", "ViTConfig", {"num_labels": 1000}, pixels=224, std=_FULL_STD),
          full=True, hf=True),
    Entry("GPT-2 small", "Hugging Face (full size)", _src("GPT2Model", "GPT2Config()"),
          _hf("GPT2Model", "GPT2Config", {}, std=_FULL_STD), full=True, hf=True),
    Entry("Llama-style ~100M", "Hugging Face (full size)",
          _src("LlamaModel", "LlamaConfig(hidden 768, 12 layers × 12 heads, SwiGLU 2048, vocab 32000)"),
          _hf("LlamaModel", "LlamaConfig", _LLAMA_100M, std=_FULL_STD), full=True, hf=True),
]
BY_NAME = {e.name: e for e in ENTRIES}


# ----------------------------------------------------------------------------------- measurement
def transformers_missing() -> str | None:
    """Why Hugging Face rows are skipped (``None``: transformers imports)."""
    try:
        import transformers  # noqa: F401
    except Exception as e:  # absent, or a build that cannot import here
        return f"transformers is not importable ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    return None


def output(o: Any) -> Tensor:
    """The model's function in the graph's sense: a tensor, or logits / pooler output / last hidden states."""
    if isinstance(o, Tensor):
        return o
    for name in ("logits", "pooler_output", "last_hidden_state"):
        v = getattr(o, name, None)
        if v is not None:
            return v
    raise QegraphError(f"no output tensor in {type(o).__name__}")


def same_bits(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    """Same keys in the same order, dtypes, shapes and bytes."""
    if list(a) != list(b):
        return False
    for k in a:
        x, y = a[k], b[k]
        if x.dtype != y.dtype or x.shape != y.shape:
            return False
        if not torch.equal(x.contiguous().view(-1).view(torch.uint8), y.contiguous().view(-1).view(torch.uint8)):
            return False
    return True


def _rms_forward(self: nn.Module, x: Tensor) -> Tensor:
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def float64_rmsnorm(model: nn.Module) -> nn.Module:
    """Give ``transformers``' RMSNorm modules (which compute in float32) a forward in the input dtype."""
    for m in model.modules():
        if type(m).__name__.endswith("RMSNorm") and hasattr(m, "variance_epsilon"):
            m.forward = types.MethodType(_rms_forward, m)
    return model


def group_summary(graph: qegraph.ParameterGraph) -> dict[str, Any]:
    """Unit groups by kind, heads and their claimed GL gauges, grouped-conv block structure."""
    grp = qegraph.symmetry_group(graph)
    kinds = Counter(SymKind(int(k)).name.lower() for k in grp.kinds.tolist())
    heads = [j for j, k in enumerate(grp.kinds.tolist()) if k in HEAD_KINDS]
    gl: set[str] = set()
    for j in heads:
        roles = grp.head_dims.get(j, {})
        if int(GLRole.QUERY) in roles or int(GLRole.KEY) in roles:
            gl.add("A")
        if int(GLRole.VALUE) in roles:
            gl.add("B")
    blocked = grp.blocks > 1
    return {
        "unit_groups": len(grp),
        "by_kind": {k: kinds.get(k, 0) for k in KINDS},
        "other_kinds": {k: v for k, v in kinds.items() if k not in KINDS},
        "head_groups": len(heads),
        "heads": int(sum(int(grp.sizes[j]) for j in heads)),
        "gl": "".join(sorted(gl)),
        "grouped_conv_groups": int(blocked.sum()),
        "grouped_conv_classes": int(torch.unique(grp.couple[blocked]).numel()),
        "no_permutation_groups": int((grp.blocks == 0).sum()),
    }


def _function_check(model: nn.Module, graph: qegraph.ParameterGraph, inputs: Inputs, hf: bool) -> dict[str, Any]:
    """Worst relative output error of ``to_module()`` after ``ELEMENTS`` random group elements."""
    group = qegraph.symmetry_group(graph)
    gen = torch.Generator().manual_seed(3)
    worst, moved = 0.0, True
    with torch.no_grad():
        y = output((float64_rmsnorm(model) if hf else model)(*inputs))
        for _ in range(ELEMENTS):
            acted = group.sample(generator=gen, scale_range=(1.0, 1e3), gl_cond=10.0).act(graph)
            moved &= not (torch.equal(acted.edge_val, graph.edge_val) and torch.equal(acted.x, graph.x))
            rebuilt = float64_rmsnorm(acted.to_module()) if hf else acted.to_module(template=model)
            y2 = output(rebuilt(*inputs))
            err = float((y2 - y).abs().max() / y.abs().max()) if y2.shape == y.shape else float("inf")
            worst = max(worst, err if err == err else float("inf"))  # NaN counts as a failure
            del acted, rebuilt
    return {"max_rel_err": worst, "elements_moved_values": moved}


def measure(entry: Entry) -> dict[str, Any]:
    """Build, convert and check one row (in this process, on one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _measure(entry)
    finally:
        torch.set_num_threads(threads)


def _measure(entry: Entry) -> dict[str, Any]:
    row: dict[str, Any] = {"name": entry.name, "family": entry.family, "source": entry.source, "full": entry.full}
    if entry.hf and (why := transformers_missing()):
        return {**row, "status": "skipped", "message": why}
    model64, inputs = entry.build()
    model32 = copy.deepcopy(model64).float()
    sd32 = model32.state_dict()
    times = []
    try:
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            graph = qegraph.to_graph(model32)
            times.append(time.perf_counter() - t0)
    except QegraphError as e:
        return {**row, "status": "refused", "message": f"{type(e).__name__}: {e}"}
    ckpt = sum(t.numel() * t.element_size() for t in sd32.values())
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "graph.qeg")
        qegraph.save_graph(graph, path)
        qeg = os.path.getsize(path)
        file_exact = same_bits(qegraph.load_graph(path).to_state_dict(), sd32)
    row.update({
        "params": graph.num_params, "nodes": graph.num_nodes, "edges": graph.num_edges,
        "max_slot_width": graph.num_slots, "checkpoint_bytes": ckpt, "graph_bytes": graph_nbytes(graph),
        "qeg_bytes": qeg, "to_graph_s": statistics.median(times), "to_graph_runs_s": times,
        "group": group_summary(graph),
    })
    exact32 = same_bits(graph.to_state_dict(), sd32)
    del graph, model32, sd32
    graph64 = qegraph.to_graph(model64)
    exact64 = same_bits(graph64.to_state_dict(), model64.state_dict())
    row["round_trip"] = {"float32": exact32, "qeg_file": file_exact, "float64": exact64}
    row.update(_function_check(model64, graph64, inputs, entry.hf))
    row["ok"] = bool(exact32 and file_exact and exact64 and row["elements_moved_values"]
                     and row["max_rel_err"] <= TOLERANCE)
    row["status"] = "ok" if row["ok"] else "FAILED"
    return row


def measure_in_subprocess(entry: Entry) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--_row", entry.name], capture_output=True, text=True,
                          cwd=ROOT)
    if proc.returncode:
        return {"name": entry.name, "family": entry.family, "source": entry.source, "full": entry.full,
                "status": "error", "ok": False, "message": proc.stderr.strip().splitlines()[-1][:500]
                if proc.stderr.strip() else f"exit status {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(entries: list[Entry], progress: bool = True) -> list[dict[str, Any]]:
    """Measure every entry: small ones here, full-size ones each in a fresh subprocess."""
    rows = []
    for e in entries:
        t0 = time.perf_counter()
        try:
            rows.append(measure_in_subprocess(e) if e.full else measure(e))
        except Exception as err:  # a crash is a failed row, reported with its cause
            rows.append({"name": e.name, "family": e.family, "source": e.source, "full": e.full, "status": "error",
                         "ok": False, "message": f"{type(err).__name__}: {err}"})
        if progress:
            print(f"  {e.name}: {rows[-1]['status']} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
    return rows


# ----------------------------------------------------------------------------------- reporting
COLUMNS = ("architecture", "source", "params", "nodes", "edges", "max slot width", "graph in memory",
           ".qeg on disk", "unit groups by kind", "heads (GL)", "grouped-conv groups", "to_graph",
           "round trip", "max rel. err")


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n / 2**10:,.1f} KiB"


def _kinds(group: dict[str, Any]) -> str:
    counts = {**group["by_kind"], **group.get("other_kinds", {})}
    return " · ".join(f"{k} {v}" for k, v in counts.items() if v)


def _heads(group: dict[str, Any]) -> str:
    if not group["heads"]:
        return "–"
    gl = {"AB": "A, B", "B": "B only", "A": "A only", "": "none"}[group["gl"]]
    return f"{group['heads']} in {group['head_groups']} layers ({gl})"


def _grouped(group: dict[str, Any]) -> str:
    text = f"{group['grouped_conv_groups']} ({group['grouped_conv_classes']} classes)" \
        if group["grouped_conv_groups"] else "–"
    if group["no_permutation_groups"]:
        text += f", {group['no_permutation_groups']} unpermutable"
    return text


def _time(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for r in rows:
        if r["status"] in ("skipped", "refused", "error"):
            msg = r["message"].replace("|", "\\|").replace("\n", " ")
            out.append([r["name"], r["source"], f"**{r['status']}**: {msg}"] + [""] * (len(COLUMNS) - 3))
            continue
        rt = r["round_trip"]
        exact = "bit-identical" if all(rt.values()) else "**NO** (" + ", ".join(k for k, v in rt.items() if not v) + ")"
        err = f"{r['max_rel_err']:.1e}"
        if not r["elements_moved_values"]:
            err += " **(elements did not move the values)**"
        elif r["max_rel_err"] > TOLERANCE:
            err = f"**{err} > {TOL_TEXT}**"
        ck = r["checkpoint_bytes"]
        out.append([
            r["name"], r["source"], f"{r['params']:,}", f"{r['nodes']:,}", f"{r['edges']:,}", str(r["max_slot_width"]),
            f"{_mib(r['graph_bytes'])} ({r['graph_bytes'] / ck:.2f}×)",
            f"{_mib(r['qeg_bytes'])} ({r['qeg_bytes'] / ck:.2f}×)",
            _kinds(r["group"]), _heads(r["group"]), _grouped(r["group"]), _time(r["to_graph_s"]), exact, err,
        ])
    return out


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Gallery: supported architectures",
        "",
        "Every architecture the converters support, built with random weights (seeded; nothing downloaded), "
        "converted with `qegraph.to_graph`, and checked. **Generated** by `benchmarks/gallery.py` — do not edit by "
        "hand; rerun it instead. Raw numbers: `benchmarks/results/gallery.json`.",
        "",
        f"* Command: `{meta['command']}`",
        f"* Machine: {meta['machine']}",
        f"* Date: {meta['date']}; total run time {meta['total_s']:.0f} s",
        "* **Times are indicative**: the machine is shared with other jobs and slow; `to_graph` is the median of "
        f"{REPEATS} runs on one thread, on the float32 model.",
        "",
        "Columns: *params* every scalar of the state_dict (buffers included); *max slot width* the values of the "
        "widest edge (k_h·k_w of a conv kernel, H·W of a flatten block, 1 for a Linear weight); *graph in memory* "
        "the graph's tensors and *.qeg on disk* the file written by `save_graph`, both as a multiple of the float32 "
        "state_dict's bytes; *unit groups by kind* the groups of `qegraph.symmetry_group(graph)` (fixed: no "
        "symmetry; perm: permutations; scale: × positive scalings; sign: × sign flips; nonzero: × λ ≠ 0; heads: "
        "attention heads); *heads (GL)* the attention heads and which per-head gauges are claimed (A ∈ GL(d_k) on "
        "queries with A^{-T} on keys, B ∈ GL(d_v) on values; rotary embeddings leave only B); *grouped-conv groups* "
        "unit groups whose permutations are restricted to blocks by grouped / depthwise convolutions, with their "
        "number of coupling classes; *round trip* `to_state_dict()` of the float32 graph, of the graph read back "
        "from the `.qeg` file and of a float64 graph equal the model's state_dict bit for bit (keys in order, "
        f"dtypes, shapes, bytes); *max rel. err* the worst max|Δy| / max|y| over {ELEMENTS} random group elements "
        "(scales log-uniform in [1, 10³], GL condition numbers ≤ 10) of the float64 model rebuilt by "
        "`to_module()` from g·θ (plain torch: into a copy of the module; Hugging Face: the library's own class "
        f"from the recorded config), on a fixed random input; the check passes at ≤ {TOL_TEXT}. The output is "
        "the logits, else the pooler output, else the last hidden states.",
        "",
        "`transformers`' RMSNorm (Llama, Qwen2, Mistral) computes in float32 even in a float64 model, so any "
        "reordering of the float64 sums feeding it shows up at float32 round-off (~1e-7); for the function check "
        "those modules run the same formula in float64, as `tests/test_hf_layouts.py` does. Rows marked "
        "**refused** are architectures the converter refuses today, with its message (never a silently wrong "
        "graph).",
        "",
    ]
    family = None
    for r, cells in zip(rows, table_rows(rows)):
        if r["family"] != family:
            family = r["family"]
            lines += [f"## {family}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
        if r is rows[-1] or rows[rows.index(r) + 1]["family"] != family:
            lines.append("")
    failed = [r["name"] for r in rows if r["status"] in ("FAILED", "error")]
    lines.append(f"Checks: {sum(r['status'] == 'ok' for r in rows)} rows pass, "
                 f"{sum(r['status'] == 'refused' for r in rows)} refused, "
                 f"{sum(r['status'] == 'skipped' for r in rows)} skipped, "
                 f"{len(failed)} failed{': ' + ', '.join(failed) if failed else ''}.")
    return "\n".join(lines) + "\n"


def print_table(rows: list[dict[str, Any]]) -> None:
    short = ("architecture", "params", "nodes", "edges", "S", "graph ×", ".qeg ×", "groups", "heads", "to_graph",
             "exact", "rel. err")
    body = []
    for r in rows:
        if r["status"] in ("skipped", "refused", "error"):
            body.append([r["name"], r["status"] + ": " + r["message"][:90]])
            continue
        ck = r["checkpoint_bytes"]
        body.append([r["name"], f"{r['params']:,}", f"{r['nodes']:,}", f"{r['edges']:,}", str(r["max_slot_width"]),
                     f"{r['graph_bytes'] / ck:.2f}", f"{r['qeg_bytes'] / ck:.2f}", _kinds(r["group"]),
                     str(r["group"]["heads"] or "-"), _time(r["to_graph_s"]),
                     "yes" if all(r["round_trip"].values()) else "NO", f"{r['max_rel_err']:.1e}"
                     + ("" if r["ok"] else " FAILED")])
    widths = [max(len(x[i]) for x in [list(short)] + [b for b in body if len(b) > 2]) for i in range(len(short))]
    print("  ".join(h.ljust(w) for h, w in zip(short, widths)))
    for b in body:
        print("  ".join(c.ljust(w) for c, w in zip(b, widths)) if len(b) > 2 else f"{b[0].ljust(widths[0])}  {b[1]}")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kib / 2**20:.0f} GiB RAM"
    try:
        import transformers

        tf = f", transformers {transformers.__version__}"
    except Exception:
        tf = ", transformers not importable"
    return (f"{cpu}, {os.cpu_count()} cores{mem}; Python {platform.python_version()}, torch {torch.__version__}{tf}; "
            f"load average at start {os.getloadavg()[0]:.1f}")


def write(rows: list[dict[str, Any]], meta: dict[str, Any], md: Path | None, js: Path | None) -> None:
    from qegraph.graph.io import atomic_write

    if js is not None:
        atomic_write(js, lambda p: Path(p).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n"))
    if md is not None:
        atomic_write(md, lambda p: Path(p).write_text(markdown(rows, meta)))


@contextlib.contextmanager
def _quiet_hf() -> Iterator[None]:
    """transformers logs a line per randomly initialised model; keep the table readable."""
    try:
        from transformers.utils import logging as hf_logging
    except Exception:
        yield
        return
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small rows only; writes files only with --md / --json")
    ap.add_argument("--rows", nargs="*", help="only these rows (names as in the table)")
    ap.add_argument("--md", type=Path, help=f"markdown output (default without --quick: {MD_OUT.relative_to(ROOT)})")
    ap.add_argument("--json", type=Path, help=f"JSON output (default without --quick: {JSON_OUT.relative_to(ROOT)})")
    ap.add_argument("--_row", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._row:
        with _quiet_hf():
            print(json.dumps(measure(BY_NAME[args._row])))
        return 0
    unknown = [n for n in args.rows or [] if n not in BY_NAME]
    if unknown:
        ap.error(f"unknown rows {unknown}; known: {', '.join(BY_NAME)}")
    entries = [e for e in ENTRIES if (not args.rows or e.name in args.rows) and not (args.quick and e.full)]
    md, js = args.md, args.json
    if not args.quick and not args.rows:
        md, js = md or MD_OUT, js or JSON_OUT
    t0, host = time.perf_counter(), machine()
    with _quiet_hf():
        rows = run(entries)
    cmd = "python benchmarks/gallery.py" + "".join(f" {a}" if not " " in a else f" {a!r}" for a in
                                                   (argv if argv is not None else sys.argv[1:]))
    meta = {"command": cmd, "machine": host, "date": time.strftime("%Y-%m-%d"),
            "total_s": time.perf_counter() - t0, "tolerance": TOLERANCE, "elements": ELEMENTS, "repeats": REPEATS,
            "quick": args.quick}
    print_table(rows)
    write(rows, meta, md, js)
    for p in (md, js):
        if p is not None:
            print(f"wrote {p}")
    return 1 if any(r["status"] in ("FAILED", "error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
