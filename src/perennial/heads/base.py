"""What every head shares: label bookkeeping, feature validation, parameters and state transfer.

A head is a small numpy-only learner on encoded features. Its learned state is a set of additive
statistics (counts, sums, sums of outer products); predictions are a pure function of them. Heads
know nothing of text, images or torch.
"""

from __future__ import annotations

import copy
import inspect
import re
import unicodedata
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, TypeVar

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

__all__ = [
    "Head",
    "Label",
    "check_features",
    "check_label",
    "check_labels",
    "check_unlearnable",
]

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
    kind = array.dtype.kind  # (dtype kinds are cheaper to test than np.issubdtype)
    if kind == "c":
        raise InputTypeError(f"expected real {name}, got an array of dtype {array.dtype}")
    if kind not in "fiub":
        raise InputTypeError(f"expected numeric {name}, got an array of dtype {array.dtype}")
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


# Unicode category Cc (C0 and C1 controls, DEL), and the line and paragraph separators.
_CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _label_of_type(label: Any) -> Label:
    """``label`` as a plain str or int (numpy scalars unwrapped), or a typed error."""
    if isinstance(label, np.generic):
        label = label.item()
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise InputTypeError(
            f"labels must be str or int, got {label!r} of type {type(label).__name__}"
        )
    return label


def _checked_label(value: Any, index: int | None) -> Label:
    label = _label_of_type(value)
    if not isinstance(label, str) or (label.isascii() and label.isprintable() and label.strip()):
        return label  # printable ASCII that is not blank: valid, and in NFC already (fast path)
    name = "label" if index is None else f"labels[{index}]"
    try:
        label.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidInputError(
            f"{name} is not valid Unicode text: {label!r} holds a lone surrogate "
            f"({label[error.start]!r}) at character {error.start}"
        ) from None
    found = _CONTROL_CHARACTERS.search(label)
    if found is not None:
        raise InvalidInputError(
            f"{name} holds a control character ({found.group()!r}) at character "
            f"{found.start()} of {label!r}; a label is one line of printable text"
        )
    if not label.strip():
        raise InvalidInputError(f"{name} is blank ({label!r}); expected a class name")
    return unicodedata.normalize("NFC", label)


def check_label(label: Any) -> Label:
    """Return one label as models keep it, or raise a typed error (see :func:`check_labels`).

    Examples
    --------
    >>> check_label("cafe\\u0301") == "caf\\u00e9"
    True
    """
    return _checked_label(label, None)


def check_labels(y: Any, n: int) -> list[Label]:
    """Return ``y`` as a list of ``n`` labels as models keep them, or raise a typed error.

    A label is an int or a string of valid Unicode text: encodable as UTF-8 (no lone
    surrogate), without control characters (Unicode category Cc, which includes newline, tab
    and carriage return) or line and paragraph separators (U+2028, U+2029), and not blank
    (empty or only white space). Strings are normalised to NFC, so ``"e\\u0301"`` and
    ``"\\u00e9"`` name one class; other characters, white space at either end included, are
    kept as given.

    Examples
    --------
    >>> check_labels(["a", "b"], 2)
    ['a', 'b']
    >>> check_labels(["ok", "a\\nb"], 2)
    Traceback (most recent call last):
    ...
    perennial.exceptions.InvalidInputError: labels[1] holds a control character ('\\n') at character 1 of 'a\\nb'; a label is one line of printable text
    """
    if isinstance(y, (str, bytes)) or not isinstance(y, (Sequence, np.ndarray)):
        raise InputTypeError(f"expected a sequence of labels, got {type(y).__name__}")
    labels = [_checked_label(label, i) for i, label in enumerate(y)]
    if len(labels) != n:
        raise LabelLengthError(f"got {n} inputs but {len(labels)} labels; they must match")
    return labels


def check_unlearnable(
    labels: Sequence[Any], counts: Mapping[Any, int], owner: str = "the model"
) -> None:
    """Refuse to unlearn a label that is not known, or more examples of a class than it counted.

    The one check behind every unlearn (heads, learner, service): nothing of the learned
    examples is kept, so this is all that can be checked before their statistics are
    subtracted.

    Examples
    --------
    >>> check_unlearnable(["a", "a"], {"a": 1})
    Traceback (most recent call last):
    ...
    perennial.exceptions.InvalidInputError: cannot unlearn more examples of a class than the model learned: 2 examples of 'a', which has counted 1
    """
    unknown = [label for label in dict.fromkeys(labels) if label not in counts]
    if unknown:
        raise UnknownLabelError(
            f"cannot unlearn examples of {', '.join(map(repr, unknown))}: {owner} knows "
            f"{len(counts)} classes and not " + ("this one" if len(unknown) == 1 else "these")
        )
    removed = Counter(labels)
    too_many = [
        f"{n} examples of {label!r}, which has counted {counts[label]}"
        for label, n in removed.items()
        if n > counts[label]
    ]
    if too_many:
        raise InvalidInputError(
            f"cannot unlearn more examples of a class than {owner} learned: " + "; ".join(too_many)
        )


class Head(ABC):
    """Base class of the streaming heads.

    Subclasses keep per-class statistics in rows/columns ordered like ``classes_`` and implement
    the ``_learn``, ``_unlearn``, ``_merge``, ``_scores``, ``_forget_index`` and state hooks. This
    class does the label bookkeeping, validation and (de)serialisation of parameters.
    """

    #: The name the registry (:data:`perennial.heads.HEADS`), saved models, the command line and
    #: the service know this head by.
    name: ClassVar[str] = ""

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
        self._learn_checked(features, check_labels(y, features.shape[0]))

    def _learn_checked(
        self,
        features: FloatArray,
        labels: Sequence[Label],
        planned: tuple[NDArray[np.intp], list[Label]] | None = None,
    ) -> None:
        """:meth:`learn_many` for features and labels that passed its checks already.

        ``LifelongClassifier`` checks a batch once and comes in here, so the head does not check
        it a second time; ``planned`` is :meth:`columns_for` of ``labels`` if already computed.
        """
        columns, new = self.columns_for(labels) if planned is None else planned
        first = self.dim_ is None
        if first:
            self._initialise(features.shape[1])
        try:
            self._learn(features, columns, len(new))
        except BaseException:
            if first:
                self._reset()
            raise
        for label in new:
            self._index[label] = len(self.classes_)
            self.classes_.append(label)
        self.dim_ = features.shape[1]
        self.n_seen_ += features.shape[0]

    def columns_for(self, labels: Sequence[Label]) -> tuple[NDArray[np.intp], list[Label]]:
        """The column each (validated) label would take, and the new labels in column order.

        Known labels keep their column; new ones are appended in order of first appearance.
        """
        new: dict[Label, int] = {}
        columns = []
        for label in labels:
            column = self._index.get(label)
            if column is None:
                column = new.setdefault(label, len(self.classes_) + len(new))
            columns.append(column)
        return np.asarray(columns, dtype=np.intp), list(new)

    def column_of(self, label: Any) -> int:
        """The column of a known label; :class:`UnknownLabelError` otherwise.

        A string is looked up as given, then in NFC (the form :func:`check_labels` keeps).
        """
        key = label.item() if isinstance(label, np.generic) else label
        try:
            column = self._index.get(key)
        except TypeError:  # unhashable: not a label
            column = None
        if column is None and isinstance(key, str):
            column = self._index.get(unicodedata.normalize("NFC", key))
        if column is None:
            raise UnknownLabelError(
                f"unknown label {label!r}: the head knows {len(self.classes_)} classes and not "
                "this one"
            )
        return column

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
        index = self.column_of(label)
        self._forget_index(index)
        del self.classes_[index]
        self._index = {c: i for i, c in enumerate(self.classes_)}

    # --- unlearning -------------------------------------------------------------------------------
    def unlearn_one(self, x: Any, y: Label) -> None:
        """Remove one example learned before (see :meth:`unlearn_many`)."""
        row = np.asarray(x)
        self.unlearn_many(row.reshape(1, -1) if row.ndim == 1 else row, [y])

    def unlearn_many(self, X: Any, y: Any, *, verify: bool = True) -> None:
        """Remove examples learned before: subtract their contribution from the statistics.

        The result is the head that never learned them, up to rounding. A class whose count
        reaches zero disappears entirely (from ``classes_`` and from every statistic), as it would
        from a head retrained on the rest; the other classes keep their columns and their order.
        A head retrained on the remaining data may list its classes in another order (first
        appearance in *its* data), so "the same head" means the same classes as a set and the same
        scores and counts label by label, not column by column. Unlearning everything gives an
        empty head. "Up to rounding": a subtraction keeps the rounding error of the larger sum,
        so the error relative to what remains grows with the share of the data removed (tests:
        within 1e-6 of retraining in decision scores, removing up to all but one example).

        Nothing of the learned examples was kept, so the caller supplies them again and the head
        cannot tell whether they are the ones it learned. What it checks is that every label is
        known, that no class loses more examples than it counted, and that what the subtraction
        leaves are statistics some set of examples could have (no negative variance, a class of
        one example with no variance, a class of none with nothing left, a within-class
        covariance that is positive semi-definite: see
        :func:`~perennial.heads.statistics.check_subtraction`, which costs one factorisation of
        the head's second moment where it keeps one). A :class:`~perennial.heads.RidgeHead`
        still in its dual form holds its examples and refuses one it does not hold. Examples
        that pass these checks but were never learned are subtracted all the same and corrupt
        the model silently; an :class:`NCMHead` keeps too little to catch any but those that
        empty a class.

        The batch is checked whole before anything changes: on any error the head is unchanged.

        Parameters
        ----------
        verify
            False skips the statistics check (and lets a dual ridge head subtract examples it
            does not hold, in the primal form): for replaying an update already acknowledged,
            which must be applied whatever it leaves. Labels and counts are checked anyway.
            Predicting never fails on what it leaves (covariances that are not positive
            definite are factored with their eigenvalues clipped).

        Raises
        ------
        UnknownLabelError
            A label the head does not know.
        InvalidInputError
            More examples of a class than the head counted (the message names the class and
            both counts), examples whose removal would leave impossible statistics (the
            message names the class and why), or features that are empty, non-finite, of the
            wrong width, or labels of another length (the subclasses of ``InvalidInputError``
            used by ``learn_many``).

        Examples
        --------
        >>> from perennial.heads import NCMHead
        >>> head = NCMHead()
        >>> head.learn_many([[1.0, 0.0], [0.0, 1.0], [0.0, 3.0]], ["x", "y", "y"])
        >>> head.unlearn_many([[0.0, 3.0]], ["y"])
        >>> head.means_.tolist(), head.n_seen_
        ([[1.0, 0.0], [0.0, 1.0]], 2)
        >>> head.unlearn_one([1.0, 0.0], "x")
        >>> head.classes_
        ['y']
        """
        features = check_features(X, self.dim_)
        labels = check_labels(y, features.shape[0])
        columns, kept = self.plan_unlearn(labels)
        if verify:
            self._check_unlearn(features, columns, self.classes_)
        self._unlearn(features, columns, kept)
        self.classes_ = [self.classes_[i] for i in kept]
        self._index = {c: i for i, c in enumerate(self.classes_)}
        self.n_seen_ -= features.shape[0]
        if self.n_seen_ == 0 and not self.classes_:
            self._reset()  # exactly the head that learned nothing, not zeros up to rounding

    def plan_unlearn(self, labels: Sequence[Label]) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
        """Check that (validated) labels can be unlearned: their columns and the columns kept.

        Raises the errors :meth:`unlearn_many` documents; changes nothing.
        """
        counts = self._class_counts()
        check_unlearnable(labels, dict(zip(self.classes_, counts.tolist(), strict=True)))
        columns = np.asarray([self._index[label] for label in labels], dtype=np.intp)
        removed = np.bincount(columns, minlength=len(self.classes_))
        # Only the classes this batch empties are dropped.
        kept = np.flatnonzero((removed == 0) | (removed < counts)).astype(np.intp)
        return columns, kept

    # --- merging ----------------------------------------------------------------------------------
    def merge(self, other: Head) -> None:
        """Add the statistics of ``other``: this head becomes the head of both heads' data.

        Both heads must be of the same type with the same parameters and the same input width
        (and, for the ridge heads, the same random projection). Classes are matched by label, in
        whatever order each head lists them; labels new to this head are appended in the order
        ``other`` lists them. Merging an empty head changes nothing; merging into an empty head
        copies ``other``. ``other`` is not modified. As with :meth:`unlearn_many`, the result
        equals a head trained on both data sets label by label; its column order may differ.

        Raises
        ------
        ModelMismatchError
            Different head types, parameters, input widths or projections; the message names
            the difference, and this head is unchanged.

        Examples
        --------
        >>> from perennial.heads import NCMHead
        >>> a, b = NCMHead(), NCMHead()
        >>> a.learn_many([[1.0, 0.0], [3.0, 0.0]], ["x", "x"])
        >>> b.learn_many([[0.0, 1.0], [2.0, 0.0]], ["y", "x"])
        >>> a.merge(b)
        >>> a.classes_, a.means_.tolist(), a.n_seen_
        (['x', 'y'], [[2.0, 0.0], [0.0, 1.0]], 4)
        """
        if not isinstance(other, Head):
            raise InputTypeError(f"can only merge a head, got {type(other).__name__}")
        if type(other) is not type(self):
            raise ModelMismatchError(
                f"cannot merge a {type(other).__name__} into a {type(self).__name__}"
            )
        mine, theirs = self.get_params(), other.get_params()
        differences = [
            f"{name}={mine[name]!r} here, {theirs.get(name)!r} in the other"
            for name in mine
            if mine[name] != theirs.get(name)
        ]
        if differences:
            raise ModelMismatchError(
                f"cannot merge {type(self).__name__}s with different parameters: "
                + "; ".join(differences)
            )
        if other.dim_ is None:
            return
        if self.dim_ is None:
            meta, arrays = other.get_state()
            self.set_state(meta, arrays)  # copies the arrays
            return
        if other.dim_ != self.dim_:
            raise ModelMismatchError(
                f"cannot merge heads learned on different features: {self.dim_} per example "
                f"here, {other.dim_} in the other"
            )
        self._check_mergeable(other)
        columns, new = self.columns_for(other.classes_)
        self._merge(other, columns, len(new))
        for label in new:
            self._index[label] = len(self.classes_)
            self.classes_.append(label)
        self.n_seen_ += other.n_seen_

    # --- persistence ---------------------------------------------------------------------------
    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Learned state as (JSON-able metadata, named arrays)."""
        meta: dict[str, Any] = {
            "classes": list(self.classes_),
            "dim": self.dim_,
            "n_seen": self.n_seen_,
        }
        if self.dim_ is None:
            return meta, {}
        arrays = self._state_arrays()
        meta.update(self._state_meta())
        return meta, arrays

    def set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`get_state` returned; shapes are checked against the metadata.

        Raises :class:`~perennial.exceptions.ModelMismatchError`, leaving the head unchanged, when
        the arrays do not have the names and shapes the metadata implies.
        """
        try:
            # Labels as they were saved: they passed check_labels when they were learned (a
            # model saved before its text rule keeps its labels rather than merge two classes).
            classes = [_label_of_type(c) for c in meta["classes"]]
            if "" in classes:
                raise InvalidInputError("labels must be non-empty strings, got ''")
            dim = None if meta["dim"] is None else int(meta["dim"])
            n_seen = int(meta["n_seen"])
        except (KeyError, TypeError, ValueError, PerennialError) as error:
            raise ModelMismatchError(f"head metadata is incomplete or invalid: {error}") from error
        if len(set(classes)) != len(classes):
            raise ModelMismatchError(f"head metadata lists a class twice: {classes}")
        if dim is not None:
            expected = self._expected_state(meta, dim, len(classes))
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
        before = dict(self.__dict__)
        try:
            self._reset()
            self.classes_ = classes
            self._index = {c: i for i, c in enumerate(self.classes_)}
            self.dim_ = dim
            self.n_seen_ = n_seen
            if self.dim_ is not None:
                self._load_state(meta, arrays)
        except BaseException:
            # A check only loading can make (e.g. a regenerated projection) failed: back to
            # exactly the head before, whose attributes _reset and loading rebind, never mutate.
            self.__dict__.clear()
            self.__dict__.update(before)
            raise

    def prediction_copy(self: H) -> H:
        """A copy that predicts exactly like this head now and is untouched by its later changes.

        Heads whose state is large override it to keep only what predicting needs.
        """
        return copy.deepcopy(self)

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
    def _class_counts(self) -> NDArray[np.int64]:
        """Examples counted per class, ordered like ``classes_``."""

    @abstractmethod
    def _unlearn(self, X: FloatArray, columns: NDArray[np.intp], kept: NDArray[np.intp]) -> None:
        """Subtract a validated batch, then keep only the columns ``kept`` (in that order).

        The batch never takes more examples of a class than it counted; the columns left out of
        ``kept`` are the classes it empties. Compute every new array before replacing any.
        """

    def _check_unlearn(  # noqa: B027 - optional hook
        self, X: FloatArray, columns: NDArray[np.intp], names: Sequence[Label]
    ) -> None:
        """Raise :class:`InvalidInputError` if subtracting the batch would leave impossible
        statistics (see :meth:`unlearn_many`); ``names`` labels the columns in messages.

        Called after :meth:`plan_unlearn` accepted the labels; changes nothing. Heads whose
        statistics cannot tell have nothing to check.
        """

    @abstractmethod
    def _merge(self, other: Any, columns: NDArray[np.intp], n_new: int) -> None:
        """Add the statistics of a compatible head of the same type.

        Column ``j`` of ``other`` goes to column ``columns[j]``; ``n_new`` new columns are appended
        first. ``other`` may be this very head.
        """

    def _check_mergeable(self, other: Any) -> None:  # noqa: B027 - optional hook
        """Raise :class:`ModelMismatchError` if ``other`` (same type, params, width) cannot merge.

        Heads whose statistics depend only on their parameters and input width need no check.
        """

    @abstractmethod
    def _state_arrays(self) -> dict[str, np.ndarray]:
        """The learned statistics, by name."""

    @abstractmethod
    def _expected_shapes(self, dim: int, n_classes: int) -> dict[str, tuple[int, ...]]:
        """The name and shape of every state array for this many features and classes."""

    @abstractmethod
    def _load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore the statistics from :meth:`_state_arrays` output."""

    def _state_meta(self) -> dict[str, Any]:
        """JSON-able metadata saved beside the arrays (e.g. which form the statistics take).

        Its keys join ``classes``, ``dim`` and ``n_seen`` in :meth:`get_state`; none by default.
        """
        return {}

    def _expected_state(
        self, meta: dict[str, Any], dim: int, n_classes: int
    ) -> dict[str, tuple[int, ...]]:
        """The arrays a saved state with metadata ``meta`` must hold (raise if ``meta`` is bad)."""
        return self._expected_shapes(dim, n_classes)

    def _load_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Restore the statistics from :meth:`get_state` output (shapes already checked)."""
        self._load_arrays(arrays)


def one_hot(columns: NDArray[np.intp], n_classes: int) -> FloatArray:
    """Rows of the identity matrix picked by ``columns``."""
    Y = np.zeros((columns.shape[0], n_classes))
    Y[np.arange(columns.shape[0]), columns] = 1.0
    return Y
