"""Ragged edge storage: ``edge_val`` holds each weight once, everything per edge is derived.

Checks the layout (edge_val = the weights' flat layout, block by block), the derived fields against
their definitions, the padded-table round trip, PyG batching of mixed architectures with no padding
step, reading format-1 files, that chunked processing changes nothing, and that the action on hidden
features is the definition e_uv ↦ (q_v/q_u) e_{π(u)π(v)}.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

import qegraph
from qegraph.errors import QegraphError
from qegraph.graph import blocks
from qegraph.nn import FlatMLP, QuasiGMN
from qegraph.testing import assert_invariant


def _nets() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "mlp": nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)),
        "cnn3": nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)),
        "cnn5": nn.Sequential(nn.Conv2d(2, 3, 5, padding=2), nn.Tanh(), nn.Conv2d(3, 4, 1), nn.ReLU(),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)),
        "transformer": nn.TransformerEncoderLayer(8, 2, 12, dropout=0.0, batch_first=True),
    }


def _graphs(dtype: torch.dtype = torch.float64) -> dict[str, qegraph.ParameterGraph]:
    return {k: qegraph.to_graph(m.to(dtype).eval()) for k, m in _nets().items()}


def test_edge_values_are_the_weights_flat_layout() -> None:
    net = _nets()["cnn5"].double()
    g = qegraph.to_graph(net)
    weights = [net[0].weight, net[2].weight, net[6].weight]
    assert torch.equal(g.edge_val, torch.cat([w.reshape(-1) for w in weights]))
    assert g.eblock_width[g.eblock_width > 0].tolist() == [25, 1, 1] and g.num_slots == 25
    index = {p["key"]: p for p in g.meta["params"]}
    assert index["2.weight"]["table"] == "edge_val" and index["2.weight"]["start"] == 2 * 3 * 25


@pytest.mark.parametrize("name", ["mlp", "cnn3", "cnn5", "transformer"])
def test_derived_fields_match_their_definitions(name: str) -> None:
    g = _graphs()[name]
    ei, attr, mask, width = g.edge_index, g.edge_attr, g.edge_mask, g.edge_width
    assert ei.dtype == torch.int64 and ei.shape == (2, g.num_edges) and attr.shape == (g.num_edges, g.num_slots)
    assert torch.equal(mask.sum(1), width) and not bool(attr[~mask].any())
    assert torch.equal(attr[mask], g.edge_val)  # valid slots, edge-major = the ragged values
    # each dense block enumerates (o, i) row-major between its unit layers
    bt = g.block_table
    for b in range(bt.num_blocks):
        e0, n = int(bt.eoff[b]), int(bt.size[b])
        if n and int(bt.groups[b]) == 1:
            k = torch.arange(n)
            assert torch.equal(ei[0, e0 : e0 + n], bt.src[b] + k % bt.nsrc[b])
            assert torch.equal(ei[1, e0 : e0 + n], bt.dst[b] + k // bt.nsrc[b])


def test_padded_tables_convert_back() -> None:
    g = _graphs()["cnn5"]
    wide = torch.cat([g.edge_attr, torch.ones(g.num_edges, 3, dtype=g.edge_val.dtype)], dim=1)
    assert torch.equal(g.with_features(edge_attr=wide).edge_val, g.edge_val)  # padding is not read
    h = g.with_features(edge_val=2 * g.edge_val)
    h.edge_attr = g.edge_attr * 3  # property setter
    assert torch.equal(h.edge_val, 3 * g.edge_val) and torch.equal(g.edge_val, _graphs()["cnn5"].edge_val)
    with pytest.raises(QegraphError, match="slots"):
        g.with_features(edge_attr=g.edge_attr[:, :5])
    with pytest.raises(QegraphError, match="derived"):
        g.edge_index = g.edge_index
    # differentiable both ways
    ev = g.edge_val.clone().requires_grad_(True)
    g.with_features(edge_attr=g.with_features(edge_val=ev).edge_attr * 2).edge_val.sum().backward()
    assert torch.equal(ev.grad, torch.full_like(ev, 2.0))


def test_mixed_architectures_batch_without_padding() -> None:
    graphs = list(_graphs(torch.float32).values())
    batch = Batch.from_data_list(graphs)
    assert batch.num_slots == 25 and batch.edge_attr.shape == (sum(g.num_edges for g in graphs), 25)  # 5×5 kernel
    assert torch.equal(batch.edge_val, torch.cat([g.edge_val for g in graphs]))
    loader = DataLoader(graphs, batch_size=2)
    parts = [g for b in loader for g in b.to_data_list()]
    for g, h in zip(graphs, parts):
        for (k, a), b in zip(g.to_state_dict().items(), h.to_state_dict().values()):
            assert torch.equal(a, b), k
        assert torch.equal(g.edge_index, h.edge_index) and torch.equal(g.edge_attr, h.edge_attr)
    model = QuasiGMN(out_dim=2, hidden_dim=8, num_layers=2).double()
    assert assert_invariant(model, Batch.from_data_list(list(_graphs().values())), n=2,
                            generator=torch.Generator().manual_seed(0)) <= 1e-9


def _to_version1(g: qegraph.ParameterGraph, path: Path) -> None:
    """Write ``g`` in the format-1 layout: padded ``edge_attr``, boolean ``eblock_dense``, edge-row
    offsets in the parameter index, no block structure fields."""
    tensors = {k: v.contiguous() for k, v in g.to_dict().items() if isinstance(v, torch.Tensor)}
    tensors["edge_attr"] = g.edge_attr.contiguous()
    tensors["eblock_dense"] = g.eblock_groups == 1
    for k in ("edge_val", "eblock_groups", "sym_blocks", "sym_couple"):
        del tensors[k]
    meta = json.loads(json.dumps(g.meta.data))
    bt = g.block_table
    for p in meta["params"]:
        if p["table"] == "edge_val":
            b = int(torch.searchsorted(bt.voff + bt.size * bt.width, torch.tensor(p["start"]), right=True))
            p["table"], p["start"] = "edge_attr", int(bt.eoff[b] + (p["start"] - bt.voff[b]) // bt.width[b])
            del p["block"]
    meta["version"] = 1
    save_file(tensors, str(path), metadata={"qegraph": json.dumps(meta)})


@pytest.mark.parametrize("name", ["cnn5", "transformer"])
def test_format_version_1_files_are_converted_on_load(name: str, tmp_path: Path) -> None:
    g = _graphs(torch.float32)[name]
    _to_version1(g, tmp_path / "old.qeg")
    h = qegraph.load_graph(tmp_path / "old.qeg")
    assert h.meta.data == g.meta.data and torch.equal(h.edge_val, g.edge_val)
    assert torch.equal(h.eblock_groups, g.eblock_groups) and torch.equal(h.edge_index, g.edge_index)
    for (k, a), b in zip(g.to_state_dict().items(), h.to_state_dict().values()):
        assert torch.equal(a, b), k
    qegraph.save_graph(h, tmp_path / "new.qeg")
    assert torch.equal(qegraph.load_graph(tmp_path / "new.qeg").edge_val, g.edge_val)


def _bert() -> qegraph.ParameterGraph:
    """A small BERT-layout graph: embedding tables (emb_attr) and attention heads."""
    from qegraph.models import BertLayout

    torch.manual_seed(0)
    sd = BertLayout(50, 8, 1, 2, 16, 12, 2, pooler=True, prefix="bert.", position_ids=False).double().state_dict()
    return qegraph.bert_to_graph(sd, 2)


def test_chunked_processing_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny CHUNK sends every dense block and embedding table through the per-block path and splits
    the vectorized passes into many chunks: the results are bit-identical."""
    batch = Batch.from_data_list([*_graphs().values(), _bert()])
    el = qegraph.symmetry_group(batch).sample(generator=torch.Generator().manual_seed(1), scale_range=(1, 1e3))
    ref = (batch.edge_index, batch.edge_attr, el.act(batch))
    monkeypatch.setattr(blocks, "CHUNK", 7)
    small = (batch.edge_index, batch.edge_attr, el.act(batch))
    assert torch.equal(ref[0], small[0]) and torch.equal(ref[1], small[1])
    assert torch.equal(ref[2].edge_val, small[2].edge_val) and torch.equal(ref[2].x, small[2].x)
    assert torch.equal(ref[2].emb_attr, small[2].emb_attr) and not torch.equal(ref[2].emb_attr, batch.emb_attr)


@pytest.mark.parametrize("name", ["mlp", "cnn5", "transformer"])
def test_act_features_is_the_definition(name: str) -> None:
    g = _graphs()[name]
    gen = torch.Generator().manual_seed(2)
    el = qegraph.symmetry_group(g).sample(generator=gen, scale_range=(1, 1e2), gl=False)
    h = torch.randn(g.num_nodes, 3, dtype=torch.float64, generator=gen)
    e = torch.randn(g.num_edges, 3, dtype=torch.float64, generator=gen)
    h2, e2 = el.act_features(g, h, e)
    src, q = el.node_maps(g)
    ei = g.edge_index
    ids = {(int(u), int(v)): k for k, (u, v) in enumerate(ei.t().tolist())}
    from_edge = torch.tensor([ids[(int(src[u]), int(src[v]))] for u, v in ei.t().tolist()])
    assert torch.equal(h2, h[src] * q.unsqueeze(1))
    torch.testing.assert_close(e2, e[from_edge] * (q[ei[1]] / q[ei[0]]).unsqueeze(1), rtol=1e-15, atol=0)
    # on a padded parameter table the feature action is the parameter action
    full = qegraph.symmetry_group(g).sample(generator=gen, scale_range=(1, 1e2))
    x2, ea2 = full.act_features(g, g.x, g.edge_attr)
    acted = full.act(g)
    torch.testing.assert_close((x2, ea2), (acted.x, acted.edge_attr), rtol=1e-13, atol=1e-15)


def test_flat_baseline_reads_the_ragged_values() -> None:
    g = _graphs()["cnn3"]
    other = g.with_features(edge_val=-g.edge_val, x=2 * g.x)
    flat = FlatMLP.flatten(Batch.from_data_list([g, other]))
    assert torch.equal(flat[0], FlatMLP.flatten(g)[0]) and torch.equal(flat[1], FlatMLP.flatten(other)[0])
    assert flat.size(1) == g.num_params
    with pytest.raises(QegraphError, match="fixed architecture"):
        FlatMLP.flatten(Batch.from_data_list([g, _graphs()["mlp"]]))
