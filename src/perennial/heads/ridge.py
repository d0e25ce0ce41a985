"""Ridge regression on random ReLU features, exact and streaming (RanPAC-style head)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import scipy.linalg
from numpy.typing import NDArray

from perennial.exceptions import (
    InvalidInputError,
    InvalidParameterError,
    ModelMismatchError,
    ReadOnlyHeadError,
)
from perennial.heads.base import FloatArray, Head, Label, one_hot
from perennial.heads.statistics import add_outer, check_subtraction, symmetric
from perennial.params import check_int, check_positive

__all__ = ["RidgeHead"]

# Relative ridge strengths tried by generalized cross-validation, times the mean eigenvalue of G.
_RELATIVE_GRID = 10.0 ** np.linspace(-6.0, 2.0, 33)

# The dual form keeps at most this many examples by default (see ``RidgeHead.dual_limit_``).
_DUAL_CAP = 1024


@dataclass
class _DualSolution:
    """The dual solver's cache: ``K + lam I = L L^T`` for the ``n`` stored rows (never saved).

    ``expanded`` and ``factor`` are buffers with room for ``max_pending`` more rows; only the
    leading ``n`` rows (and columns) are meaningful, and appending writes past them only.
    """

    lam: float
    n_base: int  # rows when the factor was last computed from scratch
    n: int
    expanded: FloatArray  # (capacity, M): rows [:n] are H = relu(X R)
    factor: FloatArray  # (capacity, capacity): [:n, :n] is L, lower triangular
    half: FloatArray  # L^-1 Y, (n, n_classes)


class RidgeHead(Head):
    """Exact ridge-regression classifier on a fixed random ReLU expansion of the features.

    Each input ``x`` (``d`` features) is expanded to ``h = max(0, x R)`` with a fixed Gaussian
    matrix ``R`` of shape ``(d, n_features)``, as in RanPAC (McDonnell et al., 2023,
    arXiv:2307.02251), regenerated from ``seed`` (never saved). The output weights are
    ``W = (G + lam I)^-1 C`` with ``G = sum h h^T`` and ``C = sum h y^T`` (one-hot ``y``).

    **Two forms of the same statistics.** While the head has seen at most ``dual_limit_``
    examples (``max_dual_examples``) it keeps the examples themselves (``features_``, ``d``
    floats each, and ``feature_columns_``, each row's class or -1 for an unlabelled row) and
    solves through the kernel ``K = H H^T`` (``n x n``): scores are ``h(x) H^T (K + lam I)^-1 Y``,
    the same function as the primal one. A model of a few examples thus saves a few kB and answers
    its first prediction in milliseconds. Once the count passes ``dual_limit_`` the head forms the
    primal statistics ``G``, ``C`` (and per-class ``G_c`` with ``exact_forget``) from the rows and
    drops them for good.

    **When the strength is chosen.** The solver keeps a decomposition (of ``G``, or of ``K``) and
    applies the examples learned since as exact low-rank updates: one projection and one rank-1
    update of ``G`` per example (or one row of a Cholesky factor of ``K + lam I``), never a
    re-solve. After more than ``max_pending`` such examples, and after any unlearning, merge,
    exact forget, load or :meth:`refresh`, the next prediction rebuilds the decomposition. With
    ``ridge="auto"`` the strength ``lam`` minimises generalized cross-validation (GCV) on a grid
    of 33 values relative to the mean eigenvalue of ``G`` (equivalently of ``K``), evaluated
    exactly from the statistics when the solution is rebuilt, and whenever no update is pending
    (a default ``forget`` with none pending chooses again); pending updates are solved exactly at
    that ``lam``. Hence: with a fixed ``ridge``, learning the same data in any order or batch split
    gives the same model at all times; with ``"auto"``, it gives the same model after
    :meth:`refresh` and whenever no update is pending, while in between ``lam`` may lag by up to
    ``pending_limit`` examples (``max_pending``, and at most half the data it was chosen from).

    ``unlearn_many(X, y)`` subtracts the examples' ``h h^T`` from ``G`` (and from ``G_c`` with
    ``exact_forget=True``), their targets from ``C`` and their counts: this is exact whatever
    ``exact_forget`` says, and ``lam`` is chosen again at the rebuild, as retraining would. In the
    primal form the head cannot tell whether the examples given are ones it learned; it refuses
    (``InvalidInputError``) those whose removal would leave statistics no examples have: a
    within-class scatter ``G - sum_c C_c C_c^T / n_c`` of the expanded features that is not
    positive semi-definite (one Cholesky factorisation of an ``M x M`` matrix), or an emptied
    class whose targets do not vanish. In the dual form it can tell, and it removes the stored
    rows equal to them (same features as float64, same label), refusing an example it does not
    hold (with ``verify=False`` it subtracts it all the same, turning primal). Examples of a class
    removed by the default ``forget`` stay without a label and can no longer be unlearned.
    ``merge(other)`` adds the statistics of a head with the same parameters and projection (two
    dual heads whose rows together fit under ``dual_limit_`` stay dual).

    ``forget(label)`` drops the class's targets and count. With the default ``exact_forget=False``
    its examples stay as unlabelled rows (targets all zero): the class can no longer be predicted,
    but ``G`` (or ``K``) still holds them. With ``exact_forget=True`` the primal form also keeps
    each class's own ``G_c`` (``n_classes * n_features**2`` floats) and forgetting subtracts it
    (the dual form drops the class's rows), giving exactly the model that never saw the class.

    Parameters
    ----------
    n_features
        Width ``M`` of the random expansion.
    ridge
        ``"auto"`` (GCV) or a fixed positive strength.
    seed
        Seed of the random projection; two heads merge only with the same seed.
    exact_forget
        Keep per-class Gram matrices so that ``forget`` is exact.
    max_pending
        Most examples learned on top of the last decomposition before it is recomputed (see
        :meth:`pending_limit`: also at most half the examples it was built from). A rebuild of
        ``G`` costs seconds at 4,096 features, so the default spreads it over 1,024 examples: in a
        predict-then-learn loop a step then costs about twice a learn alone, where 128 made it
        ten times (``benchmarks/bench_learner_cost.py``).
    max_dual_examples
        Most examples kept in the dual form; ``"auto"`` is ``min(n_features // 4, 1024)`` and 0
        means always primal.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = np.vstack([rng.normal(0, 1, (20, 5)) + 3, rng.normal(0, 1, (20, 5)) - 3])
    >>> head = RidgeHead(n_features=256)
    >>> head.learn_many(X, ["up"] * 20 + ["down"] * 20)
    >>> head.form_, head.predict_many([[3, 3, 3, 3, 3], [-3, -3, -3, -3, -3]])
    ('dual', ['up', 'down'])
    >>> head.learn_many(X, ["up"] * 20 + ["down"] * 20)  # 80 > 64 examples: G and C now
    >>> head.form_, head.predict_many([[3, 3, 3, 3, 3], [-3, -3, -3, -3, -3]])
    ('primal', ['up', 'down'])
    """

    name = "ridge"

    proba_temperature = 0.1

    def __init__(
        self,
        n_features: int = 4096,
        ridge: float | str = "auto",
        seed: int = 0,
        exact_forget: bool = False,
        max_pending: int = 1024,
        max_dual_examples: int | str = "auto",
    ) -> None:
        check_int("n_features", n_features, minimum=1)
        if ridge != "auto":
            try:
                check_positive("ridge", ridge)
            except InvalidParameterError:
                raise InvalidParameterError(
                    f"ridge must be 'auto' or a positive number, got {ridge!r}"
                ) from None
        check_int("max_pending", max_pending, minimum=0)
        if max_dual_examples != "auto":
            check_int("max_dual_examples", max_dual_examples, minimum=0)
        self.n_features = n_features
        self.ridge = ridge
        self.seed = seed
        self.exact_forget = exact_forget
        self.max_pending = max_pending
        self.max_dual_examples = max_dual_examples
        super().__init__()

    @property
    def dual_limit_(self) -> int:
        """Most examples kept in the dual form.

        ``"auto"``: ``min(M // 4, 1024)``. Up to ``M / 4`` rows the dual form is cheaper on every
        count: its cache ``H`` (``n M`` floats) is at most a quarter of ``G``, its rebuild (``n^3``)
        at most 1/64 of the primal one, and a learned example costs ``n (M + n)`` against ``M^2``.
        The cap of 1024 bounds the dual rebuild (about 0.3 s) and the per-query cost ``n (M + n)``
        whatever ``M``; past it, the primal form costs no more than the dual one did to get there.
        """
        if self.max_dual_examples == "auto":
            return min(self.n_features // 4, _DUAL_CAP)
        return int(self.max_dual_examples)

    @property
    def form_(self) -> str:
        """``"dual"`` while the head keeps its examples, ``"primal"`` once it keeps ``G`` and ``C``."""
        return "dual" if self.features_ is not None else "primal"

    # --- statistics ------------------------------------------------------------------------------
    def _reset(self) -> None:
        super()._reset()
        self.projection_: FloatArray | None = None
        self._projection_digest: str | None = None
        self.gram_: FloatArray | None = None  # Fortran order; the upper triangle is authoritative
        self.targets_: FloatArray | None = None
        self.class_grams_: list[FloatArray] = []
        self.features_: FloatArray | None = None  # dual form: the examples, (n, d)
        self.feature_columns_: NDArray[np.int64] | None = None  # their classes, -1: unlabelled
        self.counts_: NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._read_only = False
        self._invalidate(eigen=True)

    def _invalidate(self, eigen: bool) -> None:
        if eigen:
            self._eigen: tuple[FloatArray, FloatArray] | None = None  # (s, V) of G at the base
            self._eigen_base = 0  # examples in G when it was decomposed
            self._pending: list[FloatArray] = []  # V^T h of examples since the base, (M, k) each
            self._rotated_targets: FloatArray | None = None  # V^T C
            # With P the pending V^T h and D = (s + lam)^-1, all at the fixed lam: D P, the lower
            # Cholesky factor of S = I + P^T D P, and P^T D V^T C; each grows with the pending.
            self._scaled_pending: FloatArray | None = None
            self._capacitance: FloatArray | None = None
            self._pending_cross: FloatArray | None = None
            self._lambda: float | None = None  # chosen with the base; kept for pending updates
            self._dual: _DualSolution | None = None
        self._weights: FloatArray | None = None  # W, formed lazily
        self._pending_solved: FloatArray | None = None  # S^-1 P^T D V^T C (primal)
        self._alpha: FloatArray | None = None  # (K + lam I)^-1 Y (dual)
        self._small_rows = 0  # rows predicted without forming W since the last solution
        self._last_rotated: tuple[FloatArray, FloatArray] | None = None  # (X, H V) of them
        # (X, H, L^-1 K(stored, X), cache) of the last rows predicted in the dual form: a learn
        # of the same rows right after (predict, then learn) reuses them.
        self._last_dual: tuple[FloatArray, FloatArray, FloatArray, _DualSolution] | None = None

    def _make_projection(self, dim: int) -> FloatArray:
        return np.random.default_rng(self.seed).standard_normal((dim, self.n_features))

    def _initialise(self, dim: int) -> None:
        self._refuse_if_read_only("learn")
        self.projection_ = self._make_projection(dim)
        if self.dual_limit_ > 0:
            self.features_ = np.zeros((0, dim))
            self.feature_columns_ = np.zeros(0, dtype=np.int64)
        else:
            self.gram_ = np.zeros((self.n_features, self.n_features), order="F")
            self.targets_ = np.zeros((self.n_features, 0))

    def expand(self, X: FloatArray) -> FloatArray:
        """The random ReLU features ``max(0, X R)`` of validated inputs."""
        assert self.projection_ is not None
        expanded = X @ self.projection_
        np.maximum(expanded, 0.0, out=expanded)
        return expanded

    def _refuse_if_read_only(self, action: str) -> None:
        if self._read_only:
            raise ReadOnlyHeadError(
                f"cannot {action}: this {type(self).__name__} is a prediction-only copy (see "
                "prediction_copy); it holds the solution, not the statistics"
            )

    def _primal_statistics(
        self, features: FloatArray, columns: NDArray[np.int64], n_classes: int
    ) -> tuple[FloatArray, FloatArray, list[FloatArray]]:
        """``G`` (upper triangle, Fortran order), ``C`` and the ``G_c`` of rows in the dual form.

        A pure function of the rows (class ``columns``, -1 unlabelled): the head is not changed.
        """
        H = np.asfortranarray(self.expand(features))
        gram = np.zeros((self.n_features, self.n_features), order="F")
        if H.shape[0]:
            add_outer(gram, H)
        targets = H.T @ _dual_targets(columns, n_classes)
        class_grams = []
        if self.exact_forget:
            for column in range(n_classes):
                class_gram = np.zeros((self.n_features, self.n_features), order="F")
                rows = np.asfortranarray(H[columns == column])
                if rows.shape[0]:
                    add_outer(class_gram, rows)
                class_grams.append(class_gram)
        return gram, targets, class_grams

    def _learn(self, X: FloatArray, columns: NDArray[np.intp], n_new: int) -> None:
        self._refuse_if_read_only("learn")
        if self.features_ is not None:
            self._learn_dual(X, columns, n_new)
        else:
            self._learn_primal(X, columns, n_new)

    def _learn_dual(self, X: FloatArray, columns: NDArray[np.intp], n_new: int) -> None:
        assert self.features_ is not None and self.feature_columns_ is not None
        counts = np.concatenate([self.counts_, np.zeros(n_new, dtype=np.int64)])
        np.add.at(counts, columns, 1)
        features = np.vstack([self.features_, X])
        feature_columns = np.concatenate([self.feature_columns_, columns.astype(np.int64)])
        if features.shape[0] > self.dual_limit_:
            gram, targets, class_grams = self._primal_statistics(
                features, feature_columns, counts.shape[0]
            )
            # Commit: the primal statistics replace the rows for good.
            self.features_ = self.feature_columns_ = None
            self.gram_, self.targets_, self.class_grams_ = gram, targets, class_grams
            self.counts_ = counts
            self._invalidate(eigen=True)
            return
        dual = self._dual_appended(X, columns, counts.shape[0])
        # Commit.
        self.features_, self.feature_columns_, self.counts_ = features, feature_columns, counts
        self._invalidate(eigen=dual is None)
        self._dual = dual

    def _dual_appended(
        self, X: FloatArray, columns: NDArray[np.intp], n_classes: int
    ) -> _DualSolution | None:
        """The dual cache with the rows ``X`` appended (block Cholesky), or None to rebuild.

        Writes only past the cache's ``n`` rows, so the current cache stays valid until replaced.
        """
        cache = self._dual
        r = X.shape[0]
        if cache is None or cache.n - cache.n_base + r > self.pending_limit(cache.n_base):
            return None
        if cache.n + r > cache.factor.shape[0]:  # pragma: no cover - capacity covers max_pending
            return None
        n = cache.n
        last = self._last_dual
        if last is not None and last[3] is cache and np.array_equal(last[0], X):
            H_new, cross = last[1], last[2]  # just predicted: the same expansion and solve
        else:
            H_new = self.expand(X)
            L = cache.factor[:n, :n]
            cross = scipy.linalg.solve_triangular(
                L, cache.expanded[:n] @ H_new.T, lower=True, check_finite=False
            )  # L^-1 H H_new^T
        schur = H_new @ H_new.T + cache.lam * np.eye(r) - cross.T @ cross
        try:
            corner = scipy.linalg.cholesky(schur, lower=True, check_finite=False)
        except np.linalg.LinAlgError:  # pragma: no cover - rounding at a tiny ridge: rebuild
            return None
        half = np.hstack([cache.half, np.zeros((n, n_classes - cache.half.shape[1]))])
        half_new = scipy.linalg.solve_triangular(
            corner,
            _dual_targets(columns.astype(np.int64), n_classes) - cross.T @ half,
            lower=True,
            check_finite=False,
        )
        cache.expanded[n : n + r] = H_new
        cache.factor[n : n + r, :n] = cross.T
        cache.factor[n : n + r, n : n + r] = corner
        return replace(cache, n=n + r, half=np.vstack([half, half_new]))

    def _learn_primal(self, X: FloatArray, columns: NDArray[np.intp], n_new: int) -> None:
        assert self.gram_ is not None and self.targets_ is not None
        H = self.expand(X)
        n_classes = self.targets_.shape[1] + n_new
        Y = one_hot(columns, n_classes)
        # Everything that can fail is computed before the statistics change.
        targets = np.hstack([self.targets_, np.zeros((self.n_features, n_new))]) + H.T @ Y
        counts = np.concatenate([self.counts_, np.zeros(n_new, dtype=np.int64)])
        np.add.at(counts, columns, 1)
        H_f = np.asfortranarray(H)
        class_updates: list[tuple[int, FloatArray]] = []
        if self.exact_forget:
            class_updates = [
                (int(c), np.asfortranarray(H[columns == c])) for c in np.unique(columns)
            ]
        keep_eigen = self._eigen is not None and sum(p.shape[1] for p in self._pending) + H.shape[
            0
        ] <= self.pending_limit(self._eigen_base)
        if keep_eigen:
            assert self._eigen is not None and self._rotated_targets is not None
            last = self._last_rotated
            if last is not None and last[0].shape == X.shape and np.array_equal(last[0], X):
                rotated = last[1].T  # just predicted: V^T h is known (predict, then learn it)
            else:
                rotated = self._eigen[1].T @ H.T
            rotated_targets = (
                np.hstack([self._rotated_targets, np.zeros((self.n_features, n_new))]) + rotated @ Y
            )
            pending_state = self._pending_appended(rotated, Y, rotated_targets)
        # Commit.
        add_outer(self.gram_, H_f)
        for _ in range(n_new):
            if self.exact_forget:
                self.class_grams_.append(np.zeros((self.n_features, self.n_features), order="F"))
        for column, rows in class_updates:
            add_outer(self.class_grams_[column], rows)
        self.targets_ = targets
        self.counts_ = counts
        if keep_eigen:
            self._pending.append(rotated)
            self._rotated_targets = rotated_targets
            self._scaled_pending, self._capacitance, self._pending_cross = pending_state
            self._invalidate(eigen=False)  # lam stays: it was chosen with the base
        else:
            self._invalidate(eigen=True)

    def _pending_appended(
        self, rotated: FloatArray, Y: FloatArray, rotated_targets: FloatArray
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """``D P``, the factor of ``S`` and ``P^T D V^T C`` with the rows ``rotated`` pending too.

        ``rotated_targets`` is ``V^T C`` with the new examples; ``Y`` their one-hot targets. At a
        fixed ``lam``, ``S`` grows by a block row (``O(M r k)``) instead of being formed again.
        """
        assert self._eigen is not None and self._lambda is not None
        assert self._scaled_pending is not None and self._capacitance is not None
        assert self._pending_cross is not None
        inverse_diagonal = 1.0 / (self._eigen[0] + self._lambda)
        scaled = inverse_diagonal[:, None] * rotated  # D p
        old_cross = self._scaled_pending.T @ rotated  # P_old^T D p
        n_new = rotated_targets.shape[1] - self._pending_cross.shape[1]
        cross = (
            np.hstack([self._pending_cross, np.zeros((self._pending_cross.shape[0], n_new))])
            + old_cross @ Y
        )  # P_old^T D (V^T C + p Y)
        r, k = old_cross.shape
        if r:
            below = scipy.linalg.solve_triangular(
                self._capacitance, old_cross, lower=True, check_finite=False
            )
        else:
            below = np.zeros((0, k))
        corner = scipy.linalg.cholesky(
            np.eye(k) + rotated.T @ scaled - below.T @ below, lower=True, check_finite=False
        )
        factor = np.zeros((r + k, r + k))
        factor[:r, :r] = self._capacitance
        factor[r:, :r] = below.T
        factor[r:, r:] = corner
        return (
            np.hstack([self._scaled_pending, scaled]),
            factor,
            np.vstack([cross, scaled.T @ rotated_targets]),
        )

    def _check_unlearn(
        self, X: FloatArray, columns: NDArray[np.intp], names: Sequence[Label]
    ) -> None:
        self._refuse_if_read_only("unlearn")
        if self.features_ is not None:
            _, missing = self._held_rows(X, columns)
            if missing is not None:
                position, duplicate = missing
                raise InvalidInputError(
                    f"cannot unlearn example {position} (label {names[columns[position]]!r}): "
                    "the head holds no example with these features and this label"
                    + (" (or fewer of them than given)" if duplicate else "")
                )
            return
        assert self.gram_ is not None and self.targets_ is not None
        class_squares = None
        if self.exact_forget:  # the diagonal of G_c is the class's sum of squares of h
            class_squares = np.array([np.diagonal(g) for g in self.class_grams_]).reshape(
                -1, self.n_features
            )
        check_subtraction(
            self.counts_,
            self.targets_.T,
            self.expand(X),
            columns,
            names,
            squares=class_squares,
            moment=self.gram_,
            feature="random feature",
        )

    def _held_rows(
        self, X: FloatArray, columns: NDArray[np.intp]
    ) -> tuple[list[int], tuple[int, bool] | None]:
        """Dual form: the stored rows equal to ``X`` with the same classes, each taken once.

        Also the first row of ``X`` without a match (and whether it has one that is taken
        already), or None.
        """
        assert self.features_ is not None and self.feature_columns_ is not None
        stored: dict[tuple[tuple[float, ...], int], list[int]] = {}
        for i, (row, column) in enumerate(
            zip(self.features_.tolist(), self.feature_columns_.tolist(), strict=True)
        ):
            stored.setdefault((tuple(row), column), []).append(i)  # float equality, as ==
        held: list[int] = []
        for position, (row, column) in enumerate(zip(X.tolist(), columns.tolist(), strict=True)):
            matches = stored.get((tuple(row), column))
            if not matches:
                return held, (position, (tuple(row), column) in stored)
            held.append(matches.pop())
        return held, None

    def _unlearn(self, X: FloatArray, columns: NDArray[np.intp], kept: NDArray[np.intp]) -> None:
        self._refuse_if_read_only("unlearn")
        if self.features_ is not None:
            self._unlearn_dual(X, columns, kept)
        else:
            self._unlearn_primal(X, columns, kept)

    def _unlearn_dual(
        self, X: FloatArray, columns: NDArray[np.intp], kept: NDArray[np.intp]
    ) -> None:
        assert self.features_ is not None and self.feature_columns_ is not None
        removed, missing = self._held_rows(X, columns)
        if missing is not None:
            # Only without verification (a service replaying an update it acknowledged): the
            # examples are subtracted all the same, from the primal statistics of the rows,
            # which then replace them for good (the same model, in the other form).
            gram, targets, class_grams = self._primal_statistics(
                self.features_, self.feature_columns_, self.counts_.shape[0]
            )
            self.features_ = self.feature_columns_ = None
            self.gram_, self.targets_, self.class_grams_ = gram, targets, class_grams
            self._invalidate(eigen=True)
            self._unlearn_primal(X, columns, kept)
            return
        keep = np.ones(self.features_.shape[0], dtype=bool)
        keep[removed] = False
        counts = (self.counts_ - np.bincount(columns, minlength=self.counts_.shape[0]))[kept]
        new_column = np.full(self.counts_.shape[0] + 1, -1, dtype=np.int64)  # index -1: stays
        new_column[kept] = np.arange(kept.shape[0])
        # Commit (an emptied class has no row left, so its column maps nowhere).
        self.features_ = self.features_[keep]
        self.feature_columns_ = new_column[self.feature_columns_[keep]]
        self.counts_ = counts
        self._invalidate(eigen=True)

    def _unlearn_primal(
        self, X: FloatArray, columns: NDArray[np.intp], kept: NDArray[np.intp]
    ) -> None:
        assert self.gram_ is not None and self.targets_ is not None
        H = self.expand(X)
        n_classes = self.targets_.shape[1]
        targets = (self.targets_ - H.T @ one_hot(columns, n_classes))[:, kept]
        counts = (self.counts_ - np.bincount(columns, minlength=n_classes))[kept]
        H_f = np.asfortranarray(H)
        class_updates: list[tuple[int, FloatArray]] = []
        if self.exact_forget:
            remaining = set(kept.tolist())  # an emptied class's G_c is dropped, not downdated
            class_updates = [
                (int(c), np.asfortranarray(H[columns == c]))
                for c in np.unique(columns)
                if int(c) in remaining
            ]
        # Commit.
        add_outer(self.gram_, H_f, alpha=-1.0)
        for column, rows in class_updates:
            add_outer(self.class_grams_[column], rows, alpha=-1.0)
        if self.exact_forget:
            self.class_grams_ = [self.class_grams_[i] for i in kept]
        self.targets_ = targets
        self.counts_ = counts
        self._invalidate(eigen=True)

    def _check_mergeable(self, other: RidgeHead) -> None:
        self._refuse_if_read_only("merge into it")
        other._refuse_if_read_only("merge it")
        assert self.projection_ is not None and other.projection_ is not None
        if not np.array_equal(self.projection_, other.projection_):
            raise ModelMismatchError(
                "cannot merge ridge heads whose random projections differ although their seed "
                f"({self.seed}) and input width ({self.dim_}) agree; were they made with "
                "different numpy versions?"
            )

    def _merge(self, other: RidgeHead, columns: NDArray[np.intp], n_new: int) -> None:
        counts = np.concatenate([self.counts_, np.zeros(n_new, dtype=np.int64)])
        counts[columns] += other.counts_
        if (
            self.features_ is not None
            and other.features_ is not None
            and self.features_.shape[0] + other.features_.shape[0] <= self.dual_limit_
        ):
            assert self.feature_columns_ is not None and other.feature_columns_ is not None
            mapped = np.append(columns, -1).astype(np.int64)[other.feature_columns_]
            features = np.vstack([self.features_, other.features_])
            feature_columns = np.concatenate([self.feature_columns_, mapped])
            # Commit.
            self.features_, self.feature_columns_, self.counts_ = features, feature_columns, counts
            self._invalidate(eigen=True)
            return
        # Otherwise both in the primal form: a converted copy of other's statistics, never other.
        mine = theirs = None
        if self.features_ is not None:
            assert self.feature_columns_ is not None
            mine = self._primal_statistics(
                self.features_, self.feature_columns_, self.counts_.shape[0]
            )
        if other.features_ is not None:
            assert other.feature_columns_ is not None
            theirs = other._primal_statistics(
                other.features_, other.feature_columns_, other.counts_.shape[0]
            )
        gram, targets, class_grams = (
            mine if mine is not None else (self.gram_, self.targets_, self.class_grams_)
        )
        other_gram, other_targets, other_class_grams = (
            theirs if theirs is not None else (other.gram_, other.targets_, other.class_grams_)
        )
        assert gram is not None and targets is not None
        assert other_gram is not None and other_targets is not None
        targets = np.hstack([targets, np.zeros((self.n_features, n_new))])
        targets[:, columns] += other_targets  # columns are distinct
        n_old = len(class_grams)
        appended = [
            np.array(other_class_grams[j], order="F")
            for j, column in enumerate(columns)
            if self.exact_forget and column >= n_old
        ]
        # Commit. Only upper triangles are authoritative; adding whole matrices keeps them so.
        if mine is None:
            gram += other_gram
        else:
            gram = gram + other_gram  # mine is fresh, but other may be this very head
        if self.exact_forget:
            for j, column in enumerate(columns):
                if column < n_old:
                    class_grams[column] += other_class_grams[j]
            class_grams.extend(appended)  # new columns come in the order of other's labels
        self.features_ = self.feature_columns_ = None
        self.gram_, self.targets_, self.class_grams_ = gram, targets, class_grams
        self.counts_ = counts
        self._invalidate(eigen=True)

    def _class_counts(self) -> NDArray[np.int64]:
        return self.counts_

    def _forget_index(self, index: int) -> None:
        self._refuse_if_read_only("forget")
        count = int(self.counts_[index])
        counts = np.delete(self.counts_, index)
        if self.features_ is not None:
            assert self.feature_columns_ is not None
            old = self.feature_columns_
            shifted = np.where(old > index, old - 1, old)
            if self.exact_forget:
                keep = old != index
                # Commit.
                self.features_, self.feature_columns_ = self.features_[keep], shifted[keep]
                self.counts_ = counts
                self.n_seen_ -= count
                self._invalidate(eigen=True)
                return
            cache = self._dual
            # Commit.
            self.feature_columns_ = np.where(old == index, -1, shifted)
            self.counts_ = counts
            pending = cache is not None and cache.n > cache.n_base
            self._invalidate(eigen=not pending)  # none pending: rebuilt, lam chosen again
            if pending:
                assert cache is not None
                self._dual = replace(cache, half=np.delete(cache.half, index, axis=1))
            return
        assert self.targets_ is not None and self.gram_ is not None
        self.targets_ = np.delete(self.targets_, index, axis=1)
        self.counts_ = counts
        if self.exact_forget:
            self.gram_ -= self.class_grams_.pop(index)
            self.n_seen_ -= count
            self._invalidate(eigen=True)
            return
        self._invalidate(eigen=False)
        if self._rotated_targets is not None:
            self._rotated_targets = np.delete(self._rotated_targets, index, axis=1)
            assert self._pending_cross is not None
            self._pending_cross = np.delete(self._pending_cross, index, axis=1)
            if not self._pending:  # lam is chosen again from the decomposition alone (cheap)
                assert self._eigen is not None
                self._lambda = self._choose_ridge(self._eigen[0], self._rotated_targets)

    # --- solution --------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Rebuild the solution now: a new decomposition, and ``lam`` chosen again.

        After it, a head with ``ridge="auto"`` is exactly the function of its statistics that the
        class docstring describes, whatever the order in which they were learned.
        """
        self._refuse_if_read_only("refresh")
        if not self.is_fitted:
            return
        self._invalidate(eigen=True)
        if self.features_ is not None:
            self._dual_solution()
        else:
            self._eigen_solution()

    def _solve(self) -> FloatArray:
        """The output weights ``W``, formed from the current solution when first needed."""
        if self._weights is None:
            if self.features_ is not None:
                cache = self._dual_solution()
                self._weights = cache.expanded[: cache.n].T @ self._dual_alpha()
            else:
                s, V = self._eigen_solution()
                assert self._rotated_targets is not None and self._scaled_pending is not None
                assert self._lambda is not None
                rotated_weights = (1.0 / (s + self._lambda))[:, None] * self._rotated_targets
                rotated_weights -= self._scaled_pending @ self._solved_pending()
                self._weights = V @ rotated_weights
        return self._weights

    def _choose_ridge(self, s: FloatArray, rotated: FloatArray) -> float:
        """``lam`` for the decomposition ``(s, V)`` of ``G``, with ``rotated = V^T C``."""
        if self.ridge != "auto":
            return float(self.ridge)
        row_energy = np.einsum("ij,ij->i", rotated, rotated)
        m = self.n_features

        def primal_terms(lam: float) -> tuple[float, float]:
            d = 1.0 / (s + lam)
            fit = float(d @ row_energy)  # tr(C^T W)
            weight_energy = float((d * d) @ row_energy)  # ||W||^2
            dof = m - lam * float(d.sum())  # tr of the hat matrix
            return dof, float(self.counts_.sum()) - fit - lam * weight_energy

        assert self.gram_ is not None
        return self._gcv_choice(float(np.trace(self.gram_)) / m, primal_terms)

    def _gcv_choice(self, scale: float, terms: Callable[[float], tuple[float, float]]) -> float:
        """The grid strength minimising GCV; ``terms(lam)`` gives (dof, residual sum of squares).

        ``scale`` is ``tr(G) / M`` (equal to ``tr(K) / M``), so both forms try the same grid.
        """
        if scale <= 0.0:
            return 1.0
        n = float(self.n_seen_)
        target_energy = float(self.counts_.sum())  # ||Y||^2 for one-hot targets
        best, best_lam = np.inf, scale * float(_RELATIVE_GRID[0])
        for relative in _RELATIVE_GRID:
            lam = scale * float(relative)
            dof, rss = terms(lam)
            residual = n - dof
            if residual < 1.0:
                # Near interpolation both the residual sum of squares and n - dof vanish and
                # their ratio is rounding noise; GCV needs at least one residual degree of freedom.
                continue
            if rss <= 1e-9 * target_energy:
                # The targets are fitted to within rounding (repeated examples, fewer examples
                # than features): the value is noise whose sign and size depend on summation
                # order, so it must not decide.
                continue
            score = n * rss / residual**2
            # Ties within rounding go to the stronger ridge, so the choice does not depend on
            # the order in which the statistics were summed.
            if score <= best * (1.0 + 1e-9) or best == np.inf:
                best = min(best, score)
                best_lam = lam
        return best_lam

    def _eigen_solution(self) -> tuple[FloatArray, FloatArray]:
        """The decomposition ``(s, V)`` of ``G`` at the base, taken now if there is none."""
        assert self.gram_ is not None and self.targets_ is not None
        if self._eigen is None:
            s, V = scipy.linalg.eigh(self.gram_, lower=False, check_finite=False, driver="evd")
            s = np.maximum(s, 0.0)
            rotated_targets = V.T @ self.targets_
            lam = self._choose_ridge(s, rotated_targets)
            self._eigen = (s, np.asfortranarray(V))
            self._eigen_base = self.n_seen_
            self._pending = []
            self._rotated_targets = rotated_targets
            self._scaled_pending = np.zeros((self.n_features, 0))
            self._capacitance = np.zeros((0, 0))
            self._pending_cross = np.zeros((0, rotated_targets.shape[1]))
            self._lambda = lam
            self._small_rows = 0
        return self._eigen

    def _solved_pending(self) -> FloatArray:
        """``S^-1 P^T D V^T C``: with it, ``V^T W = D V^T C - D P S^-1 P^T D V^T C`` (Woodbury)."""
        if self._pending_solved is None:
            assert self._capacitance is not None and self._pending_cross is not None
            self._pending_solved = (
                scipy.linalg.cho_solve(
                    (self._capacitance, True), self._pending_cross, check_finite=False
                )
                if self._capacitance.shape[0]
                else self._pending_cross
            )
        return self._pending_solved

    def pending_limit(self, base: int) -> int:
        """Examples learned on top of a decomposition of ``base`` examples before a rebuild.

        ``max_pending``, and at most half the base (but at least 32): the strength chosen at a
        rebuild then always comes from at least two thirds of the data, while the rebuilds of a
        growing model stay geometrically spaced.
        """
        return min(self.max_pending, max(32, base // 2))

    def _dual_solution(self) -> _DualSolution:
        """The dual cache, rebuilt from the stored rows if needed (``lam`` chosen then)."""
        if self._dual is not None:
            return self._dual
        assert self.features_ is not None and self.feature_columns_ is not None
        n = self.features_.shape[0]
        capacity = n + self.pending_limit(n)
        expanded = np.empty((capacity, self.n_features))
        expanded[:n] = self.expand(self.features_)
        H = expanded[:n]
        kernel = H @ H.T
        Y = _dual_targets(self.feature_columns_, self.counts_.shape[0])
        if self.ridge == "auto":
            s, U = scipy.linalg.eigh(kernel, check_finite=False, driver="evd")
            s = np.maximum(s, 0.0)
            energy = np.einsum("ij,ij->i", U.T @ Y, U.T @ Y)  # squared rows of U^T Y

            def dual_terms(lam: float) -> tuple[float, float]:
                d = 1.0 / (s + lam)
                # Y - K (K + lam I)^-1 Y = lam (K + lam I)^-1 Y: no cancellation.
                return float(s @ d), lam * lam * float((d * d) @ energy)

            lam = self._gcv_choice(float(np.trace(kernel)) / self.n_features, dual_terms)
        else:
            lam = float(self.ridge)
        factor = np.zeros((capacity, capacity))
        kernel[np.diag_indices(n)] += lam
        factor[:n, :n] = scipy.linalg.cholesky(kernel, lower=True, check_finite=False)
        half = scipy.linalg.solve_triangular(factor[:n, :n], Y, lower=True, check_finite=False)
        self._dual = _DualSolution(lam, n, n, expanded, factor, half)
        self._small_rows = 0
        return self._dual

    def _dual_alpha(self) -> FloatArray:
        """``(K + lam I)^-1 Y`` for the stored rows."""
        if self._alpha is None:
            cache = self._dual_solution()
            self._alpha = scipy.linalg.solve_triangular(
                cache.factor[: cache.n, : cache.n],
                cache.half,
                lower=True,
                trans="T",
                check_finite=False,
            )
        return self._alpha

    @property
    def ridge_(self) -> float:
        """The ridge strength in use (chosen by GCV when ``ridge="auto"``)."""
        if self._read_only:
            assert self._lambda is not None
            return self._lambda
        if self.features_ is not None:
            return self._dual_solution().lam
        self._eigen_solution()
        assert self._lambda is not None
        return self._lambda

    @property
    def coef_(self) -> FloatArray:
        """Output weights ``(G + lam I)^-1 C = H^T (K + lam I)^-1 Y``, shape (n_features, n_classes)."""
        return self._solve()

    def _scores(self, X: FloatArray) -> FloatArray:
        H = self.expand(X)
        n_classes = self.counts_.shape[0]
        if self._weights is None and self.features_ is not None:
            cache = self._dual_solution()
            # Forming W = H^T alpha costs n M K; a few rows are cheaper through the factor.
            if self._small_rows + H.shape[0] < max(n_classes // 4, 1):
                self._small_rows += H.shape[0]
                n = cache.n
                kernel_rows = H @ cache.expanded[:n].T
                solved = scipy.linalg.solve_triangular(
                    cache.factor[:n, :n], kernel_rows.T, lower=True, check_finite=False
                )
                self._last_dual = (X.copy(), H, solved, cache)
                dual_scores: FloatArray = solved.T @ cache.half
                return dual_scores
        elif self._weights is None:
            s, V = self._eigen_solution()
            # Forming W = V (V^T W) costs M^2 K; a few rows are cheaper through V directly.
            if self._small_rows + H.shape[0] < max(n_classes // 4, 1):
                self._small_rows += H.shape[0]
                assert self._rotated_targets is not None and self._scaled_pending is not None
                assert self._lambda is not None
                rotated = H @ V
                self._last_rotated = (X.copy(), rotated)
                scores: FloatArray = (rotated / (s + self._lambda)) @ self._rotated_targets
                scores -= (rotated @ self._scaled_pending) @ self._solved_pending()
                return scores
        return H @ self._solve()

    def prediction_copy(self) -> RidgeHead:
        """A prediction-only copy: the projection (shared, never written) and the weights ``W``.

        It predicts exactly like this head does once ``W`` is formed (``coef_``), holds neither
        ``G`` nor the examples, and raises :class:`~perennial.exceptions.ReadOnlyHeadError` if
        asked to learn, unlearn, forget, merge, refresh or save.
        """
        frozen = self.clone()
        frozen._read_only = True
        if self.dim_ is None:
            return frozen
        frozen.classes_ = list(self.classes_)
        frozen._index = dict(self._index)
        frozen.dim_ = self.dim_
        frozen.n_seen_ = self.n_seen_
        frozen.counts_ = self.counts_.copy()
        frozen.projection_ = self.projection_
        frozen._projection_digest = self._projection_digest
        if self.is_fitted:
            frozen._weights = self._solve()  # rebound, never written in place, by this head
            frozen._lambda = self.ridge_
        return frozen

    # --- persistence -----------------------------------------------------------------------------
    def _state_meta(self) -> dict[str, Any]:
        if self._projection_digest is None:
            assert self.projection_ is not None
            self._projection_digest = _digest(self.projection_)
        meta: dict[str, Any] = {"form": self.form_, "projection_sha256": self._projection_digest}
        if self.features_ is not None:
            meta["rows"] = int(self.features_.shape[0])
        return meta

    def _state_arrays(self) -> dict[str, np.ndarray]:
        self._refuse_if_read_only("save")
        if self.features_ is not None:
            return {
                "features": self.features_,
                "feature_columns": self.feature_columns_,  # type: ignore[dict-item]
                "counts": self.counts_,
            }
        assert self.gram_ is not None and self.targets_ is not None
        arrays: dict[str, np.ndarray] = {
            "gram": symmetric(self.gram_),
            "targets": self.targets_,
            "counts": self.counts_,
        }
        for i, gram in enumerate(self.class_grams_):
            arrays[f"class_gram.{i}"] = symmetric(gram)
        return arrays

    def _expected_shapes(self, dim: int, n_classes: int) -> dict[str, tuple[int, ...]]:
        m = self.n_features
        shapes: dict[str, tuple[int, ...]] = {
            "gram": (m, m),
            "targets": (m, n_classes),
            "counts": (n_classes,),
        }
        if self.exact_forget:
            shapes.update({f"class_gram.{i}": (m, m) for i in range(n_classes)})
        return shapes

    def _expected_state(
        self, meta: dict[str, Any], dim: int, n_classes: int
    ) -> dict[str, tuple[int, ...]]:
        form = meta.get("form")
        if form is None:  # saved before 0.2: the projection was saved with the statistics
            return {"projection": (dim, self.n_features), **self._expected_shapes(dim, n_classes)}
        if form == "primal":
            return self._expected_shapes(dim, n_classes)
        if form == "dual":
            try:
                rows = int(meta["rows"])
            except (KeyError, TypeError, ValueError) as error:
                raise ModelMismatchError(
                    f"dual ridge head metadata lacks its number of rows: {error}"
                ) from error
            return {"features": (rows, dim), "feature_columns": (rows,), "counts": (n_classes,)}
        raise ModelMismatchError(f"unknown ridge head form {form!r}; expected 'primal' or 'dual'")

    def _load_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        assert self.dim_ is not None
        if "projection" in arrays:  # the old layout: use the projection it was learned with
            projection = np.array(arrays["projection"], dtype=np.float64)
            digest = _digest(projection)
        else:
            projection = self._make_projection(self.dim_)
            digest = _digest(projection)
            if digest != meta.get("projection_sha256"):
                raise ModelMismatchError(
                    f"the random projection regenerated from seed {self.seed} ({self.dim_} x "
                    f"{self.n_features}) has SHA-256 {digest[:16]}..., the saved model expects "
                    f"{str(meta.get('projection_sha256'))[:16]}...: the numpy version differs from "
                    f"the one that saved it (numpy {np.__version__} here), so its generator draws "
                    "other numbers"
                )
        if meta.get("form") == "dual":
            columns = np.array(arrays["feature_columns"], dtype=np.int64)
            counts = np.array(arrays["counts"], dtype=np.int64)
            if columns.size and (columns.min() < -1 or columns.max() >= counts.shape[0]):
                raise ModelMismatchError(
                    f"dual ridge head rows name classes outside -1..{counts.shape[0] - 1}"
                )
            if not np.array_equal(
                np.bincount(columns[columns >= 0], minlength=counts.shape[0]), counts
            ):
                raise ModelMismatchError("dual ridge head counts disagree with its rows' classes")
            self.features_ = np.array(arrays["features"], dtype=np.float64)
            self.feature_columns_ = columns
            self.counts_ = counts
        else:
            self._load_arrays(arrays)
        self.projection_ = projection
        self._projection_digest = digest
        self._invalidate(eigen=True)

    def _load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore the primal statistics (the projection is :meth:`_load_state`'s business)."""
        self.gram_ = np.array(arrays["gram"], dtype=np.float64, order="F")
        self.targets_ = np.array(arrays["targets"], dtype=np.float64)
        self.counts_ = np.array(arrays["counts"], dtype=np.int64)
        self.class_grams_ = [
            np.array(arrays[f"class_gram.{i}"], dtype=np.float64, order="F")
            for i in range(len(self.classes_) if self.exact_forget else 0)
        ]
        self._invalidate(eigen=True)


def _digest(projection: FloatArray) -> str:
    """SHA-256 of the projection's float64 little-endian bytes, row by row."""
    return hashlib.sha256(np.ascontiguousarray(projection, dtype="<f8").tobytes()).hexdigest()


def _dual_targets(columns: NDArray[np.int64], n_classes: int) -> FloatArray:
    """One-hot rows for ``columns``; a row of column -1 (unlabelled) is all zeros."""
    Y = np.zeros((columns.shape[0], n_classes))
    labelled = np.flatnonzero(columns >= 0)
    Y[labelled, columns[labelled]] = 1.0
    return Y
