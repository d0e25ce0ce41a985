"""Nearest class mean (the prototype classifier of SimpleCIL)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from perennial.exceptions import InvalidParameterError
from perennial.heads.base import FloatArray, Head

__all__ = ["NCMHead"]


class NCMHead(Head):
    """One prototype per class: the mean of its features.

    With ``metric="cosine"`` (default) the score is the cosine similarity to each prototype, as in
    SimpleCIL (Zhou et al., "Revisiting Class-Incremental Learning with Pre-Trained Models", 2023);
    with ``"euclidean"`` it is the negative squared distance. Only per-class sums and counts are
    kept, so ``forget``, ``unlearn_many`` (subtract the examples from their class's sum and
    count) and ``merge`` (add two heads' sums and counts) are always exact.

    Examples
    --------
    >>> head = NCMHead()
    >>> head.learn_many([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], ["x", "x", "y"])
    >>> head.predict_one([0.2, 0.8])
    'y'
    """

    proba_temperature = 0.05

    def __init__(self, metric: str = "cosine") -> None:
        if metric not in ("cosine", "euclidean"):
            raise InvalidParameterError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
        self.metric = metric
        super().__init__()

    def _reset(self) -> None:
        super()._reset()
        self.sums_: FloatArray = np.zeros((0, 0))
        self.counts_: NDArray[np.int64] = np.zeros(0, dtype=np.int64)

    def _initialise(self, dim: int) -> None:
        self.sums_ = np.zeros((0, dim))

    def _learn(self, X: FloatArray, columns: NDArray[np.intp], n_new: int) -> None:
        sums = np.vstack([self.sums_, np.zeros((n_new, X.shape[1]))])
        np.add.at(sums, columns, X)
        counts = np.concatenate([self.counts_, np.zeros(n_new, dtype=np.int64)])
        np.add.at(counts, columns, 1)
        self.sums_, self.counts_ = sums, counts

    def _unlearn(self, X: FloatArray, columns: NDArray[np.intp], kept: NDArray[np.intp]) -> None:
        sums = self.sums_.copy()
        np.subtract.at(sums, columns, X)
        counts = self.counts_ - np.bincount(columns, minlength=self.counts_.shape[0])
        self.sums_, self.counts_ = sums[kept], counts[kept]

    def _merge(self, other: NCMHead, columns: NDArray[np.intp], n_new: int) -> None:
        sums = np.vstack([self.sums_, np.zeros((n_new, self.sums_.shape[1]))])
        sums[columns] += other.sums_  # columns are distinct
        counts = np.concatenate([self.counts_, np.zeros(n_new, dtype=np.int64)])
        counts[columns] += other.counts_
        self.sums_, self.counts_ = sums, counts

    def _class_counts(self) -> NDArray[np.int64]:
        return self.counts_

    def _forget_index(self, index: int) -> None:
        self.n_seen_ -= int(self.counts_[index])
        self.sums_ = np.delete(self.sums_, index, axis=0)
        self.counts_ = np.delete(self.counts_, index)

    @property
    def means_(self) -> FloatArray:
        """Class prototypes, one row per class."""
        return self.sums_ / self.counts_[:, None]

    def _scores(self, X: FloatArray) -> FloatArray:
        means = self.means_
        if self.metric == "euclidean":
            squared: FloatArray = (
                np.sum(X * X, axis=1, keepdims=True)
                - 2 * X @ means.T
                + np.sum(means * means, axis=1)
            )
            return -squared
        x_norm = np.linalg.norm(X, axis=1, keepdims=True)
        m_norm = np.linalg.norm(means, axis=1)
        cosine: FloatArray = (X @ means.T) / np.maximum(x_norm * m_norm, 1e-12)
        return cosine

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {"sums": self.sums_, "counts": self.counts_}

    def _expected_shapes(self, dim: int, n_classes: int) -> dict[str, tuple[int, ...]]:
        return {"sums": (n_classes, dim), "counts": (n_classes,)}

    def _load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.sums_ = np.array(arrays["sums"], dtype=np.float64)
        self.counts_ = np.array(arrays["counts"], dtype=np.int64)
