"""Streaming linear discriminant analysis (Hayes & Kanan, 2020)."""

from __future__ import annotations

import numpy as np
import scipy.linalg
from numpy.typing import NDArray

from perennial.exceptions import InvalidParameterError
from perennial.heads.base import FloatArray, Head

__all__ = ["SLDAHead"]


class SLDAHead(Head):
    """Class means with one shared covariance, learned in one pass (SLDA).

    Hayes & Kanan, "Lifelong Machine Learning with Deep Streaming Linear Discriminant Analysis",
    CVPR-W 2020 (arXiv:1909.01520). The head keeps per-class sums and counts and the total
    second moment ``T = sum x x^T``; the shared covariance is the exact pooled within-class
    covariance ``(T - sum_c n_c mu_c mu_c^T) / n`` (the paper updates an online estimate of the
    same quantity). Scores are ``x^T L mu_c - mu_c^T L mu_c / 2`` with the shrunk precision
    ``L = ((1 - shrinkage) S + shrinkage I)^-1``.

    ``unlearn_many(X, y)`` subtracts the examples from the class sums, the counts and ``T`` (and
    from the class's own second moment with ``exact_forget=True``): exact in either mode.
    ``merge(other)`` adds the statistics of a head with the same parameters.

    ``forget(label)`` removes the class's mean and count. With ``exact_forget=False`` (default) the
    class's within-class scatter stays in the shared covariance; with ``exact_forget=True`` the head
    keeps per-class second moments (``n_classes * d**2`` floats) and the result is exactly the model
    that never saw the class.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = np.vstack([rng.normal(0, 1, (20, 3)) + 2, rng.normal(0, 1, (20, 3)) - 2])
    >>> head = SLDAHead()
    >>> head.learn_many(X, ["a"] * 20 + ["b"] * 20)
    >>> head.predict_one([2, 2, 2])
    'a'
    """

    def __init__(self, shrinkage: float = 1e-4, exact_forget: bool = False) -> None:
        if (
            isinstance(shrinkage, bool)
            or not isinstance(shrinkage, (int, float))
            or not (0.0 < shrinkage <= 1.0)
        ):
            raise InvalidParameterError(f"shrinkage must be in (0, 1], got {shrinkage!r}")
        self.shrinkage = shrinkage
        self.exact_forget = exact_forget
        super().__init__()

    def _reset(self) -> None:
        super()._reset()
        self.sums_: FloatArray = np.zeros((0, 0))
        self.counts_: NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self.second_moment_: FloatArray = np.zeros((0, 0))
        self.class_second_moments_: list[FloatArray] = []
        self._solution: tuple[FloatArray, FloatArray] | None = None

    def _initialise(self, dim: int) -> None:
        self.sums_ = np.zeros((0, dim))
        self.second_moment_ = np.zeros((dim, dim))

    def _learn(self, X: FloatArray, columns: NDArray[np.intp], n_new: int) -> None:
        dim = X.shape[1]
        sums = np.vstack([self.sums_, np.zeros((n_new, dim))])
        np.add.at(sums, columns, X)
        counts = np.concatenate([self.counts_, np.zeros(n_new, dtype=np.int64)])
        np.add.at(counts, columns, 1)
        second = self.second_moment_ + X.T @ X
        class_moments = list(self.class_second_moments_)
        if self.exact_forget:
            class_moments += [np.zeros((dim, dim)) for _ in range(n_new)]
            for column in np.unique(columns):
                rows = X[columns == column]
                class_moments[column] = class_moments[column] + rows.T @ rows
        self.sums_, self.counts_, self.second_moment_ = sums, counts, second
        self.class_second_moments_ = class_moments
        self._solution = None

    def _unlearn(self, X: FloatArray, columns: NDArray[np.intp], kept: NDArray[np.intp]) -> None:
        sums = self.sums_.copy()
        np.subtract.at(sums, columns, X)
        counts = self.counts_ - np.bincount(columns, minlength=self.counts_.shape[0])
        second = self.second_moment_ - X.T @ X
        class_moments = list(self.class_second_moments_)
        if self.exact_forget:
            for column in np.intersect1d(np.unique(columns), kept):
                rows = X[columns == column]
                class_moments[column] = class_moments[column] - rows.T @ rows
            class_moments = [class_moments[i] for i in kept]
        self.sums_, self.counts_, self.second_moment_ = sums[kept], counts[kept], second
        self.class_second_moments_ = class_moments
        self._solution = None

    def _merge(self, other: SLDAHead, columns: NDArray[np.intp], n_new: int) -> None:
        sums = np.vstack([self.sums_, np.zeros((n_new, self.sums_.shape[1]))])
        sums[columns] += other.sums_  # columns are distinct
        counts = np.concatenate([self.counts_, np.zeros(n_new, dtype=np.int64)])
        counts[columns] += other.counts_
        second = self.second_moment_ + other.second_moment_
        class_moments = list(self.class_second_moments_)
        if self.exact_forget:
            class_moments += [np.zeros_like(second) for _ in range(n_new)]
            for j, column in enumerate(columns):
                class_moments[column] = class_moments[column] + other.class_second_moments_[j]
        self.sums_, self.counts_, self.second_moment_ = sums, counts, second
        self.class_second_moments_ = class_moments
        self._solution = None

    def _class_counts(self) -> NDArray[np.int64]:
        return self.counts_

    def _forget_index(self, index: int) -> None:
        count = self.counts_[index]
        mean = self.sums_[index] / count
        if self.exact_forget:
            self.second_moment_ = self.second_moment_ - self.class_second_moments_.pop(index)
            self.n_seen_ -= int(count)
        else:
            # Keep the class's within-class scatter: remove only its mean's share of T.
            self.second_moment_ = self.second_moment_ - count * np.outer(mean, mean)
        self.sums_ = np.delete(self.sums_, index, axis=0)
        self.counts_ = np.delete(self.counts_, index)
        self._solution = None

    @property
    def means_(self) -> FloatArray:
        """Class means, one row per class."""
        return self.sums_ / self.counts_[:, None]

    @property
    def covariance_(self) -> FloatArray:
        """Pooled within-class covariance."""
        means = self.means_
        scatter = self.second_moment_ - (means.T * self.counts_) @ means
        return scatter / max(self.n_seen_, 1)

    def _scores(self, X: FloatArray) -> FloatArray:
        if self._solution is None:
            dim = self.sums_.shape[1]
            shrunk = (1.0 - self.shrinkage) * self.covariance_ + self.shrinkage * np.eye(dim)
            weights = scipy.linalg.solve(shrunk, self.means_.T, assume_a="pos")
            bias = -0.5 * np.sum(self.means_.T * weights, axis=0)
            self._solution = (weights, bias)
        weights, bias = self._solution
        return X @ weights + bias

    def _state_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"sums": self.sums_, "counts": self.counts_, "second_moment": self.second_moment_}
        for i, moment in enumerate(self.class_second_moments_):
            arrays[f"class_second_moment.{i}"] = moment
        return arrays

    def _expected_shapes(self, dim: int, n_classes: int) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {
            "sums": (n_classes, dim),
            "counts": (n_classes,),
            "second_moment": (dim, dim),
        }
        if self.exact_forget:
            shapes.update({f"class_second_moment.{i}": (dim, dim) for i in range(n_classes)})
        return shapes

    def _load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.sums_ = np.array(arrays["sums"], dtype=np.float64)
        self.counts_ = np.array(arrays["counts"], dtype=np.int64)
        self.second_moment_ = np.array(arrays["second_moment"], dtype=np.float64)
        self.class_second_moments_ = [
            np.array(arrays[f"class_second_moment.{i}"], dtype=np.float64)
            for i in range(len(self.classes_) if self.exact_forget else 0)
        ]
        self._solution = None
