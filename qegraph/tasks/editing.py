r"""WeightEditing: edit a digit INR so that its *function* draws a transformed image.

Given a SIREN θ of the INR zoo (``f_θ``: pixel coordinate in ``[-1, 1]²`` → ``2·pixel/16 − 1``), the
weight-space model M (any ``qegraph.nn`` model returning a ParameterGraph batch, e.g.
``WeightSpaceGMN``) outputs θ′ = M(θ). With the 8×8 coordinate grid X of the zoo (row-major
``(row, col)``, ``qegraph.data.digits.pixel_grid(8)``) and a fixed image transformation T, the loss is
measured in function space:

.. math::
    \mathcal{L}(\theta) = \frac{1}{64} \big\lVert f_{\theta'}(X) - T\big(f_\theta(X)\big) \big\rVert_2^2 ,
    \qquad \theta' = M(\theta),

* ``transform="dilate"``: T(v) = maxpool₃ₓ₃(v) (stride 1, padding 1; max is monotone, so dilating in
  the INR scale ``[-1, 1]`` equals dilating the pixels and mapping them);
* ``transform="invert"``: contrast inversion 1 − p in pixel scale p ∈ [0, 1]; in the INR scale
  v = 2p − 1 this is T(v) = −v.

The trivial baseline θ′ = θ scores :math:`\tfrac{1}{64}\lVert f_\theta(X) - T(f_\theta(X))\rVert^2`;
both are logged per epoch (``{stage}/mse``, ``{stage}/baseline_mse``) so results can be compared.

``render`` evaluates every graph of a batch differentiably: a graph's state_dict values are slices
of the batch's ``x`` / ``edge_val`` at the positions of ``meta["params"]`` (shifted by the graph's
node offset ``batch.ptr`` and its first edge value); graphs of one layout are gathered at once and
run through ``torch.func.functional_call`` of the module rebuilt once per architecture
(``module_from_arch``), vmapped over the graphs.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from qegraph.data.digits import pixel_grid
from qegraph.errors import QegraphError
from qegraph.graph.arch import module_from_arch
from qegraph.tasks.base import GraphTask

TRANSFORMS = ("dilate", "invert")


def _graph_offsets(batch: Any) -> tuple[list[Any], Tensor, Tensor]:
    """Per graph: its meta, first node and first edge value in the batch tables."""
    metas = batch.meta if isinstance(batch.meta, list) else [batch.meta]
    n = len(metas)
    dev = batch.x.device
    if n == 1 and getattr(batch, "ptr", None) is None:
        zero = torch.zeros(1, dtype=torch.long, device=dev)
        return metas, zero, zero
    node_start = batch.ptr[:-1]
    values = batch.eblock_size * batch.eblock_width
    per_graph = torch.zeros(n, dtype=torch.long, device=dev).index_add_(0, batch.batch[batch.eblock_dst], values)
    return metas, node_start, torch.cumsum(per_graph, 0) - per_graph


class INRRenderer:
    """``renderer(batch, grid) -> [num_graphs, num_points, out]``: each graph's network on ``grid``,
    differentiable w.r.t. ``batch.x`` and ``batch.edge_val`` (computed in their dtype)."""

    def __init__(self) -> None:
        self._layouts: dict[str, tuple[nn.Module, list[tuple[str, str, list[int]]], Tensor, Tensor]] = {}

    def _layout(self, meta: Any, ncols: int):  # noqa: ANN202
        key = json.dumps([meta["arch"], meta["params"], ncols], sort_keys=True)
        if key not in self._layouts:
            module = module_from_arch(meta["arch"])
            local: dict[str, list[Tensor]] = {"x": [], "edge_val": []}  # positions relative to the graph's first row / value
            specs = []
            for p in meta["params"]:
                if p["table"] not in local:
                    raise QegraphError(f"WeightEditing: parameter {p['key']!r} lives in table {p['table']!r}; "
                                       "only x / edge_val parameters can be rendered")
                if p["table"] == "x":
                    local["x"].append(torch.arange(p["start"], p["start"] + p["rows"]) * ncols + p["col"])
                else:
                    local["edge_val"].append(torch.arange(p["start"], p["start"] + p["rows"] * p["width"]))
                specs.append((p["key"], p["table"], list(p["shape"])))
            cat = {t: torch.cat(v) if v else torch.zeros(0, dtype=torch.long) for t, v in local.items()}
            self._layouts[key] = (module, specs, cat["x"], cat["edge_val"])
        return key, self._layouts[key]

    def __call__(self, batch: Any, grid: Tensor) -> Tensor:
        metas, node_start, value_start = _graph_offsets(batch)
        ncols = batch.x.size(1)
        groups: dict[str, list[int]] = {}
        for i, meta in enumerate(metas):
            groups.setdefault(self._layout(meta, ncols)[0], []).append(i)
        flat = {"x": batch.x.reshape(-1), "edge_val": batch.edge_val}
        grid = grid.to(device=batch.x.device, dtype=batch.x.dtype)
        out: list[Tensor | None] = [None] * len(metas)
        for key, idx in groups.items():
            module, specs, lx, le = self._layouts[key]
            sel = torch.tensor(idx, device=batch.x.device)
            values = {
                "x": flat["x"][node_start[sel].unsqueeze(1) * ncols + lx.to(sel.device)],
                "edge_val": flat["edge_val"][value_start[sel].unsqueeze(1) + le.to(sel.device)],
            }
            pos = {"x": 0, "edge_val": 0}
            params = {}
            for name, table, shape in specs:
                n = int(torch.Size(shape).numel())
                params[name] = values[table][:, pos[table] : pos[table] + n].reshape(len(idx), *shape)
                pos[table] += n
            y = vmap(lambda p: functional_call(module, p, (grid,)))(params)
            for j, i in enumerate(idx):
                out[i] = y[j]
        return torch.stack(out)  # type: ignore[arg-type]


def transform_image(v: Tensor, transform: str) -> Tensor:
    """T on images ``[G, 8, 8]`` in the INR scale ``[-1, 1]`` (see the module docstring)."""
    if transform == "dilate":
        return F.max_pool2d(v.unsqueeze(1), 3, stride=1, padding=1).squeeze(1)
    if transform == "invert":
        return -v
    raise QegraphError(f"transform must be one of {TRANSFORMS}, got {transform!r}")


class WeightEditing(GraphTask):
    r"""Function-space weight editing of INRs: :math:`\tfrac1{64}\lVert f_{M(\theta)}(X) - T(f_\theta(X))\rVert^2`.

    ``target(batch)`` is ``[G, 2, 64]``: T(f_θ(X)) and f_θ(X) (the second serves the trivial-baseline
    metric). Metrics per epoch: ``mse`` (the edits) and ``baseline_mse`` (θ′ = θ).
    """

    def __init__(self, model: nn.Module, transform: Literal["dilate", "invert"] = "dilate", image_size: int = 8, lr: float = 1e-3,
                 weight_decay: float = 0.0, max_lr_epochs: int | None = None) -> None:
        super().__init__(model, lr=lr, weight_decay=weight_decay, max_lr_epochs=max_lr_epochs)
        if transform not in TRANSFORMS:
            raise QegraphError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
        self.transform, self.image_size = transform, image_size
        self.renderer = INRRenderer()
        self.register_buffer("grid", pixel_grid(image_size), persistent=False)
        self.save_hyperparameters(ignore=["model"])

    def render(self, batch: Any) -> Tensor:
        """``[G, size²]``: every INR of ``batch`` on the pixel grid (differentiable)."""
        return self.renderer(batch, self.grid).reshape(-1, self.image_size ** 2)

    def target(self, batch: Any) -> Tensor:
        with torch.no_grad():
            src = self.render(batch)
            s = self.image_size
            tgt = transform_image(src.reshape(-1, s, s), self.transform).reshape(-1, s * s)
        return torch.stack([tgt, src], dim=1)

    def loss(self, out: Any, y: Tensor) -> Tensor:
        pred = out if isinstance(out, Tensor) else self.render(out)
        return F.mse_loss(pred, y[:, 0].to(pred.dtype))

    def predict_values(self, out: Any) -> Tensor:
        return self.render(out)

    def epoch_metrics(self, pred: Tensor, y: Tensor) -> dict[str, float]:
        return {"mse": float(F.mse_loss(pred, y[:, 0])), "baseline_mse": float(F.mse_loss(y[:, 1], y[:, 0]))}
