"""Per-class statistics of features: counts, sums and second moments, all of them sums.

:class:`ClassStatistics` is the one value that the nearest-class-mean head, the streaming LDA head
and the open-set gate keep. Each of them is a scorer that reads it. Learning adds rows, unlearning
subtracts them, merging adds two values, and forgetting drops a class's row; the value never
needs the examples again.

Rows follow the caller's class columns, so the labels live with the caller (the head). The
methods take validated float64 features and column indices; they do not check them again.

**What a subtraction may leave.** Nothing of the learned examples is kept, so an unlearn cannot
tell whether the examples it is given are ones that were learned. It can tell when what they
leave is impossible: statistics that no set of examples has (a class of one example whose
squared mean is not its mean square, a negative variance, a within-class covariance that is not
positive semi-definite). :func:`check_subtraction` refuses those, within a rounding tolerance,
before anything changes; :func:`covariance_factor` factors a covariance that rounding (or a
subtraction that skipped the check) left slightly indefinite instead of failing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NoReturn

import numpy as np
import scipy.linalg
from numpy.typing import NDArray
from scipy.linalg import blas, lapack

from perennial.exceptions import InvalidInputError, ModelMismatchError

__all__ = [
    "SUBTRACTION_TOLERANCE",
    "ClassStatistics",
    "add_outer",
    "check_subtraction",
    "covariance_factor",
    "symmetric",
]

FloatArray = NDArray[np.float64]

#: Rounding allowed by :func:`check_subtraction`, relative to the magnitude of the sums involved.
#: A float64 sum of n terms is off by about n * 1e-16 of it, but the rows given back are often
#: not the rows learned, bit for bit: an encoder's float32 features of a text depend on its
#: batch-mates by up to ~1e-7 (padding changes the kernels' blocking), so the scatter left after
#: unlearning a text learned in a batch can show a negative variance of ~1e-7 of the trace. At
#: 1e-8 that refused the README's own unlearning on some machines; 1e-6 still refuses any row that
#: differs from every learned one by more than rounding.
SUBTRACTION_TOLERANCE = 1e-6

logger = logging.getLogger(__name__)


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

    def check_subtract(
        self, X: FloatArray, columns: NDArray[np.intp], labels: Sequence[Any]
    ) -> None:
        """Refuse rows whose :meth:`subtract` would leave statistics no examples have.

        ``labels`` names the class columns in messages. Per class, the sums of squares (or the
        diagonal of the class's own moment) are checked when kept, and the within-class scatter
        of ``T`` when ``T`` is kept; see :func:`check_subtraction`. Changes nothing.
        """
        squares = self.squares
        if squares is None and self.class_moments is not None:
            squares = np.array([np.diagonal(m) for m in self.class_moments]).reshape(-1, self.dim)
        check_subtraction(
            self.counts, self.sums, X, columns, labels, squares=squares, moment=self.moment
        )

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


def check_subtraction(
    counts: NDArray[np.int64],
    sums: FloatArray,
    rows: FloatArray,
    columns: NDArray[np.intp],
    labels: Sequence[Any],
    *,
    squares: FloatArray | None = None,
    moment: FloatArray | None = None,
    feature: str = "feature",
    tolerance: float = SUBTRACTION_TOLERANCE,
) -> None:
    """Refuse to subtract ``rows`` (of classes ``columns``) if what remains is impossible.

    ``counts`` and ``sums`` (and the optional per-class ``squares`` and total second moment
    ``moment``, whose upper triangle is read) are statistics of learned examples; the caller
    has checked that no class loses more rows than it counted. For each class the rows come
    from, with ``n`` examples left, sum ``s`` and sum of squares ``q`` (per feature):

    * ``n = 0``: ``s`` and ``q`` must vanish;
    * ``n = 1``: ``q = s**2`` (one example has no variance);
    * ``n >= 2``: ``q >= s**2 / n`` (no negative variance).

    With ``moment``, the within-class scatter ``T - sum_c s_c s_c^T / n_c`` that remains must
    have no negative diagonal entry and be positive semi-definite: its Cholesky factorisation
    must succeed once ``tolerance * tr`` is added to its diagonal. Every comparison allows
    ``tolerance`` times the magnitude of the statistic it reads, summed over the features (the
    trace, for second moments), for rounding: a sum keeps the rounding of terms subtracted from
    it long ago, in any feature, so the allowance does not shrink with what one feature holds
    now. Rows of ``sums`` or
    ``squares`` that are not finite are unknown and not checked. ``feature`` names a column of
    the statistics in messages (for instance "random feature").

    Raises
    ------
    InvalidInputError
        Naming the class (or the classes of the batch, for the pooled scatter), the feature
        and the value left. Nothing is changed, whatever happens.

    Examples
    --------
    >>> import numpy as np
    >>> counts, sums = np.array([2]), np.array([[4.0]])  # two examples: 1 and 3
    >>> check_subtraction(counts, sums, np.array([[3.0]]), np.array([0]), ["a"],
    ...                   squares=np.array([[10.0]]))
    >>> check_subtraction(counts, sums, np.array([[2.0]]), np.array([0]), ["a"],
    ...                   squares=np.array([[10.0]]))
    Traceback (most recent call last):
    ...
    perennial.exceptions.InvalidInputError: cannot unlearn these examples of 'a': the one example it would keep has a sum of 2 but a sum of squares of 6 in feature 0, which no example has; they are not (all) examples the model learned
    """
    k = counts.shape[0]
    removed = np.bincount(columns, minlength=k)
    batch = np.flatnonzero(removed).tolist()
    rows_squared = rows * rows
    for column in batch:
        mine = columns == column
        label = repr(labels[column])
        left = int(counts[column] - removed[column])
        if not np.isfinite(sums[column]).all():
            continue  # unknown (see the service's ledger): nothing to check against
        given = rows[mine]
        s = sums[column] - given.sum(axis=0)
        if left == 0:
            scale = float(np.abs(sums[column]).sum() + np.abs(given).sum())
            bad = np.abs(s) > tolerance * scale
            if bad.any():
                j = int(np.argmax(np.abs(s)))
                _refuse(
                    label,
                    f"they are all of its examples, yet their {feature} {j} sums to "
                    f"{given[:, j].sum():.6g} where its examples summed to {sums[column, j]:.6g}",
                )
        if squares is None or not np.isfinite(squares[column]).all():
            continue
        given_squares = rows_squared[mine].sum(axis=0)
        q = squares[column] - given_squares
        scale = float(squares[column].sum() + given_squares.sum())
        if left == 0:
            spread = q
            bad = np.abs(spread) > tolerance * scale
        else:
            spread = q - s * s / left
            bad = spread < -tolerance * scale
            if left == 1:
                bad |= spread > tolerance * scale
        if bad.any():
            j = int(np.argmax(np.where(bad, np.abs(spread), -1.0)))
            if left == 0:
                detail = (
                    f"no example would be left, yet a sum of squares of {q[j]:.6g} in {feature} {j}"
                )
            elif left == 1:
                detail = (
                    f"the one example it would keep has a sum of {s[j]:.6g} but a sum of squares "
                    f"of {q[j]:.6g} in {feature} {j}, which no example has"
                )
            else:
                detail = (
                    f"the {left} examples it would keep would have a variance of "
                    f"{spread[j] / left:.6g} in {feature} {j}, which no examples have"
                )
            _refuse(label, detail)
    if moment is None:
        return
    names = ", ".join(repr(labels[c]) for c in batch)
    kept = (counts - removed) > 0
    scatter = np.array(moment, dtype=np.float64, order="F")
    add_outer(scatter, np.asfortranarray(rows), alpha=-1.0)
    new_sums = sums.copy()
    np.subtract.at(new_sums, columns, rows)
    scaled = new_sums[kept] / np.sqrt((counts - removed)[kept])[:, None]
    add_outer(scatter, np.asfortranarray(scaled), alpha=-1.0)
    diagonal = np.diagonal(scatter).copy()
    scale = float(np.diagonal(moment).sum() + rows_squared.sum())
    bad = diagonal < -tolerance * scale
    if bad.any():
        j = int(np.argmin(diagonal))
        _refuse(
            names,
            f"the within-class scatter of {feature} {j} would be {diagonal[j]:.6g}, a "
            "negative variance, which no examples have",
        )
    scatter[np.diag_indices_from(scatter)] += tolerance * scale
    _, info = lapack.dpotrf(scatter, lower=0, clean=0, overwrite_a=1)
    if info > 0:
        _refuse(
            names,
            f"the within-class covariance of the {feature}s would not be positive "
            "semi-definite (a negative variance along some direction), which no examples give",
        )


def _refuse(names: str, detail: str) -> NoReturn:
    raise InvalidInputError(
        f"cannot unlearn these examples of {names}: {detail}; they are not (all) examples the "
        "model learned"
    )


def covariance_factor(S: FloatArray) -> FloatArray:
    """Lower Cholesky factor of ``S``, a covariance computed from statistics.

    Rounding, or a subtraction of examples that were never learned (see
    :func:`check_subtraction`), can leave ``S`` slightly indefinite. Then, instead of failing,
    its eigenvalues are clipped from below at ``1e-10`` times the largest one (logged) and the
    factor of the clipped matrix is returned, so that scoring and solving never fail on
    statistics that were accepted.

    Examples
    --------
    >>> import numpy as np
    >>> L = covariance_factor(np.array([[1.0, 2.0], [2.0, 1.0]]))  # eigenvalues 3 and -1
    >>> bool(np.all(np.diagonal(L) > 0))
    True
    """
    try:
        factor: FloatArray = scipy.linalg.cholesky(S, lower=True, check_finite=False)
        return factor
    except np.linalg.LinAlgError:
        pass
    values, vectors = scipy.linalg.eigh(S, check_finite=False)
    largest = float(np.abs(values).max()) if values.size else 0.0
    floor = 1e-10 * largest if largest > 0.0 else 1.0
    logger.warning(
        "a %d x %d covariance is not positive definite (eigenvalues from %.3g to %.3g): "
        "factoring it with its eigenvalues clipped at %.3g",
        S.shape[0],
        S.shape[0],
        float(values.min()),
        float(values.max()),
        floor,
    )
    root = vectors * np.sqrt(np.maximum(values, floor))  # S ~ root root^T
    # root^T = Q R gives root root^T = R^T R: R^T is a lower factor (QR cannot fail).
    upper = scipy.linalg.qr(root.T, mode="r", check_finite=False)[0]
    signs = np.where(np.diagonal(upper) < 0.0, -1.0, 1.0)
    lower: FloatArray = (upper * signs[:, None]).T
    return lower
