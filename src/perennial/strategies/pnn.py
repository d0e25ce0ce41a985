"""Progressive neural networks (Rusu et al., 2016): a new column per task, lateral connections."""

from __future__ import annotations

from typing import Any, ClassVar, Unpack, cast

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from perennial.exceptions import InvalidParameterError
from perennial.scenarios.base import Experience, LabelArray, Scenario
from perennial.strategies.base import CommonParams, GradientStrategy
from perennial.strategies.trainer import Progress, Trainer

__all__ = ["PNN", "ProgressiveNet"]


class ProgressiveNet(nn.Module):
    """Columns of ReLU MLPs; column ``k``'s layer ``i`` also reads layer ``i-1`` of columns ``< k``.

    ``h_i^k = relu(W_i^k h_{i-1}^k + sum_{j<k} U_i^{k,j} h_{i-1}^j)`` for the hidden layers and
    the same without the ReLU for the output (Rusu et al., 2016, equation 1; the lateral
    connections here are linear, the "dense" variant their MNIST-sized experiments allow).
    :attr:`active` selects the column :meth:`forward` answers with.
    """

    def __init__(self, n_features: int, hidden: tuple[int, ...], n_classes: int) -> None:
        super().__init__()
        self.widths = [n_features, *hidden, n_classes]
        self.columns = nn.ModuleList()
        self.laterals = nn.ModuleList()  # laterals[k][i][j]: column j's layer i-1 into k's layer i
        self.active = 0

    def add_column(self, seed: int) -> int:
        """Append a column (seeded), freeze the others; returns its index."""
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        k = len(self.columns)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + k)
            layers = nn.ModuleList(
                nn.Linear(a, b) for a, b in zip(self.widths[:-1], self.widths[1:], strict=True)
            )
            lateral = nn.ModuleList(
                nn.ModuleList(
                    nn.Linear(self.widths[i], self.widths[i + 1], bias=False) for _ in range(k)
                )
                for i in range(1, len(self.widths) - 1)
            )
        self.columns.append(layers)
        self.laterals.append(lateral)
        self.active = k
        return k

    def forward(self, x: Tensor) -> Tensor:
        outputs: list[list[Tensor]] = []  # outputs[j][i]: column j's layer i output
        for k in range(self.active + 1):
            layers = cast(nn.ModuleList, self.columns[k])
            lateral = cast(nn.ModuleList, self.laterals[k])
            below = x
            own: list[Tensor] = []
            for i, layer in enumerate(layers):
                z = layer(below)
                if i > 0:
                    for j in range(k):
                        z = z + cast(nn.ModuleList, lateral[i - 1])[j](outputs[j][i - 1])
                below = torch.relu(z) if i < len(layers) - 1 else z
                own.append(below)
            outputs.append(own)
        return outputs[-1][-1]


class PNN(GradientStrategy):
    """Progressive neural networks: task ``k`` trains a new column; older columns are frozen.

    Each task of a task-incremental stream gets its own column, whose hidden layers also read the
    previous layer of every earlier column through lateral connections (:class:`ProgressiveNet`);
    the earlier columns never change, so nothing is forgotten, and a prediction for a task uses
    its own column ("Progressive Neural Networks", Rusu, Rabinowitz, Desjardins, Soyer,
    Kirkpatrick, Kavukcuoglu, Pascanu & Hadsell, 2016, arXiv:1606.04671). The parameters grow
    with the number of tasks (the lateral ones quadratically). It needs task labels at test time.

    Parameters
    ----------
    **common
        The keywords of :class:`~perennial.strategies.base.GradientStrategy` (``hidden``: each
        column's hidden widths).

    Examples
    --------
    >>> from perennial.strategies.toy import toy_scenario
    >>> scenario = toy_scenario(task_labels=True)
    >>> strategy = PNN(hidden=(16,), epochs=2)
    >>> for experience in scenario:
    ...     strategy.fit_experience(experience, scenario)
    >>> len(strategy.model_.columns), strategy.task_of_
    (2, {(0, 1): 0, (2, 3): 1})
    """

    task_incremental_only: ClassVar[bool] = True

    def __init__(self, **common: Unpack[CommonParams]) -> None:
        super().__init__(**common)

    def prepare(self, scenario: Scenario) -> None:
        first = getattr(self, "trainer_", None) is None
        super().prepare(scenario)
        if first:
            self.task_of_: dict[tuple[int, ...], int] = {}

    def new_trainer(self) -> Trainer:
        model = ProgressiveNet(self.n_features_, tuple(self.hidden), self.n_classes_)
        model.add_column(self.seed)
        trainer = Trainer(model, lr=float(self.lr), momentum=float(self.momentum), seed=self.seed)
        trainer.blocked = getattr(self, "blocked_", None)
        return trainer

    def _fit(self, experience: Experience, x: Tensor, y: Tensor, progress: Progress | None) -> None:
        classes = tuple(int(c) for c in experience.classes)
        if classes in self.task_of_:
            raise InvalidParameterError(
                f"pnn learns each task once; experience {experience.index} repeats the task of "
                f"classes {classes}"
            )
        model = self.trainer_.model
        assert isinstance(model, ProgressiveNet)
        if self.task_of_:  # the first column exists from prepare(): untrained until now
            model.add_column(self.seed)
        column = model.active
        trainable = [p for p in model.parameters() if p.requires_grad]
        generator = self.trainer_.generator
        self.trainer_.optimizer = torch.optim.SGD(
            trainable, lr=float(self.lr), momentum=float(self.momentum)
        )
        self.trainer_.generator = generator
        super()._fit(experience, x, y, progress)
        self.task_of_[classes] = column

    def predict(self, x: NDArray[Any], experience: Experience | None = None) -> LabelArray:
        model = self.trainer_.model if getattr(self, "trainer_", None) is not None else None
        if model is None or experience is None or not self.task_of_:
            return super().predict(x, experience)
        assert isinstance(model, ProgressiveNet)
        column = self.task_of_.get(tuple(int(c) for c in experience.classes), model.active)
        latest = model.active
        model.active = column
        try:
            scores = self.logits(x)
        finally:
            model.active = latest
        classes = torch.tensor(experience.classes, dtype=torch.int64)
        return classes[scores[:, classes].argmax(dim=1)].numpy().astype(np.int64, copy=False)

    def stored_bytes(self) -> int:
        return 0
