"""Experience replay (Chaudhry et al., 2019) from a reservoir-sampled buffer."""

from __future__ import annotations

from typing import Unpack

import torch
from torch import Tensor, nn

from perennial.scenarios.base import Experience, Scenario
from perennial.strategies.base import CommonParams, GradientStrategy, check_int
from perennial.strategies.buffers import ReservoirBuffer

__all__ = ["ER"]


class ER(GradientStrategy):
    """Experience replay: each minibatch is joined by as many examples drawn from a memory.

    The memory is a :class:`~perennial.strategies.buffers.ReservoirBuffer` held in
    preallocated tensors. Each training minibatch is concatenated with an equal-size minibatch
    drawn uniformly (without replacement) from the memory, then offered to the reservoir (first
    pass over the experience only), as in "On Tiny Episodic Memories in Continual Learning"
    (Chaudhry et al., 2019, arXiv:1902.10486).

    Memory budget: at the start of each experience the capacity grows by
    ``memory_per_class * len(experience.classes)``, so it is ``memory_per_class`` examples per
    class *per experience*. In a class-incremental stream (disjoint classes) that is
    ``memory_per_class`` per class seen; in permuted MNIST, where every experience has the same
    10 classes, it is ``memory_per_class`` per class per task, the "1 example per class per
    task" setting of Mirzadeh et al. (2020) with ``memory_per_class=1``. New slots are filled by
    the next examples offered; after that the reservoir rule applies to everything seen.

    Parameters
    ----------
    memory_per_class
        Slots added per class of each experience; default 1 (Mirzadeh et al., 2020; the smallest
        memory of Chaudhry et al., 2019).
    **common
        The keywords of :class:`~perennial.strategies.base.GradientStrategy`.

    Examples
    --------
    >>> from perennial.strategies.toy import toy_scenario
    >>> scenario = toy_scenario()
    >>> strategy = ER(memory_per_class=5, hidden=(16,), epochs=3)
    >>> for experience in scenario:
    ...     strategy.fit_experience(experience, scenario)
    >>> strategy.buffer_.size, strategy.stored_bytes()
    (20, 800)
    """

    def __init__(self, *, memory_per_class: int = 1, **common: Unpack[CommonParams]) -> None:
        super().__init__(**common)
        self.memory_per_class = memory_per_class

    def check_params(self) -> None:
        super().check_params()
        check_int("memory_per_class", self.memory_per_class, 0)

    buffer_: ReservoirBuffer

    def prepare(self, scenario: Scenario) -> None:
        first = getattr(self, "trainer_", None) is None
        super().prepare(scenario)
        if first:
            self.buffer_ = ReservoirBuffer(self.n_features_, seed=self.seed)

    def before_experience(
        self, model: nn.Module, experience: Experience, x: Tensor, y: Tensor
    ) -> None:
        self.buffer_.grow(self.memory_per_class * len(experience.classes))
        self._to_offer = int(y.shape[0])  # each example is offered once, on the first pass

    def batch(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        buffer = self.buffer_
        replay = buffer.sample(int(y.shape[0])) if buffer.size else None
        if self._to_offer > 0:
            count = min(self._to_offer, int(y.shape[0]))
            buffer.add(x[:count], y[:count])
            self._to_offer -= count
        if replay is None:
            return x, y
        return torch.cat([x, replay[0]]), torch.cat([y, replay[1]])

    def stored_bytes(self) -> int:
        return self.buffer_.nbytes if getattr(self, "trainer_", None) is not None else 0
