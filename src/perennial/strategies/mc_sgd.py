"""Mode-connectivity SGD (Mirzadeh et al., 2021): a solution linearly connected to both minima."""

from __future__ import annotations

from typing import Unpack

import torch
from torch import Tensor, nn
from torch.func import functional_call

from perennial.scenarios.base import Experience, Scenario
from perennial.strategies.base import check_int, check_number, tensor_bytes
from perennial.strategies.buffers import per_class_sample
from perennial.strategies.stable_sgd import StableParams, StableSGD

__all__ = ["MCSGD"]


class MCSGD(StableSGD):
    """MC-SGD: after each experience, find weights on a low-loss line to the old and new minima.

    Experience ``t`` is first learned by SGD in Stable SGD's regime from the continual solution
    ``w_{t-1}``, which gives ``w^_t``. The new continual solution ``w_t`` starts at ``w_{t-1} + alpha (w^_t -
    w_{t-1})`` and is trained by SGD, for ``mc_epochs`` passes, on

        mean over b in B of [ L_old(w_{t-1} + b (w - w_{t-1})) + L_new(w^_t + b (w - w^_t)) ],

    with ``B`` the ``line_samples + 1`` evenly spaced points of ``[0, 1]``, ``L_old`` the loss on
    the episodic memory of the past experiences and ``L_new`` the loss on the examples of
    experience ``t`` that join the memory: low loss along both segments is the linear mode
    connectivity that "Linear Mode Connectivity in Multitask and Continual Learning" (Mirzadeh,
    Farajtabar, Gorur, Pascanu & Ghasemzadeh, 2021, ICLR) finds between multitask and continual
    minima. The gradient flows through the interpolation (a point at ``b`` contributes ``b``
    times the loss gradient there).

    **The training regime.** Mirzadeh et al. (2021) obtain the continual minima ``w^_t`` with the
    regime of "Understanding the Role of Training Regimes in Continual Learning" (Mirzadeh et al.,
    2020): dropout, a learning rate that decays from task to task, small batches. MC-SGD is
    therefore a :class:`~perennial.strategies.stable_sgd.StableSGD` (same ``dropout``, ``decay``
    and ``lr`` defaults, the same network and seeding) plus the memory and the search: before its
    first search it trains exactly as Stable SGD does. ``dropout=0, decay=1, lr=0.01`` gives
    plain SGD. The search trains with dropout on, at the experience's decayed learning rate
    unless ``mc_lr`` is given.

    Parameters
    ----------
    memory_per_class
        Examples stored per class of each experience; default 1 (the 1-per-class-per-task
        memory of the seed's table).
    alpha
        Where on the segment from ``w_{t-1}`` to ``w^_t`` the search starts; default 0.5.
    line_samples
        Intervals of the segment: ``line_samples + 1`` points; default 5.
    mc_epochs
        Passes over the memories in the connectivity search; default 1.
    mc_lr
        Its learning rate; None (default) uses the experience's: ``lr * decay ** t``.
    **stable
        The keywords of :class:`~perennial.strategies.stable_sgd.StableSGD` (``dropout`` 0.5,
        ``decay`` 0.8, ``lr`` 0.1) and of :class:`~perennial.strategies.base.GradientStrategy`.

    Examples
    --------
    >>> from perennial.strategies.toy import toy_scenario
    >>> scenario = toy_scenario()
    >>> strategy = MCSGD(memory_per_class=3, hidden=(16,), epochs=2)
    >>> for experience in scenario:
    ...     strategy.fit_experience(experience, scenario)
    >>> len(strategy.memory_y_), strategy.searches_
    (12, 1)
    """

    def __init__(
        self,
        *,
        memory_per_class: int = 1,
        alpha: float = 0.5,
        line_samples: int = 5,
        mc_epochs: int = 1,
        mc_lr: float | None = None,
        **stable: Unpack[StableParams],
    ) -> None:
        super().__init__(**stable)
        self.memory_per_class = memory_per_class
        self.alpha = alpha
        self.line_samples = line_samples
        self.mc_epochs = mc_epochs
        self.mc_lr = mc_lr

    def check_params(self) -> None:
        super().check_params()
        check_int("memory_per_class", self.memory_per_class, 1)
        check_number("alpha", self.alpha, 0.0, maximum=1.0)
        check_int("line_samples", self.line_samples, 1)
        check_int("mc_epochs", self.mc_epochs, 1)
        if self.mc_lr is not None:
            check_number("mc_lr", self.mc_lr, 0.0, strict=True)

    memory_x_: Tensor
    memory_y_: Tensor

    def prepare(self, scenario: Scenario) -> None:
        first = getattr(self, "trainer_", None) is None
        super().prepare(scenario)
        if first:
            self.memory_x_ = torch.empty(0, self.n_features_)
            self.memory_y_ = torch.empty(0, dtype=torch.int64)
            self._generator = torch.Generator().manual_seed(self.seed)
            self.searches_ = 0

    def _choose(self, experience: Experience, y: Tensor) -> Tensor:
        return per_class_sample(y, experience.classes, int(self.memory_per_class), self._generator)

    def line_loss(
        self,
        model: nn.Module,
        start: dict[str, Tensor],
        x: Tensor,
        y: Tensor,
    ) -> Tensor:
        """Mean loss on ``(x, y)`` over the points ``start + b (w - start)``, ``w`` the model's."""
        weights = dict(model.named_parameters())
        points = torch.linspace(0.0, 1.0, int(self.line_samples) + 1).tolist()
        losses = []
        for b in points:
            params = {name: start[name] + b * (w - start[name]) for name, w in weights.items()}
            losses.append(self.trainer_.loss(functional_call(model, params, (x,)), y))
        return torch.stack(losses).mean()

    def after_experience(
        self, model: nn.Module, experience: Experience, x: Tensor, y: Tensor
    ) -> None:
        index = self._choose(experience, y)
        new_x, new_y = x[index].clone(), y[index].clone()
        previous = getattr(self, "_previous", None)
        if previous is not None and len(self.memory_y_):
            self._connect(model, previous, new_x, new_y)
        self.memory_x_ = torch.cat([self.memory_x_, new_x])
        self.memory_y_ = torch.cat([self.memory_y_, new_y])
        self._previous = {n: p.detach().clone() for n, p in model.named_parameters()}

    def _connect(
        self, model: nn.Module, previous: dict[str, Tensor], new_x: Tensor, new_y: Tensor
    ) -> None:
        """Replace the model's weights ``w^_t`` by the connectivity search's ``w_t``."""
        finetuned = {n: p.detach().clone() for n, p in model.named_parameters()}
        alpha = float(self.alpha)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(previous[name] + alpha * (finetuned[name] - previous[name]))
        rate = float(self.learning_rates_[-1] if self.mc_lr is None else self.mc_lr)
        optimizer = torch.optim.SGD(model.parameters(), lr=rate)
        old_n, new_n = int(self.memory_y_.shape[0]), int(new_y.shape[0])
        size = int(self.batch_size)
        model.train()
        for _ in range(int(self.mc_epochs)):
            old_order = torch.randperm(old_n, generator=self._generator)
            new_order = torch.randperm(new_n, generator=self._generator)
            steps = max(-(-old_n // size), -(-new_n // size))
            for step in range(steps):
                old = old_order[(step * size) % old_n :][:size]
                new = new_order[(step * size) % new_n :][:size]
                loss = self.line_loss(
                    model, previous, self.memory_x_[old], self.memory_y_[old]
                ) + self.line_loss(model, finetuned, new_x[new], new_y[new])
                optimizer.zero_grad()
                torch.autograd.backward(loss)
                optimizer.step()
        self.searches_ += 1

    def stored_bytes(self) -> int:
        if getattr(self, "trainer_", None) is None:
            return 0
        return tensor_bytes(self.memory_x_, self.memory_y_)
