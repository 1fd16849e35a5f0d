"""Exact inverse: graph → state_dict equals the original, bit for bit (DESIGN §3, §7)."""

from __future__ import annotations

import pytest
import torch

import qegraph
from nets import ARCHS, make

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def assert_same_state_dict(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        assert torch.equal(a[k].view(-1).view(torch.uint8) if a[k].is_floating_point() else a[k], b[k].view(-1).view(torch.uint8) if b[k].is_floating_point() else b[k]), k


@pytest.mark.parametrize("name", sorted(ARCHS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_bit_exact(name: str, dtype: torch.dtype) -> None:
    module, _ = make(name, dtype)
    g = qegraph.to_graph(module)
    assert g.num_params == sum(t.numel() for t in module.state_dict().values())
    assert_same_state_dict(g.to_state_dict(), module.state_dict())


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_to_module_runs_and_matches(name: str) -> None:
    module, x = make(name)
    rebuilt = qegraph.to_graph(module).to_module(template=module)
    assert torch.equal(rebuilt(x), module(x))


@pytest.mark.parametrize("name", ["siren", "relu_mlp", "cnn_zoo_relu", "lenet", "conv1d"])
def test_sequential_rebuilds_without_template(name: str) -> None:
    module, x = make(name, torch.float16 if name == "relu_mlp" else torch.float64)
    rebuilt = qegraph.to_graph(module).to_module()
    assert type(rebuilt) is torch.nn.Sequential
    assert_same_state_dict(rebuilt.state_dict(), module.state_dict())
    if x.dtype == torch.float64:
        assert torch.equal(rebuilt(x), module(x))


def test_mixed_dtypes_keep_each_dtype() -> None:
    module, _ = make("relu_mlp", torch.float32)
    module[0].to(torch.float16)
    module[2].to(torch.bfloat16)
    g = qegraph.to_graph(module)
    assert g.x.dtype == torch.float32  # promote(float16, bfloat16) holds both exactly
    assert_same_state_dict(g.to_state_dict(), module.state_dict())


def test_buffers_and_non_float_buffers_are_placed() -> None:
    module, _ = make("rescnn")
    g = qegraph.to_graph(module)
    sd = g.to_state_dict()
    assert sd["bn1.num_batches_tracked"].dtype == torch.int64
    assert int(sd["bn1.num_batches_tracked"]) == int(module.bn1.num_batches_tracked)
    index = {p["key"]: p for p in g.meta["params"]}
    assert index["bn1.running_var"]["table"] == "x" and index["bn1.num_batches_tracked"]["table"] == "aux_int"


def test_flatten_linear_gets_exact_hw_blocks() -> None:
    module, _ = make("lenet")
    g = qegraph.to_graph(module)
    w = module[7].weight  # Linear(64, 32) reading 16 channels × 2×2
    p = next(p for p in g.meta["params"] if p["key"] == "7.weight")
    assert (p["rows"], p["width"]) == (32 * 16, 4)
    block = g.edge_attr[p["start"] : p["start"] + p["rows"], :4].view(32, 16, 4)
    assert torch.equal(block, w.view(32, 16, 4))
    # edge from channel c of conv '3' to unit o of '7' carries W[o, 4c:4c+4]
    conv = next(u for u in g.units if u["name"] == "3")
    fc = next(u for u in g.units if u["name"] == "7")
    e = p["start"] + 5 * 16 + 11
    assert g.edge_index[:, e].tolist() == [conv["start"] + 11, fc["start"] + 5]
    assert torch.equal(g.edge_attr[e, :4], w[5, 44:48])
    assert g.edge_mask[e].tolist()[:4] == [True] * 4 and not g.edge_mask[e, 4:].any()
