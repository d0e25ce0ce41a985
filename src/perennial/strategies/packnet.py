"""PackNet (Mallya & Lazebnik, 2018): prune after each task, freeze what it kept, mask per task."""

from __future__ import annotations

from typing import Any, ClassVar, Unpack

import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from perennial.exceptions import InvalidParameterError
from perennial.scenarios.base import Experience, LabelArray, Scenario
from perennial.strategies.base import CommonParams, GradientStrategy, check_int, check_number
from perennial.strategies.trainer import Progress

__all__ = ["PackNet"]


class PackNet(GradientStrategy):
    """PackNet: each task owns a share of the weights; at test time a task uses its own and older.

    Every weight matrix carries an owner per entry: 0 (free) or the task (1, 2, ...) that kept
    it. Task ``t`` trains the free weights only (the gradients of owned weights are zeroed, and
    biases are trained by the first task alone, then frozen). Then, in each layer, the
    ``prune`` fraction of the free weights with the smallest magnitude is set to zero and stays
    free for later tasks; the rest become task ``t``'s, and the network is retrained for
    ``post_epochs`` passes with the pruned weights held at zero. A prediction for task ``k``
    masks out the weights of tasks after ``k``, so what a task learned never changes. (In the
    output layer only the rows of the task's own classes are pruned and kept; the other rows did
    not train on it and stay free.) ("PackNet:
    Adding Multiple Tasks to a Single Network by Iterative Pruning", Mallya & Lazebnik, 2018,
    CVPR). It needs task labels at test time (task-incremental streams only).

    Parameters
    ----------
    prune
        Fraction of the free weights released after each task; default 0.75 (Mallya &
        Lazebnik prune 75% for the first of their added tasks; with many tasks a smaller
        fraction leaves room for later ones: ``--tune`` chooses).
    post_epochs
        Passes of retraining after pruning; default 1.
    **common
        The keywords of :class:`~perennial.strategies.base.GradientStrategy`.

    Examples
    --------
    >>> from perennial.strategies.toy import toy_scenario
    >>> scenario = toy_scenario(task_labels=True)
    >>> strategy = PackNet(hidden=(16,), epochs=2, prune=0.5)
    >>> for experience in scenario:
    ...     strategy.fit_experience(experience, scenario)
    >>> [int((owner == 1).sum()) for owner in strategy.owners_]  # 128 // 2, (2 rows x 16) // 2
    [64, 16]
    """

    task_incremental_only: ClassVar[bool] = True

    def __init__(
        self, *, prune: float = 0.75, post_epochs: int = 1, **common: Unpack[CommonParams]
    ) -> None:
        super().__init__(**common)
        self.prune = prune
        self.post_epochs = post_epochs

    def check_params(self) -> None:
        super().check_params()
        check_number("prune", self.prune, 0.0, maximum=0.99)
        check_int("post_epochs", self.post_epochs, 0)

    owners_: list[Tensor]

    def prepare(self, scenario: Scenario) -> None:
        first = getattr(self, "trainer_", None) is None
        super().prepare(scenario)
        if first:
            self.owners_ = [
                torch.zeros_like(m.weight, dtype=torch.int64)
                for m in self.trainer_.model.modules()
                if isinstance(m, nn.Linear)
            ]
            self._training_owner = 0  # entries with this owner train; 0: the free ones
            self._released: list[Tensor] = []  # flat indices pruned after the current task
            self.task_of_: dict[tuple[int, ...], int] = {}

    def _layers(self, model: nn.Module) -> list[nn.Linear]:
        return [m for m in model.modules() if isinstance(m, nn.Linear)]

    def after_backward(self, model: nn.Module) -> None:
        first_task = not self.task_of_
        for layer, owner in zip(self._layers(model), self.owners_, strict=True):
            assert layer.weight.grad is not None
            layer.weight.grad.mul_(owner == self._training_owner)
            if not first_task and layer.bias is not None and layer.bias.grad is not None:
                layer.bias.grad.zero_()

    def after_step(self, model: nn.Module) -> None:
        if self._training_owner == 0:
            return
        with torch.no_grad():  # retraining after pruning: the released weights stay at zero
            for layer, released in zip(self._layers(model), self._released, strict=True):
                layer.weight.view(-1)[released] = 0.0

    def _fit(self, experience: Experience, x: Tensor, y: Tensor, progress: Progress | None) -> None:
        classes = tuple(int(c) for c in experience.classes)
        if classes in self.task_of_:
            raise InvalidParameterError(
                f"packnet learns each task once; experience {experience.index} repeats the task "
                f"of classes {classes}"
            )
        model, trainer = self.trainer_.model, self.trainer_
        size = int(self.batch_size)
        trainer.fit(x, y, self, epochs=int(self.epochs), batch_size=size)
        task = len(self.task_of_) + 1
        layers = self._layers(model)
        self._released = []
        with torch.no_grad():
            for depth, (layer, owner) in enumerate(zip(layers, self.owners_, strict=True)):
                eligible = owner == 0
                if depth == len(layers) - 1:
                    # Output rows of other tasks' classes did not train here: they stay free.
                    rows = torch.zeros(owner.shape[0], dtype=torch.bool)
                    rows[torch.tensor(classes, dtype=torch.int64)] = True
                    eligible = eligible & rows[:, None]
                free = torch.nonzero(eligible.flatten()).flatten()
                release = int(float(self.prune) * int(free.numel()))
                magnitudes = layer.weight.detach().abs().flatten()[free]
                order = magnitudes.argsort(stable=True)  # smallest first; ties by position
                cut = free[order[:release]]
                kept = free[order[release:]]
                layer.weight.view(-1)[cut] = 0.0
                owner.view(-1)[kept] = task
                self._released.append(cut)
        if int(self.post_epochs) > 0:
            self._training_owner = task
            try:
                trainer.fit(x, y, self, epochs=int(self.post_epochs), batch_size=size)
            finally:
                self._training_owner = 0
        self.task_of_[classes] = task
        if progress is not None:
            progress(1.0)

    def _mask_for(self, task: int) -> list[Tensor]:
        return [(owner >= 1) & (owner <= task) for owner in self.owners_]

    def logits_for_task(self, x: NDArray[Any], task: int) -> Tensor:
        """Network outputs with the weights of tasks after ``task`` masked out."""
        model = self.trainer_.model
        layers = self._layers(model)
        saved = [layer.weight.detach().clone() for layer in layers]
        try:
            with torch.no_grad():
                for layer, mask in zip(layers, self._mask_for(task), strict=True):
                    layer.weight.mul_(mask)
            return super().logits(x)
        finally:
            with torch.no_grad():
                for layer, weight in zip(layers, saved, strict=True):
                    layer.weight.copy_(weight)

    def predict(self, x: NDArray[Any], experience: Experience | None = None) -> LabelArray:
        if experience is None or not self.task_of_:
            return super().predict(x, experience)
        task = self.task_of_.get(tuple(int(c) for c in experience.classes), len(self.task_of_))
        scores = self.logits_for_task(x, task)
        classes = torch.tensor(experience.classes, dtype=torch.int64)
        labels = classes[scores[:, classes].argmax(dim=1)]
        return labels.numpy().astype("int64", copy=False)
