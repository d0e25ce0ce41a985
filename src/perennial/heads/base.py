"""What every head shares: label bookkeeping, feature validation, parameters and state transfer.

A head is a small numpy-only learner on encoded features. Its learned state is a set of additive
statistics (counts, sums, sums of outer products); predictions are a pure function of them. Heads
know nothing of text, images or torch.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from perennial.exceptions import (
    EmptyInputError,
    FeatureDimensionError,
    InputTypeError,
    InvalidInputError,
    LabelLengthError,
    ModelMismatchError,
    NonFiniteInputError,
    NotFittedError,
    PerennialError,
    UnknownLabelError,
)

__all__ = ["Head", "Label", "check_features", "check_labels"]

Label = str | int
FloatArray = NDArray[np.float64]
H = TypeVar("H", bound="Head")


def check_features(X: Any, dim: int | None = None, *, name: str = "features") -> FloatArray:
    """Return ``X`` as a finite 2-D float64 array, or raise a typed error naming the problem.

    Examples
    --------
    >>> check_features([[1, 2], [3, 4]]).shape
    (2, 2)
    """
    if isinstance(X, (str, bytes)):
        raise InputTypeError(
            f"expected numeric {name} (an array of shape (n, d)), got {type(X).__name__}"
        )
    try:
        array = np.asarray(X)
    except (TypeError, ValueError) as error:
        raise InputTypeError(f"expected numeric {name} of shape (n, d), got {error}") from error
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.bool_)
    ):
        raise InputTypeError(f"expected numeric {name}, got an array of dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.complexfloating):
        raise InputTypeError(f"expected real {name}, got an array of dtype {array.dtype}")
    if array.ndim != 2:
        raise InvalidInputError(
            f"expected {name} of shape (n, d), got an array of shape {array.shape}"
        )
    if array.shape[0] == 0:
        raise EmptyInputError(f"expected at least one row of {name}, got an empty batch")
    if array.shape[1] == 0:
        raise InvalidInputError(
            f"expected {name} with at least one column, got shape {array.shape}"
        )
    array = array.astype(np.float64, copy=False)
    if not np.isfinite(array).all():
        row, col = np.argwhere(~np.isfinite(array))[0]
        raise NonFiniteInputError(
            f"{name} contain a non-finite value ({array[row, col]}) at row {row}, column {col}"
        )
    if dim is not None and array.shape[1] != dim:
        raise FeatureDimensionError(f"expected {dim} {name} per example, got {array.shape[1]}")
    return array


def _normalize_label(label: Any) -> Label:
    if isinstance(label, np.generic):
        label = label.item()
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise InputTypeError(
            f"labels must be str or int, got {label!r} of type {type(label).__name__}"
        )
    if isinstance(label, str) and not label:
        raise InvalidInputError("labels must be non-empty strings, got ''")
    return label


def check_labels(y: Any, n: int) -> list[Label]:
    """Return ``y`` as a list of ``n`` labels (str or int), or raise a typed error.

    Examples
    --------
    >>> check_labels(["a", "b"], 2)
    ['a', 'b']
    """
    if isinstance(y, (str, bytes)) or not isinstance(y, (Sequence, np.ndarray)):
        raise InputTypeError(f"expected a sequence of labels, got {type(y).__name__}")
    labels = [_normalize_label(label) for label in y]
    if len(labels) != n:
        raise LabelLengthError(f"got {n} inputs but {len(labels)} labels; they must match")
    return labels


class Head(ABC):
    """Base class of the streaming heads.

    Subclasses keep per-class statistics in rows/columns ordered like ``classes_`` and implement
    the ``_learn``, ``_scores``, ``_forget_index`` and state hooks. This class does the label
    bookkeeping, validation and (de)serialisation of parameters.
    """

    #: Default temperature for turning scores into probabilities with a softmax.
    proba_temperature: float = 1.0

    def __init__(self) -> None:
        self._reset()

    # --- parameters --------------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """Constructor arguments, read back from the attributes of the same name."""
        names = [
            p.name
            for p in inspect.signature(type(self).__init__).parameters.values()
            if p.name != "self" and p.kind is not p.VAR_KEYWORD
        ]
        return {name: getattr(self, name) for name in names}

    def clone(self: H) -> H:
        """A new, untrained head with the same parameters."""
        return type(self)(**self.get_params())

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"

    # --- state -------------------------------------------------------------------------------
    def _reset(self) -> None:
        self.classes_: list[Label] = []
        self._index: dict[Label, int] = {}
        self.dim_: int | None = None
        self.n_seen_: int = 0

    @property
    def is_fitted(self) -> bool:
        return bool(self.classes_)

    # --- learning ----------------------------------------------------------------------------
    def learn_one(self, x: Any, y: Label) -> None:
        """Learn one example (a feature vector and its label)."""
        row = np.asarray(x)
        self.learn_many(row.reshape(1, -1) if row.ndim == 1 else row, [y])

    def learn_many(self, X: Any, y: Any) -> None:
        """Learn a batch, whole or not at all: on any error the head is unchanged."""
        features = check_features(X, self.dim_)
        labels = check_labels(y, features.shape[0])
        new: dict[Label, int] = {}  # new label -> its future column, in order of first appearance
        columns = []
        for label in labels:
            column = self._index.get(label)
            if column is None:
                column = new.setdefault(label, len(self.classes_) + len(new))
            columns.append(column)
        first = self.dim_ is None
        if first:
            self._initialise(features.shape[1])
        try:
            self._learn(features, np.asarray(columns, dtype=np.intp), len(new))
        except BaseException:
            if first:
                self._reset()
            raise
        for label in new:
            self._index[label] = len(self.classes_)
            self.classes_.append(label)
        self.dim_ = features.shape[1]
        self.n_seen_ += features.shape[0]

    def partial_fit(self: H, X: Any, y: Any) -> H:
        """scikit-learn spelling of :meth:`learn_many`; returns the head."""
        self.learn_many(X, y)
        return self

    # --- prediction --------------------------------------------------------------------------
    def decision_scores(self, X: Any) -> FloatArray:
        """Scores of shape (n, n_classes), columns ordered like ``classes_``."""
        if not self.is_fitted:
            raise NotFittedError(
                f"{type(self).__name__} has learned nothing yet; learn before predicting"
            )
        features = check_features(X, self.dim_)
        return self._scores(features)

    def predict_many(self, X: Any) -> list[Label]:
        """The label of highest score for each row."""
        scores = self.decision_scores(X)
        return [self.classes_[i] for i in np.argmax(scores, axis=1)]

    def predict_one(self, x: Any) -> Label:
        """The label of highest score for one feature vector."""
        return self.predict_many(np.asarray(x).reshape(1, -1))[0]

    def predict_proba_many(self, X: Any) -> FloatArray:
        """Softmax of the scores divided by ``proba_temperature``; columns like ``classes_``."""
        scores = self.decision_scores(X) / self.proba_temperature
        scores -= scores.max(axis=1, keepdims=True)
        weights = np.exp(scores)
        return weights / weights.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]

    # --- forgetting --------------------------------------------------------------------------
    def forget(self, label: Any) -> None:
        """Remove a class: its statistics are dropped, as the head documents."""
        key = label.item() if isinstance(label, np.generic) else label
        try:
            index = self._index[key]
        except (KeyError, TypeError):
            raise UnknownLabelError(
                f"cannot forget label {label!r}: the head knows {len(self.classes_)} classes and not "
                "this one"
            ) from None
        self._forget_index(index)
        del self.classes_[index]
        self._index = {c: i for i, c in enumerate(self.classes_)}

    # --- persistence ---------------------------------------------------------------------------
    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Learned state as (JSON-able metadata, named arrays)."""
        meta: dict[str, Any] = {
            "classes": list(self.classes_),
            "dim": self.dim_,
            "n_seen": self.n_seen_,
        }
        arrays = self._state_arrays() if self.dim_ is not None else {}
        return meta, arrays

    def set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`get_state` returned; shapes are checked against the metadata.

        Raises :class:`~perennial.exceptions.ModelMismatchError`, leaving the head unchanged, when
        the arrays do not have the names and shapes the metadata implies.
        """
        try:
            classes = [_normalize_label(c) for c in meta["classes"]]
            dim = None if meta["dim"] is None else int(meta["dim"])
            n_seen = int(meta["n_seen"])
        except (KeyError, TypeError, ValueError, PerennialError) as error:
            raise ModelMismatchError(f"head metadata is incomplete or invalid: {error}") from error
        if len(set(classes)) != len(classes):
            raise ModelMismatchError(f"head metadata lists a class twice: {classes}")
        if dim is not None:
            expected = self._expected_shapes(dim, len(classes))
            found = {name: tuple(array.shape) for name, array in arrays.items()}
            if found != expected:
                raise ModelMismatchError(
                    f"{type(self).__name__} with {dim} features and {len(classes)} classes needs "
                    f"arrays {expected}, got {found}"
                )
        elif arrays:
            raise ModelMismatchError(
                f"an empty {type(self).__name__} has no arrays, got {sorted(arrays)}"
            )
        self._reset()
        self.classes_ = classes
        self._index = {c: i for i, c in enumerate(self.classes_)}
        self.dim_ = dim
        self.n_seen_ = n_seen
        if self.dim_ is not None:
            self._load_arrays(arrays)

    @property
    def state_bytes(self) -> int:
        """Bytes of learned statistics: what a save writes, whatever was seen."""
        if self.dim_ is None:
            return 0
        return sum(array.nbytes for array in self._state_arrays().values())

    # --- hooks for subclasses ------------------------------------------------------------------
    @abstractmethod
    def _initialise(self, dim: int) -> None:
        """Allocate empty statistics for features of width ``dim``."""

    @abstractmethod
    def _learn(self, X: FloatArray, columns: NDArray[np.intp], n_new: int) -> None:
        """Add a validated batch; ``n_new`` new classes are appended as columns first."""

    @abstractmethod
    def _scores(self, X: FloatArray) -> FloatArray:
        """Scores for validated features."""

    @abstractmethod
    def _forget_index(self, index: int) -> None:
        """Drop the statistics of class number ``index``."""

    @abstractmethod
    def _state_arrays(self) -> dict[str, np.ndarray]:
        """The learned statistics, by name."""

    @abstractmethod
    def _expected_shapes(self, dim: int, n_classes: int) -> dict[str, tuple[int, ...]]:
        """The name and shape of every state array for this many features and classes."""

    @abstractmethod
    def _load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore the statistics from :meth:`_state_arrays` output."""


def one_hot(columns: NDArray[np.intp], n_classes: int) -> FloatArray:
    """Rows of the identity matrix picked by ``columns``."""
    Y = np.zeros((columns.shape[0], n_classes))
    Y[np.arange(columns.shape[0]), columns] = 1.0
    return Y
