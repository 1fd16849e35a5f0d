"""Grouped and depthwise convolutions: grouped edge blocks and coupled block permutations.

The graphs are built by hand with ``GraphBuilder`` (the layer planning that a converter does), so
these tests check the graph layer on its own: the edge layout equals the grouped weight's, the round
trip is exact, every sampled element keeps the network's function (float64, rtol 1e-10), and a
permutation that moves a channel to another group changes it.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qegraph
from qegraph.errors import QegraphError
from qegraph.graph.builder import GraphBuilder, Scalars
from qegraph.graph.extras import GraphExtras
from qegraph.graph.summary import summarize
from qegraph.graph.types import EdgeType, NodeType, SymKind
from qegraph.testing import assert_functionally_equal, check_group_element


class ConvChain(nn.Module):
    """Conv2d layers (any groups) with ReLU, a spatial mean and a Linear head."""

    def __init__(self, convs: list[nn.Conv2d], out: int = 4) -> None:
        super().__init__()
        self.convs = nn.ModuleList(convs)
        self.fc = nn.Linear(convs[-1].out_channels, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = torch.relu(conv(x))
        return self.fc(x.mean(dim=(2, 3)))


def chain(*specs: tuple[int, int, int, int], cin: int = 3) -> ConvChain:
    """specs: (out_channels, kernel, groups, padding) per conv."""
    torch.manual_seed(0)
    convs, c = [], cin
    for out, k, g, pad in specs:
        convs.append(nn.Conv2d(c, out, k, padding=pad, groups=g))
        c = out
    return ConvChain(convs).double().eval()


def build_chain(net: ConvChain) -> qegraph.ParameterGraph:
    """The net's graph, planned by hand: grouped blocks and ``couple_blocks`` for every grouped conv."""
    b, extras = GraphBuilder(), GraphExtras()
    prev = b.add_units("input", net.convs[0].in_channels, NodeType.INPUT, 0, fixed=True)
    for i, conv in enumerate(net.convs):
        lay = b.add_units(f"convs.{i}", conv.out_channels, NodeType.HIDDEN, i + 1)
        width = math.prod(conv.kernel_size)
        if conv.groups == 1:
            blk = b.add_edges(prev, lay, EdgeType.CONV, "dense", width=width)
        else:
            blk = b.add_edges(prev, lay, EdgeType.CONV, "grouped", width=width, groups=conv.groups)
            b.couple_blocks(prev, lay, conv.groups)
        b.place_edges(f"convs.{i}.weight", conv.weight, blk)
        b.place_nodes(f"convs.{i}.bias", conv.bias, lay, "bias")
        b.constrain(lay, Scalars.POS)  # ReLU; the spatial mean is linear
        prev = lay
    out = b.add_units("fc", net.fc.out_features, NodeType.OUTPUT, len(net.convs) + 1, fixed=True)
    b.place_edges("fc.weight", net.fc.weight, b.add_edges(prev, out, EdgeType.LINEAR))
    b.place_nodes("fc.bias", net.fc.bias, out, "bias")
    keys = list(net.state_dict())
    return extras.finalize(b, b.build(None, keys), keys)


# (name, convs): grouped 1×1 / 3×3 with 2 and 4 groups, depthwise with channel multiplier 1 and 2,
# and two grouped convs in a row (one coupling class over three unit layers)
CASES = {
    "grouped2_1x1": [(8, 3, 1, 1), (8, 1, 2, 0), (6, 1, 1, 0)],
    "grouped4_3x3": [(8, 3, 1, 1), (12, 3, 4, 1), (6, 1, 1, 0)],
    "depthwise_m1": [(8, 3, 1, 1), (8, 3, 8, 1), (6, 1, 1, 0)],
    "depthwise_m2": [(8, 3, 1, 1), (16, 3, 8, 1), (6, 1, 1, 0)],
    "grouped4_chain": [(8, 3, 1, 1), (8, 3, 4, 1), (12, 1, 4, 0), (6, 1, 1, 0)],
}


def _inputs() -> torch.Tensor:
    return torch.randn(3, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("case", sorted(CASES))
def test_grouped_blocks_have_the_weight_layout(case: str) -> None:
    net = chain(*CASES[case])
    g = build_chain(net)
    assert all(torch.equal(a, b) for a, b in zip(g.to_state_dict().values(), net.state_dict().values()))
    ei, attr = g.edge_index, g.edge_attr
    for i, conv in enumerate(net.convs):
        src = next(u for u in g.units if u["name"] == ("input" if i == 0 else f"convs.{i - 1}"))
        dst = next(u for u in g.units if u["name"] == f"convs.{i}")
        first = int(g.block_table.eoff[i])
        per, rpg = conv.in_channels // conv.groups, conv.out_channels // conv.groups
        o, il = torch.meshgrid(torch.arange(conv.out_channels), torch.arange(per), indexing="ij")
        k = first + (o * per + il).flatten()
        assert torch.equal(ei[0, k], src["start"] + ((o // rpg) * per + il).flatten())
        assert torch.equal(ei[1, k], dst["start"] + o.flatten())
        w = conv.weight.reshape(conv.out_channels * per, -1)
        assert torch.equal(attr[k, : w.size(1)], w) and not attr[k, w.size(1) :].any()


@pytest.mark.parametrize("case", sorted(CASES))
def test_coupled_block_permutations_keep_the_function(case: str) -> None:
    net = chain(*CASES[case])
    g = build_chain(net)
    group = qegraph.symmetry_group(g)
    grouped = [i for i, conv in enumerate(net.convs) if conv.groups > 1]
    layers = {i for j in grouped for i in (j, j + 1)}  # unit layers around the grouped convs (0 = input)
    gid = [next(u["group"] for u in g.units if u["name"] == ("input" if i == 0 else f"convs.{i - 1}")) for i in sorted(layers)]
    hidden = [j for j in gid if int(g.sym_kind[j]) != int(SymKind.FIXED)]
    assert all(int(g.sym_blocks[j]) == net.convs[grouped[0]].groups for j in hidden)
    assert len({int(g.sym_couple[j]) for j in hidden}) == 1  # one coupling class
    gen = torch.Generator().manual_seed(0)
    moved_blocks = 0
    for _ in range(4):
        el = group.sample(generator=gen, scale_range=(1.0, 1e3))
        check_group_element(el)
        j = hidden[0]
        s = int(g.sym_size[j]) // int(g.sym_blocks[j])
        p = el.perm[int(group.ptr[j]) : int(group.ptr[j + 1])]
        moved_blocks += int(((p // s) != torch.arange(p.numel()) // s).any())
        acted = el.act(g)
        assert_functionally_equal(net, acted.to_module(template=net), _inputs(), rtol=1e-10)
    assert moved_blocks > 0  # σ is not always the identity


@pytest.mark.parametrize("case", sorted(CASES))
def test_moving_a_channel_across_groups_changes_the_function(case: str) -> None:
    """Negative control: permutations of the same units without the block structure."""
    net = chain(*CASES[case])
    g = build_chain(net)
    free = qegraph.symmetry_group(g).unstructured()
    gen = torch.Generator().manual_seed(2)
    el = free.sample(generator=gen, rescale=False)
    with pytest.raises(AssertionError, match="block"):
        check_group_element(qegraph.GroupElement(qegraph.symmetry_group(g), el.perm, el.scale))
    with pytest.raises(AssertionError, match="modules differ"):  # relative change above 1e-3
        assert_functionally_equal(net, el.act(g).to_module(template=net), _inputs(), rtol=1e-3)


def test_grouped_conv_on_fixed_inputs_permutes_only_inside_groups() -> None:
    """A grouped conv reading the (fixed) input: σ is frozen to the identity, τ inside blocks is free."""
    net = chain((8, 3, 2, 1), (6, 1, 1, 0), cin=4)
    g = build_chain(net)
    group = qegraph.symmetry_group(g)
    j = next(u["group"] for u in g.units if u["name"] == "convs.0")
    assert int(g.sym_blocks[j]) == 2 and bool(group.frozen_classes()[int(g.sym_couple[j])])
    gen = torch.Generator().manual_seed(3)
    inside = 0
    for _ in range(3):
        el = group.sample(generator=gen, scale_range=(1.0, 1e2))
        check_group_element(el)
        p = el.perm[int(group.ptr[j]) : int(group.ptr[j + 1])]
        assert torch.equal(p // 4, torch.arange(8) // 4)
        inside += int(not torch.equal(p, torch.arange(8)))
        x = torch.randn(2, 4, 5, 5, dtype=torch.float64, generator=gen)
        assert_functionally_equal(net, el.act(g).to_module(template=net), x, rtol=1e-10)
    assert inside > 0


class TwoGroupings(nn.Module):
    """One unit layer read by convs with 2 and with 4 groups whose outputs are added."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 1, groups=2)
        self.b = nn.Conv2d(8, 8, 1, groups=4)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c1(x))
        return self.fc(torch.relu(self.a(h) + self.b(h)).mean(dim=(2, 3)))


def test_conflicting_block_structures_fall_back_to_no_permutation() -> None:
    net = TwoGroupings().double().eval()
    b, extras = GraphBuilder(), GraphExtras()
    x = b.add_units("input", 3, NodeType.INPUT, 0, fixed=True)
    h = b.add_units("c1", 8, NodeType.HIDDEN, 1)
    b.place_edges("c1.weight", net.c1.weight, b.add_edges(x, h, EdgeType.CONV, width=9))
    b.place_nodes("c1.bias", net.c1.bias, h, "bias")
    b.constrain(h, Scalars.POS)
    outs = []
    for name, groups in (("a", 2), ("b", 4)):
        lay = b.add_units(name, 8, NodeType.HIDDEN, 2)
        conv = getattr(net, name)
        b.place_edges(f"{name}.weight", conv.weight, b.add_edges(h, lay, EdgeType.CONV, "grouped", groups=groups))
        b.couple_blocks(h, lay, groups)
        b.place_nodes(f"{name}.bias", conv.bias, lay, "bias")
        outs.append(lay)
    s = b.add_units("add", 8, NodeType.RESIDUAL, 3)
    for lay in outs:
        b.add_edges(lay, s, EdgeType.RESIDUAL, "diag", width=0)
        b.tie(lay, s)
    b.constrain(s, Scalars.POS)
    y = b.add_units("fc", 3, NodeType.OUTPUT, 4, fixed=True)
    b.place_edges("fc.weight", net.fc.weight, b.add_edges(s, y, EdgeType.LINEAR))
    b.place_nodes("fc.bias", net.fc.bias, y, "bias")
    keys = list(net.state_dict())
    g = extras.finalize(b, b.build(None, keys), keys)
    frozen = [j for j in range(g.sym_kind.numel()) if int(g.sym_kind[j]) != int(SymKind.FIXED)]
    assert all(int(g.sym_blocks[j]) == 0 for j in frozen)  # both unit groups: no permutation
    assert "no permutation" in summarize(g)
    group = qegraph.symmetry_group(g)
    gen = torch.Generator().manual_seed(4)
    for _ in range(3):
        el = group.sample(generator=gen, scale_range=(1.0, 1e3))
        check_group_element(el)
        assert torch.equal(el.perm, group.identity().perm)
        assert float((el.scale - 1).abs().max()) > 1e-3  # positive scalings remain
        xin = torch.randn(2, 3, 5, 5, dtype=torch.float64, generator=gen)
        assert_functionally_equal(net, el.act(g).to_module(template=net), xin, rtol=1e-10)


def test_grouped_edge_api_refuses_bad_shapes() -> None:
    b = GraphBuilder()
    a = b.add_units("a", 6, NodeType.HIDDEN, 0)
    c = b.add_units("c", 8, NodeType.HIDDEN, 1)
    with pytest.raises(QegraphError, match="4 groups must divide"):
        b.add_edges(a, c, EdgeType.CONV, "grouped", groups=4)
    with pytest.raises(QegraphError, match="use pattern='grouped'"):
        b.add_edges(a, c, EdgeType.CONV, "dense", groups=2)
    with pytest.raises(QegraphError, match="unknown edge pattern"):
        b.add_edges(a, c, EdgeType.CONV, "sparse")
    with pytest.raises(QegraphError, match="into 4 groups"):
        b.couple_blocks(a, c, 4)


def test_act_on_a_batch_with_grouped_graphs_equals_act_per_graph() -> None:
    from torch_geometric.data import Batch

    graphs = [build_chain(chain(*CASES["depthwise_m2"])), build_chain(chain(*CASES["grouped4_3x3"])),
              qegraph.to_graph(nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double())]
    batch = Batch.from_data_list(graphs)
    el = qegraph.symmetry_group(batch).sample(generator=torch.Generator().manual_seed(5), scale_range=(1, 1e2))
    check_group_element(el)
    acted = el.act(batch)
    for i, g in enumerate(graphs):
        lo, hi = int(batch.sym_group[batch.ptr[i]]), int(batch.sym_group[batch.ptr[i + 1] - 1]) + 1
        s0, s1 = int(el.group.ptr[lo]), int(el.group.ptr[hi])
        own = qegraph.GroupElement(qegraph.symmetry_group(g), el.perm[s0:s1], el.scale[s0:s1])
        check_group_element(own)
        part, ref = acted.get_example(i), own.act(g)
        assert torch.equal(part.edge_val, ref.edge_val) and torch.equal(part.x, ref.x)


def test_grouped_conv_forward_matches_its_dense_equivalent() -> None:
    """Sanity check of the layout the tests rely on: W[o, i_local] of a grouped conv is the dense
    weight's entry (o, group(o)·C_in/g + i_local)."""
    conv = chain(*CASES["depthwise_m2"]).convs[1]
    dense = torch.zeros(conv.out_channels, conv.in_channels, 3, 3, dtype=torch.float64)
    per, rpg = conv.in_channels // conv.groups, conv.out_channels // conv.groups
    for o in range(conv.out_channels):
        dense[o, (o // rpg) * per : (o // rpg + 1) * per] = conv.weight[o]
    x = _inputs()[:, :1].expand(-1, conv.in_channels, -1, -1)
    torch.testing.assert_close(conv(x), F.conv2d(x, dense, conv.bias, padding=1), rtol=1e-12, atol=1e-12)
