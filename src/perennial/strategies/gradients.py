"""Sums over examples of ``|per-example gradient| ** power``: EWC's Fisher (2) and MAS's importance (1).

For a linear layer ``z = W a + b`` the gradient of example ``n``'s loss is ``delta_n a_n^T`` for
``W`` and ``delta_n`` for ``b`` (``delta_n = d loss_n / d z_n``). Since ``|x y|^p = |x|^p |y|^p``,

    sum_n |delta_n a_n^T|^p = (|delta|^p)^T |a|^p,

one matrix product per layer, from a single backward pass of the summed loss. That identity is
used whenever every parameter belongs to a ``nn.Linear`` applied once to ``(n, features)`` rows
(the MLPs of this package); other models fall back to vectorised per-example gradients with
``torch.func``, which give the same numbers at a much higher cost. Both assume that examples are
processed independently (no batch normalisation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

__all__ = ["gradient_moment"]

#: Examples per pass: bounds the memory of the activations (or of the per-example gradients).
CHUNK = 1024
VMAP_CHUNK = 64

LossSum = Callable[[Tensor, Tensor], Tensor]


def gradient_moment(
    model: nn.Module, loss_sum: LossSum, x: Tensor, y: Tensor, power: int
) -> list[Tensor]:
    """``sum_n |d loss_n / d theta|^power`` for each parameter, in ``model.parameters()`` order.

    ``loss_sum(logits, y)`` must be the *sum* of the per-example losses of a batch. ``power``
    is 1 or 2.
    """
    fast = _linear_moment(model, loss_sum, x, y, power)
    return fast if fast is not None else _vmap_moment(model, loss_sum, x, y, power)


def _elementwise_power(t: Tensor, power: int) -> Tensor:
    return t * t if power == 2 else t.abs()


def _linear_moment(
    model: nn.Module, loss_sum: LossSum, x: Tensor, y: Tensor, power: int
) -> list[Tensor] | None:
    """The matrix-product identity; None if the model is not made of linear layers only."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    owner = {id(p): layer for layer in layers for p in layer.parameters(recurse=False)}
    params = list(model.parameters())
    if not layers or any(id(p) not in owner for p in params):
        return None
    seen: dict[nn.Module, list[tuple[Tensor, Tensor]]] = {layer: [] for layer in layers}

    def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        seen[module].append((inputs[0].detach(), output))

    sums = {id(p): torch.zeros_like(p) for p in params}
    handles = [layer.register_forward_hook(record) for layer in layers]
    try:
        for start in range(0, int(y.shape[0]), CHUNK):
            for calls in seen.values():
                calls.clear()
            loss = loss_sum(model(x[start : start + CHUNK]), y[start : start + CHUNK])
            if any(len(calls) != 1 or calls[0][0].dim() != 2 for calls in seen.values()):
                return None  # a layer applied twice, or to more than rows: no identity
            deltas = torch.autograd.grad(loss, [seen[layer][0][1] for layer in layers])
            for layer, delta in zip(layers, deltas, strict=True):
                d = _elementwise_power(delta.detach(), power)
                a = _elementwise_power(seen[layer][0][0], power)
                sums[id(layer.weight)] += d.T @ a
                if layer.bias is not None:
                    sums[id(layer.bias)] += d.sum(dim=0)
    finally:
        for handle in handles:
            handle.remove()
    return [sums[id(p)] for p in params]


def _vmap_moment(
    model: nn.Module, loss_sum: LossSum, x: Tensor, y: Tensor, power: int
) -> list[Tensor]:
    """Per-example gradients with ``torch.func.vmap``, any architecture."""
    names = [name for name, _ in model.named_parameters()]
    params = {name: p.detach() for name, p in model.named_parameters()}

    def one(weights: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        return loss_sum(functional_call(model, weights, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    batched: Callable[..., Any] = vmap(grad(one), in_dims=(None, 0, 0))
    sums = [torch.zeros_like(p) for p in params.values()]
    for start in range(0, int(y.shape[0]), VMAP_CHUNK):
        grads = batched(params, x[start : start + VMAP_CHUNK], y[start : start + VMAP_CHUNK])
        for total, name in zip(sums, names, strict=True):
            total += _elementwise_power(grads[name], power).sum(dim=0)
    return sums
