"""Metanetworks on transformer, ViT-style and BERT-layout graphs: exact invariance under the full group
(float64, ≤ 1e-12 relative) and negative controls — perturbations that are *not* symmetries must be
seen (≥ 1e-3 relative, see ``controls.py`` for why a few gradient steps are taken first).

Every test is parametrized over the model classes, so it keeps applying whatever their internals:
``QuasiGMN`` and ``StrictGMN`` for the full group, ``PermGMN`` for the permutation-only checks.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import qegraph
import nets
from controls import (INV_RTOL, MARGIN, Attention, edited, mix_two_heads, per_head_gl, permutation_invariance,
                      query_without_key, relative_change, separate)
from nn_nets import graphs, inputs, modules
from qegraph.convert.bert import bert_to_graph
from qegraph.nn import PermGMN, QuasiGMN, StrictGMN
from qegraph.testing import assert_functionally_equal, assert_invariant

FULL = [QuasiGMN, StrictGMN]
ALL = [QuasiGMN, StrictGMN, PermGMN]
BERT_HEADS = 4


class Case:
    """A network, how to turn it into a graph, an input, and where its first attention layer lives."""

    def __init__(self, module: nn.Module, to_graph: Callable[[nn.Module], qegraph.ParameterGraph],
                 inputs: Tensor | tuple[Tensor, ...], attention: str, style: str, d_model: int, heads: int) -> None:
        self.module, self._to_graph, self.inputs = module, to_graph, inputs
        self.attention, self.style, self.d, self.heads = attention, style, d_model // heads, heads
        self.graph = to_graph(module)

    def graph_of(self, module: nn.Module) -> qegraph.ParameterGraph:
        return self._to_graph(module)

    def edit(self, fn: Callable[[Attention], None]) -> nn.Module:
        return edited(self.module, lambda sd: fn(Attention(sd, self.attention, self.style)))


def _bert_case() -> Case:
    sd = nets.bert_state_dict(heads=BERT_HEADS, std=0.3)
    module = bert_to_graph(sd, BERT_HEADS).to_module()
    gen = torch.Generator().manual_seed(1)
    ids, tt = torch.randint(0, 50, (2, 7), generator=gen), torch.randint(0, 2, (2, 7), generator=gen)
    return Case(module, lambda m: bert_to_graph(m.state_dict(), BERT_HEADS), (ids, tt), "bert.encoder.layer.0",
                "bert", 16, BERT_HEADS)


CASES: dict[str, Callable[[], Case]] = {
    "encoder": lambda: Case(nets.encoder(norm_first=False, activation="relu"), qegraph.to_graph,
                            nets.seeded((3, 6, nets.D_MODEL), 1), "layers.0.self_attn", "torch", nets.D_MODEL,
                            nets.N_HEADS),
    "vit": lambda: Case(nets.vit("cls"), qegraph.to_graph, nets.seeded((2, 3, 8, 8), 1), "encoder.layers.0.self_attn",
                        "torch", nets.D_MODEL, nets.N_HEADS),
    "bert": _bert_case,
}


def _arch_params(names: list[str]) -> list[object]:
    """The ViT and BERT-layout cases (the most expensive graphs) run in the full suite only."""
    return [pytest.param(n, marks=pytest.mark.slow) if n in ("vit", "bert") else n for n in names]


@pytest.fixture(scope="module")
def cases() -> dict[str, Case]:
    return {name: make() for name, make in CASES.items()}


def _model(cls: type, seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return cls(out_dim=3, hidden_dim=8, num_layers=2).double()


def _gen(seed: int = 3) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------- invariance
@pytest.mark.parametrize("arch", _arch_params(list(CASES)))
@pytest.mark.parametrize("cls", FULL)
def test_full_group_invariance(cases: dict[str, Case], arch: str, cls: type) -> None:
    """Head permutations, per-head GL(d) gauges, FFN / stream permutations and ReLU scalings up to 1e4."""
    graph = cases[arch].graph
    assert int(qegraph.SymKind.HEADS) in graph.sym_kind.tolist()
    err = assert_invariant(_model(cls), graph, n=2, scale_range=(1.0, 1e4), generator=_gen(), rtol=INV_RTOL)
    assert err <= INV_RTOL


@pytest.mark.parametrize("arch", _arch_params([*CASES, "relu_mlp", "tanh_mlp", "cnn_relu", "res_cnn"]))
def test_permutation_invariance(cases: dict[str, Case], arch: str) -> None:
    """PermGMN's guarantee (QuasiGMN and StrictGMN are checked on the whole group above)."""
    graph = cases[arch].graph if arch in CASES else graphs({arch: modules()[arch]})[arch]
    assert permutation_invariance(_model(PermGMN), graph) <= INV_RTOL


@pytest.mark.parametrize("arch", _arch_params(list(CASES)))
@pytest.mark.parametrize("cls", FULL)
def test_per_head_gl_edit_is_a_symmetry(cases: dict[str, Case], arch: str, cls: type) -> None:
    """Positive control for the edits below: per head A on Q, A^{-T} on K, B on V, B^{-1} on W_O,
    written into the state_dict by hand, keeps the function and the model output."""
    case = cases[arch]
    moved = case.edit(lambda att: per_head_gl(att, case.d, case.heads))
    assert_functionally_equal(case.module, moved, case.inputs, rtol=1e-10)
    assert relative_change(_model(cls), case.graph, case.graph_of(moved)) <= INV_RTOL


# ---------------------------------------------------------------------- negative controls
CONTROLS: dict[str, Callable[[Case], Callable[[Attention], None]]] = {
    "A_on_Q_without_K": lambda case: lambda att: query_without_key(att, case.d, head=1),
    "GL_mixing_two_heads": lambda case: lambda att: mix_two_heads(att, case.d),
}


@pytest.mark.parametrize("control", list(CONTROLS))
@pytest.mark.parametrize("arch", _arch_params(list(CASES)))
@pytest.mark.parametrize("cls", FULL)
def test_attention_non_symmetry_is_seen(cases: dict[str, Case], arch: str, cls: type, control: str) -> None:
    case = cases[arch]
    moved = case.edit(CONTROLS[control](case))
    with pytest.raises(AssertionError, match="modules differ"):  # it really is not a symmetry
        assert_functionally_equal(case.module, moved, case.inputs, rtol=1e-3)
    model = _model(cls)
    rel = separate(model, case.graph, case.graph_of(moved))
    assert rel >= MARGIN, f"{cls.__name__} cannot tell the {control} edit apart (relative change {rel:.1e})"
    # the parameters that separate the two networks still give an exactly invariant model
    assert assert_invariant(model, case.graph, n=2, generator=_gen(), rtol=INV_RTOL) <= INV_RTOL


def _unit_edit(layer_in: str, layer_out: str, unit: int, how: str) -> Callable[[dict[str, Tensor]], None]:
    """Edit hidden unit ``unit`` between two Linear layers: ``flip`` negates its row of W_in, its bias
    and its column of W_out (a symmetry through odd activations only); ``scale`` multiplies the row and
    bias by 3 and divides the column by 3 (a symmetry through ReLU only); ``uncoupled`` swaps it with
    unit ``unit + 1`` in W_in and b but not in W_out (never a symmetry)."""

    def edit(sd: dict[str, Tensor]) -> None:
        w_in, b_in, w_out = sd[f"{layer_in}.weight"], sd[f"{layer_in}.bias"], sd[f"{layer_out}.weight"]
        if how == "uncoupled":
            for t in (w_in, b_in):
                t[[unit, unit + 1]] = t[[unit + 1, unit]]
            return
        q = -1.0 if how == "flip" else 3.0
        w_in[unit] *= q
        b_in[unit] *= q
        w_out[:, unit] /= q

    return edit


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("arch,layers", [("relu_mlp", ("0", "2")), ("siren", ("2", "4")), ("cnn_relu", ("2", "4")),
                                         pytest.param("encoder", ("layers.0.linear1", "layers.0.linear2"),
                                                      marks=pytest.mark.slow)])
def test_uncoupled_permutation_is_seen(cases: dict[str, Case], cls: type, arch: str, layers: tuple[str, str]) -> None:
    """Two hidden units swapped in their incoming weights but not in their outgoing ones."""
    if arch in CASES:
        module, graph_of, x = cases[arch].module, cases[arch].graph_of, cases[arch].inputs
    else:
        module, graph_of, x = modules()[arch], qegraph.to_graph, inputs(arch)
    moved = edited(module, _unit_edit(*layers, unit=1, how="uncoupled"))
    with pytest.raises(AssertionError, match="modules differ"):
        assert_functionally_equal(module, moved, x, rtol=1e-3)
    model = _model(cls)
    graph = graph_of(module)
    assert separate(model, graph, graph_of(moved)) >= MARGIN
    assert permutation_invariance(model, graph) <= INV_RTOL


@pytest.mark.parametrize("cls", FULL)
def test_sign_flip_through_relu_is_seen(cls: type) -> None:
    module = modules()["relu_mlp"]
    moved = edited(module, _unit_edit("0", "2", unit=3, how="flip"))
    with pytest.raises(AssertionError, match="modules differ"):
        assert_functionally_equal(module, moved, inputs("relu_mlp"), rtol=1e-3)
    model = _model(cls)
    graph = qegraph.to_graph(module)
    assert separate(model, graph, qegraph.to_graph(moved)) >= MARGIN
    assert assert_invariant(model, graph, n=2, generator=_gen(), rtol=INV_RTOL) <= INV_RTOL


@pytest.mark.parametrize("cls", FULL)
@pytest.mark.parametrize("arch,layers", [("tanh_mlp", ("0", "2")), ("siren", ("2", "4"))])
def test_sign_flip_through_odd_activation_is_invariant(cls: type, arch: str, layers: tuple[str, str]) -> None:
    module = modules()[arch]
    moved = edited(module, _unit_edit(*layers, unit=3, how="flip"))
    assert_functionally_equal(module, moved, inputs(arch), rtol=1e-14)  # negations are exact in floating point
    assert relative_change(_model(cls), qegraph.to_graph(module), qegraph.to_graph(moved)) <= INV_RTOL


@pytest.mark.parametrize("cls", FULL)
@pytest.mark.parametrize("arch,layers", [("relu_mlp", ("0", "2")), ("tanh_mlp", ("0", "2")), ("siren", ("2", "4")),
                                         ("vit", ("encoder.layers.0.linear1", "encoder.layers.0.linear2"))])
def test_positive_scaling_of_one_unit(cases: dict[str, Case], cls: type, arch: str, layers: tuple[str, str]) -> None:
    """Scaling one unit by 3 in and 1/3 out: invisible through ReLU (a symmetry), seen through tanh,
    sine and GELU (not one)."""
    if arch in CASES:
        module, graph_of, x = cases[arch].module, cases[arch].graph_of, cases[arch].inputs
    else:
        module, graph_of, x = modules()[arch], qegraph.to_graph, inputs(arch)
    moved = edited(module, _unit_edit(*layers, unit=2, how="scale"))
    model = _model(cls)
    graph, graph_moved = graph_of(module), graph_of(moved)
    if arch == "relu_mlp":
        assert_functionally_equal(module, moved, x, rtol=1e-12)
        assert relative_change(model, graph, graph_moved) <= INV_RTOL
        return
    with pytest.raises(AssertionError, match="modules differ"):
        assert_functionally_equal(module, moved, x, rtol=1e-3)
    assert separate(model, graph, graph_moved) >= MARGIN
    assert assert_invariant(model, graph, n=2, generator=_gen(), rtol=INV_RTOL) <= INV_RTOL
