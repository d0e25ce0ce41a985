"""The project's instant learner as a strategy: a ridge head on the raw features, no gradients."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from perennial.encoders.base import IdentityEncoder
from perennial.exceptions import FeatureDimensionError, NotFittedError
from perennial.heads import RidgeHead
from perennial.learner import LifelongClassifier
from perennial.scenarios.base import Experience, LabelArray, Scenario
from perennial.strategies.base import Strategy, as_rows, check_experience
from perennial.strategies.trainer import PROGRESS_INTERVALS, Progress

__all__ = ["Lifelong"]

#: Rows per ``learn_many`` call: bounds the memory of the random expansion (rows x n_features).
CHUNK = 1024


class Lifelong(Strategy):
    """``LifelongClassifier(IdentityEncoder(), RidgeHead(...))`` fed the same stream.

    Each experience's training examples are learned once, in order, by exact streaming ridge
    regression on random ReLU features; nothing is trained by gradient and no example is kept
    (``stored_bytes() == 0``; the head's statistics have a fixed size). The examples are fed in
    chunks (at most 1,024 rows, at the 11 progress points), which changes nothing but rounding:
    the statistics are sums.

    Predictions are the known class of highest ridge score, as ``LifelongClassifier.predict``
    gives. In a task-incremental stream, a prediction for ``experience`` is the class of
    ``experience.classes`` with the highest score, a class not learned yet scoring 0: the exact
    score ridge regression gives a class with no examples. For the same reason, after
    :meth:`prepare` and before any learning, every answer is the first candidate class.

    Parameters
    ----------
    n_features, ridge, seed
        Of :class:`~perennial.heads.RidgeHead` (its defaults).

    Examples
    --------
    >>> from perennial.strategies.toy import toy_scenario
    >>> scenario = toy_scenario()
    >>> strategy = Lifelong(n_features=256)
    >>> for experience in scenario:
    ...     strategy.fit_experience(experience, scenario)
    >>> [float((strategy.predict(e.test_x) == e.test_y).mean()) for e in scenario]
    [1.0, 1.0]
    """

    def __init__(
        self, *, n_features: int = 4096, ridge: float | str = "auto", seed: int = 0
    ) -> None:
        self.n_features = n_features
        self.ridge = ridge
        self.seed = seed

    def check_params(self) -> None:
        self._head()  # RidgeHead validates its parameters and names the bad one

    def _head(self) -> RidgeHead:
        return RidgeHead(n_features=self.n_features, ridge=self.ridge, seed=self.seed)

    classifier_: LifelongClassifier | None = None

    def prepare(self, scenario: Scenario) -> None:
        self.check_params()
        if self.classifier_ is None:
            self.classifier_ = LifelongClassifier(IdentityEncoder(), self._head())
            self.n_features_in_ = scenario.n_features
            self.n_classes_ = scenario.n_classes
            self.task_labels_ = scenario.task_labels
        elif (scenario.n_features, scenario.n_classes) != (self.n_features_in_, self.n_classes_):
            raise FeatureDimensionError(
                f"Lifelong was built for {self.n_features_in_} features and {self.n_classes_} "
                f"classes, got a scenario with {scenario.n_features} and {scenario.n_classes}"
            )

    def fit_experience(
        self, experience: Experience, scenario: Scenario, progress: Progress | None = None
    ) -> None:
        self.check_params()
        check_experience(experience, scenario)
        self.prepare(scenario)
        assert self.classifier_ is not None  # built by prepare
        x = as_rows(experience.train_x, self.n_features_in_)
        y = experience.train_y
        n = len(y)
        for k in range(PROGRESS_INTERVALS + 1):
            if k:
                start = round((k - 1) * n / PROGRESS_INTERVALS)
                stop = round(k * n / PROGRESS_INTERVALS)
                for i in range(start, stop, CHUNK):
                    j = min(i + CHUNK, stop)
                    self.classifier_.learn_many(x[i:j], y[i:j])
            if progress is not None:
                progress(k / PROGRESS_INTERVALS)

    def predict(self, x: NDArray[Any], experience: Experience | None = None) -> LabelArray:
        if self.classifier_ is None:
            raise NotFittedError("Lifelong has no model yet; call prepare or fit an experience")
        rows = as_rows(x, self.n_features_in_)
        restrict = self.task_labels_ and experience is not None
        if restrict:
            assert experience is not None
            candidates = np.asarray(experience.classes, dtype=np.int64)
        else:
            candidates = np.arange(self.n_classes_, dtype=np.int64)
        if not self.classifier_.head.is_fitted:
            # Nothing learned: every class scores 0, so the first candidate is the answer.
            return np.full(len(rows), candidates[0], dtype=np.int64)
        scores = self.classifier_.decision_scores(rows)
        known = np.asarray(self.classifier_.classes_, dtype=np.int64)
        if not restrict:
            answer: LabelArray = known[np.argmax(scores, axis=1)]
            return answer
        column = {int(label): i for i, label in enumerate(known)}
        restricted = np.zeros((len(rows), len(candidates)))
        for j, label in enumerate(candidates):
            if int(label) in column:
                restricted[:, j] = scores[:, column[int(label)]]
        answer = candidates[np.argmax(restricted, axis=1)]
        return answer
