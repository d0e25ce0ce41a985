"""The open-set gate: from features to "one of the learned classes" or "unknown".

:class:`OpenSetGate` sits between the head and :class:`~perennial.LifelongClassifier`. It exists
only when open-set recognition is asked for (``unknown_rate``), so a closed-set model pays
nothing for it. It owns:

* the novelty statistics, a :class:`~perennial.heads.statistics.ClassStatistics` whose rows
  follow the head's class columns (the head owns the labels; the gate never keeps its own);
* the novelty score (:mod:`perennial.novelty`);
* the calibration reservoir and the threshold, and :meth:`tune` for a threshold from labelled
  out-of-scope examples.

**Calibration without out-of-scope examples and without kept data.** While learning, some
examples are scored *before* they are learned: in a batch, examples of a class with at least two
learned examples are scored first; for a class the batch brings new (or that had fewer than two
examples), half of its examples are learned first and the other half scored, then learned. The
held-out scores (numbers, never inputs) go into a fixed-size reservoir sample (Vitter's
algorithm R). The threshold for a target in-scope rejection rate ``r`` is the ``1 - r`` quantile of
the reservoir, so it follows the model as classes arrive.

**Cost.** A prediction's novelty is always computed from the current statistics (two Cholesky
factors of ``d x d`` covariances, cached until the statistics change). A held-out score while
learning uses the current class means and a covariance factored at most ``max(n/8, c_d)``
examples earlier (``c_d`` grows with the width, up to 64), so learning one example costs
``O(d^2)`` rather than ``O(d^3)``. Only calibration scores depend on this; the statistics and every
prediction are exact.

**Young models.** Novelty needs two classes. Until the reservoir holds 20 held-out scores and
the model has seen as many examples as its features are wide, the gate decides by a rule that needs no calibration: an input is unknown when it is farther
from every learned class than the classes typically are from each other (see
:meth:`OpenSetGate.threshold`). With one class the gate answers "not unknown" with ``novelty``
None, and :meth:`OpenSetGate.status` says what is missing.

**Beside a pretrained classifier.** A model that keeps a pretrained classifier asks the gate
which inputs belong to its learned classes (:meth:`OpenSetGate.accepts`); the pretrained
classifier answers the others. While young, that decision uses a bound on the classes' own
spread rather than the young rule above (see there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from perennial.exceptions import InvalidParameterError, ModelMismatchError, NotFittedError
from perennial.heads.statistics import ClassStatistics
from perennial.novelty import (
    DIAG_WEIGHT,
    SCORES,
    cholesky,
    diagonal_gaussians,
    relative_parts,
    shrunk,
    whiten,
)
from perennial.params import check_choice, check_fraction, check_int

__all__ = ["OpenSetGate"]

FloatArray = NDArray[np.float64]
Batch = tuple[FloatArray, NDArray[np.intp]]

_STALE_FRACTION = 8  # a held-out score may use a covariance factored n / 8 examples earlier
YOUNG_SCORES = 20  # held-out scores the reservoir needs before its quantile sets the threshold
# Calibration reads the held-out scores taken once their class had at least this share of the
# examples it has now (see OpenSetGate.recent).
RECENT_FRACTION = 0.5
MATURE_ROWS = 2  # ... and once the statistics had this many rows per feature (or half of now's)
# A model with a pretrained classifier, while the gate is young (see OpenSetGate.accepts): an input
# is one of the learned classes while its squared distance to the nearest class mean is at most
# this many times what a new example of that class is expected to have. On 96-pixel crops of
# skimage's brick, grass and gravel textures learned from 2-10 crops each (any one, two or all
# three of them), 20 held-out crops of each learned texture reached at most 2.9 times the
# expectation (3.2 for one texture learned alone), crops of a texture not learned at least 3.2
# times, and 11 whole photographs at least 4.4 times. benchmarks/bench_pretrained.py measures
# the decision on more crops.
SPREAD_FACTOR = 3.0


@dataclass
class _Factors:
    """Cholesky factors of both shrunk covariances, and the class means whitened by the first.

    The whitened means are cached per class column and keyed by its count: within one
    generation statistics change only by added rows, so a class's mean moves only when its
    count does.
    """

    generation: int
    n: int
    within: FloatArray
    overall: FloatArray
    counts: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    white_means: FloatArray = field(default_factory=lambda: np.zeros((0, 0)))
    white_norms: FloatArray = field(default_factory=lambda: np.zeros(0))

    def whitened(
        self, counts: NDArray[np.int64], sums: FloatArray, committed: bool = True
    ) -> tuple[FloatArray, FloatArray]:
        """Whitened means of every column, and their squared norms (inf for empty classes).

        Only ``committed`` statistics may enter the cache: a plan that is never committed must
        not leave means of rows that were never learned under a count that may come back.
        """
        k, old = len(counts), len(self.counts)
        shared = min(old, k)
        if old == k and np.array_equal(self.counts, counts):
            return self.white_means, self.white_norms
        changed = np.flatnonzero(self.counts[:shared] != counts[:shared])
        redo = np.concatenate([changed, np.arange(shared, k)])
        if old != k or not committed:
            white = np.zeros((k, sums.shape[1]))
            norms = np.full(k, np.inf)
            if shared:
                white[:shared] = self.white_means[:shared]
                norms[:shared] = self.white_norms[:shared]
        else:
            white, norms = self.white_means, self.white_norms  # the cache, updated in place
        known = redo[counts[redo] > 0]
        if len(known):
            rows = whiten(self.within, sums[known] / counts[known][:, None])
            white[known] = rows
            norms[known] = np.einsum("ij,ij->i", rows, rows)
        empty = redo[counts[redo] == 0]
        white[empty], norms[empty] = 0.0, np.inf
        if committed:
            self.counts, self.white_means, self.white_norms = counts.copy(), white, norms
        return white, norms


class _Virtual:
    """The gate's statistics plus rows not yet committed (used while planning a learn).

    It reads the committed arrays until the first row is added, and copies them only then.
    """

    def __init__(self, stats: ClassStatistics, n_new: int) -> None:
        self.base = stats
        self.n_new = n_new
        self.counts = stats.counts
        self.sums = stats.sums
        self.squares = stats.squares
        self.diagonal = stats.moment_diagonal()
        self.n = stats.n
        self.pending: list[FloatArray] = []
        self.copied = False  # whether counts and sums are this object's own
        if n_new:
            self._copy()

    def _copy(self) -> None:
        stats, n_new = self.base, self.n_new
        self.copied = True
        self.counts = np.concatenate([stats.counts, np.zeros(n_new, dtype=np.int64)])
        self.sums = np.vstack([stats.sums, np.zeros((n_new, stats.dim))])
        if stats.squares is not None:
            self.squares = np.vstack([stats.squares, np.zeros((n_new, stats.dim))])

    def add(self, X: FloatArray, columns: NDArray[np.intp]) -> None:
        if len(X) == 0:
            return
        if not self.pending and not self.n_new:
            self._copy()  # the first row: stop reading the committed arrays
        np.add.at(self.counts, columns, 1)
        np.add.at(self.sums, columns, X)
        if self.squares is not None:
            np.add.at(self.squares, columns, X * X)
        self.diagonal = self.diagonal + np.einsum("ij,ij->j", X, X)
        self.n += len(X)
        self.pending.append(X)

    def full_moment(self) -> FloatArray:
        moment = self.base.full_moment()
        for X in self.pending:
            moment += X.T @ X
        return moment


@dataclass
class LearnPlan:
    """What :meth:`OpenSetGate.commit` applies: rows to add and calibration scores to keep."""

    batches: list[Batch]
    n_new: int
    reservoir: tuple[FloatArray, FloatArray | None, NDArray[np.int64], NDArray[np.int64], int]
    factors: _Factors | None


class OpenSetGate:
    """Novelty statistics, calibration and the unknown decision (see the module docstring).

    Parameters
    ----------
    score
        ``"relative"`` (rMD) or ``"combined"`` (rMD plus per-class diagonal Gaussians); see
        :mod:`perennial.novelty`.
    shrinkage
        Weight of the identity in both covariances, in (0, 1]: ``(1 - a) S + a tr(S)/d I``.
    reservoir_size
        Number of held-out in-scope scores kept for calibration.
    seed
        Seed of the reservoir sampling.
    exact_forget
        Keep each class's own second moment (``n_classes * d**2`` floats) so that forgetting a
        class leaves exactly the statistics of a model that never saw it. Without it, a
        forgotten class's examples stay as unlabelled deviations from their class mean (see
        :meth:`perennial.heads.statistics.ClassStatistics.drop`).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = np.vstack([rng.normal(m, 1.0, (40, 4)) for m in (-3, 0, 3)])
    >>> gate = OpenSetGate()
    >>> gate.commit(gate.plan([(X, np.repeat(np.arange(3), 40))], n_new=3))
    >>> near, far = gate.novelty(np.array([[0.1, 0.0, -0.1, 0.2], [0.0, 9.0, -9.0, 0.0]]))
    >>> bool(far > gate.threshold(0.05) > near)
    True
    """

    def __init__(
        self,
        score: str = "relative",
        shrinkage: float = 0.5,
        reservoir_size: int = 4096,
        seed: int = 0,
        exact_forget: bool = False,
    ) -> None:
        self.score = check_choice("score", score, SCORES)
        self.shrinkage = check_fraction("shrinkage", shrinkage, low_open=True, high_open=False)
        self.reservoir_size = check_int("reservoir_size", reservoir_size, minimum=1)
        self.seed = check_int("seed", seed)
        if not isinstance(exact_forget, bool):
            raise InvalidParameterError(f"exact_forget must be a bool, got {exact_forget!r}")
        self.exact_forget = exact_forget
        self.statistics_: ClassStatistics | None = None
        self.scores_: FloatArray = np.zeros(0)  # the reservoir: rMD of held-out examples
        self.diag_scores_: FloatArray | None = np.zeros(0) if self.combined else None
        self.score_classes_: NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        # For each score: its class's count and the statistics' rows when it was taken.
        self.score_context_: NDArray[np.int64] = np.zeros((0, 2), dtype=np.int64)
        self.offered_ = 0  # held-out scores offered to the reservoir so far
        self.threshold_override_: float | None = None
        self._generation = 0  # changes whenever the statistics change other than by adding rows
        self._factors: _Factors | None = None

    def get_params(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "shrinkage": self.shrinkage,
            "reservoir_size": self.reservoir_size,
            "seed": self.seed,
            "exact_forget": self.exact_forget,
        }

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"OpenSetGate({params})"

    @property
    def combined(self) -> bool:
        return self.score == "combined"

    @property
    def dim(self) -> int | None:
        return None if self.statistics_ is None else self.statistics_.dim

    def _new_statistics(self, dim: int) -> ClassStatistics:
        return ClassStatistics(
            dim, second_moment=True, squares=self.combined, class_moments=self.exact_forget
        )

    # --- scoring ---------------------------------------------------------------------------------
    def _factorise(
        self, counts: NDArray[np.int64], sums: FloatArray, n: int, moment: FloatArray
    ) -> _Factors:
        known = counts > 0
        scaled = sums[known] / np.sqrt(counts[known])[:, None]
        within = (moment - scaled.T @ scaled) / n
        total_mean = sums.sum(axis=0) / n
        overall = moment / n - np.outer(total_mean, total_mean)
        return _Factors(
            generation=self._generation,
            n=n,
            within=cholesky(shrunk(within, self.shrinkage)),
            overall=cholesky(shrunk(overall, self.shrinkage)),
        )

    def _current_factors(self) -> _Factors:
        stats = self.statistics_
        assert stats is not None
        factors = self._factors
        if factors is None or factors.generation != self._generation or factors.n != stats.n:
            factors = self._factorise(stats.counts, stats.sums, stats.n, stats.full_moment())
            self._factors = factors
        return factors

    def _terms(
        self,
        X: FloatArray,
        factors: _Factors,
        counts: NDArray[np.int64],
        sums: FloatArray,
        squares: FloatArray | None,
        diagonal: FloatArray,
        n: int,
        committed: bool = True,
    ) -> tuple[FloatArray, FloatArray | None]:
        """rMD and (combined score only) the diagonal term of each row, from these statistics.

        ``committed``: these are statistics the gate holds, or ``factors`` belongs to the plan
        reading them (see :meth:`_Factors.whitened`).
        """
        total_mean = sums.sum(axis=0) / n
        white = factors.whitened(counts, sums, committed)
        nearest, background = relative_parts(X, factors.within, *white, factors.overall, total_mean)
        relative: FloatArray = nearest - background
        if not self.combined:
            return relative, None
        assert squares is not None
        known = counts > 0
        pooled = (diagonal - (sums[known] ** 2 / counts[known][:, None]).sum(axis=0)) / n
        gaussians = diagonal_gaussians(counts[known], sums[known], squares[known], pooled)
        result: FloatArray = gaussians.nll(X) - background
        return relative, result

    def _normalisers(self) -> tuple[float, float, float, float]:
        """Mean and standard deviation of both terms over the reservoir (1 when undefined)."""
        assert self.diag_scores_ is not None
        recent = self.recent()
        out: list[float] = []
        for values in (self.scores_[recent], self.diag_scores_[recent]):
            mean = float(values.mean()) if len(values) else 0.0
            std = float(values.std()) if len(values) >= 2 else 0.0
            out += [mean, std if std > 0.0 and np.isfinite(std) else 1.0]
        return out[0], out[1], out[2], out[3]

    def combine(self, relative: FloatArray, diagonal: FloatArray | None) -> FloatArray:
        """The gate's score from its terms (rMD alone, or both standardised and weighted)."""
        if diagonal is None:
            return relative
        m1, s1, m2, s2 = self._normalisers()
        result: FloatArray = (relative - m1) / s1 + DIAG_WEIGHT * ((diagonal - m2) / s2)
        return result

    def can_score(self) -> bool:
        """Whether novelty is defined: at least two classes learned."""
        stats = self.statistics_
        return stats is not None and int((stats.counts > 0).sum()) >= 2

    def novelty_terms(self, X: FloatArray) -> tuple[FloatArray, FloatArray | None]:
        """rMD and the diagonal term (None for ``score="relative"``) of validated features."""
        if not self.can_score():
            raise NotFittedError("novelty needs at least two learned classes")
        stats = self.statistics_
        assert stats is not None
        return self._terms(
            X,
            self._current_factors(),
            stats.counts,
            stats.sums,
            stats.squares,
            stats.moment_diagonal(),
            stats.n,
        )

    def young(self) -> bool:
        """Whether the gate still decides by the young-model rule (see :meth:`threshold`).

        Young: fewer than ``YOUNG_SCORES`` held-out scores, or fewer examples than features (a
        covariance of fewer rows than its width is mostly shrinkage, and the held-out scores
        drawn while it was so are not yet on the scale of the final model's).
        """
        if self.threshold_override_ is not None:
            return False
        stats = self.statistics_
        few = int(self.recent().sum()) < YOUNG_SCORES
        return few or (stats is not None and stats.n < stats.dim)

    def _young_means(self) -> FloatArray:
        stats = self.statistics_
        assert stats is not None
        known = stats.counts > 0
        means: FloatArray = stats.sums[known] / stats.counts[known][:, None]
        return means

    def young_novelty(self, X: FloatArray) -> FloatArray:
        """Squared Euclidean distance to the nearest class mean."""
        means = self._young_means()
        distances: FloatArray = (
            np.sum(X * X, axis=1)[:, None] - 2.0 * X @ means.T + np.sum(means**2, axis=1)
        ).min(axis=1)
        return np.maximum(distances, 0.0)

    def young_threshold(self) -> float:
        """The median over classes of the squared distance to the nearest other class mean."""
        means = self._young_means()
        squared = np.sum(means**2, axis=1)
        gaps = squared[:, None] - 2.0 * means @ means.T + squared[None, :]
        np.fill_diagonal(gaps, np.inf)
        return float(np.median(gaps.min(axis=1)))

    def novelty(self, X: FloatArray) -> FloatArray:
        """Novelty of each row of validated features (higher: less like anything learned).

        While the gate is young (:meth:`young`), the young-model score; then the gate's score.
        """
        if self.young():
            if not self.can_score():
                raise NotFittedError("novelty needs at least two learned classes")
            return self.young_novelty(X)
        return self.combine(*self.novelty_terms(X))

    # --- the decision -----------------------------------------------------------------------------
    def recent(self) -> NDArray[np.bool_]:
        """Which reservoir scores calibrate: those taken once their class had at least
        ``RECENT_FRACTION`` (half) of the examples it has now.

        A held-out score measures an example against the model of its time. Scored against a
        class of two or three examples (and a covariance of few rows, mostly shrinkage), an
        example scores far higher than it would against the class it later helped to form: on
        BANKING77 learned one example at a time, five per class, the first quarter of the scores
        had a median of 1.3 against -0.9 for the last quarter, and a quantile over all of them
        set a threshold above every out-of-scope query (``benchmarks/bench_young_openset.py
        --dataset banking77``). Per class, so that a class-incremental stream keeps calibrating
        on every class, not only on the latest ones. The reservoir keeps a uniform sample of the
        whole stream; this reads the part that still describes the model.
        """
        stats = self.statistics_
        if stats is None or not len(self.scores_):
            return np.ones(len(self.scores_), dtype=bool)
        count_then, rows_then = self.score_context_[:, 0], self.score_context_[:, 1]
        now = stats.counts[self.score_classes_]
        mature = min(RECENT_FRACTION * stats.n, MATURE_ROWS * stats.dim)
        mask: NDArray[np.bool_] = (count_then >= RECENT_FRACTION * now) & (rows_then >= mature)
        return mask

    def calibration_scores(self) -> FloatArray:
        """The held-out in-scope scores that calibrate (:meth:`recent`), on the gate's scale."""
        recent = self.recent()
        if self.diag_scores_ is not None:
            return self.combine(self.scores_[recent], self.diag_scores_[recent])
        return self.scores_[recent]

    def threshold(self, rejection_rate: float | None) -> float | None:
        """The novelty above which an input is unknown, or None while there is none.

        A threshold set by :meth:`tune` wins. Otherwise, once the reservoir holds
        ``YOUNG_SCORES`` (20) held-out scores and the model has seen as many examples as its
        features are wide, it is their ``1 - rate`` quantile. Before that (a young model) an input
        is unknown when it is farther from every learned class than the classes typically are
        from each other: the threshold is the median over classes of the squared Euclidean
        distance from a class mean to the nearest other class mean (:meth:`young_novelty`); it
        needs two classes. Euclidean, because a covariance of a few examples in many dimensions
        is mostly shrinkage, and whitening by it inflates every direction the examples do not
        span (it rejected every query on CLINC150 in ``benchmarks/bench_young_openset.py``). None
        while no rate is asked for or fewer than two classes are learned.
        """
        if self.threshold_override_ is not None:
            return self.threshold_override_
        if rejection_rate is None or not self.can_score():
            return None
        check_fraction("rejection_rate", rejection_rate)
        if self.young():
            return self.young_threshold()
        return float(np.quantile(self.calibration_scores(), 1.0 - rejection_rate))

    def spread(self) -> float | None:
        """The mean squared distance of a row to its class mean: ``tr(W) / (n - k)``.

        ``W`` is the scatter of every row about its class mean (the rows a default forget left
        unlabelled included), ``k`` the number of classes learned. None while ``n <= k`` (no
        class has two examples).
        """
        stats = self.statistics_
        if stats is None:
            return None
        known = stats.counts > 0
        classes = int(known.sum())
        if stats.n <= classes:
            return None
        between = float((stats.sums[known] ** 2).sum(axis=1) @ (1.0 / stats.counts[known]))
        return max(float(stats.moment_diagonal().sum()) - between, 0.0) / (stats.n - classes)

    def accepts(self, X: FloatArray, rejection_rate: float | None) -> NDArray[np.bool_]:
        """Whether each row of validated features belongs to one of the learned classes.

        The decision of a model with a pretrained classifier, which answers whatever is not
        accepted here. A calibrated gate (two classes or more, not :meth:`young`, or a threshold
        from :meth:`tune`) accepts an input whose novelty is at most :meth:`threshold`. Before
        that (any number of classes), it accepts an input whose squared distance to the nearest
        class mean is at most ``SPREAD_FACTOR`` (3) times what a new example of that class is
        expected to have, ``spread() * (1 + 1/n_c)``: a bound on the class's own scale, where
        the young rule's class-to-class distance (:meth:`threshold`) takes in everything between
        classes far apart. Nothing is accepted while no class has two examples.
        """
        n = len(X)
        stats = self.statistics_
        if stats is None or not (stats.counts > 0).any():
            return np.zeros(n, dtype=bool)
        if self.can_score() and not self.young():
            threshold = self.threshold(rejection_rate)
            if threshold is None:
                return np.ones(n, dtype=bool)
            inside: NDArray[np.bool_] = self.novelty(X) <= threshold
            return inside
        spread = self.spread()
        if spread is None:
            return np.zeros(n, dtype=bool)
        known = stats.counts > 0
        counts = stats.counts[known]
        means = self._young_means()
        distances = np.sum(X * X, axis=1)[:, None] - 2.0 * X @ means.T + np.sum(means**2, axis=1)
        nearest = np.argmin(distances, axis=1)
        bound = SPREAD_FACTOR * spread * (1.0 + 1.0 / counts[nearest])
        near: NDArray[np.bool_] = distances[np.arange(n), nearest] <= bound
        return near

    def status(self) -> str:
        """``"on"``, ``"on (young model): ..."``, or ``"calibrating: ..."`` saying what is missing."""
        if not self.can_score():
            return "calibrating: novelty needs two learned classes"
        if self.young():
            return (
                f"on (young model): fewer than {YOUNG_SCORES} held-out scores or fewer examples "
                "than features, so an input is unknown when it is farther from every class than "
                "the classes are from each other"
            )
        return "on"

    def tune(self, outside: FloatArray, inside: FloatArray | None = None) -> float:
        """Set the threshold from out-of-scope features (and in-scope ones); returns it.

        Chooses the threshold that maximises the mean of the out-of-scope recall and the
        in-scope acceptance rate; ``inside`` defaults to the reservoir's scores.
        """
        out_scores = self.combine(*self.novelty_terms(outside))
        in_scores = (
            self.calibration_scores()
            if inside is None
            else self.combine(*self.novelty_terms(inside))
        )
        if len(in_scores) == 0:
            raise NotFittedError("no in-scope scores to tune against; pass in-scope examples")
        candidates = np.unique(np.concatenate([in_scores, out_scores]))
        recall = 1.0 - np.searchsorted(np.sort(out_scores), candidates, side="right") / len(
            out_scores
        )
        accept = np.searchsorted(np.sort(in_scores), candidates, side="right") / len(in_scores)
        self.threshold_override_ = float(candidates[int(np.argmax(recall + accept))])
        return self.threshold_override_

    # --- learning --------------------------------------------------------------------------------
    def _stale_rows(self, n: int, dim: int) -> int:
        """How many examples a held-out score's covariance factor may lag behind."""
        floor = min(64, max(1, int(4 * (dim / 512) ** 3)))
        return max(floor, n // _STALE_FRACTION)

    def plan(self, batches: list[Batch], n_new: int) -> LearnPlan:
        """Score the held-out examples of ``batches`` (in order) without changing anything.

        Each batch is ``(features, columns)``, validated, with columns numbered like the head's
        (``n_new`` new columns after the existing ones, across all batches).
        """
        dim = batches[0][0].shape[1]
        stats = self.statistics_ if self.statistics_ is not None else self._new_statistics(dim)
        virtual = _Virtual(stats, n_new)
        factors = self._factors
        scores, classes, context = self.scores_, self.score_classes_, self.score_context_
        diag = self.diag_scores_
        offered = self.offered_
        size = int(self.reservoir_size)
        for index, (X, columns) in enumerate(batches):
            held_out = np.zeros(len(X), dtype=bool)
            for column in np.unique(columns):
                rows = np.flatnonzero(columns == column)
                if virtual.counts[column] >= 2:
                    held_out[rows] = True
                elif len(rows) >= 2:
                    held_out[rows[(len(rows) + 1) // 2 :]] = True
            virtual.add(X[~held_out], columns[~held_out])
            scored = np.flatnonzero(held_out)
            if len(scored) and int((virtual.counts > 0).sum()) >= 2:
                # Reservoir sampling (Vitter's algorithm R) decides first, so only the rows it
                # keeps are scored.
                rng: np.random.Generator | None = None  # made only once the reservoir is full
                filled = len(scores)
                slots = np.full(len(scored), -1)
                for row in range(len(scored)):
                    offered += 1
                    if filled < size:
                        slots[row] = filled
                        filled += 1
                    else:
                        if rng is None:
                            rng = np.random.default_rng([int(self.seed), offered - row - 1])
                        j = int(rng.integers(offered))
                        if j < size:
                            slots[row] = j
                chosen = np.flatnonzero(slots >= 0)
                if len(chosen):
                    if (
                        factors is None
                        or factors.generation != self._generation
                        or virtual.n - factors.n > self._stale_rows(factors.n, dim)
                    ):
                        factors = self._factorise(
                            virtual.counts, virtual.sums, virtual.n, virtual.full_moment()
                        )
                    relative, diagonal = self._terms(
                        X[scored[chosen]],
                        factors,
                        virtual.counts,
                        virtual.sums,
                        virtual.squares,
                        virtual.diagonal,
                        virtual.n,
                        committed=factors is not self._factors or not virtual.copied,
                    )
                    grow = filled - len(scores)
                    scores = np.concatenate([scores, np.zeros(grow)])
                    classes = np.concatenate([classes, np.zeros(grow, dtype=np.int64)])
                    context = np.concatenate([context, np.zeros((grow, 2), dtype=np.int64)])
                    if diag is not None:
                        diag = np.concatenate([diag, np.zeros(grow)])
                    # In order: a later row overwrites an earlier one in the same slot.
                    for k, pick in enumerate(chosen):
                        slot = int(slots[pick])
                        scores[slot] = relative[k]
                        classes[slot] = columns[scored[pick]]
                        context[slot] = (virtual.counts[columns[scored[pick]]], virtual.n)
                        if diag is not None and diagonal is not None:
                            diag[slot] = diagonal[k]
            if index + 1 < len(batches):  # only a later batch reads what this one adds
                virtual.add(X[held_out], columns[held_out])
        reservoir = (scores, diag, classes, context, offered)
        return LearnPlan(batches, n_new, reservoir, factors)

    def commit(self, plan: LearnPlan) -> None:
        """Apply a :meth:`plan` made against the current state (nothing here can fail)."""
        X = (
            plan.batches[0][0]
            if len(plan.batches) == 1
            else np.vstack([x for x, _ in plan.batches])
        )
        columns = np.concatenate([c for _, c in plan.batches])
        if self.statistics_ is None:
            self.statistics_ = self._new_statistics(X.shape[1])
        self.statistics_.add(X, columns, plan.n_new)
        (
            self.scores_,
            self.diag_scores_,
            self.score_classes_,
            self.score_context_,
            self.offered_,
        ) = plan.reservoir
        self._factors = plan.factors

    # --- removing and combining -------------------------------------------------------------------
    def _keep_scores(self, keep: NDArray[np.bool_], renumber: NDArray[np.int64]) -> None:
        self.scores_ = self.scores_[keep]
        if self.diag_scores_ is not None:
            self.diag_scores_ = self.diag_scores_[keep]
        self.score_classes_ = renumber[self.score_classes_[keep]]
        self.score_context_ = self.score_context_[keep]

    def forget(self, index: int) -> None:
        """Drop class ``index`` (a head column) and its calibration scores."""
        stats = self.statistics_
        if stats is None:
            return
        k = stats.n_classes
        stats.drop(index)
        renumber = np.arange(k, dtype=np.int64) - (np.arange(k) > index)
        self._keep_scores(self.score_classes_ != index, renumber)
        self._generation += 1

    def check_unlearn(self, X: FloatArray, columns: NDArray[np.intp], names: list[Any]) -> None:
        """Refuse examples whose :meth:`unlearn` would leave impossible statistics.

        The within-class covariance left must be positive semi-definite, and with per-class
        squares (or moments) no class may be left with a negative variance: see
        :func:`~perennial.heads.statistics.check_subtraction`. ``names`` labels the columns in
        messages. Changes nothing.
        """
        if self.statistics_ is not None:
            self.statistics_.check_subtract(X, columns, names)

    def unlearn(self, X: FloatArray, columns: NDArray[np.intp], kept: NDArray[np.intp]) -> None:
        """Subtract validated examples; classes left out of ``kept`` go with their scores.

        Scores of the remaining classes stay (the examples behind them cannot be identified).
        """
        stats = self.statistics_
        assert stats is not None
        k = stats.n_classes
        stats.subtract(X, columns, kept)
        renumber = np.full(k, -1, dtype=np.int64)
        renumber[kept] = np.arange(len(kept))
        self._keep_scores(renumber[self.score_classes_] >= 0, renumber)
        self._generation += 1

    def check_mergeable(self, other: OpenSetGate) -> None:
        if other.get_params() != self.get_params():
            raise ModelMismatchError(
                f"cannot merge open-set gates with different parameters: {self!r} here, "
                f"{other!r} in the other"
            )
        if self.dim is not None and other.dim is not None and other.dim != self.dim:
            raise ModelMismatchError(
                f"cannot merge open-set statistics of {other.dim} features into {self.dim}"
            )

    def merge(self, other: OpenSetGate, columns: NDArray[np.intp], n_new: int) -> None:
        """Add ``other``'s statistics (its class ``j`` is column ``columns[j]``); pool reservoirs.

        Each side keeps a share of the pooled reservoir in proportion to the scores it was
        offered; both terms of an entry stay together.
        """
        self.check_mergeable(other)
        if other.statistics_ is None:
            return
        if self.statistics_ is None:
            self.statistics_ = self._new_statistics(other.statistics_.dim)
        self.statistics_.merge(other.statistics_, columns, n_new)
        scores = np.concatenate([self.scores_, other.scores_])
        diag = (
            None
            if self.diag_scores_ is None or other.diag_scores_ is None
            else np.concatenate([self.diag_scores_, other.diag_scores_])
        )
        classes = np.concatenate([self.score_classes_, columns[other.score_classes_]])
        # Each side's scores keep their place in its class's own stream, stretched to the merged
        # class, so the later half of each stays the later half (see recent()).
        merged, n_merged = self.statistics_.counts, self.statistics_.n
        mine = merged.copy()
        mine[columns] -= other.statistics_.counts
        context = np.concatenate(
            [
                _stretch(
                    self.score_context_,
                    mine[self.score_classes_],
                    merged[self.score_classes_],
                    n_merged - other.statistics_.n,
                    n_merged,
                ),
                _stretch(
                    other.score_context_,
                    other.statistics_.counts[other.score_classes_],
                    merged[columns[other.score_classes_]],
                    other.statistics_.n,
                    n_merged,
                ),
            ]
        )
        if len(scores) > self.reservoir_size:
            weights = np.concatenate(
                [
                    np.full(len(self.scores_), self.offered_ / max(len(self.scores_), 1)),
                    np.full(len(other.scores_), other.offered_ / max(len(other.scores_), 1)),
                ]
            )
            rng = np.random.default_rng([int(self.seed), self.offered_, other.offered_])
            keep = rng.choice(
                len(scores), self.reservoir_size, replace=False, p=weights / weights.sum()
            )
            scores, classes, context = scores[keep], classes[keep], context[keep]
            diag = None if diag is None else diag[keep]
        self.scores_, self.diag_scores_, self.score_classes_ = scores, diag, classes
        self.score_context_ = context
        self.offered_ += other.offered_
        self._generation += 1

    # --- persistence -----------------------------------------------------------------------------
    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        stats = self.statistics_
        meta: dict[str, Any] = {
            "params": self.get_params(),
            "dim": None if stats is None else stats.dim,
            "n": 0 if stats is None else stats.n,
            "offered": self.offered_,
            "threshold_override": self.threshold_override_,
        }
        arrays: dict[str, np.ndarray] = {} if stats is None else stats.state_arrays()
        arrays["scores"] = self.scores_
        arrays["score_classes"] = self.score_classes_
        arrays["score_context"] = self.score_context_
        if self.diag_scores_ is not None:
            arrays["diag_scores"] = self.diag_scores_
        return meta, arrays

    @classmethod
    def from_state(
        cls, meta: dict[str, Any], arrays: dict[str, np.ndarray], n_classes: int
    ) -> OpenSetGate:
        """A gate from :meth:`get_state` output for a head with ``n_classes`` classes."""
        try:
            gate = cls(**dict(meta["params"]))
            dim = None if meta["dim"] is None else int(meta["dim"])
            n = int(meta["n"])
            offered = int(meta["offered"])
            override = meta.get("threshold_override")
        except (KeyError, TypeError, ValueError) as error:
            raise ModelMismatchError(f"the open-set record is incomplete: {error}") from error
        expected: dict[str, tuple[int, ...]] = {}
        if dim is not None:
            expected = gate._new_statistics(dim).expected_shapes(n_classes)
        scores = arrays.get("scores")
        if scores is None or scores.ndim != 1:
            raise ModelMismatchError("the open-set state lacks its calibration scores")
        expected["scores"] = scores.shape
        expected["score_classes"] = scores.shape
        if "score_context" in arrays:  # saved since the calibration reads recent scores only
            expected["score_context"] = (len(scores), 2)
        if gate.combined:
            expected["diag_scores"] = scores.shape
        found = {name: tuple(array.shape) for name, array in arrays.items()}
        if found != expected:
            raise ModelMismatchError(
                f"the open-set state for {n_classes} classes needs arrays {expected}, got {found}"
            )
        classes = arrays["score_classes"].astype(np.int64)
        if len(classes) and (classes.min() < 0 or classes.max() >= n_classes):
            raise ModelMismatchError(
                "the open-set calibration scores name classes that do not exist"
            )
        if dim is not None:
            gate.statistics_ = gate._new_statistics(dim)
            gate.statistics_.load_arrays(arrays, n=n)
        gate.scores_ = arrays["scores"].astype(np.float64)
        gate.score_classes_ = classes
        # A save from before score_context existed: every score counts as recent (as it did then).
        gate.score_context_ = (
            arrays["score_context"].astype(np.int64)
            if "score_context" in arrays
            else _all_recent(gate.statistics_, classes)
        )
        gate.diag_scores_ = arrays["diag_scores"].astype(np.float64) if gate.combined else None
        gate.offered_ = offered
        gate.threshold_override_ = None if override is None else float(override)
        return gate

    @classmethod
    def from_detector_state(
        cls,
        meta: dict[str, Any],
        arrays: dict[str, np.ndarray],
        head_classes: list[Any],
        head_seen: int,
        threshold_override: float | None,
    ) -> OpenSetGate | None:
        """Convert the novelty detector state of a model saved before the gate existed.

        The detector kept its own labels; its rows are put in the head's column order. A detector
        whose labels or example count are not the head's (that version then switched novelty
        off, for example after a forget) gives None: that model has no usable open-set
        statistics.
        """
        try:
            params = dict(meta["params"])
            labels = list(meta["labels"])
            offered = int(meta["offered"])
            counts, sums = arrays["counts"], arrays["sums"]
            moment = arrays["second_moment"]
            scores, score_classes = arrays["scores"], arrays["score_classes"]
        except (KeyError, TypeError, ValueError) as error:
            raise ModelMismatchError(f"the novelty record is incomplete: {error}") from error
        squares, diagonal = arrays.get("sq_sums"), arrays.get("diag_scores")
        combined = (
            params.get("score") == "combined" and squares is not None and diagonal is not None
        )
        gate = cls(
            score="combined" if combined else "relative",
            shrinkage=params.get("shrinkage", 0.5),
            reservoir_size=params.get("reservoir_size", 4096),
            seed=params.get("seed", 0),
        )
        gate.threshold_override_ = threshold_override
        if sorted(map(repr, labels)) != sorted(map(repr, head_classes)):
            return None
        if not labels:
            return gate
        if int(np.sum(counts)) != head_seen:
            return None
        k, d = sums.shape if sums.ndim == 2 else (-1, -1)
        if counts.shape != (len(labels),) or k != len(labels) or moment.shape != (d, d):
            raise ModelMismatchError("novelty statistics have inconsistent shapes")
        order = np.array([labels.index(label) for label in head_classes], dtype=np.intp)
        renumber = np.empty(len(labels), dtype=np.int64)
        renumber[order] = np.arange(len(labels))
        stats = gate._new_statistics(d)
        stats.counts = counts.astype(np.int64)[order]
        stats.sums = sums.astype(np.float64)[order]
        stats.moment = np.array(moment, dtype=np.float64, order="F")
        if combined and squares is not None:
            stats.squares = squares.astype(np.float64)[order]
        stats.n = int(stats.counts.sum())
        gate.statistics_ = stats
        gate.scores_ = scores.astype(np.float64)
        gate.score_classes_ = renumber[score_classes.astype(np.int64)]
        gate.score_context_ = _all_recent(stats, gate.score_classes_)  # as they were then
        gate.diag_scores_ = (
            diagonal.astype(np.float64) if combined and diagonal is not None else None
        )
        gate.offered_ = offered
        return gate


def _stretch(
    context: NDArray[np.int64],
    own: NDArray[np.int64],
    merged: NDArray[np.int64],
    own_rows: int,
    merged_rows: int,
) -> NDArray[np.int64]:
    """Score contexts of one model (class counts ``own`` now, ``own_rows`` rows), scaled to
    the merged classes and rows."""
    out = np.empty_like(context)
    out[:, 0] = np.floor(context[:, 0] * (merged / np.maximum(own, 1)))
    out[:, 1] = np.floor(context[:, 1] * (merged_rows / max(own_rows, 1)))
    return out


def _all_recent(stats: ClassStatistics | None, classes: NDArray[np.int64]) -> NDArray[np.int64]:
    """Contexts that make every score recent (for states saved before contexts were kept)."""
    if stats is None:
        return np.zeros((len(classes), 2), dtype=np.int64)
    return np.stack([stats.counts[classes], np.full(len(classes), stats.n)], axis=1)
