"""Online EWC (Schwarz et al., 2018): one running Fisher and the latest anchor."""

from __future__ import annotations

from typing import Unpack

from torch import Tensor, nn

from perennial.scenarios.base import Experience
from perennial.strategies.base import CommonParams, GradientStrategy, check_number, total
from perennial.strategies.ewc import empirical_fisher

__all__ = ["OnlineEWC"]


class OnlineEWC(GradientStrategy):
    """EWC with a single penalty whose Fisher is a running, decayed sum over experiences.

    After each experience, ``F <- gamma * F + F_new`` (``F_new`` the diagonal empirical Fisher of
    that experience, as in :class:`~perennial.strategies.EWC`) and the anchor ``theta*`` becomes
    the current weights. Training adds ``strength / 2 * sum_i F_i (theta_i - theta*_i)^2``
    (Schwarz et al., 2018, "Progress & Compress", ICML): the cost of the penalty does not
    grow with the number of experiences.

    Parameters
    ----------
    strength
        ``lambda``; default 10, as :class:`~perennial.strategies.EWC`.
    gamma
        Decay of the old Fisher, in ``[0, 1]``. The default 1 (no decay) is the default of van de
        Ven et al.'s implementation used for "Three scenarios for continual learning" (van de Ven
        & Tolias, 2019, arXiv:1904.07734) and its successor.
    **common
        The keywords of :class:`~perennial.strategies.base.GradientStrategy`.

    Notes
    -----
    With plain SGD the penalty is stable only while ``lr * strength * F_i < 2`` (see
    :class:`~perennial.strategies.EWC`).

    Examples
    --------
    >>> from perennial.strategies.toy import toy_scenario
    >>> scenario = toy_scenario()
    >>> strategy = OnlineEWC(gamma=0.9, hidden=(16,), epochs=3)
    >>> for experience in scenario:
    ...     strategy.fit_experience(experience, scenario)
    >>> [f.shape for f in strategy.fisher_] == [p.shape for p in strategy.model_.parameters()]
    True
    """

    def __init__(
        self, *, strength: float = 10.0, gamma: float = 1.0, **common: Unpack[CommonParams]
    ) -> None:
        super().__init__(**common)
        self.strength = strength
        self.gamma = gamma

    def check_params(self) -> None:
        super().check_params()
        check_number("strength", self.strength, 0.0)
        check_number("gamma", self.gamma, 0.0, maximum=1.0)

    fisher_: list[Tensor] | None = None
    anchor_: list[Tensor] | None = None

    def after_experience(
        self, model: nn.Module, experience: Experience, x: Tensor, y: Tensor
    ) -> None:
        new = empirical_fisher(model, self.trainer_, x, y)
        if self.fisher_ is None:
            self.fisher_ = new
        else:
            self.fisher_ = [self.gamma * f + n for f, n in zip(self.fisher_, new, strict=True)]
        self.anchor_ = [p.detach().clone() for p in model.parameters()]

    def penalty(self, model: nn.Module, x: Tensor, logits: Tensor) -> Tensor | None:
        if self.fisher_ is None or self.anchor_ is None:
            return None
        triples = zip(model.parameters(), self.fisher_, self.anchor_, strict=True)
        return 0.5 * self.strength * total((f * (p - a) ** 2).sum() for p, f, a in triples)
