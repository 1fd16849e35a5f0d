"""Transformer converters: exact inverse, head/stream/FFN symmetries, negative tests, batching (float64)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch

import qegraph
from nets import D_MODEL as D
from nets import N_HEADS as H
from nets import encoder, seeded, vit
from qegraph.errors import QegraphError
from qegraph.graph.types import GLRole, NodeType, SymKind
from qegraph.symmetry.gl import apply_gl, sample_gl
from qegraph.testing import assert_functionally_equal


def assert_exact_round_trip(graph: qegraph.ParameterGraph, module: nn.Module) -> None:
    ref, out = module.state_dict(), graph.to_state_dict()
    assert list(out) == list(ref)
    for k in ref:
        assert out[k].shape == ref[k].shape and out[k].dtype == ref[k].dtype, k
        assert torch.equal(out[k], ref[k]), k


def assert_symmetric(module: nn.Module, inputs: torch.Tensor, n: int = 5) -> None:
    graph = qegraph.to_graph(module)
    group = qegraph.symmetry_group(graph)
    gen = torch.Generator().manual_seed(0)
    ref = torch.cat([v.flatten() for v in graph.to_state_dict().values()])
    for _ in range(n):
        acted = group.sample(generator=gen, scale_range=(1.0, 1e4), gl_cond=10.0).act(graph)
        moved = acted.to_module(template=module)
        assert not torch.equal(torch.cat([v.flatten() for v in acted.to_state_dict().values()]), ref)
        assert_functionally_equal(module, moved, inputs, rtol=1e-10)


def kind_of(graph: qegraph.ParameterGraph, name: str) -> SymKind:
    unit = next(u for u in graph.units if u["name"] == name)
    return SymKind(int(graph.sym_kind[unit["group"]]))


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_round_trip_and_symmetry(norm_first: bool, activation: str) -> None:
    enc = encoder(norm_first, activation)
    graph = qegraph.to_graph(enc)
    assert_exact_round_trip(graph, enc)
    assert kind_of(graph, "layers.0.self_attn.q") == SymKind.HEADS
    assert kind_of(graph, "layers.0.ffn") == (SymKind.SCALE if activation == "relu" else SymKind.PERM)
    assert kind_of(graph, "layers.1.add2") == SymKind.FIXED  # the stream touches input and output features
    assert_symmetric(enc, seeded((3, 6, D), 1))


def test_encoder_seq_first() -> None:
    enc = encoder(True, "relu", batch_first=False)
    assert_exact_round_trip(qegraph.to_graph(enc), enc)
    assert_symmetric(enc, seeded((6, 3, D), 1), n=2)


def test_head_metadata() -> None:
    graph = qegraph.to_graph(encoder(False, "relu"))
    d = D // H
    for name, role in (("q", GLRole.QUERY), ("k", GLRole.KEY), ("v", GLRole.VALUE)):
        unit = next(u for u in graph.units if u["name"] == f"layers.0.self_attn.{name}")
        sl = slice(unit["start"], unit["start"] + unit["n"])
        assert torch.equal(graph.gl_role[sl], torch.full((D,), int(role)))
        assert torch.equal(graph.gl_coord[sl], torch.arange(D) % d)
        assert torch.equal(graph.sym_member[sl], torch.arange(D) // d)
        assert torch.equal(graph.sym_stride[sl], torch.full((D,), d))
        assert int(graph.sym_size[unit["group"]]) == H
    assert int((graph.gl_role == 0).sum()) == int((graph.gl_coord == -1).sum())


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_vit_round_trip_and_symmetry(pool: str) -> None:
    m = vit(pool)
    graph = qegraph.to_graph(m)
    assert_exact_round_trip(graph, m)
    assert kind_of(graph, "patch") == SymKind.PERM  # the stream is free: conv → … → head
    assert int((graph.node_type == int(NodeType.EMBED)).sum()) == 2 * D
    assert graph.etable_rows.tolist() == [1, 5]
    assert_symmetric(m, seeded((2, 3, 8, 8), 1))


def test_gl_matrices_are_well_conditioned() -> None:
    a = sample_gl(50, 8, cond=5.0, generator=torch.Generator().manual_seed(0))
    s = torch.linalg.svdvals(a)
    assert float((s[:, 0] / s[:, -1]).max()) <= 5.0 + 1e-9
    assert float((s[:, 0] / s[:, -1]).max()) > 2.0  # not orthogonal


def _partial(module: nn.Module, roles_in: set[int], roles_out: set[int]) -> nn.Module:
    graph = qegraph.to_graph(module)
    group = qegraph.symmetry_group(graph)
    e = group.sample(generator=torch.Generator().manual_seed(3), permute=False, rescale=False)
    x, edge_attr = apply_gl(graph, graph.x, graph.edge_attr, e.gl, roles_in=roles_in, roles_out=roles_out)
    return graph.with_features(x=x, edge_attr=edge_attr).to_module(template=module)


@pytest.mark.parametrize("name", ["encoder", "vit"])
def test_partial_gl_actions_are_caught(name: str) -> None:
    module = encoder(False, "gelu") if name == "encoder" else vit("cls")
    inputs = seeded((3, 6, D), 2) if name == "encoder" else seeded((2, 3, 8, 8), 2)
    q, k, v = int(GLRole.QUERY), int(GLRole.KEY), int(GLRole.VALUE)
    assert_functionally_equal(module, _partial(module, {q, k, v}, {q, k, v}), inputs)  # the full action is fine
    with pytest.raises(AssertionError, match="modules differ"):  # A on Q without A^{-T} on K
        assert_functionally_equal(module, _partial(module, {q, v}, {q, k, v}), inputs, rtol=1e-3)
    with pytest.raises(AssertionError, match="modules differ"):  # B on V without B^{-1} on the output projection
        assert_functionally_equal(module, _partial(module, {q, k, v}, {q, k}), inputs, rtol=1e-3)


def test_wrong_claim_on_gelu_ffn_is_caught() -> None:
    enc = encoder(False, "gelu")
    graph = qegraph.to_graph(enc)
    ffn = next(u["group"] for u in graph.units if u["name"] == "layers.0.ffn")
    bad = qegraph.symmetry_group(graph).with_kinds({ffn: SymKind.SCALE})
    acted = bad.sample(generator=torch.Generator().manual_seed(0), scale_range=(2.0, 10.0)).act(graph)
    with pytest.raises(AssertionError, match="modules differ"):
        assert_functionally_equal(enc, acted.to_module(template=enc), seeded((3, 6, D), 1), rtol=1e-3)


class _Attn(nn.Module):
    def __init__(self, **kw: object) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(D, H, batch_first=True, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x)[0]


def test_plain_multihead_attention() -> None:
    torch.manual_seed(0)
    m = _Attn().double().eval()
    graph = qegraph.to_graph(m)
    assert_exact_round_trip(graph, m)
    assert_symmetric(m, seeded((2, 5, D), 1), n=2)


@pytest.mark.parametrize("kw", [{"add_bias_kv": True}, {"add_zero_attn": True}])
def test_unsupported_attention_options_are_refused(kw: dict) -> None:
    with pytest.raises(QegraphError, match="attn"):
        qegraph.to_graph(_Attn(**kw))


def test_batch_with_mlp() -> None:
    vit_m = vit("mean")
    torch.manual_seed(2)
    mlp = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).double().eval()
    graphs = [qegraph.to_graph(vit_m), qegraph.to_graph(mlp)]
    batch = Batch.from_data_list(graphs)
    for g, back in zip(graphs, batch.to_data_list()):
        for key in ("x", "edge_attr", "edge_index", "emb_attr", "sym_group", "sym_member", "sym_stride", "gl_role",
                    "gl_coord", "etable_start", "etable_node", "eblock_src"):
            assert torch.equal(getattr(g, key), getattr(back, key)), key
    assert_exact_round_trip(batch.get_example(0), vit_m)
    acted = qegraph.symmetry_group(batch).sample(generator=torch.Generator().manual_seed(0)).act(batch)
    assert not torch.equal(acted.emb_attr, batch.emb_attr)
    parts = Batch.to_data_list(acted)
    assert_functionally_equal(vit_m, parts[0].to_module(template=vit_m), seeded((2, 3, 8, 8), 1), rtol=1e-10)
    assert_functionally_equal(mlp, parts[1].to_module(template=mlp), seeded((4, 5), 1), rtol=1e-10)
