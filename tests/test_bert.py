"""BERT-layout state_dicts: exact inverse, symmetries through the functional encoder, key checks (float64).

The default tests use a small vocabulary and width (every code path of the converter and the encoder:
prefix, pooler, ``position_ids``, three embedding tables, several layers and heads); the BERT-base-sized
layout (30,522-token vocabulary) is converted and checked once, in a ``slow`` test.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import qegraph
from nets import bert_state_dict as _bert_sd
from qegraph.convert.bert import bert_to_graph
from qegraph.errors import QegraphError
from qegraph.graph.types import GLRole, SymKind
from qegraph.models import bert_encoder, bert_pooler
from qegraph.symmetry.gl import apply_gl
from qegraph.testing import assert_functionally_equal


@dataclass(frozen=True)
class Size:
    vocab: int
    hidden: int
    heads: int
    layers: int
    inter: int
    positions: int
    types: int = 2


SMALL = Size(vocab=97, hidden=24, heads=4, layers=3, inter=40, positions=16)
FULL = Size(vocab=30522, hidden=384, heads=12, layers=6, inter=1536, positions=512)  # MiniLM-sized BERT


def bert_state_dict(size: Size = SMALL, prefix: str = "bert.", pooler: bool = True, layers: int | None = None,
                    position_ids: bool = True) -> dict[str, torch.Tensor]:
    """Random weights N(0, 0.3²) with the real key names and shapes (HF BertModel layout); large enough
    that attention is far from uniform, so a wrong head transformation changes the outputs by > 1e-3."""
    return _bert_sd(size.vocab, size.hidden, size.layers if layers is None else layers, size.heads, size.inter,
                    size.positions, size.types, prefix=prefix, pooler=pooler, position_ids=position_ids, std=0.3)


@pytest.fixture(scope="module")
def sd() -> dict[str, torch.Tensor]:
    return bert_state_dict()


@pytest.fixture(scope="module")
def graph(sd: dict[str, torch.Tensor]) -> qegraph.ParameterGraph:
    return bert_to_graph(sd, SMALL.heads)


def inputs(size: Size = SMALL) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, size.vocab, (2, 9), generator=gen), torch.randint(0, size.types, (2, 9), generator=gen)


def test_keys_are_the_real_ones(sd: dict[str, torch.Tensor]) -> None:
    # (a module's own buffers come before its children's parameters, as in HF checkpoints)
    assert list(sd)[:6] == ["bert.embeddings.position_ids", "bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight",
                            "bert.embeddings.token_type_embeddings.weight", "bert.embeddings.LayerNorm.weight",
                            "bert.embeddings.LayerNorm.bias"]
    h, last = SMALL.hidden, SMALL.layers - 1
    assert sd[f"bert.encoder.layer.{last}.attention.self.query.weight"].shape == (h, h)
    assert sd["bert.encoder.layer.0.intermediate.dense.weight"].shape == (SMALL.inter, h)
    assert "bert.pooler.dense.bias" in sd and "bert.embeddings.position_ids" in sd


def assert_round_trip(sd: dict[str, torch.Tensor], graph: qegraph.ParameterGraph, size: Size) -> None:
    out = graph.to_state_dict()
    assert list(out) == list(sd)
    for k in sd:
        assert out[k].dtype == sd[k].dtype and out[k].shape == sd[k].shape, k
        assert torch.equal(out[k], sd[k]), k
    assert graph.etable_rows.tolist() == [size.vocab, size.positions, size.types]
    # embeddings: one EMBED node per table column, not one node per vocabulary row
    h, f = size.hidden, size.inter
    assert graph.num_nodes == 4 * h + size.layers * (7 * h + f) + h
    assert graph.num_edges == size.layers * (4 * h * h + 2 * h * f + 5 * h) + 3 * h + h * h


def test_round_trip_is_exact(sd: dict[str, torch.Tensor], graph: qegraph.ParameterGraph) -> None:
    assert_round_trip(sd, graph, SMALL)


def test_structure(graph: qegraph.ParameterGraph) -> None:
    kinds = graph.sym_kind.tolist()
    assert kinds.count(int(SymKind.HEADS)) == SMALL.layers
    assert int(graph.sym_size[graph.sym_kind == int(SymKind.HEADS)].unique()) == SMALL.heads
    stream = next(u["group"] for u in graph.units if u["name"] == "bert.embeddings")
    last = next(u["group"] for u in graph.units if u["name"] == f"bert.encoder.layer.{SMALL.layers - 1}.add")
    assert stream == last and kinds[stream] == int(SymKind.PERM)  # one stream permutation for the stack


def assert_functional_identity(sd: dict[str, torch.Tensor], graph: qegraph.ParameterGraph, size: Size, n: int) -> None:
    ref = graph.to_module()
    ids, tt = inputs(size)
    group = qegraph.symmetry_group(graph)
    gen = torch.Generator().manual_seed(0)
    h0 = bert_encoder(sd, size.heads, ids, tt)
    unit = next(u for u in graph.units if u["name"] == "bert.embeddings")
    for _ in range(n):
        e = group.sample(generator=gen, gl_cond=10.0)
        acted = e.act(graph)
        sd2 = acted.to_state_dict()
        assert not torch.equal(sd2["bert.encoder.layer.0.attention.self.query.weight"],
                               sd["bert.encoder.layer.0.attention.self.query.weight"])
        assert_functionally_equal(ref, acted.to_module(), (ids, tt), rtol=1e-10)
        # hidden states are the same up to the stream permutation
        h1 = bert_encoder(sd2, size.heads, ids, tt)
        node_src, _ = e.node_maps(graph)
        perm = node_src[unit["start"] : unit["start"] + size.hidden] - unit["start"]
        assert not torch.equal(perm, torch.arange(size.hidden))
        torch.testing.assert_close(h1, h0[..., perm], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(bert_pooler(sd2, h1), bert_pooler(sd, h0), rtol=1e-10, atol=1e-12)


def test_functional_identity(sd: dict[str, torch.Tensor], graph: qegraph.ParameterGraph) -> None:
    assert_functional_identity(sd, graph, SMALL, n=5)


@pytest.mark.slow
def test_full_size_vocabulary() -> None:
    """The BERT-base-sized layout (30,522 × 384 word embeddings, 12 heads, 6 layers): exact round trip
    and functional identity under one random element."""
    sd = bert_state_dict(FULL)
    graph = bert_to_graph(sd, FULL.heads)
    assert_round_trip(sd, graph, FULL)
    assert_functional_identity(sd, graph, FULL, n=1)


def test_attention_mask_is_used(sd: dict[str, torch.Tensor]) -> None:
    ids, tt = inputs()
    mask = torch.ones_like(ids)
    mask[:, -3:] = 0
    full = bert_encoder(sd, SMALL.heads, ids, tt, mask)
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % SMALL.vocab  # a masked token does not change the others
    other = bert_encoder(sd, SMALL.heads, changed, tt, mask)
    torch.testing.assert_close(full[:, :-3], other[:, :-3], rtol=1e-12, atol=1e-12)
    unmasked = bert_encoder(sd, SMALL.heads, changed, tt)[:, :-3]
    assert float((full[:, :-3] - unmasked).abs().max()) > 1e-3 * float(full.abs().max())


@pytest.mark.parametrize("roles_in,roles_out", [({1, 3}, {1, 2, 3}), ({1, 2, 3}, {1, 2})],
                         ids=["A_on_Q_only", "B_on_V_only"])
def test_partial_gl_actions_are_caught(graph: qegraph.ParameterGraph, roles_in: set, roles_out: set) -> None:
    e = qegraph.symmetry_group(graph).sample(generator=torch.Generator().manual_seed(1), permute=False, rescale=False)
    x, edge_attr = apply_gl(graph, graph.x, graph.edge_attr, e.gl, roles_in=roles_in, roles_out=roles_out)
    partial = graph.with_features(x=x, edge_attr=edge_attr).to_module()
    with pytest.raises(AssertionError, match="modules differ"):
        assert_functionally_equal(graph.to_module(), partial, inputs(), rtol=1e-3)
    x, edge_attr = apply_gl(graph, graph.x, graph.edge_attr, e.gl)  # the full action: same function
    assert_functionally_equal(graph.to_module(), graph.with_features(x=x, edge_attr=edge_attr).to_module(), inputs(),
                              rtol=1e-10)


def test_without_prefix_or_pooler_the_stream_is_fixed() -> None:
    sd = bert_state_dict(prefix="", pooler=False, layers=1)
    g = bert_to_graph(sd, SMALL.heads)
    out = g.to_state_dict()
    assert list(out) == list(sd) and all(torch.equal(out[k], sd[k]) for k in sd)
    stream = next(u["group"] for u in g.units if u["name"] == "embeddings")
    assert int(g.sym_kind[stream]) == int(SymKind.FIXED)
    e = qegraph.symmetry_group(g).sample(generator=torch.Generator().manual_seed(0))
    acted = e.act(g)
    assert not torch.equal(acted.to_state_dict()["encoder.layer.0.attention.self.key.weight"],
                           sd["encoder.layer.0.attention.self.key.weight"])
    assert_functionally_equal(g.to_module(), acted.to_module(), inputs(), rtol=1e-10)
    assert int((g.gl_role == int(GLRole.VALUE)).sum()) == SMALL.hidden


def test_bad_keys_are_refused() -> None:
    sd = bert_state_dict(layers=1)
    with pytest.raises(QegraphError, match="unexpected key 'bert.classifier.weight'"):
        bert_to_graph({**sd, "bert.classifier.weight": torch.zeros(2, SMALL.hidden)}, SMALL.heads)
    missing = {k: v for k, v in sd.items() if k != "bert.encoder.layer.0.attention.self.key.bias"}
    with pytest.raises(QegraphError, match="missing key 'bert.encoder.layer.0.attention.self.key.bias'"):
        bert_to_graph(missing, SMALL.heads)
    with pytest.raises(QegraphError, match="7 heads"):
        bert_to_graph(sd, 7)
    nan = dict(sd)
    nan["bert.embeddings.word_embeddings.weight"] = sd["bert.embeddings.word_embeddings.weight"].clone()
    nan["bert.embeddings.word_embeddings.weight"][3, 4] = float("nan")
    with pytest.raises(QegraphError, match="word_embeddings"):
        bert_to_graph(nan, SMALL.heads)
    assert torch.isnan(bert_to_graph(nan, SMALL.heads, allow_nonfinite=True).to_state_dict()[
        "bert.embeddings.word_embeddings.weight"]).sum() == 1
