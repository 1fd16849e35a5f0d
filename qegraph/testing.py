"""Assertions for checking symmetry guarantees (in the spirit of ``e3nn.util.test.assert_equivariant``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from qegraph.graph.parameter_graph import ParameterGraph
from qegraph.graph.types import SymKind
from qegraph.symmetry.group import GroupElement, symmetry_group


def _as_tuple(x: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    return (x,) if isinstance(x, Tensor) else tuple(x)


def _rel_err(ref: Tensor, other: Tensor) -> float:
    scale = max(float(ref.abs().max()) if ref.numel() else 0.0, torch.finfo(ref.dtype).tiny)
    return float((ref - other).abs().max()) / scale if ref.numel() else 0.0


@torch.no_grad()
def assert_functionally_equal(
    module_a: nn.Module,
    module_b: nn.Module,
    inputs: Tensor | Sequence[Tensor],
    rtol: float = 1e-10,
) -> float:
    """Assert that two modules compute the same function on ``inputs``.

    Passes when ``max|f_a(x) - f_b(x)| <= rtol * max(max|f_a(x)|, tiny)`` (the tolerance scales with
    the output, DESIGN §7). Returns the relative error; raises ``AssertionError`` with the numbers
    otherwise. Both modules are put in eval mode.
    """
    module_a.eval()
    module_b.eval()
    xs = _as_tuple(inputs)
    ya = _as_tuple(module_a(*xs))
    yb = _as_tuple(module_b(*xs))
    if len(ya) != len(yb):
        raise AssertionError(f"the modules return {len(ya)} and {len(yb)} outputs")
    worst = 0.0
    for i, (a, b) in enumerate(zip(ya, yb)):
        if a.shape != b.shape:
            raise AssertionError(f"output {i}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
        err = _rel_err(a, b)
        if not err <= rtol:
            raise AssertionError(f"output {i}: modules differ, max|a-b| = {err:.3e} × max|a| (rtol {rtol:.1e})")
        worst = max(worst, err)
    return worst


# ---------------------------------------------------------------------- metanetwork symmetry checks
def _sampler(graph: ParameterGraph, generator: torch.Generator | None, scale_range: tuple[float, float]):
    group = symmetry_group(graph)
    return lambda: group.sample(generator=generator, scale_range=scale_range)


@torch.no_grad()
def assert_invariant(
    model: Callable[[ParameterGraph], Tensor],
    graph: ParameterGraph,
    n: int = 3,
    scale_range: tuple[float, float] = (1.0, 1e4),
    generator: torch.Generator | None = None,
    rtol: float = 1e-9,
) -> float:
    """Assert ``model(g·graph) == model(graph)`` for ``n`` random g of the graph's own group.

    ``graph`` may be a single graph or a PyG batch (then g acts on every graph). Passes when
    ``max|y(gθ) − y(θ)| <= rtol · max|y(θ)|``; returns the worst relative error, else raises
    ``AssertionError`` with the numbers.
    """
    sample = _sampler(graph, generator, scale_range)
    ref = model(graph)
    worst = 0.0
    for i in range(n):
        out = model(sample().act(graph))
        err = _rel_err(ref, out)
        if not err <= rtol:
            raise AssertionError(
                f"not invariant: sample {i}, max|y(gθ) - y(θ)| = {err:.3e} × max|y(θ)| (rtol {rtol:.1e}, "
                f"scale_range {scale_range})"
            )
        worst = max(worst, err)
    return worst


def act_on_features(element: GroupElement, graph: ParameterGraph, h: Tensor, e: Tensor) -> tuple[Tensor, Tensor]:
    """g acting on hidden features of the graph's types (c channels): h_v ↦ q_v h_{π(v)},
    e_uv ↦ (q_v/q_u) e_{π(u)π(v)}, per-head matrices on head blocks — the same formulas as on the
    parameters (:meth:`GroupElement.act_features`)."""
    return element.act_features(graph, h, e)


def _global_perm(el: GroupElement) -> Tensor:
    starts = el.group.ptr[:-1].repeat_interleave(el.group.sizes)
    return el.perm + starts


def _gl_pair(el: GroupElement, j: int, like: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    eye = [torch.eye(m.size(-1), dtype=m.dtype).expand_as(m) for m in like]
    return el.gl.get(j, (eye[0], eye[1]))


def compose(a: GroupElement, b: GroupElement) -> GroupElement:
    """a·b (b acts first): (a·b)·x = a·(b·x). Per head (GL): M^{ab}_h = M^a_h M^b_{π_a(h)}."""
    pa = _global_perm(a)
    perm = _global_perm(b)[pa]
    starts = a.group.ptr[:-1].repeat_interleave(a.group.sizes)
    gl = {}
    for j in sorted(set(a.gl) | set(b.gl)):
        like = a.gl.get(j, b.gl.get(j))
        (aa, ab), (ba, bb) = _gl_pair(a, j, like), _gl_pair(b, j, like)
        local = a.perm[int(a.group.ptr[j]) : int(a.group.ptr[j + 1])]
        gl[j] = (aa @ ba[local], ab @ bb[local])
    return GroupElement(a.group, perm - starts, a.scale * b.scale[pa], gl)


def inverse(a: GroupElement) -> GroupElement:
    """a⁻¹, so that compose(a, inverse(a)) is the identity. Per head: M^{-1}_w = (M_{π^{-1}(w)})^{-1}."""
    inv = torch.argsort(_global_perm(a))
    starts = a.group.ptr[:-1].repeat_interleave(a.group.sizes)
    gl = {}
    for j, (ma, mb) in a.gl.items():
        local = inv[int(a.group.ptr[j]) : int(a.group.ptr[j + 1])] - int(a.group.ptr[j])
        gl[j] = (torch.linalg.inv(ma)[local], torch.linalg.inv(mb)[local])
    return GroupElement(a.group, inv - starts, 1.0 / a.scale[inv], gl)


def check_group_element(el: GroupElement) -> None:
    """Raise ``AssertionError`` unless every unit's scalar is allowed by its group's kind."""
    kind = el.group.kinds.repeat_interleave(el.group.sizes)
    q = el.scale
    bad = {
        "fixed/permutation-only units must have q = 1": ((kind == int(SymKind.FIXED)) | (kind == int(SymKind.PERM)))
        & ((q - 1).abs() > 1e-12),
        "SCALE units need q > 0": (kind == int(SymKind.SCALE)) & ~(q > 0),
        "SIGN units need q = ±1": (kind == int(SymKind.SIGN)) & ((q.abs() - 1).abs() > 1e-12),
        "NONZERO units need q != 0": (kind == int(SymKind.NONZERO)) & (q == 0),
    }
    for msg, m in bad.items():
        if bool(m.any()):
            raise AssertionError(f"g' is not a group element: {msg} (unit slots {m.nonzero().flatten()[:5].tolist()})")
    if bool((el.perm[kind == int(SymKind.FIXED)] != torch.arange(el.perm.numel())[kind == int(SymKind.FIXED)]
             - el.group.ptr[:-1].repeat_interleave(el.group.sizes)[kind == int(SymKind.FIXED)]).any()):
        raise AssertionError("g' is not a group element: it moves fixed units")
    _check_block_structure(el)


def _check_block_structure(el: GroupElement) -> None:
    """Raise ``AssertionError`` unless every permutation keeps its group's blocks together and moves
    them by its coupling class's σ (identity where the class is frozen, no move where sym_blocks = 0)."""
    grp = el.group
    slot_group = grp._slot_group()
    local = torch.arange(el.perm.numel()) - grp.ptr[:-1][slot_group]
    s = grp.block_size()[slot_group]
    blk, new_blk = torch.div(local, s, rounding_mode="floor"), torch.div(el.perm, s, rounding_mode="floor")
    if bool(((grp.blocks[slot_group] == 0) & (el.perm != local)).any()):
        raise AssertionError("g' is not a group element: it permutes units of a group without permutations")
    # σ of each (group, block): all members of a block must land in one block
    gblk = (torch.cumsum(grp.blocks.clamp(min=1), 0) - grp.blocks.clamp(min=1))[slot_group] + blk
    n = int(gblk.max()) + 1 if gblk.numel() else 0
    lo = torch.full((n,), n, dtype=torch.long).scatter_reduce(0, gblk, new_blk, "amin")
    hi = torch.full((n,), -1, dtype=torch.long).scatter_reduce(0, gblk, new_blk, "amax")
    if bool((lo != hi).any()):
        raise AssertionError("g' is not a group element: a permutation splits a block of a grouped convolution")
    # groups of one coupling class share σ; a frozen class has σ = id
    frozen = grp.frozen_classes()
    sigma_rep: dict[int, Tensor] = {}
    for j in range(len(grp)):
        sel = slot_group == j
        sigma = torch.unique_consecutive(torch.stack([blk[sel], new_blk[sel]]), dim=1)[1]
        r = int(grp.couple[j])
        if bool(frozen[r]) and not torch.equal(sigma, torch.arange(sigma.numel())):
            raise AssertionError(f"g' is not a group element: unit group {j} moves blocks of a frozen coupling class")
        if r in sigma_rep and not torch.equal(sigma_rep[r], sigma):
            raise AssertionError(f"g' is not a group element: unit group {j} moves its blocks unlike its coupling class")
        sigma_rep.setdefault(r, sigma)


@torch.no_grad()
def assert_quasi_equivariant(
    layer: nn.Module,
    graph: ParameterGraph,
    channels: int | None = None,
    n: int = 3,
    scale_range: tuple[float, float] = (1.0, 1e4),
    generator: torch.Generator | None = None,
    rtol: float = 1e-9,
) -> float:
    """Assert F(gθ) = g′·F(θ) with g′ = α(gθ)·g·α(θ)⁻¹ built explicitly, and g′ ∈ G.

    ``layer(h, e, ctx) -> (h', e', …)`` maps node/edge features to features and
    ``layer.alpha(h, e, ctx)`` returns its gauge α(θ) as a GroupElement (see
    :class:`qegraph.nn.QuasiLayer`). θ = random features (``channels``, default ``layer.beta.channels``)
    in the graph's dtype (zero on query→key pairing edges, which carry none). Returns the worst
    relative error.
    """
    from qegraph.nn.context import GraphContext

    ctx = GraphContext.from_graph(graph)
    c = channels or layer.beta.channels
    dt = graph.x.dtype
    h = torch.randn(graph.num_nodes, c, generator=generator, dtype=dt)
    e = torch.randn(graph.num_edges, c, generator=generator, dtype=dt)
    if ctx.gl is not None:
        e[ctx.gl.dead] = 0  # query→key pairing edges carry no feature (see qegraph.nn.gl)
    f_h, f_e = layer(h, e, ctx)[:2]
    a0 = layer.alpha(h, e, ctx)
    sample = _sampler(graph, generator, scale_range)
    worst = 0.0
    for i in range(n):
        g = sample()
        hg, eg = act_on_features(g, graph, h, e)
        out_h, out_e = layer(hg, eg, ctx)[:2]
        g_prime = compose(layer.alpha(hg, eg, ctx), compose(g, inverse(a0)))
        check_group_element(g_prime)
        exp_h, exp_e = act_on_features(g_prime, graph, f_h, f_e)
        err = max(_rel_err(exp_h, out_h), _rel_err(exp_e, out_e))
        if not err <= rtol:
            raise AssertionError(f"not quasi-equivariant: sample {i}, |F(gθ) - g'F(θ)| = {err:.3e} (rtol {rtol:.1e})")
        worst = max(worst, err)
    return worst


def _examples(graph: ParameterGraph) -> list[ParameterGraph]:
    return graph.to_data_list() if hasattr(graph, "to_data_list") else [graph]


@torch.no_grad()
def assert_functional_identity_preserved(
    model: Callable[[ParameterGraph], ParameterGraph],
    graph: ParameterGraph,
    inputs: Tensor | Sequence[Tensor],
    n: int = 2,
    scale_range: tuple[float, float] = (1.0, 1e4),
    generator: torch.Generator | None = None,
    rtol: float = 1e-8,
    template: nn.Module | Sequence[nn.Module] | None = None,
) -> float:
    """For a weight-space model: the networks decoded from ``model(g·graph)`` and ``model(graph)``
    compute the same function (on ``inputs``: one tensor for every graph, or one per graph).

    Rebuilds the networks with ``to_module(template)`` (``template``: one module for every graph, one
    per graph, or None to use the graphs' architecture records) and compares them with
    :func:`assert_functionally_equal`. Returns the worst relative error.
    """
    sample = _sampler(graph, generator, scale_range)
    ref = _examples(model(graph))
    xs = [inputs] * len(ref) if isinstance(inputs, Tensor) else list(inputs)
    if len(xs) != len(ref):
        raise ValueError(f"{len(xs)} inputs for {len(ref)} graphs")
    tmpl = [template] * len(ref) if template is None or isinstance(template, nn.Module) else list(template)
    worst = 0.0
    for _ in range(n):
        out = _examples(model(sample().act(graph)))
        for k, (a, b) in enumerate(zip(ref, out)):
            try:
                ma, mb = a.to_module(tmpl[k]), b.to_module(tmpl[k])
                worst = max(worst, assert_functionally_equal(ma, mb, xs[k], rtol))
            except AssertionError as err:
                raise AssertionError(f"graph {k}: decoded networks differ: {err}") from None
    return worst
