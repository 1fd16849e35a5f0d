"""Detected symmetries are real (functional identity) and wrong claims are caught (DESIGN §4, §7)."""

from __future__ import annotations

import copy

import pytest
import torch

import qegraph
from qegraph import SymKind
from qegraph.testing import assert_functionally_equal
from nets import ARCHS, make

N_ELEMENTS = 20
SCALES = (1.0, 1e4)


def kinds_by_layer(g: qegraph.ParameterGraph) -> dict[str, str]:
    return {r["name"]: r["symmetry"] for r in qegraph.symmetry_group(g).describe(g)}


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_functional_identity_under_random_elements(name: str) -> None:
    module, x = make(name)
    g = qegraph.to_graph(module)
    group = qegraph.symmetry_group(g)
    gen = torch.Generator().manual_seed(123)
    moved = 0
    for _ in range(N_ELEMENTS):
        element = group.sample(generator=gen, scale_range=SCALES)
        acted = element.act(g)
        moved += not torch.equal(acted.edge_attr, g.edge_attr)
        assert_functionally_equal(module, acted.to_module(template=module), x, rtol=1e-10)
    assert moved == N_ELEMENTS  # the elements really change the weights


EXPECTED = {
    "relu_mlp": {"0": "scale", "2": "scale", "4": "fixed"},
    "tanh_mlp": {"0": "sign", "2": "sign"},
    "siren": {"0": "sign", "2": "sign", "4": "fixed"},
    "cnn_zoo_relu": {"input": "fixed", "0": "scale", "2": "scale", "4": "scale", "8": "fixed"},
    "cnn_zoo_tanh": {"0": "sign", "2": "sign", "4": "sign"},
    "lenet": {"0": "scale", "3": "scale", "7": "scale", "10": "fixed"},
    "conv1d": {"0": "scale", "2": "scale"},
    "rescnn": {"stem": "perm", "conv1": "perm", "conv2": "perm", "head": "fixed"},
    "resmlp": {"fc_in": "perm", "fc1": "perm", "out": "fixed"},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_detected_kinds(name: str) -> None:
    module, _ = make(name)
    kinds = kinds_by_layer(qegraph.to_graph(module))
    assert {k: kinds[k] for k in EXPECTED[name]} == EXPECTED[name]


def test_residual_ties_units_into_one_group() -> None:
    g = qegraph.to_graph(make("rescnn")[0])
    groups = {u["name"]: u["group"] for u in g.units}
    add = next(u["name"] for u in g.units if u["type"] == "residual")
    assert groups["stem"] == groups["conv2"] == groups[add]
    assert groups["conv1"] != groups["stem"]


def test_maxpool_after_tanh_allows_permutations_only() -> None:
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Tanh(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                            torch.nn.Linear(4 * 3 * 3, 2)).double()
    assert kinds_by_layer(qegraph.to_graph(m))["0"] == "perm"


def _wrong(name: str, group_of, kind: SymKind, seed: int = 0):
    module, x = make(name)
    g = qegraph.to_graph(module)
    group = qegraph.symmetry_group(g)
    j = group_of(g)
    bad = group.with_kinds({j: kind}).sample(generator=torch.Generator().manual_seed(seed), scale_range=(2.0, 1e3))
    return module, x, bad.act(g)


def _group(layer: str):
    return lambda g: next(u["group"] for u in g.units if u["name"] == layer)


@pytest.mark.parametrize(
    "name,layer,kind",
    [
        ("rescnn", "conv1", SymKind.SCALE),  # a scaling claimed through BatchNorm
        ("resmlp", "fc1", SymKind.SCALE),  # a scaling claimed through GELU
        ("tanh_mlp", "0", SymKind.SCALE),  # positive scalings through tanh
        ("siren", "2", SymKind.SCALE),  # positive scalings through sin
        ("relu_mlp", "0", SymKind.NONZERO),  # sign flips through ReLU
        ("relu_mlp", "input", SymKind.PERM),  # permuting the fixed input features
        ("cnn_zoo_relu", "8", SymKind.PERM),  # permuting the fixed outputs
    ],
)
def test_wrong_claims_are_caught(name: str, layer: str, kind: SymKind) -> None:
    module, x, acted = _wrong(name, _group(layer), kind)
    with pytest.raises(AssertionError, match="modules differ"):
        assert_functionally_equal(module, acted.to_module(template=module), x, rtol=1e-3)


def test_element_applied_to_part_of_a_tied_group_is_caught() -> None:
    """Untie the residual sum from the units it adds: moving only part of the unit group breaks the function."""
    module, x = make("rescnn")
    g = qegraph.to_graph(module)
    add = next(u for u in g.units if u["type"] == "residual")
    broken = copy.copy(g)
    broken.sym_group = g.sym_group.clone()
    broken.sym_group[add["start"] : add["start"] + add["n"]] = len(g.sym_kind)
    broken.sym_kind = torch.cat([g.sym_kind, torch.tensor([int(SymKind.PERM)])])
    broken.sym_size = torch.cat([g.sym_size, torch.tensor([add["n"]])])
    element = qegraph.symmetry_group(broken).sample(generator=torch.Generator().manual_seed(0))
    with pytest.raises(AssertionError, match="modules differ"):
        assert_functionally_equal(module, element.act(broken).to_module(template=module), x, rtol=1e-3)


def test_sampling_is_deterministic_and_respects_ranges() -> None:
    g = qegraph.to_graph(make("relu_mlp")[0])
    group = qegraph.symmetry_group(g)
    a = group.sample(generator=torch.Generator().manual_seed(5), scale_range=(1, 100))
    b = group.sample(generator=torch.Generator().manual_seed(5), scale_range=(1, 100))
    assert torch.equal(a.perm, b.perm) and torch.equal(a.scale, b.scale)
    hidden = group.kinds[group._slot_group()] == int(SymKind.SCALE)
    assert (a.scale[hidden] >= 1).all() and (a.scale[hidden] <= 100).all()
    assert (a.scale[~hidden] == 1).all()
    fixed = group.kinds[group._slot_group()] == int(SymKind.FIXED)
    assert torch.equal(a.perm[fixed], group.identity().perm[fixed])
    assert torch.equal(group.identity().act(g).edge_attr, g.edge_attr)


def test_act_on_a_batch_equals_act_per_graph() -> None:
    from torch_geometric.data import Batch

    graphs = [qegraph.to_graph(make(n)[0]) for n in ("relu_mlp", "cnn_zoo_relu", "rescnn")]
    batch = Batch.from_data_list(graphs)
    element = qegraph.symmetry_group(batch).sample(generator=torch.Generator().manual_seed(1), scale_range=(1, 1e3))
    acted = element.act(batch)
    for i, g in enumerate(graphs):
        part = acted.get_example(i)
        sub = qegraph.SymmetryGroup.of(g)
        lo, hi = int(batch.sym_group[batch.ptr[i]]), int(batch.sym_group[batch.ptr[i + 1] - 1]) + 1
        s0, s1 = int(element.group.ptr[lo]), int(element.group.ptr[hi])
        own = qegraph.GroupElement(sub, element.perm[s0:s1], element.scale[s0:s1])
        ref = own.act(g)
        assert torch.equal(part.edge_attr, ref.edge_attr) and torch.equal(part.x, ref.x)
