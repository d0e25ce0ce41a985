"""One training loop (minibatch SGD on cross-entropy) and the few hooks strategies plug into it.

A strategy changes training only through the hooks of :class:`TrainingHooks`:

=====================================  =======================================================
``batch(x, y) -> (x, y)``              change a minibatch before the forward pass (replay)
``penalty(model, x, logits)``          a term added to the loss (regularisers, distillation)
``after_backward(model)``              edit the gradients before the step (A-GEM projection)
``after_step(model)``                  observe the parameter update (SI's path integral)
``before_experience`` / ``after_...``  per-experience work, called by the strategy (anchors,
                                       importance, buffers), not by the loop
=====================================  =======================================================

The loop checks once per call which hooks a strategy overrides and skips the others, so a
strategy pays only for the hooks it uses: with none overridden the loop does the same work as a
bare PyTorch loop (``benchmarks/bench_trainer_overhead.py`` measures the difference).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.functional import cross_entropy

from perennial.scenarios.base import Experience

__all__ = ["Progress", "Trainer", "TrainingHooks"]

#: ``loss(index)``: the loss of the minibatch made of the rows ``index`` of the data.
BatchLoss = Callable[[Tensor], Tensor]

#: ``progress(fraction_done)``, called at 11 evenly spaced points of a training run.
Progress = Callable[[float], None]

#: Number of intervals between the progress points (11 points: 0.0, 0.1, ..., 1.0).
PROGRESS_INTERVALS = 10


class TrainingHooks:
    """The hooks of the training loop; each default does nothing and is skipped by the loop."""

    def batch(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The minibatch to train on, given the one drawn from the data."""
        return x, y

    def penalty(self, model: nn.Module, x: Tensor, logits: Tensor) -> Tensor | None:
        """A scalar added to the loss of the minibatch ``x`` (``logits`` are unmasked)."""
        return None

    def after_backward(self, model: nn.Module) -> None:
        """Called with the gradients of the minibatch loss in ``.grad``, before the step."""

    def after_step(self, model: nn.Module) -> None:
        """Called right after the optimiser step."""

    def before_experience(
        self, model: nn.Module, experience: Experience, x: Tensor, y: Tensor
    ) -> None:
        """Called before training on an experience (``x``, ``y``: its training tensors)."""

    def after_experience(
        self, model: nn.Module, experience: Experience, x: Tensor, y: Tensor
    ) -> None:
        """Called after training on an experience."""


def _overrides(hooks: TrainingHooks, name: str) -> bool:
    return getattr(type(hooks), name) is not getattr(TrainingHooks, name)


def _ignore_progress(fraction: float) -> None:
    pass


def progress_marks(steps: int) -> list[tuple[int, float]]:
    """``(step, fraction)`` pairs: fraction ``k/10`` is reported after ``round(k*steps/10)`` steps.

    Examples
    --------
    >>> progress_marks(4)[:4]
    [(0, 0.0), (0, 0.1), (1, 0.2), (1, 0.3)]
    """
    return [
        (round(k * steps / PROGRESS_INTERVALS), k / PROGRESS_INTERVALS)
        for k in range(PROGRESS_INTERVALS + 1)
    ]


class Trainer:
    """Owns a model, its SGD optimiser and the seeded generator that shuffles the data.

    Parameters
    ----------
    model
        The network; the loss is the cross-entropy of its outputs.
    lr, momentum
        Of ``torch.optim.SGD``.
    seed
        Seed of the shuffling generator (one permutation of the data per epoch).

    Attributes
    ----------
    blocked : Tensor or None
        Task-incremental masking: a boolean ``(n_classes, n_classes)`` matrix whose row ``c`` marks
        the outputs that do *not* belong to the task of label ``c``. Those logits are set to
        ``-inf`` before the loss, so each example is trained on its own task's head only.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> x, y = torch.randn(40, 3), torch.arange(40) % 2
    >>> trainer = Trainer(nn.Linear(3, 2), lr=0.1, momentum=0.0, seed=0)
    >>> before = trainer.loss(trainer.model(x), y).item()
    >>> trainer.fit(x, y, TrainingHooks(), epochs=3, batch_size=10)
    >>> trainer.loss(trainer.model(x), y).item() < before
    True
    """

    def __init__(self, model: nn.Module, *, lr: float, momentum: float, seed: int) -> None:
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
        self.generator = torch.Generator().manual_seed(seed)
        self.blocked: Tensor | None = None

    def masked(self, logits: Tensor, y: Tensor) -> Tensor:
        """``logits`` with the outputs of other tasks than each label's set to ``-inf``."""
        if self.blocked is None:
            return logits
        return logits.masked_fill(self.blocked[y], -math.inf)

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """Mean cross-entropy, task-masked when :attr:`blocked` is set."""
        return cross_entropy(self.masked(logits, y), y)

    def fit(
        self,
        x: Tensor,
        y: Tensor,
        hooks: TrainingHooks,
        *,
        epochs: int,
        batch_size: int,
        progress: Progress | None = None,
    ) -> None:
        """Minibatch SGD over ``(x, y)`` for ``epochs`` shuffled passes, calling ``hooks``."""
        model, optimizer, generator, blocked = (
            self.model,
            self.optimizer,
            self.generator,
            self.blocked,
        )
        use_batch = _overrides(hooks, "batch")
        use_penalty = _overrides(hooks, "penalty")
        use_after_backward = _overrides(hooks, "after_backward")
        use_after_step = _overrides(hooks, "after_step")

        n = int(y.shape[0])
        steps = epochs * math.ceil(n / batch_size)
        report = progress if progress is not None else _ignore_progress
        marks = progress_marks(steps) if progress is not None else []
        while marks and marks[0][0] == 0:
            report(marks.pop(0)[1])
        next_mark = marks[0][0] if marks else -1  # -1: never reached, one int test per step

        model.train()
        step = 0
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, batch_size):
                index = order[start : start + batch_size]
                xb, yb = x[index], y[index]
                if use_batch:
                    xb, yb = hooks.batch(xb, yb)
                logits = model(xb)
                if blocked is None:
                    loss = cross_entropy(logits, yb)
                else:
                    loss = cross_entropy(logits.masked_fill(blocked[yb], -math.inf), yb)
                if use_penalty:
                    extra = hooks.penalty(model, xb, logits)
                    if extra is not None:
                        loss = loss + extra
                optimizer.zero_grad()
                torch.autograd.backward(loss)  # what Tensor.backward calls, but typed
                if use_after_backward:
                    hooks.after_backward(model)
                optimizer.step()
                if use_after_step:
                    hooks.after_step(model)
                step += 1
                if step == next_mark:
                    while marks and marks[0][0] == step:
                        report(marks.pop(0)[1])
                    next_mark = marks[0][0] if marks else -1

    def fit_loss(
        self,
        n: int,
        loss: BatchLoss,
        *,
        epochs: int,
        batch_size: int,
        progress: Progress | None = None,
    ) -> None:
        """Minibatch SGD on a loss of the strategy's own (iCaRL's sigmoid loss, VCL's ELBO).

        The same shuffling, steps and progress points as :meth:`fit`, over ``n`` rows; each
        step minimises ``loss(index)`` for the minibatch's row indices. No hook is called.
        """
        steps = epochs * math.ceil(n / batch_size)
        report = progress if progress is not None else _ignore_progress
        marks = progress_marks(steps) if progress is not None else []
        self.model.train()
        step = 0
        for _ in range(epochs):
            order = torch.randperm(n, generator=self.generator)
            for start in range(0, n, batch_size):
                value = loss(order[start : start + batch_size])
                self.optimizer.zero_grad()
                torch.autograd.backward(value)
                self.optimizer.step()
                step += 1
                while marks and marks[0][0] <= step:
                    report(marks.pop(0)[1])
        while marks:
            report(marks.pop(0)[1])
