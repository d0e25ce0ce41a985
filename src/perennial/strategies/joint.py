"""Joint training: the multitask upper bound, all experiences' data shuffled together."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from perennial.scenarios.base import Experience, Scenario
from perennial.strategies.base import GradientStrategy, check_experience, tensor_bytes
from perennial.strategies.trainer import Progress

__all__ = ["Joint"]


class Joint(GradientStrategy):
    """Train one network from scratch on the union of the experiences, shuffled together.

    :meth:`fit_stream` trains on every experience of the scenario at once, for ``epochs`` passes
    (``whole_stream = True``: the runner calls it instead of :meth:`fit_experience`). Called
    experience by experience, :meth:`fit_experience` retrains from the same initial weights on the
    union of the experiences seen so far, so after the last one the network is exactly the one
    :meth:`fit_stream` gives. ``stored_bytes`` counts the union it trained on (all of it).

    Takes the keywords of :class:`~perennial.strategies.base.GradientStrategy` only.

    Examples
    --------
    >>> from perennial.strategies.toy import toy_scenario
    >>> scenario = toy_scenario()
    >>> strategy = Joint(hidden=(16,), epochs=3)
    >>> strategy.fit_stream(scenario)
    >>> [float((strategy.predict(e.test_x) == e.test_y).mean()) > 0.8 for e in scenario]
    [True, True]
    """

    whole_stream: ClassVar[bool] = True

    #: Training tensors of the experiences learned so far.
    seen_: list[tuple[Tensor, Tensor]]

    def fit_stream(self, scenario: Scenario, progress: Progress | None = None) -> None:
        self.check_params()
        for experience in scenario:
            check_experience(experience, scenario)
        self.prepare(scenario)
        for experience in scenario:
            self._note_task(experience)
        self.seen_ = [self.tensors(experience) for experience in scenario]
        self._train_union(self.seen_, progress)
        self.check_finite("the whole stream")
        self.n_experiences_ = len(scenario)

    def _fit(self, experience: Experience, x: Tensor, y: Tensor, progress: Progress | None) -> None:
        self.seen_.append((x, y))
        self._train_union(self.seen_, progress)

    def prepare(self, scenario: Scenario) -> None:
        first = getattr(self, "trainer_", None) is None
        super().prepare(scenario)
        if first:
            self.seen_ = []

    def _train_union(self, parts: list[tuple[Tensor, Tensor]], progress: Progress | None) -> None:
        x = torch.cat([p[0] for p in parts])
        y = torch.cat([p[1] for p in parts])
        self.trainer_ = self.new_trainer()
        self.trainer_.fit(
            x, y, self, epochs=self.epochs, batch_size=self.batch_size, progress=progress
        )
        self.union_bytes_ = tensor_bytes(x, y)

    def stored_bytes(self) -> int:
        return int(getattr(self, "union_bytes_", 0))
