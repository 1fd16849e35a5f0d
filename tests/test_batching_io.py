"""Batching with PyG, the safe .qeg format, and unbatching exactly (DESIGN §3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch_geometric.loader import DataLoader

import qegraph
from qegraph.errors import CheckpointError
from nets import ARCHS, make


def assert_graphs_equal(a: qegraph.ParameterGraph, b: qegraph.ParameterGraph) -> None:
    da, db = a.to_dict(), b.to_dict()
    assert set(da) == set(db)
    for k, v in da.items():
        if isinstance(v, torch.Tensor):
            assert v.dtype == db[k].dtype and torch.equal(v, db[k]), k
        else:
            assert v == db[k], k


def test_mixed_architectures_batch_and_unbatch_exactly() -> None:
    graphs = [qegraph.to_graph(make(n, torch.float32)[0]) for n in sorted(ARCHS)]  # no padding step
    assert qegraph.pad_to_common_slots(graphs) == graphs  # kept for compatibility: the identity
    loader = DataLoader(graphs, batch_size=4, shuffle=False)
    out = []
    for batch in loader:
        assert batch.edge_index.max() < batch.num_nodes
        assert int(batch.sym_group.max()) + 1 == batch.sym_kind.numel()
        out.extend(batch.to_data_list())
    assert len(out) == len(graphs)
    for g, h in zip(graphs, out):
        assert_graphs_equal(g, h)
        for (k, a), b in zip(g.to_state_dict().items(), h.to_state_dict().values()):
            assert torch.equal(a, b), k


def test_batched_derived_fields_match_per_graph() -> None:
    """edge_index / edge_type / edge_mask / edge_attr of a batch are its graphs', the padded ones widened
    to the batch's largest width (zeros beyond each graph's own)."""
    graphs = [qegraph.to_graph(make(n)[0]) for n in ("lenet", "rescnn", "siren")]
    batch = next(iter(DataLoader(graphs, batch_size=3)))
    assert torch.equal(batch.edge_type, torch.cat([g.edge_type for g in graphs]))
    offsets = torch.tensor([0] + [g.num_nodes for g in graphs[:-1]]).cumsum(0)
    assert torch.equal(batch.edge_index, torch.cat([g.edge_index + o for g, o in zip(graphs, offsets)], dim=1))
    s = max(g.num_slots for g in graphs)
    assert batch.num_slots == s == 25 and graphs[2].num_slots == 1
    widen = lambda t: torch.cat([t, t.new_zeros(t.size(0), s - t.size(1))], dim=1)  # noqa: E731
    assert torch.equal(batch.edge_mask, torch.cat([widen(g.edge_mask) for g in graphs]))
    assert torch.equal(batch.edge_attr, torch.cat([widen(g.edge_attr) for g in graphs]))
    assert batch.num_edges == sum(g.num_edges for g in graphs) == batch.edge_index.size(1)


def test_batch_refuses_to_state_dict() -> None:
    batch = next(iter(DataLoader([qegraph.to_graph(make("siren")[0])] * 2, batch_size=2)))
    with pytest.raises(qegraph.QegraphError, match="single graph"):
        batch.to_state_dict()


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_save_load_round_trip(name: str, tmp_path: Path) -> None:
    module, _ = make(name, torch.bfloat16)
    g = qegraph.to_graph(module)
    qegraph.save_graph(g, tmp_path / "g.qeg")
    h = qegraph.load_graph(tmp_path / "g.qeg")
    assert_graphs_equal(g, h)
    assert [p.name for p in tmp_path.iterdir()] == ["g.qeg"]  # no temporary files left


def test_saved_file_is_compact(tmp_path: Path) -> None:
    """Nothing per edge but its own values: a net with a 7×7 stem and 1×1 convs (padded storage would
    hold 49 slots per edge) costs its parameter bytes plus int32 node/block tables and the header."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 7), torch.nn.ReLU(), torch.nn.Conv2d(32, 64, 1), torch.nn.ReLU(),
                                 torch.nn.Conv2d(64, 64, 1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                 torch.nn.Flatten(), torch.nn.Linear(64, 10))
    g = qegraph.to_graph(module)
    assert g.edge_val.numel() == sum(p.numel() for n, p in module.named_parameters() if n.endswith("weight"))
    qegraph.save_graph(g, tmp_path / "g.qeg")
    size = (tmp_path / "g.qeg").stat().st_size
    param_bytes = 4 * g.num_params
    index_bytes = 4 * (9 * g.num_nodes + 7 * g.eblock_size.numel() + 4 * g.sym_kind.numel())
    header = len(json.dumps(g.meta.data)) + 4096
    assert size <= 1.2 * param_bytes + index_bytes + header
    assert qegraph.load_graph(tmp_path / "g.qeg").sym_group.dtype == torch.int64  # int32 on disk only


def test_truncated_or_foreign_graph_file_is_refused(tmp_path: Path) -> None:
    g = qegraph.to_graph(make("relu_mlp")[0])
    qegraph.save_graph(g, tmp_path / "g.qeg")
    data = (tmp_path / "g.qeg").read_bytes()
    (tmp_path / "cut.qeg").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.qeg"):
        qegraph.load_graph(tmp_path / "cut.qeg")
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not a qegraph graph"):
        qegraph.load_graph(tmp_path / "other.safetensors")
