"""Cumulative training: keep training one network on all the data seen so far."""

from __future__ import annotations

import torch
from torch import Tensor

from perennial.scenarios.base import Experience, Scenario
from perennial.strategies.base import GradientStrategy, tensor_bytes
from perennial.strategies.trainer import Progress

__all__ = ["Cumulative"]


class Cumulative(GradientStrategy):
    """At each experience, continue training the same network on the union of all data so far.

    This is what plain transfer learning must do to keep the old classes: store every example
    and revisit all of them at every step, so each experience costs more than the one before.
    ``stored_bytes`` counts the stored union.

    Takes the keywords of :class:`~perennial.strategies.base.GradientStrategy` only.

    Examples
    --------
    >>> from perennial.strategies.toy import toy_scenario
    >>> scenario = toy_scenario()
    >>> strategy = Cumulative(hidden=(16,), epochs=3)
    >>> for experience in scenario:
    ...     strategy.fit_experience(experience, scenario)
    >>> strategy.stored_bytes() == sum(e.train_x.nbytes + e.train_y.nbytes for e in scenario)
    True
    """

    def prepare(self, scenario: Scenario) -> None:
        first = getattr(self, "trainer_", None) is None
        super().prepare(scenario)
        if first:
            self.seen_x_ = torch.empty(0, self.n_features_)
            self.seen_y_ = torch.empty(0, dtype=torch.int64)

    def _fit(self, experience: Experience, x: Tensor, y: Tensor, progress: Progress | None) -> None:
        self.seen_x_ = torch.cat([self.seen_x_, x])
        self.seen_y_ = torch.cat([self.seen_y_, y])
        self.trainer_.fit(
            self.seen_x_,
            self.seen_y_,
            self,
            epochs=self.epochs,
            batch_size=self.batch_size,
            progress=progress,
        )

    def stored_bytes(self) -> int:
        if getattr(self, "trainer_", None) is None:
            return 0
        return tensor_bytes(self.seen_x_, self.seen_y_)
