"""QuantileNorm (the training CDF of every column): known values, continuity, errors, state, and the
statistics paths that use it — QuasiGMN(stats_transform="quantile") exactly invariant to the full group,
StatNN(quantile=True) — fitted by :func:`qegraph.tasks.fit_quantile_norms`."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch_geometric.data import Batch

import qegraph
from qegraph.nn import QuantileNorm, QuasiGMN, StatNN
from qegraph.nn.quantile_norm import CONSTANT_RTOL, KNOT_GAP
from qegraph.symmetry import symmetry_group
from qegraph.tasks import fit_quantile_norms
from test_section_model import GRAPHS


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


def test_known_values() -> None:
    qn = QuantileNorm(3, num_knots=5)
    col = torch.arange(9, dtype=torch.float64)  # quantiles 0, 2, 4, 6, 8
    qn.fit(torch.stack([col, 10 * col ** 2, torch.full_like(col, 7.0)], dim=1))
    assert torch.allclose(qn.knots[0], torch.tensor([0.0, 2, 4, 6, 8], dtype=torch.float64))
    x = torch.tensor([[-5.0, 0, 7], [0, 10, 7], [3, 160, 123], [8, 640, -1], [99, 1e9, 7]], dtype=torch.float64)
    y = qn(x)
    # column 0: the CDF of 0..8 mapped to [-1, 1], clamped outside; column 1: knots 0, 40, 160, 360, 640
    assert torch.allclose(y[:, 0], torch.tensor([-1.0, -1, -0.25, 1, 1], dtype=torch.float64))
    assert torch.allclose(y[:, 1], torch.tensor([-1.0, -0.875, 0, 1, 1], dtype=torch.float64))
    assert torch.equal(y[:, 2], torch.zeros(5, dtype=torch.float64))  # constant over the fitting set: 0
    # knots: torch.quantile's (linear interpolation) where no two are closer than the gap
    data = torch.randn(37, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    qn9 = QuantileNorm(4, num_knots=9)
    qn9.fit(data)
    ref = torch.quantile(data, torch.linspace(0, 1, 9, dtype=torch.float64), dim=0).t()
    assert torch.allclose(qn9.knots, ref, rtol=0, atol=1e-15)
    # float32 input, float32 output, the same map
    assert torch.allclose(qn(x.float()), y.float(), atol=1e-6) and qn(x.float()).dtype == torch.float32


def test_monotone_and_continuous_with_repeated_values() -> None:
    """Half the fitting values tie at 0: the knots still increase (gap ≥ KNOT_GAP of the range), the map is
    monotone, and round-off of the input moves the output by round-off, not across a jump."""
    qn = QuantileNorm(1, num_knots=21)
    data = torch.cat([torch.zeros(50), torch.linspace(1, 2, 50)]).double().unsqueeze(1)
    qn.fit(data)
    assert bool((qn.knots.diff(dim=1) >= KNOT_GAP * 2 * (1 - 1e-9)).all())
    x = torch.linspace(-1, 3, 2001, dtype=torch.float64).unsqueeze(1)
    y = qn(x).squeeze(1)
    assert bool((y.diff() >= 0).all()) and float(y.min()) == -1 and float(y.max()) == 1
    for v in (0.0, 1.0, 1.5):
        at = torch.tensor([[v]], dtype=torch.float64)
        near = at + 1e-13
        assert float((qn(near) - qn(at)).abs()) <= 1e-13 / (KNOT_GAP * 2) * 2 / 20 * (1 + 1e-6)


def test_errors_and_state() -> None:
    qn = QuantileNorm(2)
    with pytest.raises(qegraph.QegraphError, match="not fitted"):
        qn(torch.zeros(3, 2))
    with pytest.raises(qegraph.QegraphError, match=r"\[n >= 1, 2\]"):
        qn.fit(torch.zeros(3, 4))
    unsized = QuantileNorm()
    for bad in (torch.zeros(0, 4), torch.zeros(3, 0), torch.zeros(5)):
        with pytest.raises(qegraph.QegraphError, match="QuantileNorm.fit needs"):
            unsized.fit(bad)
    assert unsized.num_features is None and unsized.knots.shape == (0, 21)  # a failed fit leaves it unsized
    with pytest.raises(qegraph.QegraphError, match="stats_transform must be one of"):
        QuasiGMN(stats=False, stats_transform="rank")
    with pytest.raises(qegraph.QegraphError, match="NaN or inf"):
        qn.fit(torch.tensor([[0.0, float("nan")]]))
    qn.fit(torch.randn(10, 2, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(qegraph.QegraphError, match="fitted to 2 columns"):
        qn(torch.zeros(3, 5))
    # an unsized module takes its width from the data, and from a state dict
    lazy = QuantileNorm()
    lazy.fit(torch.randn(10, 4, generator=torch.Generator().manual_seed(1)))
    fresh = QuantileNorm()
    fresh.load_state_dict(lazy.state_dict())
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))
    assert fresh.num_features == 4 and bool(fresh.fitted) and torch.equal(fresh(x), lazy(x))


def _failing(batches: list) -> object:
    yield from batches
    raise RuntimeError("boom")


def test_fit_quantile_norms_records_the_statistics_and_restores_modes() -> None:
    graphs = [GRAPHS[n] for n in ("res_cnn", "tanh_mlp", "transformer")]
    model = QuasiGMN(out_dim=1, hidden_dim=8, num_layers=1, stats_transform="quantile", stats_max_depth=16,
                     dropout=0.1).double().train()
    model.backbone.eval()  # a mix of modes, restored as it was
    modes = {name: m.training for name, m in model.named_modules()}
    qn = model.readout.stats_norm
    with pytest.raises(RuntimeError, match="boom"):  # recording ends whatever ends the pass
        fit_quantile_norms(model, _failing([graphs[0]]))
    assert qn._collected is None and not bool(qn.fitted)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert fit_quantile_norms(model, [Batch.from_data_list(graphs[:2]), graphs[2]]) == 2
    assert {name: m.training for name, m in model.named_modules()} == modes and qn._collected is None
    # the knots are the quantiles of the canonical statistics of the three networks
    from qegraph.nn.canonical_stats import depth_statistics
    from qegraph.nn.section import SectionContext, canonical_input

    rows = []
    for g in graphs:
        c = canonical_input(g)
        rows.append(depth_statistics(c, SectionContext.of(c), 16)[0].flatten(1))
    ref = QuantileNorm(qn.num_features)
    ref.fit(torch.cat(rows))
    assert torch.equal(ref.knots, qn.knots) and torch.equal(ref.constant, qn.constant)
    assert fit_quantile_norms(model, graphs, unfitted_only=True) == 0  # already fitted: left alone


# attention graphs in the full suite (the fast loop keeps one of each other family)
@pytest.mark.parametrize("name", ["res_cnn", "tanh_mlp", "siren", "cnn_zoo", pytest.param("transformer", marks=pytest.mark.slow),
                                  pytest.param("bert", marks=pytest.mark.slow)])
@torch.no_grad()
def test_quasigmn_with_quantile_statistics_is_invariant(name: str) -> None:
    """Float64, relative ≤ 1e-10, scales up to 10^6 and GL gauges of condition 10^3; the model is fitted
    on noisy copies of the network (5 % on every weight), so the test network falls between the knots."""
    g = GRAPHS[name]
    torch.manual_seed(0)
    model = QuasiGMN(out_dim=2, hidden_dim=16, num_layers=2, stats_transform="quantile").double().eval()
    group = symmetry_group(g)
    noisy = [g.with_features(edge_val=g.edge_val * (1 + 0.05 * torch.randn(g.edge_val.shape, dtype=g.edge_val.dtype,
                                                                               generator=torch.Generator().manual_seed(s))))
             for s in range(6)]
    fit_quantile_norms(model, [Batch.from_data_list(noisy)])
    qn = model.readout.stats_norm
    assert int((~qn.constant).sum()) >= 10  # the statistics path really varies
    y = model(g)
    stats_in = qn(qn.knots[:, 10].unsqueeze(0))  # the medians map inside (−1, 1), not to a clamp
    assert bool((stats_in[0][~qn.constant].abs() < 0.5).all())
    for seed in range(2):
        el = group.sample(generator=torch.Generator().manual_seed(seed), scale_range=(1.0, 1e6), gl_cond=1e3)
        assert _rel(y, model(el.act(g))) <= 1e-10
    # a non-symmetry (every weight times 1.5: the balanced norms change) moves the output
    if name == "res_cnn":
        perturbed = g.with_features(edge_val=g.edge_val * 1.5)
        assert _rel(y, model(perturbed)) >= 1e-3


@torch.no_grad()
def test_statnn_quantile_on_the_section_is_invariant_and_raw_is_not() -> None:
    g = GRAPHS["tanh_mlp"]
    noisy = [g.with_features(edge_val=g.edge_val * (1 + 0.1 * torch.randn(g.edge_val.shape, dtype=g.edge_val.dtype,
                                                                              generator=torch.Generator().manual_seed(s))))
             for s in range(8)]
    torch.manual_seed(0)
    model = StatNN(out_dim=2, canonical=True, quantile=True).double()
    fit_quantile_norms(model, [Batch.from_data_list(noisy)])
    model.eval()
    y = model(g)
    el = symmetry_group(g).sample(generator=torch.Generator().manual_seed(0), scale_range=(1.0, 1e6))
    assert _rel(y, model(el.act(g))) <= 1e-10
    raw = StatNN(out_dim=2, quantile=True).double()
    fit_quantile_norms(raw, [Batch.from_data_list(noisy)])
    raw.eval()
    assert _rel(raw(g), raw(el.act(g))) >= 1e-3  # raw statistics are not invariant


@pytest.mark.parametrize("name", ["res_cnn", "transformer", pytest.param("bert", marks=pytest.mark.slow)])
@torch.no_grad()
def test_fitted_on_group_transformed_copies_of_one_network(name: str) -> None:
    """Copies of one network under its group (scales up to 10^6, GL condition 10^3) have the same statistics
    up to round-off: every column is flagged constant (CONSTANT_RTOL), so round-off is not stretched over
    [−1, 1], and the output stays invariant to ≤ 1e-10."""
    g = GRAPHS[name]
    group = symmetry_group(g)
    copies = [group.sample(generator=torch.Generator().manual_seed(100 + s), scale_range=(1.0, 1e6), gl_cond=1e3).act(g)
              for s in range(6)]
    torch.manual_seed(0)
    model = QuasiGMN(out_dim=2, hidden_dim=16, num_layers=2, stats_transform="quantile").double().eval()
    fit_quantile_norms(model, [Batch.from_data_list(copies)])
    qn = model.readout.stats_norm
    spread = qn.knots[:, -1] - qn.knots[:, 0]
    assert bool(qn.constant.all()) and float((spread / qn.knots.abs().amax(1).clamp(min=1e-300)).max()) <= CONSTANT_RTOL
    y = model(g)
    el = group.sample(generator=torch.Generator().manual_seed(0), scale_range=(1.0, 1e6), gl_cond=1e3)
    assert _rel(y, model(el.act(g))) <= 1e-10


def test_knots_stay_float64_and_the_map_has_no_jumps_in_float32() -> None:
    """Knots 1e-6 apart relative to their value (a narrow column): casting the module to float32 or
    float16 keeps the knots float64, and float32 inputs one ulp apart map to outputs that differ by at most
    the slope times that ulp (no merged knots, no jump)."""
    col = 1.0 + 1e-6 * torch.linspace(0, 1, 101, dtype=torch.float64)
    qn = QuantileNorm(1)
    qn.fit(col.unsqueeze(1))
    for cast in (lambda m: m.float(), lambda m: m.half(), lambda m: m.to(torch.bfloat16)):
        assert cast(qn).knots.dtype == torch.float64
    x = torch.tensor([1.0 + 5e-7], dtype=torch.float32)
    ulp = float(torch.nextafter(x, torch.tensor(2.0)) - x)
    y0 = qn(x.unsqueeze(1))
    y1 = qn(torch.nextafter(x, torch.tensor(2.0)).unsqueeze(1))
    slope = 2 / ((qn.num_knots - 1) * float(qn.knots.diff(dim=1).min()))
    assert y0.dtype == torch.float32 and 0 < float(y1 - y0) <= slope * ulp * 1.01
    # the whole float32 grid through the column's range: monotone, every step bounded by the slope
    grid = torch.arange(int(round(1.2e-6 / ulp))) * ulp + 1.0 - 1e-7
    out = qn(grid.float().unsqueeze(1)).squeeze(1).double()
    assert bool((out.diff() >= 0).all()) and float(out.diff().max()) <= slope * ulp * 1.01


def test_gradients_flow_inside_the_range_only() -> None:
    qn = QuantileNorm(1)
    qn.fit(torch.arange(11, dtype=torch.float64).unsqueeze(1))  # knots 0, 0.5, …, 10
    x = torch.tensor([[3.3], [-4.0], [12.0]], dtype=torch.float64, requires_grad=True)
    qn(x).sum().backward()
    assert torch.allclose(x.grad.squeeze(1), torch.tensor([2 / 10, 0.0, 0.0], dtype=torch.float64))


@pytest.mark.slow  # every family in one batch, BERT included (~1 s)
@torch.no_grad()
def test_mixed_batch_with_quantile_statistics_is_invariant_and_equal_to_single_graphs() -> None:
    """A batch of every family (incl. BERT): invariant to one group element of the whole batch, and each
    graph's output is its own — the map is per row, with nothing shared across the batch as BatchNorm's
    training moments would be, in training mode too."""
    names = list(GRAPHS)
    noisy = [GRAPHS[n].with_features(edge_val=GRAPHS[n].edge_val * (1 + 0.05 * torch.randn(
        GRAPHS[n].edge_val.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(i))))
        for i, n in enumerate(names)]
    torch.manual_seed(0)
    model = QuasiGMN(out_dim=2, hidden_dim=16, num_layers=2, stats_transform="quantile").double()
    fit_quantile_norms(model, [Batch.from_data_list(noisy), Batch.from_data_list([GRAPHS[n] for n in names])])
    model.eval()
    batch = Batch.from_data_list([GRAPHS[n] for n in names])
    y = model(batch)
    el = symmetry_group(batch).sample(generator=torch.Generator().manual_seed(3), scale_range=(1.0, 1e6), gl_cond=1e3)
    assert _rel(y, model(el.act(batch))) <= 1e-10
    model.readout.train()  # the statistics path has no batch moments
    y_train = model(batch)
    for i, n in enumerate(names):
        assert torch.allclose(y[i], model.eval()(GRAPHS[n])[0], rtol=1e-12, atol=1e-14)
    assert torch.allclose(y_train, y, rtol=1e-12, atol=1e-14)


@torch.no_grad()
def test_statnn_quantile_state_round_trip_into_a_fresh_unsized_model() -> None:
    """StatNN(quantile=True) sizes its QuantileNorm from the data; a fresh model takes the width, knots and
    weights from the state dict and computes the same function."""
    g = GRAPHS["relu_mlp"]
    data = [g.with_features(edge_val=g.edge_val * (1 + 0.1 * torch.randn(g.edge_val.shape, dtype=torch.float64,
                                                                         generator=torch.Generator().manual_seed(s))))
            for s in range(8)]
    torch.manual_seed(0)
    model = StatNN(out_dim=2, quantile=True).double()
    fit_quantile_norms(model, [Batch.from_data_list(data)])
    model.eval()
    fresh = StatNN(out_dim=2, quantile=True).double()
    fresh.load_state_dict(model.state_dict())  # lazy head and unsized QuantileNorm take their shapes
    fresh.eval()
    batch = Batch.from_data_list(data[:3])
    assert fresh.norm.num_features == model.norm.num_features and torch.equal(fresh.norm.knots, model.norm.knots)
    assert torch.equal(fresh(batch), model(batch))
