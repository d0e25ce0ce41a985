"""Ridge regression on random ReLU features, exact and streaming (RanPAC-style head)."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.linalg.lapack import dpotrf as _dpotrf
from scipy.linalg.lapack import dtrtrs as _dtrtrs

from perennial.exceptions import (
    InvalidInputError,
    InvalidParameterError,
    ModelMismatchError,
    NotFittedError,
    ReadOnlyHeadError,
)
from perennial.heads.base import FloatArray, Head, Label, one_hot
from perennial.heads.statistics import add_outer, check_subtraction, symmetric
from perennial.params import check_int, check_positive

__all__ = ["RidgeHead"]

#: How far (relative) a row given to unlearn may be from the stored row it removes in the dual
#: form (see RidgeHead._held_rows).
HELD_ROW_TOLERANCE = 1e-5

logger = logging.getLogger(__name__)

# Relative ridge strengths tried by generalized cross-validation, times the mean eigenvalue of G.
_RELATIVE_GRID = 10.0 ** np.linspace(-6.0, 2.0, 33)

# The dual form keeps at most this many examples by default (see ``RidgeHead.dual_limit_``).
_DUAL_CAP = 1024

# Rows a rebuild takes on at a time when it catches up: bounds each of its SciPy calls, which
# hold the GIL that the head's own thread needs.
_CATCH_UP_ROWS = 32

#: Eigenvalues (clipped at zero) and eigenvectors of ``G`` given its upper triangle.
Decomposer = Callable[[NDArray[np.float64]], tuple[NDArray[np.float64], NDArray[np.float64]]]


@dataclass
class _DualSolution:
    """The dual solver's cache: ``K + lam I = L L^T`` for the ``n`` stored rows (never saved).

    ``expanded`` and ``factor`` are buffers with room for more rows (they grow when full); only
    the leading ``n`` rows (and columns) are meaningful, and appending writes past them only, so
    an earlier cache stays valid until it is replaced.
    """

    lam: float
    n_base: int  # rows when the factor was last computed from scratch
    n: int
    expanded: FloatArray  # (capacity, M): rows [:n] are H = relu(X R)
    factor: FloatArray  # (capacity, capacity): [:n, :n] is L, lower triangular
    half: FloatArray  # L^-1 Y, (n, n_classes)
    carried: bool = False  # lam carried over an unlearning (not chosen for these rows)


@dataclass
class _EigenSolution:
    """The primal solver's cache: ``G = V diag(s) V^T`` at ``n_base`` examples, and the ``k`` since.

    With ``P`` the pending examples' ``V^T h`` and ``D = (s + lam)^-1``: ``scaled[:, :k]`` is
    ``D P``, ``factor[:k, :k]`` the lower triangular ``L`` of ``S = J + P^T D P = L J L^T``, and
    ``cross`` is ``P^T D V^T C``; ``rotated_targets`` is ``V^T C`` with the pending examples in
    ``C``. ``J = diag(signs)``: +1 for an example learned, -1 for one unlearned (``G - h h^T``,
    Woodbury with a negative sign; ``S`` is then indefinite, but each block of ``L`` is the
    Cholesky factor of a positive definite matrix while the statistics stay valid). ``signs`` is
    None while every pending example was learned. The buffers ``scaled`` and ``factor`` grow when
    full; appending writes past column ``k`` only.
    """

    lam: float
    n_base: int  # examples in G when it was decomposed
    s: FloatArray
    V: FloatArray
    rotated_targets: FloatArray  # (M, n_classes)
    k: int
    scaled: FloatArray  # (M, capacity), Fortran order
    factor: FloatArray  # (capacity, capacity)
    cross: FloatArray  # (k, n_classes)
    signs: FloatArray | None = None  # (k,) of +-1 once an example was unlearned


class _Rebuild:
    """A new decomposition computed on another thread from a snapshot of a head's statistics.

    ``kind`` is ``"dual"`` (the kernel of the stored rows), ``"primal"`` (``G``) or
    ``"convert"`` (``G`` and ``C`` formed from the stored rows, which they replace when the head
    adopts the result). The head appends each batch it learns meanwhile to ``log`` as
    ``(X, columns, n_classes)``; :meth:`run` decomposes the snapshot, then takes the logged batches
    as pending updates on the new decomposition until it has caught up. Nothing here touches the
    head: the snapshot holds copies or arrays the head replaces rather than changes.
    """

    def __init__(
        self,
        head: RidgeHead,
        kind: str,
        features: FloatArray | None = None,
        columns: NDArray[np.int64] | None = None,
        gram: FloatArray | None = None,
        targets: FloatArray | None = None,
        decompose: Decomposer | None = None,
    ) -> None:
        assert head.projection_ is not None
        self.kind = kind
        self.decompose = decompose or _decompose
        self.projection = head.projection_
        self.ridge = head.ridge
        self.n_features = head.n_features
        self.exact_forget = head.exact_forget
        self.n_classes = head.counts_.shape[0]
        self.n_seen = head.n_seen_
        self.energy = float(head.counts_.sum())
        self.capacity = head.pending_limit(head.n_seen_) + 32
        self.features, self.columns = features, columns
        self.gram, self.targets = gram, targets
        self.class_grams: list[FloatArray] = []
        self.dual: _DualSolution | None = None
        self.primal: _EigenSolution | None = None
        self.weights: FloatArray | None = None  # W of the result
        self.log: list[tuple[FloatArray, NDArray[np.int64], int]] = []
        self.taken = 0  # logged batches already in the result
        self.rows = head.n_seen_  # examples in the result
        self.finished = threading.Event()
        self.error: BaseException | None = None

    def expand(self, X: FloatArray) -> FloatArray:
        expanded = X @ self.projection
        np.maximum(expanded, 0.0, out=expanded)
        return expanded

    def run(self) -> None:
        """Decompose, then catch up with the log; errors are kept in ``error``, never raised."""
        try:
            if self.kind == "dual":
                assert self.features is not None and self.columns is not None
                self.dual = _dual_base(
                    self.expand(self.features),
                    self.columns,
                    self.n_classes,
                    self.ridge,
                    self.n_seen,
                    self.energy,
                    self.capacity + self.features.shape[0],
                )
            else:
                if self.kind == "convert":
                    assert self.features is not None and self.columns is not None
                    self.gram, self.targets, self.class_grams = _primal_statistics(
                        self.expand(self.features), self.columns, self.n_classes, self.exact_forget
                    )
                assert self.gram is not None and self.targets is not None
                self.primal = _eigen_base(
                    self.gram,
                    self.targets,
                    self.ridge,
                    self.n_seen,
                    self.energy,
                    self.capacity,
                    self.decompose,
                )
            self.catch_up()
            self.form_weights()
        except BaseException as error:  # reported by RidgeHead.finish_rebuild
            self.error = error
        finally:
            self.finished.set()

    def catch_up(self) -> None:
        """Take the batches logged since the last call as pending updates of the result."""
        while self.taken < len(self.log):
            end = len(self.log)  # the head may append meanwhile; the rest is for the next turn
            batches = self.log[self.taken : end]
            X = np.vstack([batch[0] for batch in batches])
            columns = np.concatenate([batch[1] for batch in batches])
            n_classes = batches[-1][2]  # columns only grow while the rebuild is valid
            for start in range(0, X.shape[0], _CATCH_UP_ROWS):
                stop = start + _CATCH_UP_ROWS
                self._take(X[start:stop], columns[start:stop], n_classes)
            self.taken = end

    def _take(self, X: FloatArray, columns: NDArray[np.int64], n_classes: int) -> None:
        """Add the rows ``X`` (classes ``columns``) to the result as pending updates."""
        H = self.expand(X)
        Y = _dual_targets(columns, n_classes)
        if self.kind == "dual":
            assert self.dual is not None
            n_old = self.dual.n
            extended = _dual_extended(self.dual, H, None, Y)
            if extended is None:  # pragma: no cover - rounding at a tiny ridge
                raise np.linalg.LinAlgError("the kernel lost positive definiteness")
            self.dual = extended
            if self.weights is not None and H.shape[0] < n_classes:
                self.weights = _dual_weights_updated(extended, n_old, H, Y, self.weights)
            else:
                self.weights = None
        else:
            assert self.primal is not None
            if self.kind == "convert":
                self._add_rows(H, columns, Y)
            rotated = (H @ self.primal.V).T
            self.primal = _eigen_appended(self.primal, rotated, Y)
            if self.weights is not None and H.shape[0] < n_classes:
                self.weights = _eigen_weights_updated(self.primal, rotated, H, Y, self.weights)
            else:
                self.weights = None
        self.rows += X.shape[0]

    def form_weights(self) -> None:
        """``W`` of the result, formed anew if the updates since did not keep it."""
        if self.weights is not None:
            return
        if self.dual is not None:
            cache = self.dual
            L = cache.factor[: cache.n, : cache.n]
            alpha = _solve_lower(L, cache.half, lower=True, trans="T", check_finite=False)
            self.weights = cache.expanded[: cache.n].T @ alpha
        else:
            assert self.primal is not None
            self.weights = _eigen_weights(self.primal, _solved_pending(self.primal))

    def _add_rows(self, H: FloatArray, columns: NDArray[np.int64], Y: FloatArray) -> None:
        """Add expanded rows to the statistics this (converting) rebuild formed."""
        assert self.gram is not None and self.targets is not None
        self.gram += H.T @ H  # numpy's syrk, which lets the GIL go (SciPy's would not)
        grow = Y.shape[1] - self.targets.shape[1]
        self.targets = np.hstack([self.targets, np.zeros((self.n_features, grow))]) + H.T @ Y
        if self.exact_forget:
            while len(self.class_grams) < Y.shape[1]:
                self.class_grams.append(np.zeros((self.n_features, self.n_features), order="F"))
            for column in np.unique(columns):
                rows = H[columns == column]
                self.class_grams[column] += rows.T @ rows


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
    Once formed, ``W`` is updated with each learned batch (``W + A^-1 H^T (Y - H W)``, which
    costs two products with ``V`` instead of one per class) rather than formed again.

    **Rebuilding beside learning.** A rebuild of ``G`` takes seconds at 4,096 features. A head
    told to :meth:`defer_rebuilds` (the service's) never rebuilds while learning: past the window
    (and past ``dual_limit_``, keeping the rows, which a save then writes) it goes on taking
    examples as pending updates, and :attr:`rebuild_due` says so. Its owner then calls :meth:`start_rebuild` and runs the work it
    returns on another thread (it decomposes a snapshot of the statistics, releasing the GIL)
    while the head keeps learning and predicting; :meth:`finish_rebuild` adopts the result, with
    the examples learned since the snapshot as pending updates on it. Every solution is the exact
    ``W = (G + lam I)^-1 C`` of the statistics at the ``lam`` in use. With ``"auto"``, that ``lam``
    is GCV's choice for the statistics the rebuild started from, so it depends on when the
    rebuilds ran (on the timing of the owner's thread), not only on the examples: it lags the
    data by the examples that arrived during the rebuild, besides the window. Such a head also
    saves its decomposition (``s``, ``V`` and the pending updates: about twice the bytes of ``G``
    alone) so that loading it serves at once, with the same ``lam``, after checking that the
    saved decomposition solves the loaded statistics (one that does not is dropped).

    ``unlearn_many(X, y)`` subtracts the examples' ``h h^T`` from ``G`` (and from ``G_c`` with
    ``exact_forget=True``), their targets from ``C`` and their counts: this is exact whatever
    ``exact_forget`` says, and ``lam`` is chosen again at the rebuild, as retraining would. In the
    primal form the head cannot tell whether the examples given are ones it learned; it refuses
    (``InvalidInputError``) those whose removal would leave statistics no examples have: a
    within-class scatter ``G - sum_c C_c C_c^T / n_c`` of the expanded features that is not
    positive semi-definite (one Cholesky factorisation of an ``M x M`` matrix), or an emptied
    class whose targets do not vanish. In the dual form it can tell, and it removes the stored
    rows equal to them (same label; the same features as float64, or else the nearest within a
    relative 1e-5, ``HELD_ROW_TOLERANCE``: an encoder may round the same input differently in
    another batch), refusing an example it does not hold (with ``verify=False`` it subtracts it all the same, turning primal). Examples of a class
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
        ten times (``benchmarks/bench_learner_cost.py``). A head that defers its rebuilds keeps
        taking examples past it until its rebuild is adopted.
    max_dual_examples
        Most examples kept in the dual form; ``"auto"`` is ``min(n_features // 4, 1024)`` and 0
        means always primal.
    balance_classes
        Regress class ``c`` onto targets ``mean(n) / n_c`` instead of 1 (``n_c`` its examples),
        which scales its column of ``W`` and its scores by that factor. With one-hot targets a
        class's scores grow with its share of the examples, so in a class-incremental stream
        a new class with a few examples loses to old ones with many; balanced, predict-then-learn
        over a class-incremental CLINC150 stream (``benchmarks/bench_progressive.py``) went from
        87.9% to 95.0% right, while river's small numeric streams moved by under half a point.
        The statistics are the same; only the scores change, so any head's can be switched.

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

    _deferred = False  # see defer_rebuilds
    _rebuild: _Rebuild | None = None  # see start_rebuild

    def __getstate__(self) -> dict[str, Any]:
        # A rebuild under way belongs to this head (its thread, its log): copies go without it,
        # and without the deferral, which only the owner of that thread may ask for.
        state = dict(self.__dict__)
        state.pop("_rebuild", None)
        state.pop("_deferred", None)
        return state

    def __init__(
        self,
        n_features: int = 4096,
        ridge: float | str = "auto",
        seed: int = 0,
        exact_forget: bool = False,
        max_pending: int = 1024,
        max_dual_examples: int | str = "auto",
        balance_classes: bool = False,
    ) -> None:
        check_int("n_features", n_features, minimum=1)
        if not isinstance(balance_classes, bool):
            raise InvalidParameterError(
                f"balance_classes must be True or False, got {balance_classes!r}"
            )
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
        self.balance_classes = balance_classes
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
        self._lambda: float | None = None  # a prediction-only copy's strength
        self._rebuild = None
        self._invalidate(solution=True)

    def _invalidate(self, solution: bool) -> None:
        if solution:
            self._primal: _EigenSolution | None = None
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
        return _primal_statistics(self.expand(features), columns, n_classes, self.exact_forget)

    def _learn(self, X: FloatArray, columns: NDArray[np.intp], n_new: int) -> None:
        self._refuse_if_read_only("learn")
        if self.features_ is not None:
            self._learn_dual(X, columns, n_new)
        else:
            self._learn_primal(X, columns, n_new)
        if self._rebuild is not None:  # the rebuild under way takes this batch on when it can
            self._rebuild.log.append(
                (np.array(X, dtype=np.float64), columns.astype(np.int64), self.counts_.shape[0])
            )

    def _learn_dual(self, X: FloatArray, columns: NDArray[np.intp], n_new: int) -> None:
        assert self.features_ is not None and self.feature_columns_ is not None
        counts = np.concatenate([self.counts_, np.zeros(n_new, dtype=np.int64)])
        np.add.at(counts, columns, 1)
        features = np.vstack([self.features_, X])
        feature_columns = np.concatenate([self.feature_columns_, columns.astype(np.int64)])
        if features.shape[0] > self.dual_limit_ and not self._deferred:
            gram, targets, class_grams = self._primal_statistics(
                features, feature_columns, counts.shape[0]
            )
            # Commit: the primal statistics replace the rows for good.
            self.features_ = self.feature_columns_ = None
            self.gram_, self.targets_, self.class_grams_ = gram, targets, class_grams
            self.counts_ = counts
            self._invalidate(solution=True)
            return
        cache = self._dual
        r = X.shape[0]
        weights = None
        if cache is not None and (
            self._deferred or cache.n - cache.n_base + r <= self.pending_limit(cache.n_base)
        ):
            last = self._last_dual
            if last is not None and last[3] is cache and np.array_equal(last[0], X):
                H_new, cross = last[1], last[2]  # just predicted: the same expansion and solve
            else:
                H_new, cross = self.expand(X), None
            Y = _dual_targets(columns.astype(np.int64), counts.shape[0])
            dual = _dual_extended(cache, H_new, cross, Y)
            if dual is not None and self._weights is not None and r < counts.shape[0]:
                weights = _dual_weights_updated(dual, cache.n, H_new, Y, self._weights)
        else:
            dual = None
        # Commit.
        self.features_, self.feature_columns_, self.counts_ = features, feature_columns, counts
        self._invalidate(solution=True)
        self._dual, self._weights = dual, weights

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
        solution = self._primal
        weights = None
        if solution is not None and (
            self._deferred or solution.k + H.shape[0] <= self.pending_limit(solution.n_base)
        ):
            last = self._last_rotated
            if last is not None and last[0].shape == X.shape and np.array_equal(last[0], X):
                rotated = last[1].T  # just predicted: V^T h is known (predict, then learn it)
            else:
                rotated = (H @ solution.V).T  # faster than V^T H^T for a few rows
            solution = _eigen_appended(solution, rotated, Y)
            if self._weights is not None and H.shape[0] < n_classes:
                weights = _eigen_weights_updated(solution, rotated, H, Y, self._weights)
        else:
            solution = None
        # Commit.
        add_outer(self.gram_, H_f)
        for _ in range(n_new):
            if self.exact_forget:
                self.class_grams_.append(np.zeros((self.n_features, self.n_features), order="F"))
        for column, rows in class_updates:
            add_outer(self.class_grams_[column], rows)
        self.targets_ = targets
        self.counts_ = counts
        self._invalidate(solution=True)
        self._primal, self._weights = solution, weights  # lam stays: chosen with the base

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
        """Dual form: the stored rows matching ``X`` with the same classes, each taken once.

        A row matches one equal to it, or else the nearest stored row of its class within
        ``HELD_ROW_TOLERANCE`` of it (largest difference relative to the largest entry): an
        encoder may round the same input differently in another batch (ONNX Runtime's int8
        text encoder by about 1e-7). Also the first row of ``X`` without a match (and whether
        it has an equal one that is taken already), or None.
        """
        assert self.features_ is not None and self.feature_columns_ is not None
        features = self.features_ + 0.0  # -0.0 made 0.0: equal bytes then mean equal floats
        stored: dict[tuple[bytes, int], list[int]] = {}
        for i, (row, column) in enumerate(
            zip(features, self.feature_columns_.tolist(), strict=True)
        ):
            stored.setdefault((row.tobytes(), column), []).append(i)
        available = np.ones(features.shape[0], dtype=bool)
        held: list[int] = []
        rows = np.asarray(X, dtype=np.float64) + 0.0
        for position, (row, column) in enumerate(zip(rows, columns.tolist(), strict=True)):
            key = (row.tobytes(), column)
            matches = [i for i in stored.get(key, []) if available[i]]
            if matches:
                chosen = matches[-1]
            else:
                candidates = np.flatnonzero(available & (self.feature_columns_ == column))
                if not candidates.size:
                    return held, (position, key in stored)
                gaps = np.abs(features[candidates] - row).max(axis=1)
                nearest = int(np.argmin(gaps))
                scale = max(
                    float(np.abs(row).max()), float(np.abs(features[candidates[nearest]]).max())
                )
                if gaps[nearest] > HELD_ROW_TOLERANCE * max(scale, np.finfo(float).tiny):
                    return held, (position, key in stored)
                chosen = int(candidates[nearest])
            available[chosen] = False
            held.append(chosen)
        return held, None

    def _unlearn(self, X: FloatArray, columns: NDArray[np.intp], kept: NDArray[np.intp]) -> None:
        self._refuse_if_read_only("unlearn")
        self._rebuild = None  # its snapshot would no longer be a part of the statistics
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
            self._invalidate(solution=True)
            self._unlearn_primal(X, columns, kept)
            return
        keep = np.ones(self.features_.shape[0], dtype=bool)
        keep[removed] = False
        counts = (self.counts_ - np.bincount(columns, minlength=self.counts_.shape[0]))[kept]
        new_column = np.full(self.counts_.shape[0] + 1, -1, dtype=np.int64)  # index -1: stays
        new_column[kept] = np.arange(kept.shape[0])
        # Commit (an emptied class has no row left, so its column maps nowhere).
        cache = self._dual
        if self._deferred and cache is not None and cache.n == keep.shape[0]:
            # The service's head: the factor of the rows left at the lam in use (O(n^3), no
            # eigendecomposition of K); a rebuild is then due, to choose lam again.
            kept_columns = new_column[self.feature_columns_[keep]]
            try:
                cache = _dual_removed(cache, keep, _dual_targets(kept_columns, kept.shape[0]))
            except (np.linalg.LinAlgError, FloatingPointError):  # decomposed when solved
                cache = None
        else:
            cache = None
        self.features_ = self.features_[keep]
        self.feature_columns_ = new_column[self.feature_columns_[keep]]
        self.counts_ = counts
        self._invalidate(solution=True)
        self._dual = cache

    def _unlearn_primal(
        self, X: FloatArray, columns: NDArray[np.intp], kept: NDArray[np.intp]
    ) -> None:
        assert self.gram_ is not None and self.targets_ is not None
        H = self.expand(X)
        n_classes = self.targets_.shape[1]
        targets = (self.targets_ - H.T @ one_hot(columns, n_classes))[:, kept]
        counts = (self.counts_ - np.bincount(columns, minlength=n_classes))[kept]
        H_f = np.asfortranarray(H)
        solution, weights = self._downdated(H, one_hot(columns, n_classes), kept)
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
        self._invalidate(solution=True)
        self._primal, self._weights = solution, weights

    def _downdated(
        self, H: FloatArray, Y: FloatArray, kept: NDArray[np.intp]
    ) -> tuple[_EigenSolution | None, FloatArray | None]:
        """A deferring head's solution and weights with the rows ``H`` (targets ``Y``) taken out.

        Exact, at the ``lam`` in use: pending updates of sign -1 (``O(M^2 r)``), so that the
        service publishes an unlearning at the cost of a learn instead of a new decomposition
        of ``G``; a rebuild is then due at once, to choose ``lam`` again as retraining would.
        (None, None) for a head that does not defer (it decomposes ``G`` when it next solves),
        or when the downdate is not definite to rounding.
        """
        solution = self._primal
        if not self._deferred or solution is None:
            return None, None
        rotated = (H @ solution.V).T
        try:
            solution = _eigen_appended(solution, rotated, Y, sign=-1.0)
        except np.linalg.LinAlgError:
            return None, None
        weights = None
        if self._weights is not None and H.shape[0] < Y.shape[1]:
            weights = _eigen_weights_updated(solution, rotated, H, Y, self._weights, -1.0)
            weights = weights[:, kept]
        solution = replace(
            solution,
            rotated_targets=solution.rotated_targets[:, kept],
            cross=solution.cross[:, kept],
        )
        return solution, weights

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
        self._rebuild = None
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
            self._invalidate(solution=True)
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
        self._invalidate(solution=True)

    def _class_counts(self) -> NDArray[np.int64]:
        return self.counts_

    def _forget_index(self, index: int) -> None:
        self._refuse_if_read_only("forget")
        self._rebuild = None  # its class columns would no longer match
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
                self._invalidate(solution=True)
                return
            cache = self._dual
            # Commit.
            self.feature_columns_ = np.where(old == index, -1, shifted)
            self.counts_ = counts
            pending = cache is not None and cache.n > cache.n_base
            self._invalidate(solution=not pending)  # none pending: rebuilt, lam chosen again
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
            self._invalidate(solution=True)
            return
        self._invalidate(solution=False)
        solution = self._primal
        if solution is not None:
            rotated_targets = np.delete(solution.rotated_targets, index, axis=1)
            lam = solution.lam
            if not solution.k:  # lam is chosen again from the decomposition alone (cheap)
                lam = self._strength(solution.s, rotated_targets, self.n_seen_, counts)
            self._primal = replace(
                solution,
                lam=lam,
                rotated_targets=rotated_targets,
                cross=np.delete(solution.cross, index, axis=1),
            )

    # --- solution --------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Rebuild the solution now: a new decomposition, and ``lam`` chosen again.

        After it, a head with ``ridge="auto"`` is exactly the function of its statistics that the
        class docstring describes, whatever the order in which they were learned.
        """
        self._refuse_if_read_only("refresh")
        if not self.is_fitted:
            return
        self._rebuild = None
        self._invalidate(solution=True)
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
                solution = self._eigen_solution()
                self._weights = _eigen_weights(solution, self._solved_pending())
        return self._weights

    def _strength(
        self, s: FloatArray, rotated: FloatArray, n: int, counts: NDArray[np.int64]
    ) -> float:
        """``lam`` for the eigenvalues ``s`` of ``G``, ``rotated = V^T C`` and ``n`` examples."""
        if self.ridge != "auto":
            return float(self.ridge)
        assert self.gram_ is not None
        return _primal_gcv(s, rotated, n, float(counts.sum()), float(np.trace(self.gram_)))

    def _eigen_solution(self) -> _EigenSolution:
        """The decomposition of ``G`` and the pending updates on it, rebuilt now if there is none."""
        assert self.gram_ is not None and self.targets_ is not None
        if self._primal is None:
            self._primal = _eigen_base(
                self.gram_,
                self.targets_,
                self.ridge,
                self.n_seen_,
                float(self.counts_.sum()),
                self.pending_limit(self.n_seen_) + 32,
            )
            self._small_rows = 0
        return self._primal

    def _solved_pending(self) -> FloatArray:
        """``S^-1 P^T D V^T C`` of the primal solution, cached until it changes."""
        if self._pending_solved is None:
            assert self._primal is not None
            self._pending_solved = _solved_pending(self._primal)
        return self._pending_solved

    def pending_limit(self, base: int) -> int:
        """Examples learned on top of a decomposition of ``base`` examples before a rebuild.

        ``max_pending``, at most ``M`` (``n_features``), and at most half the base (but at least
        32): the strength chosen at a rebuild then always comes from at least two thirds of the
        data, while the rebuilds of a growing model stay geometrically spaced. The cap of ``M``
        balances the work: a rebuild costs ``M^3``, and the ``k``-th pending example about
        ``M k + k^2``, so windows of about ``M`` examples cost least per example (a 256-feature
        head on river's Bananas stream spent 60% of its time in solves with 1,000 pending rows).
        """
        return min(self.max_pending, self.n_features, max(32, base // 2))

    def _dual_solution(self) -> _DualSolution:
        """The dual cache, rebuilt from the stored rows if needed (``lam`` chosen then)."""
        if self._dual is not None:
            return self._dual
        assert self.features_ is not None and self.feature_columns_ is not None
        n = self.features_.shape[0]
        self._dual = _dual_base(
            self.expand(self.features_),
            self.feature_columns_,
            self.counts_.shape[0],
            self.ridge,
            self.n_seen_,
            float(self.counts_.sum()),
            n + self.pending_limit(n),
        )
        self._small_rows = 0
        return self._dual

    def _dual_alpha(self) -> FloatArray:
        """``(K + lam I)^-1 Y`` for the stored rows."""
        if self._alpha is None:
            cache = self._dual_solution()
            self._alpha = _solve_lower(
                cache.factor[: cache.n, : cache.n],
                cache.half,
                lower=True,
                trans="T",
                check_finite=False,
            )
        return self._alpha

    # --- rebuilding off the head's thread -----------------------------------------------------
    def defer_rebuilds(self, defer: bool = True) -> None:
        """Leave every rebuild that learning makes due to :meth:`start_rebuild`.

        A deferred head never rebuilds its decomposition while learning: past ``pending_limit``
        (and, in the dual form, past ``dual_limit_``) it keeps taking examples as pending updates
        on the one it has, and :attr:`rebuild_due` says that a rebuild should start. Solving
        still rebuilds at once when there is no decomposition at all (after an unlearning, a
        merge or an exact forget, or a load of a head saved without one). Not saved, and not
        passed on to copies; but a deferring head saves its decomposition (see the class
        docstring).
        """
        self._deferred = bool(defer)

    @property
    def rebuild_due(self) -> bool:
        """Whether :meth:`start_rebuild` should run now (False while a rebuild is under way)."""
        if self._read_only or self._rebuild is not None or not self.is_fitted:
            return False
        if self.features_ is not None:
            cache = self._dual
            return self.features_.shape[0] > self.dual_limit_ or (
                cache is not None
                and (cache.carried or cache.n - cache.n_base >= self.pending_limit(cache.n_base))
            )
        solution = self._primal
        return solution is not None and (
            solution.k >= self.pending_limit(solution.n_base) or solution.signs is not None
        )

    @property
    def n_pending_(self) -> int:
        """Examples learned on top of the current decomposition (0 when there is none)."""
        if self.features_ is not None:
            cache = self._dual
            return 0 if cache is None else cache.n - cache.n_base
        return 0 if self._primal is None else self._primal.k

    @property
    def rebuilding_(self) -> bool:
        """Whether a rebuild started by :meth:`start_rebuild` awaits :meth:`finish_rebuild`."""
        return self._rebuild is not None

    def start_rebuild(self, decompose: Decomposer | None = None) -> Callable[[], None]:
        """Begin a rebuild of the decomposition; the work to run, on any thread, once.

        The work decomposes a snapshot of the statistics as they are now (choosing ``lam`` from
        them with ``ridge="auto"``), then takes the examples learned since as pending updates on
        the result. It reads nothing the head changes and releases the GIL in its long steps,
        so the head goes on learning and predicting on its current decomposition meanwhile.
        :meth:`finish_rebuild` adopts the result; an unlearning, forget, merge, load or
        :meth:`refresh` in between abandons it. In the dual form past ``dual_limit_`` the
        rebuild also forms ``G`` and ``C``, which replace the rows when it is adopted.
        ``decompose`` replaces numpy's ``eigh`` of ``G`` (e.g. to run it in another process);
        it gets ``G`` (its upper triangle counts) and returns ``(s, V)`` with ``s >= 0``.

        Raises
        ------
        NotFittedError
            The head has learned nothing.
        """
        self._refuse_if_read_only("rebuild")
        if not self.is_fitted:
            raise NotFittedError(
                f"{type(self).__name__} has learned nothing yet: nothing to rebuild"
            )
        if self.features_ is not None:
            assert self.feature_columns_ is not None
            kind = "convert" if self.features_.shape[0] > self.dual_limit_ else "dual"
            # The head replaces these arrays when they change, never writes into them.
            features, columns = self.features_, self.feature_columns_
            job = _Rebuild(self, kind, features=features, columns=columns, decompose=decompose)
        else:
            assert self.gram_ is not None and self.targets_ is not None
            gram = self.gram_.copy(order="F")
            job = _Rebuild(self, "primal", gram=gram, targets=self.targets_, decompose=decompose)
        self._rebuild = job
        return job.run

    def finish_rebuild(self) -> bool:
        """Adopt the rebuild :meth:`start_rebuild` began, if its work is done; whether it did.

        The head then holds the new decomposition with every example learned since the snapshot
        pending on it: the same ``W = (G + lam I)^-1 C`` of its statistics, at the new ``lam``.
        Returns False while the work runs (call again later), and when the rebuild was abandoned
        or failed: the head then keeps its current decomposition (or, after a failure, makes a
        new one when it next solves, which raises the error if it happens again).
        """
        job = self._rebuild
        if job is None or not job.finished.is_set():
            return False
        self._rebuild = None
        if job.error is None and job.kind != "primal" and self.features_ is None:
            return False  # converted meanwhile (it was not deferred): nothing to adopt
        try:
            if job.error is not None:
                raise job.error
            job.catch_up()  # what was learned after the work last looked, on this thread
            job.form_weights()
        except Exception:
            self._invalidate(solution=True)  # the next solve decomposes here, or fails loudly
            return False
        assert job.rows == self.n_seen_, (job.rows, self.n_seen_)
        self._invalidate(solution=True)
        self._weights = job.weights
        if job.kind == "dual":
            self._dual = job.dual
            return True
        if job.kind == "convert":
            assert job.gram is not None and job.targets is not None
            self.features_ = self.feature_columns_ = None
            self.gram_, self.targets_, self.class_grams_ = job.gram, job.targets, job.class_grams
        self._primal = job.primal
        return True

    @property
    def ridge_(self) -> float:
        """The ridge strength in use (chosen by GCV when ``ridge="auto"``)."""
        if self._read_only:
            assert self._lambda is not None
            return self._lambda
        if self.features_ is not None:
            return self._dual_solution().lam
        return self._eigen_solution().lam

    @property
    def coef_(self) -> FloatArray:
        """Output weights ``(G + lam I)^-1 C = H^T (K + lam I)^-1 Y``, shape (n_features, n_classes)."""
        return self._solve()

    def _scores(self, X: FloatArray) -> FloatArray:
        scores = self._plain_scores(X)
        if self.balance_classes:
            # Targets mean(n) / n_c instead of 1 for the positives of class c: each column of C,
            # hence of W, scales by that factor; the mean keeps the scores' size (probabilities).
            counts = np.maximum(self.counts_, 1).astype(np.float64)
            scores = scores * (counts.mean() / counts)
        return scores

    def _plain_scores(self, X: FloatArray) -> FloatArray:
        H = self.expand(X)
        n_classes = self.counts_.shape[0]
        if self._weights is None and self.features_ is not None:
            cache = self._dual_solution()
            # Forming W = H^T alpha costs n M K; a few rows are cheaper through the factor.
            if self._small_rows + H.shape[0] < max(n_classes // 4, 1):
                self._small_rows += H.shape[0]
                n = cache.n
                kernel_rows = H @ cache.expanded[:n].T
                solved = _solve_lower(
                    cache.factor[:n, :n], kernel_rows.T, lower=True, check_finite=False
                )
                self._last_dual = (X.copy(), H, solved, cache)
                dual_scores: FloatArray = solved.T @ cache.half
                return dual_scores
        elif self._weights is None:
            solution = self._eigen_solution()
            # Forming W = V (V^T W) costs M^2 K; a few rows are cheaper through V directly.
            if self._small_rows + H.shape[0] < max(n_classes // 4, 1):
                self._small_rows += H.shape[0]
                rotated = H @ solution.V
                self._last_rotated = (X.copy(), rotated)
                scores: FloatArray = (
                    rotated / (solution.s + solution.lam)
                ) @ solution.rotated_targets
                scores -= (rotated @ solution.scaled[:, : solution.k]) @ self._solved_pending()
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
        solution = self._saved_solution()
        if solution is not None:
            meta["solution"] = {"lam": solution.lam, "n_base": solution.n_base, "k": solution.k}
        return meta

    def _saved_solution(self) -> _EigenSolution | None:
        """The primal decomposition a save writes: a deferring head's, when it has one.

        The service's heads defer their rebuilds; they save their decomposition with the
        statistics so that a restart serves at once instead of decomposing ``G`` first (seconds
        at 4,096 features), and serves exactly the model that was saved (the same ``lam``).
        """
        if self._deferred and self.features_ is None and not self._read_only:
            return self._primal
        return None

    @property
    def state_bytes(self) -> int:
        """Bytes of learned statistics: what a save writes (counted, not formed)."""
        if self.dim_ is None or self.features_ is not None or self._read_only:
            return super().state_bytes  # the dual form's arrays are the stored rows themselves
        m, n_classes = self.n_features, self.counts_.shape[0]
        floats = m * m * (1 + len(self.class_grams_)) + m * n_classes
        solution = self._saved_solution()
        if solution is not None:  # s, V, V^T C, and the pending updates
            k = solution.k
            floats += m + m * m + m * n_classes + m * k + k * k + k * n_classes + k
        return int(8 * floats + self.counts_.nbytes)

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
        solution = self._saved_solution()
        if solution is not None:
            k = solution.k
            arrays.update(
                {
                    "solution.s": solution.s,
                    "solution.V": solution.V,
                    "solution.rotated_targets": solution.rotated_targets,
                    "solution.scaled": solution.scaled[:, :k],
                    "solution.factor": solution.factor[:k, :k],
                    "solution.cross": solution.cross,
                    "solution.signs": np.ones(k) if solution.signs is None else solution.signs[:k],
                }
            )
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
            shapes = self._expected_shapes(dim, n_classes)
            if "solution" in meta:
                try:
                    k = int(meta["solution"]["k"])
                except (KeyError, TypeError, ValueError) as error:
                    raise ModelMismatchError(
                        f"ridge head metadata has an invalid saved solution: {error}"
                    ) from error
                m = self.n_features
                shapes.update(
                    {
                        "solution.s": (m,),
                        "solution.V": (m, m),
                        "solution.rotated_targets": (m, n_classes),
                        "solution.scaled": (m, k),
                        "solution.factor": (k, k),
                        "solution.cross": (k, n_classes),
                        "solution.signs": (k,),
                    }
                )
            return shapes
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
        self._invalidate(solution=True)
        if "solution" in meta:
            self._primal = self._loaded_solution(meta["solution"], arrays)

    def _load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore the primal statistics (the projection is :meth:`_load_state`'s business)."""
        self.gram_ = np.array(arrays["gram"], dtype=np.float64, order="F")
        self.targets_ = np.array(arrays["targets"], dtype=np.float64)
        self.counts_ = np.array(arrays["counts"], dtype=np.int64)
        self.class_grams_ = [
            np.array(arrays[f"class_gram.{i}"], dtype=np.float64, order="F")
            for i in range(len(self.classes_) if self.exact_forget else 0)
        ]
        self._invalidate(solution=True)

    def _loaded_solution(
        self, meta: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> _EigenSolution | None:
        """The saved decomposition, if it solves the loaded statistics; None otherwise.

        Checked, not trusted: ``A x = b`` must hold for ``A = G + lam I``, the ``x`` it gives and
        ``b`` the targets and a random vector (``O(M^2)`` per column against ``O(M^3)`` for a new
        decomposition). One that fails is dropped with a warning, and the head decomposes ``G``
        when it next solves, as after any load.
        """
        assert self.gram_ is not None and self.targets_ is not None
        try:
            lam, n_base, k = float(meta["lam"]), int(meta["n_base"]), int(meta["k"])
            s = np.array(arrays["solution.s"], dtype=np.float64)
            V = np.ascontiguousarray(arrays["solution.V"], dtype=np.float64)
            m = s.shape[0]
            capacity = max(k, self.pending_limit(n_base)) + 32
            scaled = np.zeros((m, capacity), order="F")
            scaled[:, :k] = arrays["solution.scaled"]
            factor = np.zeros((capacity, capacity))
            factor[:k, :k] = arrays["solution.factor"]
            solution = _EigenSolution(
                lam,
                n_base,
                s,
                V,
                np.array(arrays["solution.rotated_targets"], dtype=np.float64),
                k,
                scaled,
                factor,
                np.array(arrays["solution.cross"], dtype=np.float64),
                None,
            )
            signs = np.array(arrays["solution.signs"], dtype=np.float64)
            if not np.all(np.abs(signs) == 1.0):
                raise ValueError("pending signs other than +-1")
            if np.any(signs < 0):
                solution.signs = signs
            if not (np.isfinite(lam) and lam > 0 and n_base > 0 and k >= 0):
                raise ValueError(f"lam {lam}, n_base {n_base}, k {k}")
            probe = np.random.default_rng(0).standard_normal((m, 1))
            right = np.hstack([self.targets_, probe])
            rotated = V.T @ right
            inner = (1.0 / (s + lam))[:, None] * rotated
            if k:
                inner -= scaled[:, :k] @ _capacitance_solve(solution, scaled[:, :k].T @ rotated)
            solved = V @ inner
            residual = self.gram_ @ solved + lam * solved - right
            # Relative to what rounding allows: |A| |x| + |b| (|A| from the saved eigenvalues).
            scale = (float(s.max(initial=0.0)) + lam) * np.linalg.norm(solved, axis=0)
            scale += np.linalg.norm(right, axis=0)
            error = np.linalg.norm(residual, axis=0) / np.maximum(scale, np.finfo(float).tiny)
            if not np.all(error <= 1e-8):
                raise ValueError(f"relative residual {float(error.max()):.2e}")
        except (KeyError, TypeError, ValueError, np.linalg.LinAlgError) as error:
            logger.warning("the saved ridge decomposition was dropped (%s): decomposing G", error)
            return None
        return solution


def _digest(projection: FloatArray) -> str:
    """SHA-256 of the projection's float64 little-endian bytes, row by row."""
    return hashlib.sha256(np.ascontiguousarray(projection, dtype="<f8").tobytes()).hexdigest()


def _dual_targets(columns: NDArray[np.int64], n_classes: int) -> FloatArray:
    """One-hot rows for ``columns``; a row of column -1 (unlabelled) is all zeros."""
    Y = np.zeros((columns.shape[0], n_classes))
    labelled = np.flatnonzero(columns >= 0)
    Y[labelled, columns[labelled]] = 1.0
    return Y


def _decompose(gram: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Eigenvalues (clipped at zero) and eigenvectors of ``G``, read from its upper triangle.

    numpy's ``eigh``, unlike SciPy's, releases the GIL: a rebuild on another thread leaves the
    thread that learns and predicts free to run.
    """
    s, V = np.linalg.eigh(gram, UPLO="U")
    return np.maximum(s, 0.0), V


def _gcv_choice(
    scale: float, terms: Callable[[float], tuple[float, float]], n: int, target_energy: float
) -> float:
    """The grid strength minimising GCV; ``terms(lam)`` gives (dof, residual sum of squares).

    ``scale`` is ``tr(G) / M`` (equal to ``tr(K) / M``), so both forms try the same grid; ``n``
    is the number of examples and ``target_energy`` is ``||Y||^2`` (the labelled ones).
    """
    if scale <= 0.0:
        return 1.0
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


def _primal_gcv(
    s: FloatArray, rotated: FloatArray, n: int, target_energy: float, trace: float
) -> float:
    """GCV's ``lam`` from the eigenvalues ``s`` of ``G``, ``rotated = V^T C`` and ``tr G``."""
    row_energy = np.einsum("ij,ij->i", rotated, rotated)
    m = s.shape[0]

    def primal_terms(lam: float) -> tuple[float, float]:
        d = 1.0 / (s + lam)
        fit = float(d @ row_energy)  # tr(C^T W)
        weight_energy = float((d * d) @ row_energy)  # ||W||^2
        dof = m - lam * float(d.sum())  # tr of the hat matrix
        return dof, target_energy - fit - lam * weight_energy

    return _gcv_choice(trace / m, primal_terms, n, target_energy)


def _eigen_base(
    gram: FloatArray,
    targets: FloatArray,
    ridge: float | str,
    n: int,
    target_energy: float,
    capacity: int,
    decompose: Decomposer | None = None,
) -> _EigenSolution:
    """The primal solution of ``G`` and ``C`` (``n`` examples) decomposed now, none pending."""
    s, V = (decompose or _decompose)(gram)
    V = np.ascontiguousarray(V)  # H V, the products with V, read it row by row
    rotated_targets = V.T @ targets
    trace = float(np.trace(gram))
    lam = (
        float(ridge)
        if ridge != "auto"
        else _primal_gcv(s, rotated_targets, n, target_energy, trace)
    )
    m = s.shape[0]
    return _EigenSolution(
        lam,
        n,
        s,
        V,
        rotated_targets,
        0,
        np.zeros((m, capacity), order="F"),
        np.zeros((capacity, capacity)),
        np.zeros((0, targets.shape[1])),
    )


def _eigen_appended(
    solution: _EigenSolution, rotated: FloatArray, Y: FloatArray, sign: float = 1.0
) -> _EigenSolution:
    """``solution`` with more examples pending: their ``V^T h`` are the columns of ``rotated``.

    ``Y`` holds their one-hot targets over every class (new classes last); ``sign`` is +1 for
    examples learned and -1 for examples unlearned. At a fixed ``lam``, ``S`` grows by a block
    row (``O(M k r)``) instead of being formed again. Raises ``LinAlgError`` when the new block
    is not definite (an unlearning that leaves ``G + lam I`` singular, to rounding).
    """
    m, r = rotated.shape
    k = solution.k
    Y = sign * Y
    grow = Y.shape[1] - solution.rotated_targets.shape[1]
    rotated_targets = np.hstack([solution.rotated_targets, np.zeros((m, grow))]) + rotated @ Y
    scaled = (1.0 / (solution.s + solution.lam))[:, None] * rotated  # D p
    old_cross = solution.scaled[:, :k].T @ rotated  # P_old^T D p
    cross = np.hstack([solution.cross, np.zeros((k, grow))]) + old_cross @ Y
    signs = solution.signs
    if k:
        below = _solve_lower(
            solution.factor[:k, :k], old_cross, lower=True, check_finite=False
        )  # w = L^-1 c; the new block row of L is (J w)^T
    else:
        below = np.zeros((0, r))
    if signs is None:
        signed_below, inner = below, below.T @ below
    else:
        signed_below = signs[:k, None] * below
        inner = below.T @ signed_below
    corner = _cholesky_lower(
        np.eye(r) + sign * (rotated.T @ scaled - inner), lower=True, check_finite=False
    )
    if sign < 0 or signs is not None:
        signs = np.concatenate([np.ones(k) if signs is None else signs[:k], np.full(r, sign)])
    buffer, factor = solution.scaled, solution.factor
    if k + r > factor.shape[0]:
        capacity = max(factor.shape[0] * 3 // 2, k + r)
        buffer = np.zeros((m, capacity), order="F")
        buffer[:, :k] = solution.scaled[:, :k]
        factor = np.zeros((capacity, capacity))
        factor[:k, :k] = solution.factor[:k, :k]
    buffer[:, k : k + r] = scaled
    factor[k : k + r, :k] = signed_below.T
    factor[k : k + r, k : k + r] = corner
    return replace(
        solution,
        rotated_targets=rotated_targets,
        k=k + r,
        scaled=buffer,
        factor=factor,
        cross=np.vstack([cross, scaled.T @ rotated_targets]),
        signs=signs,
    )


def _solve_lower(
    L: FloatArray,
    B: FloatArray,
    lower: bool = True,
    trans: str = "N",
    check_finite: bool = False,
) -> FloatArray:
    """``L^-1 B`` (``trans="T"``: ``L^-T B``) for a lower-triangular ``L``, straight to LAPACK.

    The same answer as ``scipy.linalg.solve_triangular(L, B, lower=True, ...)``, without its
    argument checks: a learned example makes several such solves of small blocks, and the
    wrapper's overhead (tens of microseconds each) was a fifth of a progressive-validation step.
    """
    assert lower and not check_finite
    vector = B.ndim == 1
    right = B[:, None] if vector else B
    if L.shape[0] == 0:
        return np.array(B, dtype=np.float64)
    x, info = _dtrtrs(L, right, lower=1, trans=1 if trans == "T" else 0)
    if info > 0:
        raise np.linalg.LinAlgError(f"singular triangular matrix: zero at diagonal {info}")
    if info < 0:  # pragma: no cover - a programming error
        raise ValueError(f"dtrtrs: argument {-info} is invalid")
    solved: FloatArray = x[:, 0] if vector else x
    return solved


def _cholesky_lower(A: FloatArray, lower: bool = True, check_finite: bool = False) -> FloatArray:
    """The lower Cholesky factor of ``A``, straight to LAPACK (see :func:`_solve_lower`)."""
    assert lower and not check_finite
    if A.shape[0] == 0:
        return np.zeros_like(A, dtype=np.float64)
    c, info = _dpotrf(A, lower=1, clean=1)
    if info > 0:
        raise np.linalg.LinAlgError(f"{info}-th leading minor not positive definite")
    if info < 0:  # pragma: no cover - a programming error
        raise ValueError(f"dpotrf: argument {-info} is invalid")
    factor: FloatArray = c
    return factor


def _capacitance_solve(solution: _EigenSolution, right: FloatArray) -> FloatArray:
    """``S^-1 right`` for ``S = L J L^T`` of the pending examples."""
    L = solution.factor[: solution.k, : solution.k]
    if solution.signs is None:
        solved: FloatArray = _solve_lower(L, _solve_lower(L, right), trans="T")
        return solved
    half = _solve_lower(L, right, lower=True, check_finite=False)
    half *= solution.signs[: solution.k, None]
    solved = _solve_lower(L, half, lower=True, trans="T", check_finite=False)
    return solved


def _solved_pending(solution: _EigenSolution) -> FloatArray:
    """``S^-1 P^T D V^T C``: with it, ``V^T W = D V^T C - D P S^-1 P^T D V^T C`` (Woodbury)."""
    if not solution.k:
        return solution.cross
    return _capacitance_solve(solution, solution.cross)


def _eigen_weights(solution: _EigenSolution, solved_pending: FloatArray) -> FloatArray:
    """``W = (G + lam I)^-1 C`` from the primal solution (``M^2`` per class)."""
    rotated_weights = (1.0 / (solution.s + solution.lam))[:, None] * solution.rotated_targets
    rotated_weights -= solution.scaled[:, : solution.k] @ solved_pending
    weights: FloatArray = solution.V @ rotated_weights
    return weights


def _updated_weights(
    weights: FloatArray, solved_rows: FloatArray, H: FloatArray, Y: FloatArray, sign: float = 1.0
) -> FloatArray:
    """``W' = W + A'^-1 H^T (Y - H W)``: the weights once the rows ``H`` (targets ``Y``) are in.

    With ``sign=-1`` the rows are taken out (``A' = A - H^T H``, ``C' = C - H^T Y``) and
    ``W' = W - A'^-1 H^T (Y - H W)``.

    ``solved_rows`` is ``A'^-1 H^T``, with ``A' = G + lam I`` holding the rows. It follows from
    ``A' W' = C + H^T Y = (A' - H^T H) W + H^T Y``; a rounding error in ``W`` is multiplied by
    ``I - A'^-1 H^T H``, whose eigenvalues lie in [0, 1), so errors do not grow from one update to
    the next. Costs ``M r K`` besides ``solved_rows``, against ``M^2 K`` for forming ``W`` anew.
    """
    padded = np.hstack([weights, np.zeros((weights.shape[0], Y.shape[1] - weights.shape[1]))])
    updated: FloatArray = padded + sign * (solved_rows @ (Y - H @ padded))
    return updated


def _eigen_weights_updated(
    solution: _EigenSolution,
    rotated: FloatArray,
    H: FloatArray,
    Y: FloatArray,
    weights: FloatArray,
    sign: float = 1.0,
) -> FloatArray:
    """``W`` after the rows ``H`` (``rotated = V^T H^T``) became the last pending ones of ``solution``.

    ``A^-1 H^T = V (D R - D P S^-1 P^T D R)`` with ``R = V^T H^T``: two products with ``V``
    (``M^2 r``) instead of one per class.
    """
    scaled = solution.scaled[:, : solution.k]
    solved = _capacitance_solve(solution, scaled.T @ rotated)
    inner = (1.0 / (solution.s + solution.lam))[:, None] * rotated - scaled @ solved
    return _updated_weights(weights, solution.V @ inner, H, Y, sign)


def _dual_weights_updated(
    cache: _DualSolution, n_old: int, H_new: FloatArray, Y_new: FloatArray, weights: FloatArray
) -> FloatArray:
    """``W`` after the rows ``H_new`` became rows ``n_old:`` of the dual ``cache``.

    ``A^-1 H_new^T = H^T (K + lam I)^-1 E`` (``E`` picks the new rows), and ``L^-1 E`` is zero but
    for the inverse of the new diagonal block of ``L``: ``O(n (M + n) r)`` in all.
    """
    n, r = cache.n, H_new.shape[0]
    lower = np.zeros((n, r))
    lower[n_old:] = _solve_lower(
        cache.factor[n_old:n, n_old:n], np.eye(r), lower=True, check_finite=False
    )
    solved = _solve_lower(cache.factor[:n, :n], lower, lower=True, trans="T", check_finite=False)
    return _updated_weights(weights, cache.expanded[:n].T @ solved, H_new, Y_new)


def _dual_base(
    H: FloatArray,
    columns: NDArray[np.int64],
    n_classes: int,
    ridge: float | str,
    n_seen: int,
    target_energy: float,
    capacity: int,
) -> _DualSolution:
    """The dual solution of the expanded rows ``H`` (classes ``columns``), with room to grow."""
    n, m = H.shape
    expanded = np.empty((max(capacity, n), m))
    expanded[:n] = H
    kernel = H @ H.T
    Y = _dual_targets(columns, n_classes)
    if ridge == "auto":
        s, U = np.linalg.eigh(kernel)
        s = np.maximum(s, 0.0)
        energy = np.einsum("ij,ij->i", U.T @ Y, U.T @ Y)  # squared rows of U^T Y

        def dual_terms(lam: float) -> tuple[float, float]:
            d = 1.0 / (s + lam)
            # Y - K (K + lam I)^-1 Y = lam (K + lam I)^-1 Y: no cancellation.
            return float(s @ d), lam * lam * float((d * d) @ energy)

        lam = _gcv_choice(float(np.trace(kernel)) / m, dual_terms, n_seen, target_energy)
    else:
        lam = float(ridge)
    factor = np.zeros((expanded.shape[0], expanded.shape[0]))
    kernel[np.diag_indices(n)] += lam
    factor[:n, :n] = np.linalg.cholesky(kernel)
    half = _solve_lower(factor[:n, :n], Y, lower=True, check_finite=False)
    return _DualSolution(lam, n, n, expanded, factor, half)


def _dual_removed(cache: _DualSolution, keep: NDArray[np.bool_], Y: FloatArray) -> _DualSolution:
    """``cache`` for the rows ``keep`` only (targets ``Y``), at the same ``lam``.

    With ``L`` split by columns into the kept and the removed ones, the rows kept are
    ``[A | B]`` (``A`` lower triangular), and ``K + lam I`` of the rows left is
    ``A A^T + B B^T``: a rank-``r`` update of a triangular factor (``O(n^2 r)``), with no kernel,
    eigenvalues or factorisation formed anew.
    """
    n = cache.n
    rows = cache.factor[:n, :n][keep]
    lower = _cholesky_updated(rows[:, keep], rows[:, ~keep])
    n_kept = lower.shape[0]
    capacity = cache.factor.shape[0]
    factor = np.zeros((capacity, capacity))
    factor[:n_kept, :n_kept] = lower
    expanded = np.empty_like(cache.expanded)
    expanded[:n_kept] = cache.expanded[:n][keep]
    half = _solve_lower(lower, Y, lower=True, check_finite=False)
    return _DualSolution(cache.lam, n_kept, n_kept, expanded, factor, half, carried=True)


def _cholesky_updated(lower: FloatArray, columns: FloatArray) -> FloatArray:
    """The lower Cholesky factor of ``L L^T + B B^T`` (``L = lower``, ``B = columns``).

    One Givens rotation per nonzero entry of ``B``, column by column of ``L`` (the classic
    rank-one update, ``r`` times): stable, since it only adds positive terms.
    """
    upper = np.array(lower.T, order="C")  # row k of U is column k of L: contiguous
    vectors = np.array(columns.T, order="C")  # (r, n)
    n = upper.shape[0]
    for x in vectors:
        nonzero = np.flatnonzero(x)
        for k in range(int(nonzero[0]) if nonzero.size else n, n):
            xk = x[k]
            if xk == 0.0:
                continue
            ukk = upper[k, k]
            radius = float(np.hypot(ukk, xk))
            cosine, sine = radius / ukk, xk / ukk
            upper[k, k] = radius
            row = upper[k, k + 1 :]
            row += sine * x[k + 1 :]
            row /= cosine
            x[k + 1 :] *= cosine
            x[k + 1 :] -= sine * row
    updated: FloatArray = upper.T
    return updated


def _dual_extended(
    cache: _DualSolution, H_new: FloatArray, cross: FloatArray | None, Y_new: FloatArray
) -> _DualSolution | None:
    """``cache`` with the expanded rows ``H_new`` appended (block Cholesky), or None to rebuild.

    ``cross`` is ``L^-1 H H_new^T`` if known; ``Y_new`` the rows' one-hot targets over every
    class. Writes past the cache's ``n`` rows only, so ``cache`` stays valid.
    """
    n, r = cache.n, H_new.shape[0]
    L = cache.factor[:n, :n]
    if cross is None:
        cross = _solve_lower(
            L, cache.expanded[:n] @ H_new.T, lower=True, check_finite=False
        )  # L^-1 H H_new^T
    schur = H_new @ H_new.T + cache.lam * np.eye(r) - cross.T @ cross
    try:
        corner = _cholesky_lower(schur, lower=True, check_finite=False)
    except np.linalg.LinAlgError:  # pragma: no cover - rounding at a tiny ridge: rebuild
        return None
    half = np.hstack([cache.half, np.zeros((n, Y_new.shape[1] - cache.half.shape[1]))])
    half_new = _solve_lower(corner, Y_new - cross.T @ half, lower=True, check_finite=False)
    expanded, factor = cache.expanded, cache.factor
    if n + r > factor.shape[0]:
        capacity = max(factor.shape[0] * 3 // 2, n + r)
        expanded = np.empty((capacity, H_new.shape[1]))
        expanded[:n] = cache.expanded[:n]
        factor = np.zeros((capacity, capacity))
        factor[:n, :n] = L
    expanded[n : n + r] = H_new
    factor[n : n + r, :n] = cross.T
    factor[n : n + r, n : n + r] = corner
    return replace(
        cache, n=n + r, expanded=expanded, factor=factor, half=np.vstack([half, half_new])
    )


def _primal_statistics(
    H: FloatArray, columns: NDArray[np.int64], n_classes: int, exact_forget: bool
) -> tuple[FloatArray, FloatArray, list[FloatArray]]:
    """``G`` (upper triangle, Fortran order), ``C`` and, with ``exact_forget``, the ``G_c``.

    ``H`` holds the expanded rows, ``columns`` their classes (-1: unlabelled). numpy forms
    ``H^T H`` with BLAS's ``syrk`` and lets the GIL go meanwhile (SciPy's wrappers hold it), so
    a rebuild on another thread can form ``G`` without stopping the head's own thread.
    """
    H = np.ascontiguousarray(H)
    gram = (H.T @ H).T  # symmetric: the transposed view is the same matrix, in Fortran order
    targets = H.T @ _dual_targets(columns, n_classes)
    class_grams = []
    if exact_forget:
        for column in range(n_classes):
            rows = np.ascontiguousarray(H[columns == column])
            class_grams.append((rows.T @ rows).T)
    return gram, targets, class_grams
