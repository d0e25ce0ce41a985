"""Nearest class mean (the prototype classifier of SimpleCIL)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from perennial.heads.base import FloatArray, Head, Label
from perennial.heads.statistics import ClassStatistics
from perennial.params import check_choice

__all__ = ["NCMHead"]


class NCMHead(Head):
    """One prototype per class: the mean of its features.

    With ``metric="cosine"`` (default) the score is the cosine similarity to each prototype, as in
    SimpleCIL (Zhou et al., "Revisiting Class-Incremental Learning with Pre-Trained Models", 2023);
    with ``"euclidean"`` it is the negative squared distance. It keeps only per-class sums and
    counts (a :class:`~perennial.heads.statistics.ClassStatistics`), so ``forget``, ``unlearn_many`` (subtract the examples from their class's sum and
    count) and ``merge`` (add two heads' sums and counts) are always exact. Sums and counts say
    little about which examples were learned: ``unlearn_many`` can refuse only examples that take
    all of a class's examples and do not sum to what it learned.

    Examples
    --------
    >>> head = NCMHead()
    >>> head.learn_many([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], ["x", "x", "y"])
    >>> head.predict_one([0.2, 0.8])
    'y'
    """

    name = "ncm"

    proba_temperature = 0.05

    def __init__(self, metric: str = "cosine") -> None:
        check_choice("metric", metric, ("cosine", "euclidean"))
        self.metric = metric
        super().__init__()

    def _reset(self) -> None:
        super()._reset()
        self.statistics_: ClassStatistics | None = None

    def _initialise(self, dim: int) -> None:
        self.statistics_ = ClassStatistics(dim)

    @property
    def _stats(self) -> ClassStatistics:
        assert self.statistics_ is not None, "the head has learned nothing"
        return self.statistics_

    def _learn(self, X: FloatArray, columns: NDArray[np.intp], n_new: int) -> None:
        self._stats.add(X, columns, n_new)

    def _check_unlearn(
        self, X: FloatArray, columns: NDArray[np.intp], names: Sequence[Label]
    ) -> None:
        self._stats.check_subtract(X, columns, names)  # sums only: checks emptied classes

    def _unlearn(self, X: FloatArray, columns: NDArray[np.intp], kept: NDArray[np.intp]) -> None:
        self._stats.subtract(X, columns, kept)

    def _merge(self, other: NCMHead, columns: NDArray[np.intp], n_new: int) -> None:
        self._stats.merge(other._stats, columns, n_new)

    def _class_counts(self) -> NDArray[np.int64]:
        return self._stats.counts

    def _forget_index(self, index: int) -> None:
        self.n_seen_ -= int(self._stats.counts[index])
        self._stats.drop(index)

    @property
    def sums_(self) -> FloatArray:
        """Feature sums per class, one row per class."""
        return self._stats.sums if self.statistics_ is not None else np.zeros((0, 0))

    @property
    def counts_(self) -> NDArray[np.int64]:
        """Examples per class."""
        if self.statistics_ is None:
            return np.zeros(0, dtype=np.int64)
        return self._stats.counts

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
        return self._stats.state_arrays()

    def _expected_shapes(self, dim: int, n_classes: int) -> dict[str, tuple[int, ...]]:
        return ClassStatistics(dim).expected_shapes(n_classes)

    def _load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        assert self.dim_ is not None
        self.statistics_ = ClassStatistics(self.dim_)
        self.statistics_.load_arrays(arrays, n=self.n_seen_)
