"""Dark Experience Replay++ (Buzzega et al., 2020): replay labels and the logits seen then."""

from __future__ import annotations

from typing import Unpack

import torch
from torch import Tensor, nn
from torch.nn.functional import mse_loss

from perennial.scenarios.base import Experience, Scenario
from perennial.strategies.base import CommonParams, GradientStrategy, check_int, check_number
from perennial.strategies.buffers import ReservoirBuffer

__all__ = ["DERpp", "LogitReservoir"]


class LogitReservoir(ReservoirBuffer):
    """A reservoir of examples that also keeps, for each, the network's logits when it was stored.

    The slots are chosen by :class:`~perennial.strategies.buffers.ReservoirBuffer`'s rule; the
    logits travel with their example (a replaced example's logits are replaced too).

    Examples
    --------
    >>> buffer = LogitReservoir(n_features=2, n_outputs=3, seed=0)
    >>> buffer.grow(4)
    >>> buffer.add(torch.zeros(2, 2), torch.tensor([0, 1]), torch.ones(2, 3))
    >>> buffer.size, buffer.logits.shape
    (2, torch.Size([2, 3]))
    """

    def __init__(self, n_features: int, n_outputs: int, seed: int = 0) -> None:
        super().__init__(n_features, seed)
        self.n_outputs = n_outputs
        self._logits = torch.empty(0, n_outputs)
        self._pending: Tensor | None = None

    @property
    def logits(self) -> Tensor:
        """The stored logits (a view of the filled part)."""
        return self._logits[: self.size]

    @property
    def nbytes(self) -> int:
        return super().nbytes + self.size * self.n_outputs * self._logits.element_size()

    def grow(self, extra: int) -> None:
        super().grow(extra)
        logits = torch.empty(self.capacity, self.n_outputs)
        logits[: self.size] = self.logits
        self._logits = logits

    def add(self, x: Tensor, y: Tensor, logits: Tensor | None = None) -> None:
        """Offer a batch of examples with their logits, in order."""
        if logits is None:
            raise ValueError("LogitReservoir.add needs the logits of the examples")
        self._pending = logits
        try:
            super().add(x, y)
        finally:
            self._pending = None

    def _write(self, slots: dict[int, int], x: Tensor, y: Tensor) -> None:
        super()._write(slots, x, y)
        if slots and self._pending is not None:
            target = torch.tensor(list(slots), dtype=torch.int64)
            source = torch.tensor(list(slots.values()), dtype=torch.int64)
            self._logits[target] = self._pending[source]

    def sample_with_logits(self, count: int) -> tuple[Tensor, Tensor, Tensor]:
        """``min(count, size)`` stored examples, labels and logits, uniformly without replacement."""
        index = torch.randperm(self.size, generator=self.generator)[:count]
        return self._x[index], self._y[index], self._logits[index]


class DERpp(GradientStrategy):
    """DER++: replay past examples' logits (a distillation target) and their labels.

    Every training example is offered once (on the first pass) to a reservoir that keeps it with
    the logits the network gave it at that step. Each minibatch loss is then

        CE(f(x), y) + alpha * ||f(x') - z'||^2 / n_outputs + beta * CE(f(x''), y''),

    with ``(x', z')`` and ``(x'', y'')`` two independent minibatches from the reservoir (the mean
    squared error over outputs, as PyTorch's ``mse_loss``): "Dark Experience for General
    Continual Learning: a Strong, Simple Baseline" (Buzzega, Boschini, Porrello, Abati &
    Calderara, 2020, NeurIPS), their equation 6. ``beta = 0`` gives DER.

    The memory budget follows :class:`~perennial.strategies.ER`: ``memory_per_class`` slots per
    class of each experience, so the two compare at the same number of stored examples (DER++
    also stores one logit vector per example, counted by :meth:`stored_bytes`).

    Parameters
    ----------
    memory_per_class
        Slots added per class of each experience; default 1.
    alpha
        Weight of the logit-matching term; default 0.5.
    beta
        Weight of the replayed labels' cross-entropy; default 0.5. Buzzega et al. chose both per
        benchmark by a grid search (their appendix lists values from 0.1 to 1.0).
    **common
        The keywords of :class:`~perennial.strategies.base.GradientStrategy`.

    Examples
    --------
    >>> from perennial.strategies.toy import toy_scenario
    >>> scenario = toy_scenario()
    >>> strategy = DERpp(memory_per_class=5, hidden=(16,), epochs=2)
    >>> for experience in scenario:
    ...     strategy.fit_experience(experience, scenario)
    >>> strategy.buffer_.size, strategy.buffer_.logits.shape[1]
    (20, 4)
    """

    def __init__(
        self,
        *,
        memory_per_class: int = 1,
        alpha: float = 0.5,
        beta: float = 0.5,
        **common: Unpack[CommonParams],
    ) -> None:
        super().__init__(**common)
        self.memory_per_class = memory_per_class
        self.alpha = alpha
        self.beta = beta

    def check_params(self) -> None:
        super().check_params()
        check_int("memory_per_class", self.memory_per_class, 0)
        check_number("alpha", self.alpha, 0.0)
        check_number("beta", self.beta, 0.0)

    buffer_: LogitReservoir

    def prepare(self, scenario: Scenario) -> None:
        first = getattr(self, "trainer_", None) is None
        super().prepare(scenario)
        if first:
            self.buffer_ = LogitReservoir(self.n_features_, self.n_classes_, seed=self.seed)

    def before_experience(
        self, model: nn.Module, experience: Experience, x: Tensor, y: Tensor
    ) -> None:
        self.buffer_.grow(self.memory_per_class * len(experience.classes))
        self._to_offer = int(y.shape[0])  # each example is offered once, on the first pass

    def batch(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        self._current = (x, y)  # the penalty offers them, with their logits, to the reservoir
        return x, y

    def replay_terms(self, model: nn.Module) -> Tensor | None:
        """``alpha * logit MSE + beta * label CE`` on two reservoir minibatches (None if empty)."""
        buffer = self.buffer_
        if buffer.size == 0:
            return None
        count = int(self._current[1].shape[0])
        x1, _, z1 = buffer.sample_with_logits(count)
        term = self.alpha * mse_loss(model(x1), z1)
        if self.beta > 0:
            x2, y2, _ = buffer.sample_with_logits(count)
            term = term + self.beta * self.trainer_.loss(model(x2), y2)
        return term

    def penalty(self, model: nn.Module, x: Tensor, logits: Tensor) -> Tensor | None:
        term = self.replay_terms(model)
        if self._to_offer > 0:
            count = min(self._to_offer, int(x.shape[0]))
            xb, yb = self._current
            self.buffer_.add(xb[:count], yb[:count], logits[:count].detach())
            self._to_offer -= count
        return term

    def stored_bytes(self) -> int:
        return self.buffer_.nbytes if getattr(self, "trainer_", None) is not None else 0
