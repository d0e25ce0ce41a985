"""GDumb (Prabhu, Torr & Dokania, 2020): a class-balanced memory, and a network trained on it alone."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from perennial.scenarios.base import Experience, Scenario
from perennial.strategies.base import GradientStrategy, check_int
from perennial.strategies.buffers import ClassBalancedBuffer
from perennial.strategies.trainer import Progress

__all__ = ["GDumb"]


class GDumb(GradientStrategy):
    """Greedy class-balanced sampler plus a dumb learner retrained from scratch on the memory.

    Each experience's examples are offered, in a seeded random order, to a
    :class:`~perennial.strategies.buffers.ClassBalancedBuffer`; then a freshly initialised network
    (same seed each time) is trained on the memory alone for ``epochs`` passes. The stream itself
    is never trained on. The budget grows by ``memory_per_class * len(experience.classes)`` per
    experience, as for :class:`~perennial.strategies.ER`. Unlike Prabhu et al., no learning-rate
    schedule or CutMix is used: the loop is the same as every other strategy's.

    Parameters
    ----------
    memory_per_class
        Slots added per class of each experience; default 1 (Mirzadeh et al., 2020).
    epochs
        Passes over the memory at each retraining; default 256, the default of the Mammoth
        library's GDumb (Boschini et al.), which follows Prabhu et al.'s long fits of the memory.
    hidden, batch_size, lr, momentum, seed, threads
        As for :class:`~perennial.strategies.base.GradientStrategy`.

    Examples
    --------
    >>> from perennial.strategies.toy import toy_scenario
    >>> scenario = toy_scenario()
    >>> strategy = GDumb(memory_per_class=5, hidden=(16,), epochs=20)
    >>> for experience in scenario:
    ...     strategy.fit_experience(experience, scenario)
    >>> strategy.buffer_.counts
    {0: 5, 1: 5, 2: 5, 3: 5}
    """

    def __init__(
        self,
        *,
        memory_per_class: int = 1,
        hidden: Sequence[int] = (256, 256),
        epochs: int = 256,
        batch_size: int = 10,
        lr: float = 0.01,
        momentum: float = 0.0,
        seed: int = 0,
        threads: int | None = None,
    ) -> None:
        super().__init__(
            hidden=hidden,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            momentum=momentum,
            seed=seed,
            threads=threads,
        )
        self.memory_per_class = memory_per_class

    def check_params(self) -> None:
        super().check_params()
        check_int("memory_per_class", self.memory_per_class, 0)

    buffer_: ClassBalancedBuffer

    def prepare(self, scenario: Scenario) -> None:
        first = getattr(self, "trainer_", None) is None
        super().prepare(scenario)
        if first:
            self.buffer_ = ClassBalancedBuffer(self.n_features_, seed=self.seed)

    def _fit(self, experience: Experience, x: Tensor, y: Tensor, progress: Progress | None) -> None:
        buffer = self.buffer_
        buffer.grow(self.memory_per_class * len(experience.classes))
        order = torch.randperm(int(y.shape[0]), generator=buffer.generator)
        buffer.add(x[order], y[order])
        self.trainer_ = self.new_trainer()
        self.trainer_.fit(
            buffer.x,
            buffer.y,
            self,
            epochs=self.epochs,
            batch_size=self.batch_size,
            progress=progress,
        )

    def stored_bytes(self) -> int:
        return self.buffer_.nbytes if getattr(self, "trainer_", None) is not None else 0
