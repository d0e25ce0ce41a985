"""Elastic Weight Consolidation (Kirkpatrick et al., 2017): its Fisher and its penalty."""

from __future__ import annotations

from typing import Unpack

import torch
from torch import Tensor, nn
from torch.nn.functional import cross_entropy

from perennial.scenarios.base import Experience
from perennial.strategies.base import CommonParams, GradientStrategy, check_number, total
from perennial.strategies.gradients import gradient_moment
from perennial.strategies.trainer import Trainer

__all__ = ["EWC", "empirical_fisher"]


def empirical_fisher(model: nn.Module, trainer: Trainer, x: Tensor, y: Tensor) -> list[Tensor]:
    """Diagonal empirical Fisher: the mean over examples of the squared gradient of ``log p(y|x)``.

    ``p`` is the softmax of the (task-masked) outputs and ``y`` the true label; one tensor per
    parameter of ``model``, in ``model.parameters()`` order.
    """

    def log_likelihood(logits: Tensor, labels: Tensor) -> Tensor:
        return -cross_entropy(trainer.masked(logits, labels), labels, reduction="sum")

    return [f / y.shape[0] for f in gradient_moment(model, log_likelihood, x, y, power=2)]


class EWC(GradientStrategy):
    """Elastic Weight Consolidation: one quadratic penalty per past experience.

    After experience ``t`` the strategy keeps the weights ``theta*_t`` and the diagonal empirical
    Fisher ``F_t`` (mean over the experience's training examples of the squared per-example
    gradient of the log-likelihood of the true label). Training on later experiences adds
    ``strength / 2 * sum_t sum_i F_t,i (theta_i - theta*_t,i)^2`` to the loss (Kirkpatrick et al.,
    2017, PNAS 114(13), with one term per past task as in their discussion of several tasks).
    The terms are kept apart (``fishers_``, ``anchors_``) but summed into one quadratic for
    training, as Kirkpatrick et al. note one may: a step costs the same whatever the number of
    past experiences, and the penalty and its gradient are those of the separate terms.

    Parameters
    ----------
    strength
        ``lambda``. The default 10 is the value Chaudhry et al. (2019, "Efficient lifelong
        learning with A-GEM", ICLR) use for EWC on permuted MNIST in the single-epoch, batch-10
        SGD regime of this package's defaults. van de Ven, Tuytelaars & Tolias (2022, "Three
        types of incremental learning") use 100 with a Fisher averaged over the predicted label
        distribution; with the empirical Fisher and plain SGD here, 100 diverged on experience 15
        of a 20-task permuted MNIST stream (see Notes).
    **common
        The keywords of :class:`~perennial.strategies.base.GradientStrategy`.

    Notes
    -----
    With plain SGD the penalty is stable only while ``lr * strength * F_i < 2`` for every weight;
    beyond that the weights oscillate and grow, and training stops with an error. The Fisher
    terms add up over experiences, so a strength that is stable early can diverge later (100
    did, on experience 15 of 20 at ``lr=0.01``).

    Examples
    --------
    >>> from perennial.strategies.toy import toy_scenario
    >>> scenario = toy_scenario()
    >>> strategy = EWC(hidden=(16,), epochs=3)
    >>> for experience in scenario:
    ...     strategy.fit_experience(experience, scenario)
    >>> len(strategy.fishers_), len(strategy.anchors_)
    (2, 2)
    """

    def __init__(self, *, strength: float = 10.0, **common: Unpack[CommonParams]) -> None:
        super().__init__(**common)
        self.strength = strength

    def check_params(self) -> None:
        super().check_params()
        check_number("strength", self.strength, 0.0)

    #: The Fisher of each past experience, one tensor per parameter.
    fishers_: list[list[Tensor]] | None = None
    #: The weights at the end of each past experience.
    anchors_: list[list[Tensor]] | None = None
    _curvature: list[Tensor] | None = None
    _pull: list[Tensor] | None = None
    _offset: float = 0.0

    def after_experience(
        self, model: nn.Module, experience: Experience, x: Tensor, y: Tensor
    ) -> None:
        fisher = empirical_fisher(model, self.trainer_, x, y)
        anchor = [p.detach().clone() for p in model.parameters()]
        self.fishers_ = [*(self.fishers_ or []), fisher]
        self.anchors_ = [*(self.anchors_ or []), anchor]
        # sum_t F_t (theta - a_t)^2 = C theta^2 - 2 U theta + K with C = sum_t F_t,
        # U = sum_t F_t a_t and K = sum_t F_t a_t^2: one quadratic, whatever the number of terms.
        if self._curvature is None or self._pull is None:
            self._curvature = [torch.zeros_like(f) for f in fisher]
            self._pull = [torch.zeros_like(f) for f in fisher]
        self._curvature = [c + f for c, f in zip(self._curvature, fisher, strict=True)]
        self._pull = [u + f * a for u, f, a in zip(self._pull, fisher, anchor, strict=True)]
        self._offset += sum(
            float((f.double() * a.double() ** 2).sum()) for f, a in zip(fisher, anchor, strict=True)
        )

    def penalty(self, model: nn.Module, x: Tensor, logits: Tensor) -> Tensor | None:
        if self._curvature is None or self._pull is None:
            return None
        triples = zip(model.parameters(), self._curvature, self._pull, strict=True)
        quadratic = total((c * p * p - 2.0 * u * p).sum() for p, c, u in triples)
        return 0.5 * self.strength * (quadratic + self._offset)
