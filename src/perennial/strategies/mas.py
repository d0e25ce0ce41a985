"""Memory Aware Synapses (Aljundi et al., 2018): importance from the output's sensitivity."""

from __future__ import annotations

from typing import Unpack

from torch import Tensor, nn

from perennial.scenarios.base import Experience
from perennial.strategies.base import CommonParams, GradientStrategy, check_number, total
from perennial.strategies.gradients import gradient_moment
from perennial.strategies.trainer import Trainer

__all__ = ["MAS"]


def output_sensitivity(model: nn.Module, trainer: Trainer, x: Tensor, y: Tensor) -> list[Tensor]:
    """Mean over examples of ``|d ||f(x)||_2^2 / d theta|``, one tensor per parameter.

    ``f(x)`` are the network's outputs (before the softmax); in a task-incremental stream only
    the outputs of the example's task count. Labels are used for nothing else.
    """

    def squared_norms(logits: Tensor, labels: Tensor) -> Tensor:
        if trainer.blocked is not None:
            logits = logits.masked_fill(trainer.blocked[labels], 0.0)
        return (logits * logits).sum()

    return [g / y.shape[0] for g in gradient_moment(model, squared_norms, x, y, power=1)]


class MAS(GradientStrategy):
    """Memory Aware Synapses: hold back the weights the outputs are most sensitive to.

    After each experience the importance ``Omega`` grows by the mean, over the experience's
    training inputs, of ``|d ||f(x)||^2 / d theta|`` (computed per example; no labels needed), and
    the anchor ``theta*`` becomes the current weights. Later experiences add
    ``strength * sum_i Omega_i (theta_i - theta*_i)^2`` (Aljundi et al., 2018, ECCV).

    Parameters
    ----------
    strength
        ``lambda``. The default 0.1 is the value Chaudhry et al. (2019, "Efficient lifelong
        learning with A-GEM", ICLR) select for MAS on permuted MNIST in the single-epoch, batch-10
        SGD regime of this package's defaults, with the same penalty.
    **common
        The keywords of :class:`~perennial.strategies.base.GradientStrategy`.

    Notes
    -----
    With plain SGD the penalty is stable only while ``lr * strength * Omega_i < 1``.

    Examples
    --------
    >>> from perennial.strategies.toy import toy_scenario
    >>> scenario = toy_scenario()
    >>> strategy = MAS(hidden=(16,), epochs=3)
    >>> for experience in scenario:
    ...     strategy.fit_experience(experience, scenario)
    >>> all(bool((o >= 0).all()) for o in strategy.importance_)
    True
    """

    def __init__(self, *, strength: float = 0.1, **common: Unpack[CommonParams]) -> None:
        super().__init__(**common)
        self.strength = strength

    def check_params(self) -> None:
        super().check_params()
        check_number("strength", self.strength, 0.0)

    importance_: list[Tensor] | None = None
    anchor_: list[Tensor] | None = None

    def after_experience(
        self, model: nn.Module, experience: Experience, x: Tensor, y: Tensor
    ) -> None:
        new = output_sensitivity(model, self.trainer_, x, y)
        if self.importance_ is None:
            self.importance_ = new
        else:
            self.importance_ = [o + n for o, n in zip(self.importance_, new, strict=True)]
        self.anchor_ = [p.detach().clone() for p in model.parameters()]

    def penalty(self, model: nn.Module, x: Tensor, logits: Tensor) -> Tensor | None:
        if self.importance_ is None or self.anchor_ is None:
            return None
        triples = zip(model.parameters(), self.importance_, self.anchor_, strict=True)
        return self.strength * total((o * (p - a) ** 2).sum() for p, o, a in triples)
