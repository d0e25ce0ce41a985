"""Open-set recognition: how unlike everything learned an input is, and when to say "unknown".

:class:`NoveltyDetector` keeps additive statistics of the encoder features (per-class counts and
sums, and the total second moment) and scores an input by its *relative Mahalanobis distance*
(Ren et al. 2021, "A Simple Fix to Mahalanobis Distance for Improving Near-OOD Detection",
arXiv:2106.09022): the squared distance to the nearest class mean under the shared within-class
covariance, minus the squared distance to the mean of all data under the covariance of all data.
Both covariances are shrunk towards a multiple of the identity. The second term cancels what
makes an input far from everything in a direction all the data shares, which matters for
near-out-of-scope queries.

The threshold is calibrated without out-of-scope examples and without kept data. While learning,
some examples are scored *before* they are learned: in a batch, examples of a class with at least
two learned examples are scored first. For a class the batch brings new, half its examples are
learned, the other half scored, then learned. These held-out in-scope scores (numbers, never
inputs) go into a fixed-size reservoir sample. The threshold for a target in-scope rejection rate
``r`` is the ``1 - r`` quantile of the reservoir. Because the scores come from the stream itself
as classes arrive, the threshold follows the model as classes are added.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.linalg
from numpy.typing import NDArray

from perennial.exceptions import (
    InvalidInputError,
    InvalidParameterError,
    ModelMismatchError,
    NotFittedError,
    UnknownLabelError,
)
from perennial.heads.base import FloatArray, Label, check_features, check_labels

__all__ = ["NoveltyDetector"]


class NoveltyDetector:
    """Relative Mahalanobis novelty on encoder features, with a threshold from the stream.

    Parameters
    ----------
    shrinkage
        Weight of the identity in both covariances, in (0, 1]: ``(1 - a) S + a tr(S)/d I``.
    reservoir_size
        Number of held-out in-scope scores kept for calibration.
    seed
        Seed of the reservoir sampling.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = np.vstack([rng.normal(m, 1.0, (40, 4)) for m in (-3, 0, 3)])
    >>> detector = NoveltyDetector()
    >>> detector.learn_many(X, ["a"] * 40 + ["b"] * 40 + ["c"] * 40)
    >>> near, far = detector.score([[0.1, 0.0, -0.1, 0.2], [0.0, 9.0, -9.0, 0.0]])
    >>> bool(far > detector.threshold(0.05) > near)
    True
    """

    def __init__(self, shrinkage: float = 0.5, reservoir_size: int = 4096, seed: int = 0) -> None:
        self.shrinkage = shrinkage
        self.reservoir_size = reservoir_size
        self.seed = seed
        self._check_params()
        self._reset()

    def _check_params(self) -> None:
        a = self.shrinkage
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.0 < a <= 1.0:
            raise InvalidParameterError(f"shrinkage must be in (0, 1], got {a!r}")
        size = self.reservoir_size
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise InvalidParameterError(f"reservoir_size must be a positive int, got {size!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise InvalidParameterError(f"seed must be an int, got {self.seed!r}")

    def _reset(self) -> None:
        self.labels_: list[Label] = []
        self.counts_: NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self.sums_: FloatArray = np.zeros((0, 0))
        self.second_moment_: FloatArray = np.zeros((0, 0))
        self.scores_: FloatArray = np.zeros(0)  # the calibration reservoir
        self.score_classes_: NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self.offered_ = 0  # held-out scores offered to the reservoir so far
        self._prepared: tuple[Any, ...] | None = None

    def get_params(self) -> dict[str, Any]:
        return {
            "shrinkage": self.shrinkage,
            "reservoir_size": self.reservoir_size,
            "seed": self.seed,
        }

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"NoveltyDetector({params})"

    @property
    def dim(self) -> int | None:
        return None if self.sums_.shape[1] == 0 else int(self.sums_.shape[1])

    @property
    def n_seen(self) -> int:
        return int(self.counts_.sum())

    # --- statistics ---------------------------------------------------------------------------
    def _prepare(self) -> tuple[Any, ...]:
        """Cholesky factors of both shrunk covariances and the whitened means (cached)."""
        if self._prepared is not None:
            return self._prepared
        known = self.counts_ > 0
        if known.sum() < 2:
            raise NotFittedError("novelty scores need at least two learned classes")
        n = float(self.counts_.sum())
        counts = self.counts_[known].astype(np.float64)
        sums = self.sums_[known]
        means = sums / counts[:, None]
        total_mean = sums.sum(axis=0) / n
        within = (self.second_moment_ - (sums.T / counts) @ sums) / n
        overall = self.second_moment_ / n - np.outer(total_mean, total_mean)
        factors = [scipy.linalg.cho_factor(self._shrunk(S), lower=True) for S in (within, overall)]
        white_means = scipy.linalg.solve_triangular(factors[0][0], means.T, lower=True).T
        self._prepared = (factors, white_means, total_mean)
        return self._prepared

    def _shrunk(self, S: FloatArray) -> FloatArray:
        d = S.shape[0]
        scale = max(float(np.trace(S)) / d, 1e-12)
        out: FloatArray = (1.0 - self.shrinkage) * S
        out[np.diag_indices(d)] += self.shrinkage * scale
        return out

    def _score(self, X: FloatArray) -> FloatArray:
        factors, white_means, total_mean = self._prepare()
        Z = scipy.linalg.solve_triangular(factors[0][0], X.T, lower=True).T
        nearest = (
            np.sum(Z * Z, axis=1)[:, None]
            - 2.0 * Z @ white_means.T
            + np.sum(white_means**2, axis=1)
        ).min(axis=1)
        R = scipy.linalg.solve_triangular(factors[1][0], (X - total_mean).T, lower=True).T
        result: FloatArray = nearest - np.sum(R * R, axis=1)
        return result

    def score(self, X: Any) -> FloatArray:
        """Novelty of each row of ``X``: higher means less like anything learned."""
        return self._score(check_features(X, self.dim))

    # --- calibration ----------------------------------------------------------------------------
    def threshold(self, rejection_rate: float) -> float:
        """The novelty above which an input is unknown, for a target in-scope rejection rate."""
        if (
            isinstance(rejection_rate, bool)
            or not isinstance(rejection_rate, (int, float))
            or not 0.0 < rejection_rate < 1.0
        ):
            raise InvalidParameterError(
                f"rejection_rate must be strictly between 0 and 1, got {rejection_rate!r}"
            )
        if len(self.scores_) == 0:
            raise NotFittedError(
                "no calibration scores yet: the detector needs two classes and at least one "
                "example of a class that already had examples"
            )
        return float(np.quantile(self.scores_, 1.0 - rejection_rate))

    # --- learning -------------------------------------------------------------------------------
    def learn_many(self, X: Any, y: Any) -> None:
        """Learn a batch; score the examples held out for calibration first. Atomic."""
        X = check_features(X, self.dim)
        labels = check_labels(y, len(X))
        before = self._snapshot()
        try:
            self._learn(X, labels)
        except BaseException:
            self._restore(before)
            raise

    def _learn(self, X: FloatArray, labels: list[Label]) -> None:
        if self.dim is None:
            d = X.shape[1]
            self.sums_ = np.zeros((0, d))
            self.second_moment_ = np.zeros((d, d))
        index = {label: i for i, label in enumerate(self.labels_)}
        held_out = np.zeros(len(X), dtype=bool)
        by_label: dict[Label, list[int]] = {}
        for row, label in enumerate(labels):
            by_label.setdefault(label, []).append(row)
        for label, rows in by_label.items():
            prior = int(self.counts_[index[label]]) if label in index else 0
            if prior >= 2:
                held_out[rows] = True
            elif len(rows) >= 2:
                held_out[rows[(len(rows) + 1) // 2 :]] = True
        self._add(X[~held_out], [lab for lab, h in zip(labels, held_out, strict=True) if not h])
        scored = np.flatnonzero(held_out)
        if len(scored) and int((self.counts_ > 0).sum()) >= 2:
            self._offer(X[scored], [labels[i] for i in scored])
        self._add(X[held_out], [lab for lab, h in zip(labels, held_out, strict=True) if h])

    def _add(self, X: FloatArray, labels: Sequence[Label]) -> None:
        if len(X) == 0:
            return
        for label in dict.fromkeys(labels):
            if label not in self.labels_:
                self.labels_.append(label)
        index = {label: i for i, label in enumerate(self.labels_)}
        k = len(self.labels_)
        if len(self.counts_) < k:
            grow = k - len(self.counts_)
            self.counts_ = np.concatenate([self.counts_, np.zeros(grow, dtype=np.int64)])
            self.sums_ = np.vstack([self.sums_, np.zeros((grow, self.sums_.shape[1]))])
        columns = np.array([index[label] for label in labels])
        self.counts_ = self.counts_ + np.bincount(columns, minlength=k)
        one_hot = np.zeros((len(X), k))
        one_hot[np.arange(len(X)), columns] = 1.0
        self.sums_ = self.sums_ + one_hot.T @ X
        self.second_moment_ = self.second_moment_ + X.T @ X
        self._prepared = None

    def _offer(self, X: FloatArray, labels: Sequence[Label]) -> None:
        """Reservoir sampling (Vitter's algorithm R) of held-out scores; only chosen rows are scored."""
        size = int(self.reservoir_size)
        rng = np.random.default_rng([int(self.seed), self.offered_])
        filled = len(self.scores_)
        slots = np.full(len(X), -1)
        for row in range(len(X)):
            self.offered_ += 1
            if filled < size:
                slots[row] = filled
                filled += 1
            else:
                j = int(rng.integers(self.offered_))
                if j < size:
                    slots[row] = j
        chosen = np.flatnonzero(slots >= 0)
        if len(chosen) == 0:
            return
        values = self._score(X[chosen])
        index = {label: i for i, label in enumerate(self.labels_)}
        scores = np.concatenate([self.scores_, np.zeros(filled - len(self.scores_))])
        classes = np.concatenate(
            [self.score_classes_, np.zeros(filled - len(self.scores_), dtype=np.int64)]
        )
        for value, picked in zip(values, chosen, strict=True):  # later rows overwrite earlier ones
            scores[slots[picked]] = float(value)
            classes[slots[picked]] = index[labels[int(picked)]]
        self.scores_, self.score_classes_ = scores, classes

    def _snapshot(self) -> dict[str, Any]:
        return {
            "labels_": list(self.labels_),
            "counts_": self.counts_.copy(),
            "sums_": self.sums_.copy(),
            "second_moment_": self.second_moment_.copy(),
            "scores_": self.scores_.copy(),
            "score_classes_": self.score_classes_.copy(),
            "offered_": self.offered_,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)
        self._prepared = None

    # --- removing and combining -------------------------------------------------------------------
    def forget(self, label: Any) -> None:
        """Drop a class's mean, count and calibration scores.

        Its within-class scatter stays in the second moment, as in the ridge head's default
        ``forget``; :meth:`unlearn_many` with the class's examples removes it exactly.
        """
        if label not in self.labels_:
            raise UnknownLabelError(f"unknown label {label!r}")
        i = self.labels_.index(label)
        keep = self.score_classes_ != i
        self.scores_ = self.scores_[keep]
        self.score_classes_ = self.score_classes_[keep] - (self.score_classes_[keep] > i)
        self.labels_.pop(i)
        self.counts_ = np.delete(self.counts_, i)
        self.sums_ = np.delete(self.sums_, i, axis=0)
        self._prepared = None

    def unlearn_many(self, X: Any, y: Any) -> None:
        """Subtract examples from the statistics exactly (the calibration reservoir keeps its scores)."""
        X = check_features(X, self.dim)
        labels = check_labels(y, len(X))
        index = {label: i for i, label in enumerate(self.labels_)}
        unknown = [label for label in labels if label not in index]
        if unknown:
            raise UnknownLabelError(f"cannot unlearn examples of unknown label {unknown[0]!r}")
        columns = np.array([index[label] for label in labels])
        removed = np.bincount(columns, minlength=len(self.labels_))
        if (removed > self.counts_).any():
            c = int(np.argmax(removed > self.counts_))
            raise InvalidInputError(
                f"cannot unlearn {removed[c]} examples of {self.labels_[c]!r}, which has counted "
                f"{self.counts_[c]}"
            )
        self.counts_ = self.counts_ - removed
        sums = self.sums_.copy()
        np.subtract.at(sums, columns, X)
        self.sums_ = sums
        self.second_moment_ = self.second_moment_ - X.T @ X
        for label in [lab for lab, n in zip(self.labels_, self.counts_, strict=True) if n == 0]:
            i = self.labels_.index(label)
            keep = self.score_classes_ != i
            self.scores_ = self.scores_[keep]
            self.score_classes_ = self.score_classes_[keep] - (self.score_classes_[keep] > i)
            self.labels_.pop(i)
            self.counts_ = np.delete(self.counts_, i)
            self.sums_ = np.delete(self.sums_, i, axis=0)
        self._prepared = None

    def merge(self, other: NoveltyDetector) -> None:
        """Add the statistics of a detector with the same parameters; pool the reservoirs."""
        if not isinstance(other, NoveltyDetector) or other.get_params() != self.get_params():
            raise ModelMismatchError(f"cannot merge {other!r} into {self!r}: parameters differ")
        if other.dim is None:
            return
        if self.dim is not None and other.dim != self.dim:
            raise ModelMismatchError(f"cannot merge features of width {other.dim} into {self.dim}")
        if self.dim is None:
            self._restore(other._snapshot())
            return
        for label in other.labels_:
            if label not in self.labels_:
                self.labels_.append(label)
        k = len(self.labels_)
        counts = np.zeros(k, dtype=np.int64)
        sums = np.zeros((k, self.dim))
        counts[: len(self.counts_)] = self.counts_
        sums[: len(self.counts_)] = self.sums_
        mine = np.array([self.labels_.index(label) for label in other.labels_], dtype=np.int64)
        counts[mine] += other.counts_
        sums[mine] += other.sums_
        pooled_scores = np.concatenate([self.scores_, other.scores_])
        pooled_classes = np.concatenate([self.score_classes_, mine[other.score_classes_]])
        if len(pooled_scores) > self.reservoir_size:
            # Keep each side's share of the pool in proportion to the scores it was offered.
            weights = np.concatenate(
                [
                    np.full(len(self.scores_), self.offered_ / max(len(self.scores_), 1)),
                    np.full(len(other.scores_), other.offered_ / max(len(other.scores_), 1)),
                ]
            )
            rng = np.random.default_rng([int(self.seed), self.offered_, other.offered_])
            keep = rng.choice(
                len(pooled_scores), self.reservoir_size, replace=False, p=weights / weights.sum()
            )
            pooled_scores, pooled_classes = pooled_scores[keep], pooled_classes[keep]
        self.counts_, self.sums_ = counts, sums
        self.second_moment_ = self.second_moment_ + other.second_moment_
        self.scores_, self.score_classes_ = pooled_scores, pooled_classes
        self.offered_ += other.offered_
        self._prepared = None

    # --- persistence ----------------------------------------------------------------------------
    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta = {"params": self.get_params(), "labels": list(self.labels_), "offered": self.offered_}
        arrays = {
            "counts": self.counts_,
            "sums": self.sums_,
            "second_moment": self.second_moment_,
            "scores": self.scores_,
            "score_classes": self.score_classes_,
        }
        return meta, arrays

    def set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        labels = list(meta["labels"])
        k = len(labels)
        counts, sums = arrays["counts"], arrays["sums"]
        moment, scores, classes = arrays["second_moment"], arrays["scores"], arrays["score_classes"]
        d = sums.shape[1] if sums.ndim == 2 else -1
        if (
            counts.shape != (k,)
            or sums.shape != (k, d)
            or moment.shape != (max(d, 0), max(d, 0))
            or scores.ndim != 1
            or classes.shape != scores.shape
            or (len(classes) and (classes.min() < 0 or classes.max() >= k))
        ):
            raise ModelMismatchError("novelty statistics have inconsistent shapes")
        self.labels_ = labels
        self.counts_ = counts.astype(np.int64)
        self.sums_ = sums.astype(np.float64)
        self.second_moment_ = moment.astype(np.float64)
        self.scores_ = scores.astype(np.float64)
        self.score_classes_ = classes.astype(np.int64)
        self.offered_ = int(meta["offered"])
        self._prepared = None
