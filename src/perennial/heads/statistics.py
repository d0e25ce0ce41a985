"""Per-class statistics of features: counts, sums and second moments, all of them sums.

:class:`ClassStatistics` is the one value that the nearest-class-mean head, the streaming LDA head
and the open-set gate keep. Each of them is a scorer that reads it. Learning adds rows, unlearning
subtracts them, merging adds two values, and forgetting drops a class's row; the value never
needs the examples again.

Rows follow the caller's class columns, so the labels live with the caller (the head). The
methods take validated float64 features and column indices; they do not check them again.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy.linalg import blas

from perennial.exceptions import ModelMismatchError

__all__ = ["ClassStatistics", "add_outer", "symmetric"]

FloatArray = NDArray[np.float64]


class ClassStatistics:
    """Per-class counts and sums, and optionally the second moments, of ``dim``-wide features.

    Parameters
    ----------
    dim
        Width of the features.
    second_moment
        Keep ``T = sum x x^T`` over every row (for covariances).
    squares
        Keep each class's elementwise sum of squares (for per-class diagonal variances).
    class_moments
        Keep each class's own ``sum x x^T`` (``n_classes * dim**2`` floats), so that dropping a
        class removes its rows from ``T`` exactly.

    Attributes
    ----------
    counts, sums
        Examples and feature sums per class, one row per class column.
    n
        Rows in ``T``: equal to ``counts.sum()`` until :meth:`drop` keeps a class's rows as
        unlabelled deviations (see there).
    moment
        ``T`` (Fortran order; only its upper triangle is kept current: read it through
        :meth:`full_moment`), or None.

    Examples
    --------
    >>> import numpy as np
    >>> stats = ClassStatistics(2, second_moment=True)
    >>> stats.add(np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]]), np.array([0, 0, 1]), n_new=2)
    >>> stats.counts.tolist(), stats.means.tolist()
    ([2, 1], [[2.0, 0.0], [0.0, 2.0]])
    >>> np.round(stats.within_scatter(), 12).tolist()
    [[2.0, 0.0], [0.0, 0.0]]
    """

    def __init__(
        self,
        dim: int,
        *,
        second_moment: bool = False,
        squares: bool = False,
        class_moments: bool = False,
    ) -> None:
        self.dim = int(dim)
        self.counts: NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self.sums: FloatArray = np.zeros((0, self.dim))
        self.n = 0
        self.moment: FloatArray | None = (
            np.zeros((self.dim, self.dim), order="F") if second_moment or class_moments else None
        )
        self.squares: FloatArray | None = np.zeros((0, self.dim)) if squares else None
        self.class_moments: list[FloatArray] | None = [] if class_moments else None

    # --- reading ---------------------------------------------------------------------------------
    @property
    def n_classes(self) -> int:
        return int(self.counts.shape[0])

    @property
    def means(self) -> FloatArray:
        """Class means, one row per class."""
        result: FloatArray = self.sums / self.counts[:, None]
        return result

    def full_moment(self) -> FloatArray:
        """``T`` as a full symmetric matrix (a new array)."""
        if self.moment is None:
            raise ModelMismatchError("these statistics keep no second moment")
        return symmetric(self.moment)

    def moment_diagonal(self) -> FloatArray:
        """The diagonal of ``T``."""
        if self.moment is None:
            raise ModelMismatchError("these statistics keep no second moment")
        return np.diagonal(self.moment).copy()

    def within_scatter(self) -> FloatArray:
        """``T - sum_k s_k s_k^T / n_k``: the scatter of every row about its class mean."""
        scaled = self.sums / np.sqrt(self.counts)[:, None]
        scatter = self.full_moment()
        scatter -= scaled.T @ scaled
        return scatter

    @property
    def nbytes(self) -> int:
        return sum(array.nbytes for array in self.state_arrays().values())

    # --- changing --------------------------------------------------------------------------------
    def add(self, X: FloatArray, columns: NDArray[np.intp], n_new: int = 0) -> None:
        """Add rows ``X`` to the classes ``columns``; ``n_new`` empty classes are appended first."""
        if n_new == 0 and self.class_moments is None:
            self._add_in_place(X, columns)
            return
        counts = np.concatenate([self.counts, np.zeros(n_new, dtype=np.int64)])
        np.add.at(counts, columns, 1)
        sums = np.vstack([self.sums, np.zeros((n_new, self.dim))])
        np.add.at(sums, columns, X)
        squares = None
        if self.squares is not None:
            squares = np.vstack([self.squares, np.zeros((n_new, self.dim))])
            np.add.at(squares, columns, X * X)
        class_updates: list[tuple[int, FloatArray]] = []
        if self.class_moments is not None:
            class_updates = [
                (int(c), np.asfortranarray(X[columns == c])) for c in np.unique(columns)
            ]
        # Commit: nothing below can fail on validated input.
        if self.moment is not None:
            add_outer(self.moment, np.asfortranarray(X))
        if self.class_moments is not None:
            self.class_moments += [np.zeros((self.dim, self.dim), order="F") for _ in range(n_new)]
            for column, rows in class_updates:
                add_outer(self.class_moments[column], rows)
        self.counts, self.sums, self.squares = counts, sums, squares
        self.n += X.shape[0]

    def _add_in_place(self, X: FloatArray, columns: NDArray[np.intp]) -> None:
        """:meth:`add` to existing classes, updating the arrays in place (one row: no ufunc.at)."""
        if self.moment is not None:
            add_outer(self.moment, np.asfortranarray(X))
        if X.shape[0] == 1:
            column = int(columns[0])
            self.counts[column] += 1
            self.sums[column] += X[0]
            if self.squares is not None:
                self.squares[column] += X[0] * X[0]
        else:
            np.add.at(self.counts, columns, 1)
            np.add.at(self.sums, columns, X)
            if self.squares is not None:
                np.add.at(self.squares, columns, X * X)
        self.n += X.shape[0]

    def subtract(self, X: FloatArray, columns: NDArray[np.intp], kept: NDArray[np.intp]) -> None:
        """Subtract rows ``X`` from the classes ``columns``, then keep the class rows ``kept``.

        The caller has checked that no class loses more rows than it counted; the classes left
        out of ``kept`` are those this subtraction empties.
        """
        counts = (self.counts - np.bincount(columns, minlength=self.n_classes))[kept]
        sums = self.sums.copy()
        np.subtract.at(sums, columns, X)
        squares = None
        if self.squares is not None:
            squares = self.squares.copy()
            np.subtract.at(squares, columns, X * X)
            squares = squares[kept]
        remaining = set(kept.tolist())
        class_updates: list[tuple[int, FloatArray]] = []
        if self.class_moments is not None:
            class_updates = [
                (int(c), np.asfortranarray(X[columns == c]))
                for c in np.unique(columns)
                if int(c) in remaining  # an emptied class's moment is dropped, not downdated
            ]
        if self.moment is not None:
            add_outer(self.moment, np.asfortranarray(X), alpha=-1.0)
        if self.class_moments is not None:
            for column, rows in class_updates:
                add_outer(self.class_moments[column], rows, alpha=-1.0)
            self.class_moments = [self.class_moments[i] for i in kept]
        self.counts, self.sums, self.squares = counts, sums[kept], squares
        self.n -= X.shape[0]

    def merge(self, other: ClassStatistics, columns: NDArray[np.intp], n_new: int = 0) -> None:
        """Add ``other``: its class ``j`` goes to column ``columns[j]`` (distinct columns)."""
        self.check_compatible(other)
        counts = np.concatenate([self.counts, np.zeros(n_new, dtype=np.int64)])
        counts[columns] += other.counts
        sums = np.vstack([self.sums, np.zeros((n_new, self.dim))])
        sums[columns] += other.sums
        squares = None
        if self.squares is not None and other.squares is not None:
            squares = np.vstack([self.squares, np.zeros((n_new, self.dim))])
            squares[columns] += other.squares
        n_old = self.n_classes
        appended: list[FloatArray] = []
        if self.class_moments is not None and other.class_moments is not None:
            appended = [
                np.array(other.class_moments[j], order="F")
                for j, column in enumerate(columns)
                if column >= n_old
            ]
        if self.moment is not None and other.moment is not None:
            self.moment += other.moment  # upper triangles stay authoritative
        if self.class_moments is not None and other.class_moments is not None:
            for j, column in enumerate(columns):
                if column < n_old:
                    self.class_moments[column] += other.class_moments[j]
            self.class_moments.extend(appended)  # new columns in the order of other's classes
        self.counts, self.sums, self.squares = counts, sums, squares
        self.n += other.n

    def drop(self, index: int) -> None:
        """Remove class ``index``.

        With per-class moments its rows leave ``T`` too: the result is the statistics of the
        data without that class. Without them, its rows stay in ``T`` as unlabelled deviations
        from their class mean (``T -= n_c mu_c mu_c^T``, ``n`` unchanged): covariances keep
        the class's within-class scatter, and nothing else of it remains.
        """
        count = int(self.counts[index])
        mean = self.sums[index] / count
        if self.moment is not None:
            if self.class_moments is not None:
                self.moment -= self.class_moments.pop(index)
                self.n -= count
            else:
                add_outer(self.moment, np.asfortranarray(mean[None, :]), alpha=-float(count))
        else:
            self.n -= count
        self.counts = np.delete(self.counts, index)
        self.sums = np.delete(self.sums, index, axis=0)
        if self.squares is not None:
            self.squares = np.delete(self.squares, index, axis=0)

    def copy(self) -> ClassStatistics:
        twin = ClassStatistics(self.dim)
        twin.counts, twin.sums, twin.n = self.counts.copy(), self.sums.copy(), self.n
        twin.moment = None if self.moment is None else np.array(self.moment, order="F")
        twin.squares = None if self.squares is None else self.squares.copy()
        twin.class_moments = (
            None
            if self.class_moments is None
            else [np.array(m, order="F") for m in self.class_moments]
        )
        return twin

    def check_compatible(self, other: ClassStatistics) -> None:
        if other.dim != self.dim:
            raise ModelMismatchError(
                f"cannot merge statistics of {other.dim} features into {self.dim}"
            )
        for name in ("moment", "squares", "class_moments"):
            if (getattr(self, name) is None) != (getattr(other, name) is None):
                raise ModelMismatchError(f"cannot merge statistics that differ in {name!r} kept")

    # --- state -----------------------------------------------------------------------------------
    def state_arrays(
        self, prefix: str = "", moment_name: str = "second_moment"
    ) -> dict[str, np.ndarray]:
        """The arrays to save, by name (``T`` and per-class moments written in full)."""
        arrays: dict[str, np.ndarray] = {f"{prefix}sums": self.sums, f"{prefix}counts": self.counts}
        if self.moment is not None:
            arrays[f"{prefix}{moment_name}"] = symmetric(self.moment)
        if self.squares is not None:
            arrays[f"{prefix}sq_sums"] = self.squares
        for i, moment in enumerate(self.class_moments or []):
            arrays[f"{prefix}class_{moment_name}.{i}"] = symmetric(moment)
        return arrays

    def expected_shapes(
        self, n_classes: int, prefix: str = "", moment_name: str = "second_moment"
    ) -> dict[str, tuple[int, ...]]:
        d = self.dim
        shapes: dict[str, tuple[int, ...]] = {
            f"{prefix}sums": (n_classes, d),
            f"{prefix}counts": (n_classes,),
        }
        if self.moment is not None:
            shapes[f"{prefix}{moment_name}"] = (d, d)
        if self.squares is not None:
            shapes[f"{prefix}sq_sums"] = (n_classes, d)
        if self.class_moments is not None:
            shapes.update({f"{prefix}class_{moment_name}.{i}": (d, d) for i in range(n_classes)})
        return shapes

    def load_arrays(
        self,
        arrays: dict[str, np.ndarray],
        n: int,
        prefix: str = "",
        moment_name: str = "second_moment",
    ) -> None:
        """Restore from :meth:`state_arrays` output whose shapes the caller has checked."""
        self.sums = np.array(arrays[f"{prefix}sums"], dtype=np.float64)
        self.counts = np.array(arrays[f"{prefix}counts"], dtype=np.int64)
        if self.moment is not None:
            self.moment = np.array(arrays[f"{prefix}{moment_name}"], dtype=np.float64, order="F")
        if self.squares is not None:
            self.squares = np.array(arrays[f"{prefix}sq_sums"], dtype=np.float64)
        if self.class_moments is not None:
            self.class_moments = [
                np.array(arrays[f"{prefix}class_{moment_name}.{i}"], dtype=np.float64, order="F")
                for i in range(len(self.counts))
            ]
        self.n = int(n)


def add_outer(matrix: FloatArray, rows: FloatArray, alpha: float = 1.0) -> None:
    """``matrix += alpha rows^T rows`` in place, on the upper triangle only (BLAS syr/syrk).

    ``matrix`` must be a Fortran-ordered float64 array.
    """
    if rows.shape[0] == 0:
        return
    if rows.shape[0] == 1:
        out = blas.dsyr(alpha, rows[0], lower=0, a=matrix, overwrite_a=1)
    else:
        out = blas.dsyrk(alpha, rows, beta=1.0, c=matrix, trans=1, lower=0, overwrite_c=1)
    if out is not matrix and not np.shares_memory(out, matrix):  # pragma: no cover - BLAS copied
        matrix[...] = out


def symmetric(upper: FloatArray) -> FloatArray:
    """The full symmetric matrix whose upper triangle is given (a new array).

    Copied block by block: ``np.triu`` builds a mask as large as the matrix, which made saving
    a 4096-wide Gram matrix take most of a second.
    """
    m = upper.shape[0]
    full = np.empty((m, m))
    block = 256
    for start in range(0, m, block):
        stop = min(start + block, m)
        corner = upper[start:stop, start:stop]
        full[start:stop, start:stop] = np.triu(corner) + np.triu(corner, 1).T
        full[start:stop, stop:] = upper[start:stop, stop:]
        full[stop:, start:stop] = upper[start:stop, stop:].T
    return full
