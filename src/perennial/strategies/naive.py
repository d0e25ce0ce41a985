"""Naive fine-tuning: SGD on each experience in turn, nothing to protect what came before."""

from __future__ import annotations

from perennial.strategies.base import GradientStrategy

__all__ = ["Naive"]


class Naive(GradientStrategy):
    """Fine-tune the same network on each experience: the lower bound of continual learning.

    Takes the keywords of :class:`~perennial.strategies.base.GradientStrategy` only.

    Examples
    --------
    >>> from perennial.strategies.toy import toy_scenario
    >>> scenario = toy_scenario()
    >>> strategy = Naive(hidden=(16,), epochs=3)
    >>> strategy.fit_experience(scenario[0], scenario)
    >>> float((strategy.predict(scenario[0].test_x) == scenario[0].test_y).mean()) > 0.9
    True
    """
