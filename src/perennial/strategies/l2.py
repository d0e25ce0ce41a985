"""L2 regularisation towards the weights learned on the previous experience."""

from __future__ import annotations

from typing import Unpack

from torch import Tensor, nn

from perennial.scenarios.base import Experience
from perennial.strategies.base import CommonParams, GradientStrategy, check_number, total

__all__ = ["L2"]


class L2(GradientStrategy):
    """Penalise ``strength / 2 * ||theta - theta*||^2``, ``theta*`` the weights after the last experience.

    EWC with the Fisher replaced by the identity: every weight is held back equally, which is the
    baseline Kirkpatrick et al. (2017, Fig. 2) compare EWC with.

    Parameters
    ----------
    strength
        ``lambda`` of the penalty. The default 0.04 is the value Hsu et al. (2018, "Re-evaluating
        continual learning scenarios", arXiv:1810.12488) use on permuted MNIST (0.02 for a
        penalty written without the 1/2).
    **common
        The keywords of :class:`~perennial.strategies.base.GradientStrategy`.

    Examples
    --------
    >>> from perennial.strategies.toy import toy_scenario
    >>> scenario = toy_scenario()
    >>> strategy = L2(strength=1.0, hidden=(16,), epochs=3)
    >>> for experience in scenario:
    ...     strategy.fit_experience(experience, scenario)
    >>> len(strategy.anchor_) == len(list(strategy.model_.parameters()))
    True
    """

    def __init__(self, *, strength: float = 0.04, **common: Unpack[CommonParams]) -> None:
        super().__init__(**common)
        self.strength = strength

    def check_params(self) -> None:
        super().check_params()
        check_number("strength", self.strength, 0.0)

    anchor_: list[Tensor] | None = None

    def after_experience(
        self, model: nn.Module, experience: Experience, x: Tensor, y: Tensor
    ) -> None:
        self.anchor_ = [p.detach().clone() for p in model.parameters()]

    def penalty(self, model: nn.Module, x: Tensor, logits: Tensor) -> Tensor | None:
        if self.anchor_ is None:
            return None
        pairs = zip(model.parameters(), self.anchor_, strict=True)
        return 0.5 * self.strength * total(((p - a) ** 2).sum() for p, a in pairs)
