"""A river classifier over :class:`~perennial.learner.LifelongClassifier` (the ``river`` extra).

River streams examples as dicts (``{feature name: value}``) with labels of any hashable type,
and expects a model to answer before it has learned anything. :class:`RiverClassifier` turns
each dict into a vector in one fixed feature order and each label into a column number, and
leaves all the learning to one :class:`~perennial.learner.LifelongClassifier`: there is no
second implementation of learning here.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from typing import Any

import numpy as np

from perennial.exceptions import InputTypeError, InvalidInputError, InvalidParameterError
from perennial.heads import HEADS, Head, make_head
from perennial.learner import LifelongClassifier
from perennial.params import check_choice, check_int

try:
    from river import base as river_base
except ImportError as error:  # pragma: no cover - the extra is installed for the tests
    raise ImportError(
        "perennial.river needs the river package: pip install 'perennial[river]'"
    ) from error

__all__ = ["RiverClassifier"]

NEW_FEATURES = ("raise", "ignore")
_PLAIN_NUMBERS = frozenset({float, int, bool})  # checked by type first: isinstance is slower


class _BlasThreads:
    """Run a block with BLAS limited to ``n`` threads (a no-op for None).

    One example is a few small BLAS calls. With several OpenBLAS threads each call wakes
    them and waits for them, and on a busy machine a thread that lost its core holds up the
    call for a scheduler tick: predict-then-learn over river's Phishing with the default ridge
    head took 440 s on two threads against 110 s on one, on a loaded 2-core machine. The
    libraries are found once, at the first use (after numpy and SciPy have loaded theirs).
    """

    _libraries: list[Any] | None = None

    def __init__(self, n: int | None) -> None:
        self.n = n
        self._saved: list[int] = []

    def __enter__(self) -> None:
        if self.n is None:
            return
        if _BlasThreads._libraries is None:
            from threadpoolctl import ThreadpoolController

            _BlasThreads._libraries = ThreadpoolController().select(user_api="blas").lib_controllers
        self._saved = [library.get_num_threads() for library in _BlasThreads._libraries]
        for library, n in zip(_BlasThreads._libraries, self._saved, strict=True):
            if n != self.n:
                library.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        if self.n is None:
            return
        for library, n in zip(_BlasThreads._libraries or [], self._saved, strict=True):
            if n != self.n:
                library.set_num_threads(n)


def _feature_order(names: Iterable[Hashable]) -> tuple[Hashable, ...]:
    """Feature names in one order, whatever order a dict lists them in.

    Sorted when the names compare (all strings, say); otherwise by type name and ``repr``.
    """
    names = list(names)
    try:
        return tuple(sorted(names))  # type: ignore[type-var]
    except TypeError:
        return tuple(sorted(names, key=lambda name: (type(name).__name__, repr(name))))


class RiverClassifier(river_base.Classifier):
    """A river classifier that learns in closed form and forgets nothing.

    Examples are dicts of numbers; labels are any hashable value (``bool``, ``int``, ``str``,
    ...). The features are fixed by the ``features`` parameter or, when it is None, by the keys
    of the first example learned, and are put in sorted order (by type name and ``repr`` when
    the names do not compare), so the order in which a dict lists its keys never matters. A
    feature missing from an example counts as 0, as in river's linear models. A key outside
    the features is refused with an :class:`~perennial.exceptions.InvalidInputError` naming
    it (``new_features="raise"``, the default), or left out (``new_features="ignore"``); either
    way the call that brought it learns nothing new about it.

    Labels become column numbers in order of first appearance; labels that are equal as dict
    keys (``True`` and ``1``, say) are one class, as everywhere in river. Before anything is
    learned, :meth:`predict_one` answers None and :meth:`predict_proba_one` ``{}``.

    Parameters
    ----------
    head
        The head, by registry name (``"ridge"``, ``"ridge-ensemble"``, ``"slda"``, ``"ncm"``) or
        as a :class:`~perennial.heads.Head`, which is cloned, never trained itself.
    features
        The feature names, or None to take them from the first example learned.
    new_features
        What to do with a key outside the features: ``"raise"`` or ``"ignore"``.
    blas_threads
        BLAS threads while learning or predicting one example (restored after each call), or
        None to leave BLAS as it is. One by default: a single example's BLAS calls are too
        small to share, and extra threads stall on a busy machine (see ``benchmarks/RESULTS.md``).

    Attributes
    ----------
    model_
        The :class:`~perennial.learner.LifelongClassifier` that learns (None before learning).
    features_
        The feature names in the order the model sees them (None before learning).
    labels_
        The labels seen, in order of first appearance (the model's classes are their indices).

    Examples
    --------
    >>> from river import datasets, evaluate, metrics
    >>> model = RiverClassifier(head="slda")
    >>> model.predict_one({"x": 1.0}) is None
    True
    >>> model.learn_one({"x": 1.0, "y": 0.0}, True)
    >>> model.learn_one({"y": 1.0, "x": 0.0}, False)
    >>> model.predict_one({"x": 0.9, "y": 0.2})
    True
    >>> stream = datasets.Phishing().take(500)
    >>> evaluate.progressive_val_score(stream, RiverClassifier("slda"), metrics.Accuracy())
    Accuracy: 87.58%
    """

    def __init__(
        self,
        head: str | Head = "ridge",
        features: tuple[Hashable, ...] | None = None,
        new_features: str = "raise",
        blas_threads: int | None = 1,
    ) -> None:
        if not isinstance(head, (str, Head)):
            raise InvalidParameterError(
                f"head must be a Head or a head name ({', '.join(sorted(HEADS))}), "
                f"got {type(head).__name__} ({head!r})"
            )
        if isinstance(head, str):
            check_choice("head", head, tuple(sorted(HEADS)))
        if features is not None:
            features = tuple(features)
            if not features:
                raise InvalidParameterError("features must name at least one feature, got ()")
            if len(set(features)) != len(features):
                raise InvalidParameterError(f"features names a feature twice: {features!r}")
        self.head = head
        self.features = features
        self.new_features = check_choice("new_features", new_features, NEW_FEATURES)
        if blas_threads is not None:
            check_int("blas_threads", blas_threads, minimum=1)
        self.blas_threads = blas_threads
        self.model_: LifelongClassifier | None = None
        self.features_: tuple[Hashable, ...] | None = None
        self.labels_: list[Any] = []  # any hashable value
        self._columns: dict[Hashable, int] = {}  # feature name -> position in the vector
        self._codes: dict[Hashable, int] = {}  # label -> the model's class

    @property
    def _multiclass(self) -> bool:
        return True

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        # Small heads: river's checks run hundreds of short streams, and the memory check
        # wants the statistics' size reached early (a default ridge head's G is 128 MB).
        from perennial.heads import RidgeHead

        yield {"head": RidgeHead(n_features=64), "new_features": "ignore"}
        yield {"head": "slda", "new_features": "ignore"}
        yield {"head": "ncm"}

    def _unit_test_skips(self) -> set[str]:
        # A key the first example lacked is refused by design unless new_features="ignore".
        return {"check_emerging_features"} if self.new_features == "raise" else set()

    # --- dicts to vectors --------------------------------------------------------------------
    def _vector(self, x: dict[Hashable, Any], columns: dict[Hashable, int]) -> np.ndarray:
        """``x`` as a (1, d) float64 row in the order of ``columns``; refuses what it must."""
        if not isinstance(x, dict):
            raise InputTypeError(
                f"expected a dict of features {{name: number}}, got {type(x).__name__}"
            )
        values = [0.0] * len(columns)
        for name, value in x.items():
            position = columns.get(name)
            if position is None:
                if self.new_features == "raise":
                    raise InvalidInputError(
                        f"feature {name!r} is not one of the {len(columns)} features the model "
                        f"learns ({_shown(columns)}); give them all in features=..., or pass "
                        "new_features='ignore' to leave such keys out"
                    )
                continue
            if type(value) not in _PLAIN_NUMBERS and (
                isinstance(value, (str, bytes))
                or not isinstance(value, (int, float, np.number, np.bool_))
            ):
                raise InputTypeError(
                    f"feature {name!r} is {value!r} ({type(value).__name__}); expected a number"
                )
            values[position] = value
        row = np.array([values], dtype=np.float64)
        return row

    def _prepare(self, x: dict[Hashable, Any]) -> tuple[np.ndarray, dict[Hashable, int] | None]:
        """The row to learn, and the feature columns to adopt if this is the first example."""
        if self.model_ is not None:
            return self._vector(x, self._columns), None
        if self.features is not None:
            names = self.features
        else:
            if not isinstance(x, dict):
                self._vector(x, {})  # raises the usual InputTypeError
            if not x:
                raise InvalidInputError("the first example has no features; nothing to learn")
            names = tuple(x)
        columns = {name: i for i, name in enumerate(_feature_order(names))}
        return self._vector(x, columns), columns

    # --- learning and predicting ---------------------------------------------------------------
    def learn_one(self, x: dict[Hashable, Any], y: Hashable) -> None:
        """Learn one example; on any error, nothing changes."""
        if y is None:
            raise InvalidInputError("the label is None; None is what predict_one answers")
        try:
            code = self._codes.get(y, len(self.labels_))
        except TypeError:
            raise InputTypeError(f"a label must be hashable, got {type(y).__name__}") from None
        row, columns = self._prepare(x)
        model = self.model_
        if model is None:
            head = make_head(self.head) if isinstance(self.head, str) else self.head.clone()
            model = LifelongClassifier(head=head)
        with _BlasThreads(self.blas_threads):
            model.learn_one(row[0], code)
        # Commit: the model learned the row.
        if columns is not None:
            self.model_, self._columns = model, columns
            self.features_ = tuple(columns)
        if code == len(self.labels_):
            self._codes[y] = code
            self.labels_.append(y)

    def predict_proba_one(self, x: dict[Hashable, Any], **kwargs: Any) -> dict[Any, float]:
        """Probability of each label seen; ``{}`` before anything is learned."""
        if self.model_ is None:
            return {}
        row = self._vector(x, self._columns)
        with _BlasThreads(self.blas_threads):
            proba = self.model_.predict_proba_many(row)[0]
        return {
            self.labels_[int(code)]: float(p)
            for code, p in zip(self.model_.classes_, proba, strict=True)
        }

    def predict_one(self, x: dict[Hashable, Any], **kwargs: Any) -> Any:
        """The most likely label; None before anything is learned."""
        if self.model_ is None:
            return None
        row = self._vector(x, self._columns)
        with _BlasThreads(self.blas_threads):
            code = self.model_.predict_one(row[0])
        return self.labels_[int(code)]


def _shown(columns: dict[Hashable, int], limit: int = 5) -> str:
    names = [repr(name) for name in columns]
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
