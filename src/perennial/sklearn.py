"""scikit-learn estimators over perennial's heads: ``fit``, ``partial_fit``, pipelines, searches.

:class:`PerennialClassifier` is a thin adapter: it validates inputs the way scikit-learn
expects, maps the labels to codes, and lets one of :mod:`perennial.heads` do all the learning.
Its learned state is that head's closed-form statistics, so ``partial_fit`` over batches, in
any order of classes, gives the model ``fit`` gives on all the data at once (to rounding).

It takes numeric features. Texts and images become features through
:class:`~perennial.encoders.sklearn.EncoderTransformer` (a transformer that fits a ``Pipeline``
or a ``ColumnTransformer``).

Every head passes ``sklearn.utils.estimator_checks.check_estimator`` with no check marked as an
expected failure (scikit-learn 1.9; ``tests/test_sklearn.py`` runs it for each head).

Importing this module imports scikit-learn (the ``sklearn`` extra); ``import perennial`` does
not.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from perennial.exceptions import (
    InputTypeError,
    InvalidInputError,
    InvalidParameterError,
    PerennialError,
    UnknownLabelError,
)
from perennial.heads import HEADS, Head, make_head

__all__ = ["PerennialClassifier"]


@contextmanager
def _sklearn_errors() -> Iterator[None]:
    """scikit-learn's validation errors as perennial's, with the same message.

    ``InvalidInputError`` is a ``ValueError`` and ``InputTypeError`` a ``TypeError``, so code
    (and scikit-learn's own checks) that expects those still catches them.
    """
    try:
        yield
    except PerennialError:
        raise
    except TypeError as error:
        raise InputTypeError(str(error)) from error
    except ValueError as error:
        raise InvalidInputError(str(error)) from error


def _sorted_unique(values: Any, name: str, *, inverse: bool = False) -> Any:
    """``numpy.unique`` of a 1-D batch of labels, or a typed error naming ``name``."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise InvalidInputError(f"{name} must be a 1-D list of labels, got shape {array.shape}")
    try:
        return np.unique(array, return_inverse=True) if inverse else np.unique(array)
    except TypeError as error:
        raise InputTypeError(
            f"{name} must be of one type that sorts (numbers, or strings), got {error}"
        ) from None


def _label_family(labels: NDArray[Any]) -> str:
    """What numpy makes of a label array when mixed with another: booleans, numbers, or text."""
    kind = labels.dtype.kind
    return "booleans" if kind == "b" else "numbers" if kind in "iuf" else "text or objects"


@contextmanager
def _all_or_nothing(estimator: Any) -> Iterator[None]:
    """Undo every attribute change of ``estimator`` if the block raises."""
    before = copy.copy(estimator.__dict__)
    try:
        yield
    except BaseException:
        estimator.__dict__.clear()
        estimator.__dict__.update(before)
        raise


class PerennialClassifier(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """A scikit-learn classifier whose learned state is a perennial head's exact statistics.

    ``fit`` learns from scratch, ``partial_fit`` adds a batch (new classes may come in any
    batch), and either gives the same model for the same examples, however they are split.
    Labels may be of any type ``numpy.unique`` sorts (int, float, bool, str, object);
    ``classes_`` is always sorted, and ``predict`` answers labels of their own dtype.

    Parameters
    ----------
    head
        The name of a head in :data:`perennial.heads.HEADS`: ``"ridge"`` (default),
        ``"ridge-ensemble"``, ``"slda"`` or ``"ncm"``.
    head_params
        Constructor arguments of the head (for example ``{"ridge": 1.0}``); None for its
        defaults. Checked by ``fit``, as scikit-learn does.

    Attributes
    ----------
    classes_
        The labels seen (or announced by ``partial_fit(classes=...)``), sorted.
    head_
        The head that learned; its labels are the codes of ``classes_`` (see ``codes_``).
    codes_
        The head's label for each class of ``classes_``: classes are coded in the order they
        first came, so that a new class never renames an old one.
    classes_closed_
        Whether ``partial_fit(classes=...)`` closed the set of classes (see ``partial_fit``).
    n_features_in_, feature_names_in_
        As scikit-learn defines them. Columns of a DataFrame are matched by name: reordered or
        renamed columns are refused with :class:`~perennial.exceptions.InvalidInputError`.

    Notes
    -----
    A class announced by ``partial_fit(classes=...)`` but not seen yet has no statistics: its
    probability is 0 and its ``decision_function`` column is ``-inf``, so it is never
    predicted. Before any fit, every method but ``fit`` and ``partial_fit`` raises
    scikit-learn's ``NotFittedError``. Errors of validation are perennial's
    (:mod:`perennial.exceptions`) and subclass the ``ValueError`` or ``TypeError``
    scikit-learn raises, with its message.

    Examples
    --------
    >>> model = PerennialClassifier(head="ncm").fit([[1.0, 0.0], [0.0, 1.0]], [True, False])
    >>> model.predict([[0.9, 0.2], [0.1, 0.8]])
    array([ True, False])
    >>> model.partial_fit([[-1.0, -1.0]], [False]).classes_
    array([False,  True])
    """

    def __init__(self, head: str = "ridge", head_params: Mapping[str, Any] | None = None) -> None:
        self.head = head
        self.head_params = head_params

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = True
        return tags

    # --- learning ---------------------------------------------------------------------------------
    def _new_head(self) -> Head:
        params = {} if self.head_params is None else self.head_params
        if not isinstance(params, Mapping):
            raise InvalidParameterError(
                f"head_params must be a dict of the head's parameters or None, got "
                f"{type(params).__name__} ({params!r})"
            )
        if not isinstance(self.head, str):
            raise InvalidParameterError(
                f"head must be the name of a head ({', '.join(sorted(HEADS))}), got "
                f"{type(self.head).__name__} ({self.head!r})"
            )
        return make_head(self.head, **params)

    def fit(self, X: Any, y: Any) -> PerennialClassifier:
        """Learn ``X`` and ``y`` from scratch; returns the estimator.

        On any error the estimator is unchanged (fitted or not).
        """
        with _all_or_nothing(self):
            head = self._new_head()
            with _sklearn_errors():
                features, labels = validate_data(self, X, y, dtype=np.float64)
            classes, codes = _sorted_unique(labels, "labels", inverse=True)
            with _sklearn_errors():
                check_classification_targets(labels)
            head.learn_many(features, codes.tolist())
            self.head_ = head
            self.classes_ = classes
            self.codes_ = np.arange(len(classes))
            self.classes_closed_ = False
        return self

    def partial_fit(self, X: Any, y: Any, classes: Any = None) -> PerennialClassifier:
        """Add a batch to what was learned; returns the estimator.

        Parameters
        ----------
        classes
            Optional, on any call: every label the stream may hold, as scikit-learn's
            incremental estimators take it. From then on the classes are closed: a label
            outside ``classes_`` is refused, until a later ``classes=`` (which must include
            every class known) widens them. Never given: a new label is simply a new class.

        On any error the estimator is unchanged.
        """
        fitted = hasattr(self, "head_")
        with _all_or_nothing(self):
            head = self.head_ if fitted else self._new_head()
            with _sklearn_errors():
                features, labels = validate_data(self, X, y, dtype=np.float64, reset=not fitted)
            _sorted_unique(labels, "labels")  # labels that do not sort: a clear message first
            with _sklearn_errors():
                check_classification_targets(labels)
            announced = None if classes is None else _sorted_unique(classes, "classes")
            if fitted and _label_family(labels) != _label_family(self.classes_):
                raise InputTypeError(
                    f"labels of dtype {labels.dtype} ({_label_family(labels)}) cannot join "
                    f"classes of dtype {self.classes_.dtype} ({_label_family(self.classes_)})"
                )
            known = self.classes_ if fitted else labels[:0]
            codes = self.codes_ if fitted else np.zeros(0, dtype=np.intp)
            closed = announced is not None or (fitted and self.classes_closed_)
            pool = known if announced is None else announced
            if announced is not None:
                unknown = np.setdiff1d(known, announced)
                if unknown.size:
                    raise InvalidInputError(
                        f"classes={announced.tolist()} leaves out {unknown.tolist()}, which "
                        "this estimator knows already"
                    )
            outside = np.setdiff1d(labels, pool) if closed else labels[:0]
            if outside.size:
                raise UnknownLabelError(
                    f"labels {outside.tolist()} are not among classes={pool.tolist()}, which "
                    "partial_fit(classes=...) announced; announce them to add them"
                )
            new = np.setdiff1d(np.union1d(labels, pool), known)
            # New classes take the next codes, in their sorted order; codes never change.
            all_classes = np.concatenate([known, new])
            all_codes = np.concatenate([codes, len(known) + np.arange(len(new))])
            order = np.argsort(all_classes, kind="stable")
            sorted_classes, sorted_codes = all_classes[order], all_codes[order]
            positions = np.searchsorted(sorted_classes, labels)
            head.learn_many(features, sorted_codes[positions].tolist())
            self.head_ = head
            self.classes_ = sorted_classes
            self.codes_ = sorted_codes
            self.classes_closed_ = closed
        return self

    # --- prediction -------------------------------------------------------------------------------
    def _features(self, X: Any) -> NDArray[np.float64]:
        """``X`` validated against what ``fit`` saw (width, column names), as float64."""
        check_is_fitted(self)
        with _sklearn_errors():
            return validate_data(self, X, dtype=np.float64, reset=False)  # type: ignore[no-any-return]

    def _in_class_order(
        self, head_columns: NDArray[np.float64], fill: float
    ) -> NDArray[np.float64]:
        """The head's columns rearranged like ``classes_``; ``fill`` for a class not seen."""
        result = np.full((head_columns.shape[0], len(self.classes_)), fill)
        learned = set(self.head_.classes_)
        for column, code in enumerate(self.codes_.tolist()):
            if code in learned:
                result[:, column] = head_columns[:, self.head_.column_of(code)]
        return result

    def _scores(self, X: Any) -> NDArray[np.float64]:
        """Head scores, one column per class of ``classes_`` (``-inf`` for a class not seen)."""
        features = self._features(X)  # checks that the estimator is fitted, before head_ is read
        return self._in_class_order(self.head_.decision_scores(features), -np.inf)

    def decision_function(self, X: Any) -> NDArray[np.float64]:
        """The head's scores, of shape (n, n_classes), columns like ``classes_``.

        For two classes, as scikit-learn expects: the score of ``classes_[1]`` minus that of
        ``classes_[0]``, of shape (n,).
        """
        scores = self._scores(X)
        if len(self.classes_) == 2:
            return scores[:, 1] - scores[:, 0]
        return scores

    def predict(self, X: Any) -> NDArray[Any]:
        """The class of highest score for each row, of the labels' own dtype."""
        scores = self._scores(X)  # checks that the estimator is fitted, before classes_ is read
        return self.classes_[np.argmax(scores, axis=1)]  # type: ignore[no-any-return]

    def predict_proba(self, X: Any) -> NDArray[np.float64]:
        """The head's probabilities (a softmax of its scores), columns like ``classes_``."""
        features = self._features(X)  # checks that the estimator is fitted, before head_ is read
        return self._in_class_order(self.head_.predict_proba_many(features), 0.0)

    def predict_log_proba(self, X: Any) -> NDArray[np.float64]:
        """The logarithm of :meth:`predict_proba`."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))
