"""Ridge regression on random ReLU features, exact and streaming (RanPAC-style head)."""

from __future__ import annotations

import numpy as np
import scipy.linalg
from numpy.typing import NDArray
from scipy.linalg import blas

from perennial.exceptions import InvalidParameterError, ModelMismatchError
from perennial.heads.base import FloatArray, Head, one_hot

__all__ = ["RidgeHead"]

# Relative ridge strengths tried by generalized cross-validation, times the mean eigenvalue of G.
_RELATIVE_GRID = 10.0 ** np.linspace(-6.0, 2.0, 33)


class RidgeHead(Head):
    """Exact ridge-regression classifier on a fixed random ReLU expansion of the features.

    Each input ``x`` (``d`` features) is expanded to ``h = max(0, x R)`` with a fixed Gaussian
    matrix ``R`` of shape ``(d, n_features)``, as in RanPAC (McDonnell et al., 2023,
    arXiv:2307.02251). The head keeps only ``G = sum h h^T``, ``C = sum h y^T`` (one-hot ``y``),
    per-class counts and the number of examples; the output weights are ``W = (G + lam I)^-1 C``.

    The solution stays current as examples arrive: an eigendecomposition of ``G`` is kept together
    with the (rotated) features of the few examples learned since, so a new example costs one
    projection and one rank-1 update of ``G``, never a re-solve; after ``max_pending`` such
    examples the next prediction re-decomposes ``G``. With ``ridge="auto"`` the strength ``lam``
    minimises generalized cross-validation (GCV), evaluated exactly from the statistics on a grid
    of 33 values relative to the mean eigenvalue of ``G``; no held-out data is kept. Because the
    choice is a function of the statistics alone, learning the same data in any order or batch
    split gives the same model.

    ``unlearn_many(X, y)`` subtracts the examples' ``h h^T`` from ``G`` (and from ``G_c`` with
    ``exact_forget=True``), their targets from ``C`` and their counts: this is exact whatever
    ``exact_forget`` says, and ``lam`` is chosen again from the new statistics, as retraining would.
    The eigendecomposition is dropped (a subtraction cannot go through the pending updates, whose
    Woodbury capacitance is positive definite only for additions), so the next prediction
    re-decomposes ``G``. Examples of a class removed by the default ``forget`` stay in ``G``
    without a label and can no longer be unlearned. ``merge(other)`` adds the statistics of a
    head with the same parameters and the same projection.

    ``forget(label)`` drops the class's column of ``C`` and its count. With the default
    ``exact_forget=False`` its examples stay in ``G`` as unlabelled rows (targets all zero): the
    class can no longer be predicted, but ``G`` still holds their second moment. With
    ``exact_forget=True`` the head also keeps each class's own ``G_c`` (``n_classes * n_features**2``
    floats) and forgetting subtracts it, giving exactly the model that never saw the class.

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
        Examples learned on top of the last eigendecomposition before it is recomputed.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = np.vstack([rng.normal(0, 1, (20, 5)) + 3, rng.normal(0, 1, (20, 5)) - 3])
    >>> head = RidgeHead(n_features=64)
    >>> head.learn_many(X, ["up"] * 20 + ["down"] * 20)
    >>> head.predict_many([[3, 3, 3, 3, 3], [-3, -3, -3, -3, -3]])
    ['up', 'down']
    """

    proba_temperature = 0.1

    def __init__(
        self,
        n_features: int = 4096,
        ridge: float | str = "auto",
        seed: int = 0,
        exact_forget: bool = False,
        max_pending: int = 128,
    ) -> None:
        if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 1:
            raise InvalidParameterError(f"n_features must be a positive int, got {n_features!r}")
        if ridge != "auto" and (
            isinstance(ridge, bool)
            or not isinstance(ridge, (int, float))
            or not np.isfinite(ridge)
            or ridge <= 0
        ):
            raise InvalidParameterError(f"ridge must be 'auto' or a positive number, got {ridge!r}")
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 0:
            raise InvalidParameterError(
                f"max_pending must be a non-negative int, got {max_pending!r}"
            )
        self.n_features = n_features
        self.ridge = ridge
        self.seed = seed
        self.exact_forget = exact_forget
        self.max_pending = max_pending
        super().__init__()

    # --- statistics ------------------------------------------------------------------------------
    def _reset(self) -> None:
        super()._reset()
        self.projection_: FloatArray | None = None
        self.gram_: FloatArray | None = None  # Fortran order; the upper triangle is authoritative
        self.targets_: FloatArray | None = None
        self.counts_: NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self.class_grams_: list[FloatArray] = []
        self._invalidate(eigen=True)

    def _invalidate(self, eigen: bool) -> None:
        if eigen:
            self._eigen: tuple[FloatArray, FloatArray] | None = None  # (s, V) of G at the base
            self._pending: list[FloatArray] = []  # V^T h of examples since the base, (M, k) each
            self._rotated_targets: FloatArray | None = None  # V^T C
        self._weights: FloatArray | None = None  # V @ rotated weights, formed lazily
        self._rotated_weights: FloatArray | None = None
        self._lambda: float | None = None
        self._small_rows = 0  # rows predicted without forming W since the last solution

    def _initialise(self, dim: int) -> None:
        rng = np.random.default_rng(self.seed)
        self.projection_ = rng.standard_normal((dim, self.n_features))
        self.gram_ = np.zeros((self.n_features, self.n_features), order="F")
        self.targets_ = np.zeros((self.n_features, 0))

    def expand(self, X: FloatArray) -> FloatArray:
        """The random ReLU features ``max(0, X R)`` of validated inputs."""
        assert self.projection_ is not None
        return np.maximum(X @ self.projection_, 0.0)

    def _learn(self, X: FloatArray, columns: NDArray[np.intp], n_new: int) -> None:
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
        keep_eigen = (
            self._eigen is not None
            and sum(p.shape[1] for p in self._pending) + H.shape[0] <= self.max_pending
        )
        if keep_eigen:
            assert self._eigen is not None and self._rotated_targets is not None
            rotated = self._eigen[1].T @ H.T
            rotated_targets = (
                np.hstack([self._rotated_targets, np.zeros((self.n_features, n_new))]) + rotated @ Y
            )
        # Commit.
        _add_gram(self.gram_, H_f)
        for _ in range(n_new):
            if self.exact_forget:
                self.class_grams_.append(np.zeros((self.n_features, self.n_features), order="F"))
        for column, rows in class_updates:
            _add_gram(self.class_grams_[column], rows)
        self.targets_ = targets
        self.counts_ = counts
        if keep_eigen:
            self._pending.append(rotated)
            self._rotated_targets = rotated_targets
            self._invalidate(eigen=False)
        else:
            self._invalidate(eigen=True)

    def _unlearn(self, X: FloatArray, columns: NDArray[np.intp], kept: NDArray[np.intp]) -> None:
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
        _add_gram(self.gram_, H_f, alpha=-1.0)
        for column, rows in class_updates:
            _add_gram(self.class_grams_[column], rows, alpha=-1.0)
        if self.exact_forget:
            self.class_grams_ = [self.class_grams_[i] for i in kept]
        self.targets_ = targets
        self.counts_ = counts
        self._invalidate(eigen=True)

    def _check_mergeable(self, other: RidgeHead) -> None:
        assert self.projection_ is not None and other.projection_ is not None
        if not np.array_equal(self.projection_, other.projection_):
            raise ModelMismatchError(
                "cannot merge ridge heads whose random projections differ although their seed "
                f"({self.seed}) and input width ({self.dim_}) agree; were they made with "
                "different numpy versions?"
            )

    def _merge(self, other: RidgeHead, columns: NDArray[np.intp], n_new: int) -> None:
        assert self.gram_ is not None and self.targets_ is not None
        assert other.gram_ is not None and other.targets_ is not None
        targets = np.hstack([self.targets_, np.zeros((self.n_features, n_new))])
        targets[:, columns] += other.targets_  # columns are distinct
        counts = np.concatenate([self.counts_, np.zeros(n_new, dtype=np.int64)])
        counts[columns] += other.counts_
        n_old = len(self.class_grams_)
        appended = [
            np.array(other.class_grams_[j], order="F")
            for j, column in enumerate(columns)
            if self.exact_forget and column >= n_old
        ]
        # Commit. Only upper triangles are authoritative; adding whole matrices keeps them so.
        self.gram_ += other.gram_
        if self.exact_forget:
            for j, column in enumerate(columns):
                if column < n_old:
                    self.class_grams_[column] += other.class_grams_[j]
            self.class_grams_.extend(appended)  # new columns come in the order of other's labels
        self.targets_ = targets
        self.counts_ = counts
        self._invalidate(eigen=True)

    def _class_counts(self) -> NDArray[np.int64]:
        return self.counts_

    def _forget_index(self, index: int) -> None:
        assert self.targets_ is not None and self.gram_ is not None
        self.targets_ = np.delete(self.targets_, index, axis=1)
        count = int(self.counts_[index])
        self.counts_ = np.delete(self.counts_, index)
        if self.exact_forget:
            self.gram_ -= self.class_grams_.pop(index)
            self.n_seen_ -= count
            self._invalidate(eigen=True)
        else:
            if self._rotated_targets is not None:
                self._rotated_targets = np.delete(self._rotated_targets, index, axis=1)
            self._invalidate(eigen=False)

    # --- solution --------------------------------------------------------------------------------
    def _solve(self) -> FloatArray:
        """The output weights ``W``, formed from the rotated solution when first needed."""
        if self._weights is None:
            _, V = self._eigen_solution()
            assert self._rotated_weights is not None
            self._weights = V @ self._rotated_weights
        return self._weights

    def _eigen_solution(self) -> tuple[FloatArray, FloatArray]:
        """Make ``V^T W`` current (re-decomposing ``G`` if needed); returns ``(s, V)``."""
        assert self.gram_ is not None and self.targets_ is not None
        if self._rotated_weights is not None and self._eigen is not None:
            return self._eigen
        if self._eigen is None:
            s, V = scipy.linalg.eigh(self.gram_, lower=False, check_finite=False, driver="evd")
            self._eigen = (np.maximum(s, 0.0), np.asfortranarray(V))
            self._pending = []
            self._rotated_targets = V.T @ self.targets_
        s, V = self._eigen
        assert self._rotated_targets is not None
        pending = np.hstack(self._pending) if self._pending else None
        if self.ridge == "auto":
            lam = self._select_ridge(s, pending, self._rotated_targets)
        else:
            lam = float(self.ridge)
        self._rotated_weights = _rotated_solution(s, pending, self._rotated_targets, lam)
        self._lambda = lam
        self._small_rows = 0
        return s, V

    def _select_ridge(
        self, s: FloatArray, pending: FloatArray | None, rotated: FloatArray
    ) -> float:
        assert self.gram_ is not None
        scale = float(np.trace(self.gram_)) / self.n_features
        if scale <= 0.0:
            return 1.0
        n = float(self.n_seen_)
        target_energy = float(self.counts_.sum())  # ||Y||^2 for one-hot targets
        row_energy = np.einsum("ij,ij->i", rotated, rotated)
        best, best_lam = np.inf, scale * float(_RELATIVE_GRID[0])
        for relative in _RELATIVE_GRID:
            lam = scale * float(relative)
            fit, weight_energy, trace_inverse = _gcv_terms(s, pending, rotated, row_energy, lam)
            residual = n - (self.n_features - lam * trace_inverse)
            if residual < 1.0:
                # Near interpolation both the residual sum of squares and n - dof vanish and
                # their ratio is rounding noise; GCV needs at least one residual degree of freedom.
                continue
            rss = target_energy - fit - lam * weight_energy
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

    @property
    def ridge_(self) -> float:
        """The ridge strength in use (chosen by GCV when ``ridge="auto"``)."""
        self._eigen_solution()
        assert self._lambda is not None
        return self._lambda

    @property
    def coef_(self) -> FloatArray:
        """Output weights ``(G + lam I)^-1 C``, shape (n_features, n_classes)."""
        return self._solve()

    def _scores(self, X: FloatArray) -> FloatArray:
        H = self.expand(X)
        if self._weights is None:
            _, V = self._eigen_solution()
            n_classes = self.targets_.shape[1] if self.targets_ is not None else 0
            # Forming W = V (V^T W) costs M^2 K; a few rows are cheaper through V directly.
            if self._small_rows + H.shape[0] < max(n_classes // 4, 1):
                self._small_rows += H.shape[0]
                assert self._rotated_weights is not None
                scores: FloatArray = (H @ V) @ self._rotated_weights
                return scores
        return H @ self._solve()

    # --- persistence -----------------------------------------------------------------------------
    def _state_arrays(self) -> dict[str, np.ndarray]:
        assert self.gram_ is not None and self.targets_ is not None
        assert self.projection_ is not None
        arrays: dict[str, np.ndarray] = {
            "projection": self.projection_,
            "gram": _symmetric(self.gram_),
            "targets": self.targets_,
            "counts": self.counts_,
        }
        for i, gram in enumerate(self.class_grams_):
            arrays[f"class_gram.{i}"] = _symmetric(gram)
        return arrays

    def _expected_shapes(self, dim: int, n_classes: int) -> dict[str, tuple[int, ...]]:
        m = self.n_features
        shapes: dict[str, tuple[int, ...]] = {
            "projection": (dim, m),
            "gram": (m, m),
            "targets": (m, n_classes),
            "counts": (n_classes,),
        }
        if self.exact_forget:
            shapes.update({f"class_gram.{i}": (m, m) for i in range(n_classes)})
        return shapes

    def _load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.projection_ = np.array(arrays["projection"], dtype=np.float64)
        self.gram_ = np.array(arrays["gram"], dtype=np.float64, order="F")
        self.targets_ = np.array(arrays["targets"], dtype=np.float64)
        self.counts_ = np.array(arrays["counts"], dtype=np.int64)
        self.class_grams_ = [
            np.array(arrays[f"class_gram.{i}"], dtype=np.float64, order="F")
            for i in range(len(self.classes_) if self.exact_forget else 0)
        ]
        self._invalidate(eigen=True)


def _add_gram(gram: FloatArray, rows: FloatArray, alpha: float = 1.0) -> None:
    """``gram += alpha rows^T rows`` in place, on the upper triangle only (BLAS syr/syrk)."""
    if rows.shape[0] == 1:
        out = blas.dsyr(alpha, rows[0], lower=0, a=gram, overwrite_a=1)
    else:
        out = blas.dsyrk(alpha, rows, beta=1.0, c=gram, trans=1, lower=0, overwrite_c=1)
    if out is not gram and not np.shares_memory(out, gram):  # pragma: no cover - BLAS copied
        gram[...] = out


def _symmetric(upper: FloatArray) -> FloatArray:
    """The full symmetric matrix whose upper triangle is given."""
    full = np.triu(upper)
    full += np.triu(upper, 1).T
    return full


def _gcv_terms(
    s: FloatArray,
    pending: FloatArray | None,
    rotated_targets: FloatArray,
    row_energy: FloatArray,
    lam: float,
) -> tuple[float, float, float]:
    """``tr(C^T W)``, ``||W||^2`` and ``tr((G + lam I)^-1)`` for ``W = (G + lam I)^-1 C``.

    Computed without forming ``W``: ``O(M)`` per strength with no pending examples, and
    ``O(M r (r + K))`` with ``r`` pending ones. ``row_energy`` holds the squared row norms of
    ``V^T C``.
    """
    d = 1.0 / (s + lam)
    fit = float(d @ row_energy)
    weight_energy = float((d * d) @ row_energy)
    trace = float(d.sum())
    if pending is None or pending.shape[1] == 0:
        return fit, weight_energy, trace
    scaled = d[:, None] * pending  # D P
    capacitance = np.eye(pending.shape[1]) + pending.T @ scaled  # small (r x r), well conditioned
    cross = scaled.T @ rotated_targets  # P^T D C~
    cross_twice = (d[:, None] * scaled).T @ rotated_targets  # P^T D^2 C~
    inner = scaled.T @ scaled  # P^T D^2 P
    solved = np.linalg.solve(capacitance, np.hstack([cross, inner]))
    z, inner_solved = solved[:, : cross.shape[1]], solved[:, cross.shape[1] :]
    fit -= float(np.sum(cross * z))
    weight_energy += float(np.sum(z * (inner @ z)) - 2.0 * np.sum(z * cross_twice))
    trace -= float(np.trace(inner_solved))
    return fit, weight_energy, trace


def _rotated_solution(
    s: FloatArray, pending: FloatArray | None, rotated_targets: FloatArray, lam: float
) -> FloatArray:
    """``V^T (G + lam I)^-1 C`` with ``G = V diag(s) V^T + V P P^T V^T``.

    The pending examples enter through the Woodbury identity, so the cost is linear in ``M`` for
    a fixed number of pending examples.
    """
    inverse_diagonal = 1.0 / (s + lam)
    scaled_targets: FloatArray = inverse_diagonal[:, None] * rotated_targets
    if pending is None or pending.shape[1] == 0:
        return scaled_targets
    scaled_pending = inverse_diagonal[:, None] * pending
    capacitance = np.eye(pending.shape[1]) + pending.T @ scaled_pending
    factor = scipy.linalg.cho_factor(capacitance, lower=True, check_finite=False)
    correction = scipy.linalg.cho_solve(factor, pending.T @ scaled_targets, check_finite=False)
    weights: FloatArray = scaled_targets - scaled_pending @ correction
    return weights
