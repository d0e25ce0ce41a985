"""Reference points for the instant learner on the same frozen features.

* :func:`joint_logistic_regression`: offline multinomial logistic regression on all training data
  at once, the usual upper bound for a head on frozen features.
* :class:`SGDSoftmaxHead`: a softmax layer trained by minibatch SGD, the way a network is
  fine-tuned; fed classes in the class-incremental order it forgets the old ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from perennial.datasets.base import stratified_split
from perennial.heads.base import FloatArray, Label

__all__ = ["SGDSoftmaxHead", "joint_logistic_regression"]


def joint_logistic_regression(
    X_train: NDArray[Any],
    y_train: Sequence[Label],
    X_test: NDArray[Any],
    *,
    strengths: Sequence[float] = (1.0, 10.0, 100.0),
    seed: int = 0,
) -> tuple[list[Label], float]:
    """Fit multinomial logistic regression on all the training data; predict the test set.

    The inverse regularisation strength ``C`` is chosen among ``strengths`` on a stratified 10%
    validation split of the training data (never the test set), then the model is refit on all
    training data. Returns the test predictions and the chosen ``C``.
    """
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray([str(label) for label in y_train], dtype=object)
    fit_idx, val_idx = stratified_split(labels, 0.1, seed)
    best_c, best_acc = strengths[0], -1.0
    if len(strengths) > 1:
        for c in strengths:
            model = LogisticRegression(C=c, max_iter=1000)
            model.fit(X_train[fit_idx], labels[fit_idx])
            acc = float(np.mean(model.predict(X_train[val_idx]) == labels[val_idx]))
            if acc > best_acc:
                best_c, best_acc = c, acc
    final = LogisticRegression(C=best_c, max_iter=1000)
    final.fit(X_train, labels)
    lookup = {str(label): label for label in y_train}
    return [lookup[p] for p in final.predict(X_test)], best_c


class SGDSoftmaxHead:
    """A linear softmax layer trained by minibatch SGD on whatever batch it is given.

    Each call to :meth:`learn_many` runs ``epochs`` passes of SGD over that batch only, adding
    output units for new labels: plain fine-tuning, with nothing to protect old classes.

    Examples
    --------
    >>> head = SGDSoftmaxHead(seed=0)
    >>> head.learn_many(np.array([[1.0, 0.0], [0.0, 1.0]] * 10), ["a", "b"] * 10)
    >>> head.predict_many(np.array([[1.0, 0.0]]))
    ['a']
    """

    def __init__(
        self, learning_rate: float = 0.5, epochs: int = 5, batch_size: int = 32, seed: int = 0
    ) -> None:
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.seed = seed
        self.classes_: list[Label] = []
        self._weights: FloatArray | None = None
        self._bias: FloatArray = np.zeros(0)
        self._rng = np.random.default_rng(seed)

    def learn_many(self, X: NDArray[Any], y: Sequence[Label]) -> None:
        X = np.asarray(X, dtype=np.float64)
        for label in y:
            if label not in self.classes_:
                self.classes_.append(label)
        n_classes = len(self.classes_)
        if self._weights is None:
            self._weights = np.zeros((X.shape[1], 0))
        grow = n_classes - self._weights.shape[1]
        self._weights = np.hstack([self._weights, np.zeros((X.shape[1], grow))])
        self._bias = np.concatenate([self._bias, np.zeros(grow)])
        index = {label: i for i, label in enumerate(self.classes_)}
        targets = np.array([index[label] for label in y])
        for _ in range(self.epochs):
            order = self._rng.permutation(len(X))
            for start in range(0, len(X), self.batch_size):
                batch = order[start : start + self.batch_size]
                logits = X[batch] @ self._weights + self._bias
                logits -= logits.max(axis=1, keepdims=True)
                probs = np.exp(logits)
                probs /= probs.sum(axis=1, keepdims=True)
                probs[np.arange(len(batch)), targets[batch]] -= 1.0
                self._weights -= self.learning_rate * X[batch].T @ probs / len(batch)
                self._bias -= self.learning_rate * probs.mean(axis=0)

    def predict_many(self, X: NDArray[Any]) -> list[Label]:
        assert self._weights is not None
        scores = np.asarray(X, dtype=np.float64) @ self._weights + self._bias
        return [self.classes_[i] for i in np.argmax(scores, axis=1)]
