"""Learning without Forgetting (Li & Hoiem, 2017): distil the previous model on the new data."""

from __future__ import annotations

import copy
from typing import Unpack

import torch
from torch import Tensor, nn
from torch.nn.functional import log_softmax, softmax

from perennial.scenarios.base import Experience
from perennial.strategies.base import CommonParams, GradientStrategy, check_number, total

__all__ = ["LwF"]


def distillation_loss(new_logits: Tensor, old_logits: Tensor, temperature: float) -> Tensor:
    """``-mean_n sum_k softmax(old/T)_nk * log_softmax(new/T)_nk`` (Li & Hoiem, 2017)."""
    targets = softmax(old_logits / temperature, dim=1)
    return -(targets * log_softmax(new_logits / temperature, dim=1)).sum(dim=1).mean()


class LwF(GradientStrategy):
    """Learning without Forgetting: keep the old outputs on the new data as soft targets.

    Before each experience after the first, a frozen copy of the network is kept. Training adds
    ``alpha * distillation_loss(new, old, T)`` on the current minibatch, restricted to the old
    classes (those of earlier experiences): one softmax over all of them in a class- or
    domain-incremental stream, one per earlier task (its own head) in a task-incremental one.
    The loss is Li & Hoiem's modified cross-entropy with temperature ``T`` ("Learning without
    Forgetting", TPAMI 2017). No examples are stored; the copy costs one network of memory.

    Parameters
    ----------
    alpha
        ``lambda_o``, the weight of the distillation term; default 1 (Li & Hoiem).
    temperature
        ``T``; default 2 (Li & Hoiem).
    **common
        The keywords of :class:`~perennial.strategies.base.GradientStrategy`.

    Examples
    --------
    >>> from perennial.strategies.toy import toy_scenario
    >>> scenario = toy_scenario()
    >>> strategy = LwF(hidden=(16,), epochs=3)
    >>> strategy.fit_experience(scenario[0], scenario)
    >>> strategy.old_groups_
    [(0, 1)]
    >>> strategy.fit_experience(scenario[1], scenario)  # distils classes 0 and 1 meanwhile
    >>> strategy.old_groups_
    [(0, 1, 2, 3)]
    """

    def __init__(
        self, *, alpha: float = 1.0, temperature: float = 2.0, **common: Unpack[CommonParams]
    ) -> None:
        super().__init__(**common)
        self.alpha = alpha
        self.temperature = temperature

    def check_params(self) -> None:
        super().check_params()
        check_number("alpha", self.alpha, 0.0)
        check_number("temperature", self.temperature, 0.0, strict=True)

    #: The frozen network of the end of the previous experience.
    previous_: nn.Module | None = None
    #: Groups of old classes, one distillation softmax each.
    old_groups_: list[tuple[int, ...]] | None = None

    def before_experience(
        self, model: nn.Module, experience: Experience, x: Tensor, y: Tensor
    ) -> None:
        if self.old_groups_:
            self.previous_ = copy.deepcopy(model).eval().requires_grad_(False)
            self._group_index = [torch.tensor(g, dtype=torch.int64) for g in self.old_groups_]

    def after_experience(
        self, model: nn.Module, experience: Experience, x: Tensor, y: Tensor
    ) -> None:
        classes = tuple(sorted(int(c) for c in experience.classes))
        groups = list(self.old_groups_ or [])
        if self.task_labels_:
            if classes not in groups:
                groups.append(classes)
        else:
            groups = [tuple(sorted({*classes, *(groups[0] if groups else ())}))]
        self.old_groups_ = groups

    def penalty(self, model: nn.Module, x: Tensor, logits: Tensor) -> Tensor | None:
        if self.previous_ is None:
            return None
        with torch.no_grad():
            old = self.previous_(x)
        return self.alpha * total(
            distillation_loss(logits[:, g], old[:, g], self.temperature) for g in self._group_index
        )
