"""Canonical sections (issue 12): function kept, exact invariance, round trip, negative controls.

Everything in float64 on small networks of every family: ReLU / LeakyReLU MLPs, an MLP with a purely
linear hidden layer (NONZERO units), CNNs with residual blocks and pooling, the Small CNN Zoo CNN,
tanh and SIREN networks, ``nn.TransformerEncoder`` and a BERT-layout graph (small vocabulary).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch

import qegraph
from qegraph.graph.types import GLRole, SymKind
from qegraph.models import BertLayout
from qegraph.symmetry import GroupElement, symmetry_group
from qegraph.symmetry.canonical import canonicalize, is_canonical
from qegraph.testing import assert_functionally_equal


class ResPoolCNN(nn.Module):
    """ReLU CNN with a residual block (channels tied across the addition), max pooling, no norm."""

    def __init__(self, c: int = 6) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, c, 3, padding=1)
        self.c2 = nn.Conv2d(c, c, 3, padding=1)
        self.c3 = nn.Conv2d(c, c, 3)
        self.head = nn.Linear(c, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.c1(x))
        h = h + torch.relu(self.c2(h))
        h = F.max_pool2d(torch.relu(self.c3(h)), 2)
        return self.head(h.mean(dim=(2, 3)))


class GeluMLP(nn.Module):
    """A GELU hidden layer (permutations only) between ReLU layers: the negative control's network."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.c(F.gelu(self.b(torch.relu(self.a(x)))))


def _nets() -> dict[str, tuple[nn.Module, Tensor]]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    siren = nn.Sequential(nn.Linear(2, 12), qegraph.Sine(30.0), nn.Linear(12, 12), qegraph.Sine(30.0), nn.Linear(12, 1))
    zoo = nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), 2,
                                enable_nested_tensor=False)
    nets = {
        "relu_mlp": (nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 3)), (6, 4)),
        "leaky_mlp": (nn.Sequential(nn.Linear(4, 10), nn.LeakyReLU(0.1), nn.Linear(10, 3)), (6, 4)),
        "linear_mlp": (nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3)), (6, 4)),
        "res_cnn": (ResPoolCNN(), (3, 1, 8, 8)),
        "cnn_zoo": (zoo, (3, 1, 8, 8)),
        "tanh_mlp": (nn.Sequential(nn.Linear(4, 10), nn.Tanh(), nn.Linear(10, 3)), (6, 4)),
        "siren": (siren, (6, 2)),
        "transformer": (enc, (2, 5, 8)),
        "gelu_mlp": (GeluMLP(), (6, 4)),
    }
    return {k: (m.double().eval(), torch.randn(shape, generator=g, dtype=torch.float64)) for k, (m, shape) in nets.items()}


NETS = _nets()
FAMILIES = [k for k in NETS if k != "gelu_mlp"]


def _bert() -> tuple[nn.Module, qegraph.ParameterGraph, tuple[Tensor, Tensor]]:
    torch.manual_seed(0)
    model = BertLayout(50, 16, 2, 4, 32, 12, 2, pooler=True).double().eval()
    g = qegraph.bert_to_graph(model.state_dict(), 4)
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 50, (2, 7), generator=gen)
    types = torch.randint(0, 2, (2, 7), generator=gen)
    return model, g, (ids, types)


def _graph(name: str) -> qegraph.ParameterGraph:
    return qegraph.to_graph(NETS[name][0])


def _params(g: qegraph.ParameterGraph) -> Tensor:
    """Every parameter value of a graph (or batch) as one vector, in a fixed order."""
    parts = [g.x[g.x_mask], g.edge_attr[g.edge_mask]]
    emb = getattr(g, "emb_attr", None)
    if emb is not None:
        parts.append(emb)
    return torch.cat(parts)


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


def _residual_part(g: qegraph.ParameterGraph, el: GroupElement) -> GroupElement:
    """π(g): the permutation of ``el`` and the signs of its scalars (the residual group's part)."""
    return GroupElement(symmetry_group(g), el.perm, el.scale.sign())


def _sample(g: qegraph.ParameterGraph, seed: int) -> GroupElement:
    return symmetry_group(g).sample(generator=torch.Generator().manual_seed(seed), scale_range=(1.0, 1e6),
                                    gl_cond=1e3)


@pytest.mark.parametrize("name", FAMILIES)
def test_function_kept_and_round_trip(name: str) -> None:
    module, x = NETS[name]
    g = _graph(name)
    c, gauge = canonicalize(g)
    assert is_canonical(c) and not is_canonical(g)
    assert_functionally_equal(module, c.to_module(module), x, rtol=1e-10)
    assert _rel(_params(g), _params(gauge.act(c))) <= 1e-12


@pytest.mark.parametrize("name", FAMILIES)
def test_invariant_to_the_continuous_group(name: str) -> None:
    g = _graph(name)
    c, _ = canonicalize(g)
    for seed in range(3):
        el = _sample(g, seed)
        cg, _ = canonicalize(el.act(g))
        assert _rel(_params(_residual_part(g, el).act(c)), _params(cg)) <= 1e-9


def test_bert_layout() -> None:
    model, g, (ids, types) = _bert()
    c, gauge = canonicalize(g)
    assert_functionally_equal(model, c.to_module(), (ids, types), rtol=1e-10)
    assert _rel(_params(g), _params(gauge.act(c))) <= 1e-12
    el = _sample(g, 0)
    cg, _ = canonicalize(el.act(g))
    assert _rel(_params(_residual_part(g, el).act(c)), _params(cg)) <= 1e-9


def test_residual_group_is_recorded() -> None:
    kinds = {name: set(canonicalize(_graph(name))[0].sym_kind.tolist()) for name in ("relu_mlp", "linear_mlp",
                                                                                        "tanh_mlp", "transformer")}
    assert kinds["relu_mlp"] == {int(SymKind.FIXED), int(SymKind.PERM)}
    assert int(SymKind.SIGN) in kinds["linear_mlp"]  # NONZERO → SIGN: the sign of λ remains
    assert int(SymKind.SIGN) in kinds["tanh_mlp"]
    assert int(SymKind.HEAD_SIGNS) in kinds["transformer"] and int(SymKind.HEADS) not in kinds["transformer"]


@pytest.mark.parametrize("name", ["res_cnn", "tanh_mlp", "transformer"])
def test_residual_group_keeps_function_and_section(name: str) -> None:
    """Augmenting a canonical graph draws only from the residual group: the function is kept, and the
    continuous part of the original group would have been a no-op (canonicalize(g·θ) = π·θ̂)."""
    module, x = NETS[name]
    c, _ = canonicalize(_graph(name))
    el = symmetry_group(c).sample(generator=torch.Generator().manual_seed(3), scale_range=(1.0, 1e6))
    assert bool((el.scale.abs() == 1).all())  # only permutations and signs
    acted = el.act(c)
    assert_functionally_equal(module, acted.to_module(module), x, rtol=1e-10)
    if name != "tanh_mlp":
        assert _rel(_params(c), _params(acted)) > 1e-3  # it did move something


def test_mixed_batch_equals_graph_by_graph() -> None:
    graphs = [_graph(n) for n in ("cnn_zoo", "transformer", "relu_mlp", "siren")]
    batch = Batch.from_data_list(graphs)
    cb, gauge = canonicalize(batch)
    for i, g in enumerate(graphs):
        ci, _ = canonicalize(g)
        ex = cb.get_example(i)
        assert torch.equal(ex.sym_kind, ci.sym_kind)
        assert _rel(_params(ci), _params(ex)) <= 1e-12
    assert _rel(_params(batch), _params(gauge.act(cb))) <= 1e-12


def test_balanced() -> None:
    """At the section every scalable hidden unit's incoming squared norm equals its outgoing one."""
    module, _ = NETS["relu_mlp"]
    c, _ = canonicalize(_graph("relu_mlp"))
    sd = c.to_state_dict()
    for i, j in (("0", "2"), ("2", "4")):
        incoming = sd[f"{i}.weight"].pow(2).sum(1) + sd[f"{i}.bias"].pow(2)
        outgoing = sd[f"{j}.weight"].pow(2).sum(0)
        assert torch.allclose(incoming, outgoing, rtol=1e-10, atol=0)


def test_heads_are_balanced() -> None:
    """For every head, ‖X̂‖ = ‖Ŷ‖ and X̂ᵀŶ = XᵀY (the balanced factorization), and it is the minimum norm."""
    module, _ = NETS["transformer"]
    g = _graph("transformer")
    c, _ = canonicalize(g)
    sd, sd0 = c.to_state_dict(), g.to_state_dict()
    for layer in range(2):
        key = f"layers.{layer}.self_attn.in_proj_weight"
        bkey = f"layers.{layer}.self_attn.in_proj_bias"
        w, b, w0, b0 = sd[key], sd[bkey], sd0[key], sd0[bkey]
        for h in range(2):
            rows = slice(4 * h, 4 * h + 4)
            x = torch.cat([w[:8][rows], b[:8][rows, None]], 1)
            y = torch.cat([w[8:16][rows], b[8:16][rows, None]], 1)
            x0 = torch.cat([w0[:8][rows], b0[:8][rows, None]], 1)
            y0 = torch.cat([w0[8:16][rows], b0[8:16][rows, None]], 1)
            assert torch.allclose(x.T @ y, x0.T @ y0, rtol=0, atol=1e-12)
            assert torch.allclose(x.norm(), y.norm(), rtol=1e-10)
            assert x.norm() ** 2 + y.norm() ** 2 <= x0.norm() ** 2 + y0.norm() ** 2 + 1e-12
            assert torch.allclose(x.norm() ** 2 + y.norm() ** 2, 2 * torch.linalg.matrix_norm(x0.T @ y0, "nuc"),
                                  rtol=1e-10)


def test_negative_control_gelu_unit_scaling() -> None:
    """Scaling a unit followed by GELU is not a symmetry: the canonical form must change."""
    module, _ = NETS["gelu_mlp"]
    g = _graph("gelu_mlp")
    c, _ = canonicalize(g)
    bad = GeluMLP().double()
    bad.load_state_dict(module.state_dict())
    with torch.no_grad():
        bad.b.weight[2] *= 3.0
        bad.b.bias[2] *= 3.0
        bad.c.weight[:, 2] /= 3.0
    cb, _ = canonicalize(qegraph.to_graph(bad))
    assert _rel(_params(c), _params(cb)) >= 1e-3


def test_negative_control_query_without_key() -> None:
    """A GL matrix on one head's queries without A^{-T} on its keys changes the canonical form."""
    g = _graph("transformer")
    c, _ = canonicalize(g)
    sd = g.to_state_dict()
    a = torch.tensor([[2.0, 0.3, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.5]],
                     dtype=torch.float64)
    key = "layers.0.self_attn.in_proj_weight"
    sd[key] = sd[key].clone()
    sd[key][:4] = a @ sd[key][:4]
    module = NETS["transformer"][0]
    bad = type(module)(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), 2,
                       enable_nested_tensor=False).double()
    bad.load_state_dict(sd)
    cb, _ = canonicalize(qegraph.to_graph(bad))
    assert _rel(_params(c), _params(cb)) >= 1e-3


def test_degenerate_inputs_are_finite_and_deterministic() -> None:
    module, x = NETS["relu_mlp"]
    sd = {k: v.clone() for k, v in module.state_dict().items()}
    sd["0.weight"][3] = 0.0
    sd["0.bias"][3] = 0.0  # a unit with no incoming weights
    sd["2.weight"][:, 5] = 0.0  # a unit whose outgoing weights are zero
    dead = nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 3)).double()
    dead.load_state_dict(sd)
    g = qegraph.to_graph(dead)
    c1, _ = canonicalize(g)
    c2, _ = canonicalize(g)
    assert torch.isfinite(_params(c1)).all() and torch.equal(_params(c1), _params(c2))
    assert c1.meta["canonical"]["degenerate_units"] == 2
    assert_functionally_equal(dead, c1.to_module(dead), x, rtol=1e-10)
    # rank-deficient head: the keys of head 0 are rank 1
    enc = NETS["transformer"][0]
    sd = {k: v.clone() for k, v in enc.state_dict().items()}
    w = sd["layers.0.self_attn.in_proj_weight"]
    w[8:12] = torch.outer(torch.arange(1.0, 5.0, dtype=torch.float64), w[8])
    sd["layers.0.self_attn.in_proj_bias"][8:12] = 0.0
    bad = type(enc)(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), 2,
                    enable_nested_tensor=False).double()
    bad.load_state_dict(sd)
    c3, _ = canonicalize(qegraph.to_graph(bad))
    assert torch.isfinite(_params(c3)).all()
    assert_functionally_equal(bad, c3.to_module(bad), NETS["transformer"][1], rtol=1e-10)


def test_float32_graph_stays_float32() -> None:
    module = nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 3))
    g = qegraph.to_graph(module)
    c, _ = canonicalize(g)
    assert c.x.dtype == torch.float32
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    assert_functionally_equal(module, c.to_module(module), x, rtol=1e-5)


def test_canonical_twice_is_refused() -> None:
    c, _ = canonicalize(_graph("relu_mlp"))
    with pytest.raises(qegraph.QegraphError, match="already canonical"):
        canonicalize(c)


def test_gl_roles_untouched() -> None:
    g = _graph("transformer")
    c, _ = canonicalize(g)
    assert torch.equal(c.gl_role, g.gl_role) and bool((g.gl_role == int(GLRole.QUERY)).any())


def test_cli_canonicalize_and_inspect(tmp_path, capsys) -> None:
    from qegraph.cli import main
    from qegraph.graph.io import load_graph

    module, x = NETS["res_cnn"]
    torch.save(module.state_dict(), tmp_path / "net.pt")
    ckpt = tmp_path / "net.pt"
    out = tmp_path / "net.canonical.qeg"
    arch = ["--arch", "test_canonical:ResPoolCNN"]
    assert main(["canonicalize", str(ckpt), *arch, "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "canonical  : yes" in text and "residual   :" in text and "gauge      : factors in [" in text
    c = load_graph(out)
    assert is_canonical(c)
    assert_functionally_equal(module, c.to_module(), x, rtol=1e-10)
    # from a .qeg graph too, and inspect marks it
    qeg = tmp_path / "net.qeg"
    assert main(["convert", str(ckpt), *arch, "-o", str(qeg)]) == 0
    assert main(["canonicalize", str(qeg), "-o", str(tmp_path / "c2.qeg")]) == 0
    assert torch.equal(load_graph(tmp_path / "c2.qeg").edge_val, c.edge_val)
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    assert "canonical  : yes" in capsys.readouterr().out
    assert main(["inspect", str(qeg)]) == 0
    assert "canonical  : no" in capsys.readouterr().out
    # a canonical graph is refused with one line, exit code 2, no output file
    assert main(["canonicalize", str(out), "-o", str(tmp_path / "again.qeg")]) == 2
    assert "already canonical" in capsys.readouterr().err and not (tmp_path / "again.qeg").exists()


def test_gram_and_qr_routes_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """Head blocks conditioned well enough are balanced through the Cholesky factor of their Gram matrix,
    the others through Householder QR; both give the same section, also in one batch mixing the two (a GL
    element of condition 1e5 pushes the second graph's heads past ``GRAM_MAX_COND``)."""
    import qegraph.symmetry.canonical as can

    g0 = _graph("transformer")
    g = g0.with_features(x=g0.x.double(), edge_val=g0.edge_val.double())
    el = symmetry_group(g).sample(generator=torch.Generator().manual_seed(0), scale_range=(1.0, 1.0), gl_cond=1e5)
    batch = Batch.from_data_list([g, el.act(g)])
    routes: list[Tensor] = []
    gram_factor = can._gram_factor

    def recording(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = gram_factor(x)
        routes.append(out[2])
        return out

    monkeypatch.setattr(can, "_gram_factor", recording)
    mixed, gauge = canonicalize(batch)
    used = torch.cat(routes)
    assert bool(used.any()) and bool((~used).any()), "the batch should take both routes"
    monkeypatch.setattr(can, "GRAM_MAX_COND", 0.0)  # every block through QR
    qr_only, _ = canonicalize(batch)
    assert _rel(_params(qr_only), _params(mixed)) <= 1e-10
    assert _rel(_params(batch), _params(gauge.act(mixed))) <= 1e-12


def test_strided_uniform_and_general_head_rows_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """Head rows read as one strided view of ``edge_val`` (a weight matrix's heads), through arithmetic
    positions (one weight row / column per node) and through the general per-edge path (any block
    layout) give bit-identical sections."""
    import qegraph.symmetry.canonical as can

    batch = Batch.from_data_list([_graph("transformer"), _graph("transformer")])
    routes: list[str] = []
    rows = can._Features.rows

    def recording(self: can._Features, *args: object) -> can._Rows:
        out = rows(self, *args)
        routes.append("strided" if out.strided is not None else "positions" if out.valid is None else "general")
        return out

    monkeypatch.setattr(can._Features, "rows", recording)
    strided, _ = canonicalize(batch)
    assert set(routes) == {"strided"}, routes
    monkeypatch.setattr(can._Uniform, "view", lambda *args: None)
    routes.clear()
    positions, _ = canonicalize(batch)
    assert set(routes) == {"positions"}, routes
    monkeypatch.setattr(can, "_uniform_positions", lambda *args: None)
    routes.clear()
    general, _ = canonicalize(batch)
    assert set(routes) == {"general"}, routes
    for other in (positions, general):
        assert torch.equal(strided.edge_val, other.edge_val) and torch.equal(strided.x, other.x)


def test_head_chunks_within_a_layer_and_svd_routes_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks that split a layer's heads (their rows then are no dense range of edge_val and are written
    after the copy of the rest) give the same section bit for bit; SVDs through ``eigh`` of MᵀM (well
    conditioned heads) and through LAPACK agree to float64 round-off."""
    import qegraph.symmetry.canonical as can

    g0 = _graph("transformer")
    g = g0.with_features(x=g0.x.double(), edge_val=g0.edge_val.double())
    base, _ = canonicalize(g)
    dense: list[int] = []
    finish = can._Features.finish

    def recording(self: can._Features) -> tuple[Tensor, Tensor]:
        dense.append(len(self.deferred))
        return finish(self)

    monkeypatch.setattr(can._Features, "finish", recording)
    monkeypatch.setattr(can, "HEAD_CHUNK", 1)  # one head per chunk
    split, gauge = canonicalize(g)
    assert dense and dense[-1] > 0, "split chunks should take the deferred path"
    assert torch.equal(base.edge_val, split.edge_val) and torch.equal(base.x, split.x)
    assert _rel(_params(g), _params(gauge.act(split))) <= 1e-12
    monkeypatch.setattr(can, "EIGH_MAX_COND", 0.0)  # every head through torch.linalg.svd
    lapack, _ = canonicalize(g)
    assert _rel(_params(base), _params(lapack)) <= 1e-10


def test_float32_graph_is_balanced_to_float32_round_off() -> None:
    """A float32 graph (head transforms applied in float32) has the section of its float64 copy, rounded."""
    g = _graph("transformer")
    g32 = g.with_features(x=g.x.float(), edge_val=g.edge_val.float())
    g64 = g32.with_features(x=g32.x.double(), edge_val=g32.edge_val.double())
    c32, _ = canonicalize(g32)
    c64, _ = canonicalize(g64)
    assert c32.edge_val.dtype == torch.float32
    err = _rel(_params(c64), _params(c32).double())
    assert 0 < err <= 1e-6


def test_head_rows_writing_the_same_values_twice_are_refused() -> None:
    """The output edge_val is assembled from dense head ranges plus a copy of the rest; two head blocks that
    would write the same values (attention heads sharing parameters) get a clear error, not a silent mix."""
    import qegraph.symmetry.canonical as can

    feat = can._Features(_graph("transformer"))
    feat.dense += [(0, 8), (4, 12)]
    with pytest.raises(qegraph.QegraphError, match="write the same values"):
        feat.finish()
    ok = can._Features(_graph("transformer"))
    ok.val[:8] = 7.0
    ok.dense.append((0, 8))
    x, val = ok.finish()  # the rest is the input's values, the written range is kept
    assert bool((val[:8] == 7.0).all()) and torch.equal(val[8:], ok.src[8:])
