"""BERT-layout state_dicts: exact inverse, symmetries through the functional encoder, key checks (float64)."""

from __future__ import annotations

import pytest
import torch

import qegraph
from qegraph.convert.bert import bert_to_graph
from qegraph.errors import QegraphError
from qegraph.graph.types import GLRole, SymKind
from qegraph.models import BertLayout, bert_encoder, bert_pooler
from qegraph.symmetry.gl import apply_gl
from qegraph.testing import assert_functionally_equal

VOCAB, HID, HEADS, LAYERS, INTER, POS, TYPES = 30522, 384, 12, 6, 1536, 512, 2


def bert_state_dict(prefix: str = "bert.", pooler: bool = True, layers: int = LAYERS) -> dict[str, torch.Tensor]:
    """Random weights with the real key names and shapes (HF BertModel layout)."""
    torch.manual_seed(0)
    m = BertLayout(VOCAB, HID, layers, HEADS, INTER, POS, TYPES, pooler=pooler, prefix=prefix, position_ids=True)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return {k: v.double() if v.is_floating_point() else v for k, v in m.state_dict().items()}


@pytest.fixture(scope="module")
def sd() -> dict[str, torch.Tensor]:
    return bert_state_dict()


@pytest.fixture(scope="module")
def graph(sd: dict[str, torch.Tensor]) -> qegraph.ParameterGraph:
    return bert_to_graph(sd, HEADS)


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, VOCAB, (2, 9), generator=gen), torch.randint(0, TYPES, (2, 9), generator=gen)


def test_keys_are_the_real_ones(sd: dict[str, torch.Tensor]) -> None:
    # (a module's own buffers come before its children's parameters, as in HF checkpoints)
    assert list(sd)[:6] == ["bert.embeddings.position_ids", "bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight",
                            "bert.embeddings.token_type_embeddings.weight", "bert.embeddings.LayerNorm.weight",
                            "bert.embeddings.LayerNorm.bias"]
    assert sd["bert.encoder.layer.5.attention.self.query.weight"].shape == (HID, HID)
    assert sd["bert.encoder.layer.0.intermediate.dense.weight"].shape == (INTER, HID)
    assert "bert.pooler.dense.bias" in sd and "bert.embeddings.position_ids" in sd


def test_round_trip_is_exact(sd: dict[str, torch.Tensor], graph: qegraph.ParameterGraph) -> None:
    out = graph.to_state_dict()
    assert list(out) == list(sd)
    for k in sd:
        assert out[k].dtype == sd[k].dtype and out[k].shape == sd[k].shape, k
        assert torch.equal(out[k], sd[k]), k
    assert graph.etable_rows.tolist() == [VOCAB, POS, TYPES]
    # embeddings: one EMBED node per table column, not one node per vocabulary row
    assert graph.num_nodes == 4 * HID + LAYERS * (7 * HID + INTER) + HID
    assert graph.edge_index.size(1) == LAYERS * (4 * HID * HID + 2 * HID * INTER + 5 * HID) + 3 * HID + HID * HID


def test_structure(graph: qegraph.ParameterGraph) -> None:
    kinds = graph.sym_kind.tolist()
    assert kinds.count(int(SymKind.HEADS)) == LAYERS
    assert int(graph.sym_size[graph.sym_kind == int(SymKind.HEADS)].unique()) == HEADS
    stream = next(u["group"] for u in graph.units if u["name"] == "bert.embeddings")
    last = next(u["group"] for u in graph.units if u["name"] == f"bert.encoder.layer.{LAYERS - 1}.add")
    assert stream == last and kinds[stream] == int(SymKind.PERM)  # one stream permutation for the stack


def test_functional_identity(sd: dict[str, torch.Tensor], graph: qegraph.ParameterGraph) -> None:
    ref = graph.to_module()
    ids, tt = inputs()
    group = qegraph.symmetry_group(graph)
    gen = torch.Generator().manual_seed(0)
    h0 = bert_encoder(sd, HEADS, ids, tt)
    for _ in range(5):
        e = group.sample(generator=gen, gl_cond=10.0)
        acted = e.act(graph)
        assert_functionally_equal(ref, acted.to_module(), (ids, tt), rtol=1e-10)
        # hidden states are the same up to the stream permutation
        sd2 = acted.to_state_dict()
        h1 = bert_encoder(sd2, HEADS, ids, tt)
        node_src, _ = e.node_maps(graph)
        unit = next(u for u in graph.units if u["name"] == "bert.embeddings")
        perm = node_src[unit["start"] : unit["start"] + HID] - unit["start"]
        torch.testing.assert_close(h1, h0[..., perm], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(bert_pooler(sd2, h1), bert_pooler(sd, h0), rtol=1e-10, atol=1e-12)


def test_attention_mask_is_used(sd: dict[str, torch.Tensor]) -> None:
    ids, tt = inputs()
    mask = torch.ones_like(ids)
    mask[:, -3:] = 0
    full = bert_encoder(sd, HEADS, ids, tt, mask)
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % VOCAB  # a masked token does not change the others
    other = bert_encoder(sd, HEADS, changed, tt, mask)
    torch.testing.assert_close(full[:, :-3], other[:, :-3], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(full[:, :-3], bert_encoder(sd, HEADS, changed, tt)[:, :-3])


@pytest.mark.parametrize("roles_in,roles_out", [({1, 3}, {1, 2, 3}), ({1, 2, 3}, {1, 2})],
                         ids=["A_on_Q_only", "B_on_V_only"])
def test_partial_gl_actions_are_caught(graph: qegraph.ParameterGraph, roles_in: set, roles_out: set) -> None:
    e = qegraph.symmetry_group(graph).sample(generator=torch.Generator().manual_seed(1), permute=False, rescale=False)
    x, edge_attr = apply_gl(graph, graph.x, graph.edge_attr, e.gl, roles_in=roles_in, roles_out=roles_out)
    with pytest.raises(AssertionError):
        assert_functionally_equal(graph.to_module(), graph.with_features(x=x, edge_attr=edge_attr).to_module(), inputs())


def test_without_prefix_or_pooler_the_stream_is_fixed() -> None:
    sd = bert_state_dict(prefix="", pooler=False, layers=1)
    g = bert_to_graph(sd, HEADS)
    out = g.to_state_dict()
    assert list(out) == list(sd) and all(torch.equal(out[k], sd[k]) for k in sd)
    stream = next(u["group"] for u in g.units if u["name"] == "embeddings")
    assert int(g.sym_kind[stream]) == int(SymKind.FIXED)
    e = qegraph.symmetry_group(g).sample(generator=torch.Generator().manual_seed(0))
    assert_functionally_equal(g.to_module(), e.act(g).to_module(), inputs())
    assert int((g.gl_role == int(GLRole.VALUE)).sum()) == HID


def test_bad_keys_are_refused() -> None:
    sd = bert_state_dict(layers=1)
    with pytest.raises(QegraphError, match="bert.classifier.weight"):
        bert_to_graph({**sd, "bert.classifier.weight": torch.zeros(2, HID)}, HEADS)
    missing = {k: v for k, v in sd.items() if k != "bert.encoder.layer.0.attention.self.key.bias"}
    with pytest.raises(QegraphError, match="attention.self.key.bias"):
        bert_to_graph(missing, HEADS)
    with pytest.raises(QegraphError, match="7 heads"):
        bert_to_graph(sd, 7)
    nan = dict(sd)
    nan["bert.embeddings.word_embeddings.weight"] = sd["bert.embeddings.word_embeddings.weight"].clone()
    nan["bert.embeddings.word_embeddings.weight"][3, 4] = float("nan")
    with pytest.raises(QegraphError, match="word_embeddings"):
        bert_to_graph(nan, HEADS)
    assert torch.isnan(bert_to_graph(nan, HEADS, allow_nonfinite=True).emb_attr).sum() == 1
