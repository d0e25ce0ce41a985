"""Averaged Gradient Episodic Memory (Chaudhry et al., 2019): project conflicting gradients."""

from __future__ import annotations

from typing import Unpack

import torch
from torch import Tensor, nn

from perennial.scenarios.base import Experience, Scenario
from perennial.strategies.base import CommonParams, GradientStrategy, check_int, tensor_bytes
from perennial.strategies.buffers import per_class_sample

__all__ = ["AGEM"]


class AGEM(GradientStrategy):
    """A-GEM: never let a step increase the loss on a sample of the episodic memory.

    After each experience ``memory_per_class`` random training examples of each of its classes
    join the episodic memory (so the budget is per class *per experience*, as for
    :class:`~perennial.strategies.ER`). At every step a reference gradient ``g_ref`` is computed
    on up to ``reference_size`` examples drawn from the memory; if the minibatch gradient ``g``
    has ``g . g_ref < 0`` it is replaced by ``g - (g . g_ref / g_ref . g_ref) g_ref``
    (Chaudhry et al., 2019, "Efficient lifelong learning with A-GEM", ICLR).

    Parameters
    ----------
    memory_per_class
        Examples stored per class of each experience; default 1 (Mirzadeh et al., 2020).
    reference_size
        Memory examples per reference gradient; default 256 (Chaudhry et al.'s
        ``EPS_MEM_BATCH_SIZE`` for permuted MNIST).
    **common
        The keywords of :class:`~perennial.strategies.base.GradientStrategy`.

    Examples
    --------
    >>> from perennial.strategies.toy import toy_scenario
    >>> scenario = toy_scenario()
    >>> strategy = AGEM(memory_per_class=3, hidden=(16,), epochs=3)
    >>> for experience in scenario:
    ...     strategy.fit_experience(experience, scenario)
    >>> strategy.memory_y_.tolist()
    [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    """

    def __init__(
        self,
        *,
        memory_per_class: int = 1,
        reference_size: int = 256,
        **common: Unpack[CommonParams],
    ) -> None:
        super().__init__(**common)
        self.memory_per_class = memory_per_class
        self.reference_size = reference_size

    def check_params(self) -> None:
        super().check_params()
        check_int("memory_per_class", self.memory_per_class, 0)
        check_int("reference_size", self.reference_size, 1)

    memory_x_: Tensor
    memory_y_: Tensor

    def prepare(self, scenario: Scenario) -> None:
        first = getattr(self, "trainer_", None) is None
        super().prepare(scenario)
        if first:
            self.memory_x_ = torch.empty(0, self.n_features_)
            self.memory_y_ = torch.empty(0, dtype=torch.int64)
            self._generator = torch.Generator().manual_seed(self.seed)

    @staticmethod
    def project(gradient: Tensor, reference: Tensor) -> Tensor:
        """``gradient`` projected so that it does not point against ``reference`` (flat vectors).

        Returns ``gradient`` itself when ``gradient . reference >= 0``.
        """
        dot = torch.dot(gradient, reference)
        if dot >= 0:
            return gradient
        return gradient - (dot / torch.dot(reference, reference)) * reference

    def after_backward(self, model: nn.Module) -> None:
        count = int(self.memory_y_.shape[0])
        if count == 0:
            return
        index = torch.randperm(count, generator=self._generator)[: self.reference_size]
        params = [p for p in model.parameters() if p.grad is not None]
        reference_loss = self.trainer_.loss(model(self.memory_x_[index]), self.memory_y_[index])
        reference = torch.cat([g.reshape(-1) for g in torch.autograd.grad(reference_loss, params)])
        gradient = torch.cat([p.grad.reshape(-1) for p in params if p.grad is not None])
        projected = self.project(gradient, reference)
        if projected is gradient:
            return
        offset = 0
        for p in params:
            assert p.grad is not None
            p.grad.copy_(projected[offset : offset + p.numel()].view_as(p))
            offset += p.numel()

    def after_experience(
        self, model: nn.Module, experience: Experience, x: Tensor, y: Tensor
    ) -> None:
        index = per_class_sample(y, experience.classes, int(self.memory_per_class), self._generator)
        self.memory_x_ = torch.cat([self.memory_x_, x[index]])
        self.memory_y_ = torch.cat([self.memory_y_, y[index]])

    def stored_bytes(self) -> int:
        if getattr(self, "trainer_", None) is None:
            return 0
        return tensor_bytes(self.memory_x_, self.memory_y_)
