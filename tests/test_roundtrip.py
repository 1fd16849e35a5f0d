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
@pytest.mark.parametrize("dtype", DTYPES)
def test_to_module_runs_and_matches(name: str, dtype: torch.dtype) -> None:
    """The rebuilt module computes the same outputs, bit for bit, in every dtype (half precision
    included: CPU kernels exist for float16 and bfloat16)."""
    module, x = make(name, dtype)
    rebuilt = qegraph.to_graph(module).to_module(template=module)
    with torch.no_grad():
        y = module(x)
        assert y.dtype == dtype and torch.equal(rebuilt(x), y)


@pytest.mark.parametrize("name", ["siren", "relu_mlp", "cnn_zoo_relu", "lenet", "conv1d"])
def test_sequential_rebuilds_without_template(name: str) -> None:
    module, x = make(name, torch.float16 if name == "relu_mlp" else torch.float64)
    rebuilt = qegraph.to_graph(module).to_module()
    assert type(rebuilt) is torch.nn.Sequential
    assert_same_state_dict(rebuilt.state_dict(), module.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(x), module(x))  # float16 for relu_mlp: no dtype is skipped


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
    """A Linear reading a flattened 16×2×2 map: the edge from channel c to unit o carries W[o, 4c:4c+4]
    (its 4 valid slots), for every (c, o) — found through the public edge_index / edge_attr / edge_mask."""
    module, _ = make("lenet")
    g = qegraph.to_graph(module)
    w = module[7].weight  # Linear(64, 32) reading 16 channels × 2×2
    conv = next(u for u in g.units if u["name"] == "3")
    fc = next(u for u in g.units if u["name"] == "7")
    src, dst = g.edge_index
    sel = (src >= conv["start"]) & (src < conv["start"] + 16) & (dst >= fc["start"]) & (dst < fc["start"] + 32)
    assert int(sel.sum()) == 16 * 32
    c, o = src[sel] - conv["start"], dst[sel] - fc["start"]
    assert sorted(zip(o.tolist(), c.tolist())) == [(i, j) for i in range(32) for j in range(16)]
    blocks = g.edge_attr[sel]
    assert bool(g.edge_mask[sel][:, :4].all()) and not bool(g.edge_mask[sel][:, 4:].any())
    assert torch.equal(blocks[:, :4], w.view(32, 16, 4)[o, c])
    assert not bool(blocks[:, 4:].any())
