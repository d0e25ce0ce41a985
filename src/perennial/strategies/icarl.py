"""iCaRL (Rebuffi et al., 2017): herded exemplars, distillation, nearest mean of exemplars."""

from __future__ import annotations

from typing import Any, Unpack

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn
from torch.nn.functional import binary_cross_entropy_with_logits, normalize

from perennial.exceptions import InvalidParameterError
from perennial.scenarios.base import Experience, LabelArray, Scenario
from perennial.strategies.base import (
    CommonParams,
    GradientStrategy,
    as_rows,
    check_int,
    tensor_bytes,
    to_tensor,
)
from perennial.strategies.trainer import Progress

__all__ = ["ICaRL", "herding"]


def herding(features: Tensor, count: int) -> Tensor:
    """Indices of ``count`` rows chosen by iCaRL's herding, in the order they were chosen.

    ``features`` are L2-normalised rows ``phi(x)``; with ``mu`` their mean, the ``k``-th pick is
    the row that brings the mean of the picks closest to ``mu``:
    ``argmin_x || mu - (phi(x) + sum_{j<k} p_j) / k ||`` over rows not yet picked (Rebuffi, Kolesnikov,
    Sperl & Lampert, 2017, "iCaRL: Incremental Classifier and Representation Learning", CVPR,
    algorithm 4).
    """
    n = int(features.shape[0])
    count = min(count, n)
    mu = features.mean(dim=0)
    chosen: list[int] = []
    running = torch.zeros_like(mu)
    available = torch.ones(n, dtype=torch.bool)
    for k in range(1, count + 1):
        distances = ((mu - (features + running) / k) ** 2).sum(dim=1)
        distances[~available] = torch.inf
        pick = int(torch.argmin(distances))
        chosen.append(pick)
        available[pick] = False
        running = running + features[pick]
    return torch.tensor(chosen, dtype=torch.int64)


class ICaRL(GradientStrategy):
    """iCaRL: a representation trained with distillation, classified by exemplar means.

    Training on experience ``t`` runs SGD on its examples together with the stored exemplars, with
    a sigmoid (binary cross-entropy) loss over every class seen so far: the targets of the
    experience's classes are the labels (one-hot), those of earlier classes the previous
    network's sigmoid outputs (distillation). Then ``memory_per_class`` exemplars of each new
    class are chosen by :func:`herding` on the normalised features (the last hidden layer's
    output), and each class's mean of exemplar features is recomputed with the new network.
    Predictions go to the nearest class mean (Rebuffi et al., 2017, algorithms 1-5). iCaRL fixes
    a total memory ``K`` shared by the classes seen; here, as for the other replay strategies of
    this package, the budget is ``memory_per_class`` per class, so they compare at the same size.

    **Class-incremental streams only.** The paper's setting (its sections 1 and 2.1) is a stream
    in which the examples of each class arrive together, in one batch of new classes; its
    algorithms build a class's exemplar set once, when the class is new (ConstructExemplarSet),
    and only shrink it later (ReduceExemplarSet). A stream whose experiences bring a class again
    (permuted MNIST: every task brings the ten digits again, with new inputs) is outside that
    setting, and :meth:`prepare` refuses it with
    :class:`~perennial.exceptions.InvalidParameterError` (``class_incremental_only``;
    ``perennial bench`` refuses it before any work). Run on such a stream, the first task's
    exemplars stood for each digit and the nearest-mean rule read features that the later tasks
    had moved (benchmarks/RESULTS.md): re-selecting exemplars when a class recurs would be a
    method of our own, not the paper's.

    Parameters
    ----------
    memory_per_class
        Exemplars per class; default 20 (iCaRL's 2,000 for 100 classes).
    **common
        The keywords of :class:`~perennial.strategies.base.GradientStrategy`; ``hidden`` must have
        at least one layer (the features).

    Examples
    --------
    >>> from perennial.strategies.toy import toy_scenario
    >>> scenario = toy_scenario()
    >>> strategy = ICaRL(memory_per_class=5, hidden=(16,), epochs=3)
    >>> for experience in scenario:
    ...     strategy.fit_experience(experience, scenario)
    >>> strategy.exemplar_y_.tolist().count(3), sorted(strategy.class_means_)
    (5, [0, 1, 2, 3])
    """

    class_incremental_only = True

    def __init__(self, *, memory_per_class: int = 20, **common: Unpack[CommonParams]) -> None:
        super().__init__(**common)
        self.memory_per_class = memory_per_class

    def check_params(self) -> None:
        super().check_params()
        check_int("memory_per_class", self.memory_per_class, 1)
        if len(tuple(self.hidden)) == 0:
            raise InvalidParameterError(
                "ICaRL needs at least one hidden layer (hidden=(256,), say): its classifier "
                "reads the last hidden layer's features"
            )

    exemplar_x_: Tensor
    exemplar_y_: Tensor
    class_means_: dict[int, Tensor]

    def prepare(self, scenario: Scenario) -> None:
        first = getattr(self, "trainer_", None) is None
        super().prepare(scenario)
        if first:
            self.exemplar_x_ = torch.empty(0, self.n_features_)
            self.exemplar_y_ = torch.empty(0, dtype=torch.int64)
            self.class_means_ = {}
            self.seen_classes_: list[int] = []

    def features(self, x: Tensor) -> Tensor:
        """L2-normalised outputs of the last hidden layer."""
        model = self.trainer_.model
        assert isinstance(model, nn.Sequential)
        return normalize(model[:-1](x), dim=1)

    def _fit(self, experience: Experience, x: Tensor, y: Tensor, progress: Progress | None) -> None:
        model, trainer = self.trainer_.model, self.trainer_
        old = list(self.seen_classes_)
        known = sorted(set(old) | {int(c) for c in experience.classes})
        data_x = torch.cat([x, self.exemplar_x_])
        data_y = torch.cat([y, self.exemplar_y_])
        columns = torch.tensor(known, dtype=torch.int64)
        old_columns = torch.tensor([known.index(c) for c in old], dtype=torch.int64)
        targets = (data_y[:, None] == columns[None, :]).float()
        if old:
            model.eval()
            with torch.no_grad():
                previous = torch.sigmoid(model(data_x)[:, torch.tensor(old)])
            targets[:, old_columns] = previous

        def loss(index: Tensor) -> Tensor:
            logits = model(data_x[index])[:, columns]
            return binary_cross_entropy_with_logits(logits, targets[index])

        trainer.fit_loss(
            int(data_y.shape[0]),
            loss,
            epochs=int(self.epochs),
            batch_size=int(self.batch_size),
            progress=progress,
        )
        self.seen_classes_ = known
        self._update_exemplars(experience, x, y)

    def _update_exemplars(self, experience: Experience, x: Tensor, y: Tensor) -> None:
        model = self.trainer_.model
        model.eval()
        with torch.no_grad():
            keep_x, keep_y = [self.exemplar_x_], [self.exemplar_y_]
            for label in experience.classes:
                rows = x[y == int(label)]
                if int(self.exemplar_y_.eq(int(label)).sum()) or len(rows) == 0:
                    continue  # a class already held keeps its exemplars (see the class doc)
                chosen = herding(self.features(rows), int(self.memory_per_class))
                keep_x.append(rows[chosen])
                keep_y.append(torch.full((len(chosen),), int(label), dtype=torch.int64))
            self.exemplar_x_ = torch.cat(keep_x)
            self.exemplar_y_ = torch.cat(keep_y)
            features = self.features(self.exemplar_x_)
            self.class_means_ = {
                int(label): normalize(features[self.exemplar_y_ == label].mean(dim=0), dim=0)
                for label in torch.unique(self.exemplar_y_).tolist()
            }

    def predict(self, x: NDArray[Any], experience: Experience | None = None) -> LabelArray:
        if not getattr(self, "class_means_", None):
            return super().predict(x, experience)  # untrained: the network's argmax
        labels = sorted(self.class_means_)
        if self.task_labels_ and experience is not None:
            allowed = {int(c) for c in experience.classes}
            labels = [c for c in labels if c in allowed]
            if not labels:  # a task not learned yet: no exemplar mean among its classes
                return super().predict(x, experience)  # the network's, within the task
        means = torch.stack([self.class_means_[c] for c in labels])
        rows = to_tensor(as_rows(x, self.n_features_))
        model = self.trainer_.model
        model.eval()
        with torch.no_grad():
            distances = torch.cdist(self.features(rows), means)
        chosen = distances.argmin(dim=1).numpy()
        answers: LabelArray = np.asarray(labels, dtype=np.int64)[chosen]
        return answers

    def stored_bytes(self) -> int:
        if getattr(self, "trainer_", None) is None:
            return 0
        return tensor_bytes(self.exemplar_x_, self.exemplar_y_)
