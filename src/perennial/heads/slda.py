"""Streaming linear discriminant analysis (Hayes & Kanan, 2020)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.linalg
from numpy.typing import NDArray

from perennial.heads.base import FloatArray, Head, Label
from perennial.heads.statistics import ClassStatistics, covariance_factor
from perennial.params import check_fraction

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
    from the class's own second moment with ``exact_forget=True``): exact in either mode. It
    refuses examples whose removal would leave a within-class covariance that is not positive
    semi-definite (or, with ``exact_forget``, a negative variance in a class), which examples the
    head learned cannot do.
    ``merge(other)`` adds the statistics of a head with the same parameters.

    ``forget(label)`` removes the class's mean and count. With ``exact_forget=False`` (default) its
    examples stay in ``T`` as unlabelled deviations from their class mean (``T -= n_c mu_c mu_c^T``,
    ``n`` unchanged), so the pooled covariance keeps the class's within-class scatter and nothing
    else of it: it is the covariance of the data in which each forgotten example ``x`` is replaced
    by ``x - mu_c`` without a label. With ``exact_forget=True`` the head keeps per-class second
    moments (``n_classes * d**2`` floats) and the result is exactly the model that never saw the
    class. The statistics are a :class:`~perennial.heads.statistics.ClassStatistics`.

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

    name = "slda"

    def __init__(self, shrinkage: float = 1e-4, exact_forget: bool = False) -> None:
        check_fraction("shrinkage", shrinkage, high_open=False)
        self.shrinkage = shrinkage
        self.exact_forget = exact_forget
        super().__init__()

    def _reset(self) -> None:
        super()._reset()
        self.statistics_: ClassStatistics | None = None
        self._solution: tuple[FloatArray, FloatArray] | None = None

    def _new_statistics(self, dim: int) -> ClassStatistics:
        return ClassStatistics(dim, second_moment=True, class_moments=self.exact_forget)

    def _initialise(self, dim: int) -> None:
        self.statistics_ = self._new_statistics(dim)

    @property
    def _stats(self) -> ClassStatistics:
        assert self.statistics_ is not None, "the head has learned nothing"
        return self.statistics_

    def _learn(self, X: FloatArray, columns: NDArray[np.intp], n_new: int) -> None:
        self._stats.add(X, columns, n_new)
        self._solution = None

    def _check_unlearn(
        self, X: FloatArray, columns: NDArray[np.intp], names: Sequence[Label]
    ) -> None:
        self._stats.check_subtract(X, columns, names)

    def _unlearn(self, X: FloatArray, columns: NDArray[np.intp], kept: NDArray[np.intp]) -> None:
        self._stats.subtract(X, columns, kept)
        self._solution = None

    def _merge(self, other: SLDAHead, columns: NDArray[np.intp], n_new: int) -> None:
        self._stats.merge(other._stats, columns, n_new)
        self._solution = None

    def _class_counts(self) -> NDArray[np.int64]:
        return self._stats.counts

    def _forget_index(self, index: int) -> None:
        self._stats.drop(index)
        self.n_seen_ = self._stats.n
        self._solution = None

    @property
    def sums_(self) -> FloatArray:
        """Feature sums per class, one row per class."""
        return self._stats.sums

    @property
    def counts_(self) -> NDArray[np.int64]:
        """Examples per class."""
        return self._stats.counts

    @property
    def second_moment_(self) -> FloatArray:
        """``T = sum x x^T`` over every example whose rows the head holds."""
        return self._stats.full_moment()

    @property
    def means_(self) -> FloatArray:
        """Class means, one row per class."""
        return self._stats.means

    @property
    def covariance_(self) -> FloatArray:
        """Pooled within-class covariance (see the class docstring after ``forget``)."""
        return self._stats.within_scatter() / max(self._stats.n, 1)

    def _scores(self, X: FloatArray) -> FloatArray:
        if self._solution is None:
            dim = self.sums_.shape[1]
            shrunk = (1.0 - self.shrinkage) * self.covariance_ + self.shrinkage * np.eye(dim)
            try:
                weights = scipy.linalg.solve(shrunk, self.means_.T, assume_a="pos")
            except np.linalg.LinAlgError:
                # Not positive definite: statistics left so by an unlearn that skipped its check.
                factor = covariance_factor(shrunk)
                weights = scipy.linalg.cho_solve((factor, True), self.means_.T)
            bias = -0.5 * np.sum(self.means_.T * weights, axis=0)
            self._solution = (weights, bias)
        weights, bias = self._solution
        return X @ weights + bias

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return self._stats.state_arrays()

    def _expected_shapes(self, dim: int, n_classes: int) -> dict[str, tuple[int, ...]]:
        return self._new_statistics(dim).expected_shapes(n_classes)

    def _load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        assert self.dim_ is not None
        self.statistics_ = self._new_statistics(self.dim_)
        self.statistics_.load_arrays(arrays, n=self.n_seen_)
        self._solution = None
