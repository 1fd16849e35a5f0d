"""Batching with PyG, the safe .qeg format, and unbatching exactly (DESIGN §3)."""

from __future__ import annotations

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
    graphs = qegraph.pad_to_common_slots([qegraph.to_graph(make(n, torch.float32)[0]) for n in sorted(ARCHS)])
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


def test_batched_edge_type_and_mask_match_per_graph() -> None:
    graphs = qegraph.pad_to_common_slots([qegraph.to_graph(make(n)[0]) for n in ("lenet", "rescnn", "siren")])
    batch = next(iter(DataLoader(graphs, batch_size=3)))
    assert torch.equal(batch.edge_type, torch.cat([g.edge_type for g in graphs]))
    assert torch.equal(batch.edge_mask, torch.cat([g.edge_mask for g in graphs]))


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
    module, _ = make("relu_mlp", torch.float32)
    g = qegraph.to_graph(module)
    qegraph.save_graph(g, tmp_path / "g.qeg")
    # edge_index is rebuilt on load, so the file holds about one value per parameter plus metadata
    assert (tmp_path / "g.qeg").stat().st_size < 4 * g.num_params + 8 * g.num_nodes * 10 + 4096


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
