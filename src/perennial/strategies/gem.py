"""Gradient Episodic Memory (Lopez-Paz & Ranzato, 2017): a quadratic program over past tasks."""

from __future__ import annotations

from typing import Unpack

import numpy as np
import scipy.linalg
import scipy.optimize
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from perennial.scenarios.base import Experience, Scenario
from perennial.strategies.base import (
    CommonParams,
    GradientStrategy,
    check_int,
    check_number,
    tensor_bytes,
)
from perennial.strategies.buffers import per_class_sample

__all__ = ["GEM", "project_to_cone"]


def project_to_cone(
    gradient: NDArray[np.float64],
    references: NDArray[np.float64],
    margin: float = 0.5,
    eps: float = 1e-3,
) -> NDArray[np.float64]:
    """GEM's projection of ``gradient`` (p,) against the past tasks' gradients ``references`` (t, p).

    Solves GEM's dual quadratic program (Lopez-Paz & Ranzato, 2017, equations 11-13, with the
    margin of their released code):

        min_v  1/2 v^T (G G^T + eps I) v + (G g)^T v   subject to  v >= margin,

    and returns ``g~ = G^T v + g``. With ``G G^T + eps I = R^T R`` (Cholesky) and ``v = margin +
    w``, the program is the non-negative least-squares problem ``min_{w >= 0} ||R w + c||^2`` with
    ``c = R^-T ((G G^T + eps I) margin + G g)``, solved exactly by Lawson-Hanson
    (``scipy.optimize.nnls``) on a ``t x t`` system, whatever the number of parameters ``p``.
    """
    t = references.shape[0]
    gram = references @ references.T + eps * np.eye(t)
    factor = scipy.linalg.cholesky(gram, lower=False)  # gram = R^T R
    shift = gram @ np.full(t, margin) + references @ gradient
    c = scipy.linalg.solve_triangular(factor, shift, trans="T")  # R^-T shift
    w, _ = scipy.optimize.nnls(factor, -c)
    v = margin + w
    projected: NDArray[np.float64] = references.T @ v + gradient
    return projected


class GEM(GradientStrategy):
    """GEM: the step may not increase the loss on any past task's episodic memory.

    After each experience ``memory_per_class`` random training examples of each of its classes
    form that task's episodic memory. At every step, the gradient ``g_k`` of the loss on each past
    task's memory is computed; if the minibatch gradient ``g`` has ``g . g_k < 0`` for some ``k``,
    ``g`` is replaced by the closest vector (plus a margin) that has a non-negative dot product
    with every ``g_k``: the quadratic program of "Gradient Episodic Memory for Continual
    Learning" (Lopez-Paz & Ranzato, 2017, NeurIPS), solved in its ``t``-dimensional dual
    (:func:`project_to_cone`). :class:`~perennial.strategies.AGEM` is its one-constraint
    approximation (a single average memory gradient).

    Parameters
    ----------
    memory_per_class
        Examples stored per class of each experience; default 1 (Mirzadeh et al., 2020). Lopez-Paz
        & Ranzato stored 256 examples per task.
    margin
        The dual variables' lower bound (``memory_strength`` in the authors' code, 0.5 there); 0
        gives the plain projection of the paper's equation 10.
    **common
        The keywords of :class:`~perennial.strategies.base.GradientStrategy`.

    Examples
    --------
    >>> from perennial.strategies.toy import toy_scenario
    >>> scenario = toy_scenario()
    >>> strategy = GEM(memory_per_class=3, hidden=(16,), epochs=2)
    >>> for experience in scenario:
    ...     strategy.fit_experience(experience, scenario)
    >>> [len(y) for _, y in strategy.memories_]
    [6, 6]
    """

    def __init__(
        self,
        *,
        memory_per_class: int = 1,
        margin: float = 0.5,
        **common: Unpack[CommonParams],
    ) -> None:
        super().__init__(**common)
        self.memory_per_class = memory_per_class
        self.margin = margin

    def check_params(self) -> None:
        super().check_params()
        check_int("memory_per_class", self.memory_per_class, 1)
        check_number("margin", self.margin, 0.0)

    memories_: list[tuple[Tensor, Tensor]]

    def prepare(self, scenario: Scenario) -> None:
        first = getattr(self, "trainer_", None) is None
        super().prepare(scenario)
        if first:
            self.memories_ = []
            self._generator = torch.Generator().manual_seed(self.seed)
            self.projections_ = 0  # steps whose gradient was projected

    def memory_gradients(self, model: nn.Module) -> Tensor:
        """``(t, p)``: the gradient of the loss on each past task's memory, flattened."""
        params = [p for p in model.parameters() if p.requires_grad]
        rows = []
        for x, y in self.memories_:
            loss = self.trainer_.loss(model(x), y)
            rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
        return torch.stack(rows)

    def after_backward(self, model: nn.Module) -> None:
        if not self.memories_:
            return
        params = [p for p in model.parameters() if p.grad is not None]
        references = self.memory_gradients(model)
        gradient = torch.cat([p.grad.reshape(-1) for p in params if p.grad is not None])
        if bool((references @ gradient >= 0).all()):
            return
        projected = project_to_cone(
            gradient.double().numpy(), references.double().numpy(), float(self.margin)
        )
        self.projections_ += 1
        flat = torch.from_numpy(projected).to(gradient.dtype)
        offset = 0
        for p in params:
            assert p.grad is not None
            p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()

    def after_experience(
        self, model: nn.Module, experience: Experience, x: Tensor, y: Tensor
    ) -> None:
        index = per_class_sample(y, experience.classes, int(self.memory_per_class), self._generator)
        self.memories_.append((x[index].clone(), y[index].clone()))

    def stored_bytes(self) -> int:
        if getattr(self, "trainer_", None) is None:
            return 0
        return sum(tensor_bytes(x, y) for x, y in self.memories_)
