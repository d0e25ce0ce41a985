"""A river classifier over :class:`~perennial.learner.LifelongClassifier` (the ``river`` extra).

River streams examples as dicts (``{feature name: value}``) with labels of any hashable type,
and expects a model to answer before it has learned anything. :class:`RiverClassifier` turns
each dict into a vector in one fixed feature order and each label into a column number, and
leaves all the learning to one :class:`~perennial.learner.LifelongClassifier`: there is no
second implementation of learning here.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator
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

__all__ = ["RiverClassifier", "auto_width"]

NEW_FEATURES = ("raise", "ignore")
_PLAIN_NUMBERS = frozenset({float, int, bool})  # checked by type first: isinstance is slower


class _BlasThreads:
    """Run a block with BLAS limited to ``n`` threads (a no-op for None).

    One example is a few small BLAS calls. With several OpenBLAS threads each call wakes
    them and waits for them, and on a busy machine a thread that lost its core holds up the
    call for a scheduler tick: predict-then-learn over river's Phishing with the default ridge
    head took 440 s on two threads against 110 s on one, on a loaded 2-core machine. The
    libraries are found once, at the first use (after numpy and SciPy have loaded theirs), and
    their C entry points are kept: threadpoolctl's per-call lookups cost about as much as a
    small head's whole step.
    """

    _libraries: list[tuple[Callable[[], int], Callable[[int], Any]]] | None = None

    def __init__(self, n: int | None) -> None:
        self.n = n
        self._saved: list[int] = []

    @staticmethod
    def _find() -> list[tuple[Callable[[], int], Callable[[int], Any]]]:
        from threadpoolctl import ThreadpoolController

        found = []
        for library in ThreadpoolController().select(user_api="blas").lib_controllers:
            symbol = getattr(library, "_get_symbol", None)
            get = symbol("openblas_get_num_threads") if symbol is not None else None
            put = symbol("openblas_set_num_threads") if symbol is not None else None
            if library.internal_api == "openblas" and get is not None and put is not None:
                found.append((get, put))
            else:  # another BLAS, or a threadpoolctl without the lookup: its public calls
                found.append((library.get_num_threads, library.set_num_threads))
        return found

    def __enter__(self) -> None:
        if self.n is None:
            return
        if _BlasThreads._libraries is None:
            _BlasThreads._libraries = self._find()
        self._saved = [get() for get, _ in _BlasThreads._libraries]
        for (_, put), n in zip(_BlasThreads._libraries, self._saved, strict=True):
            if n != self.n:
                put(self.n)

    def __exit__(self, *exc: object) -> None:
        if self.n is None:
            return
        for (_, put), n in zip(_BlasThreads._libraries or [], self._saved, strict=True):
            if n != self.n:
                put(n)


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
        ``"auto"`` (the default for numeric streams): a ridge head on
        ``clip(16 * d, 256, 4096)`` random features for ``d`` input features, chosen when the
        first example arrives, with balanced class scores (``balance_classes=True``: a class
        met a few times is not outvoted by the classes met often, which is what a stream
        whose classes arrive one after another needs). A step costs ``O(M**2)``, and on river's
        small numeric streams accuracy barely moved between 128 and 512 features
        (``benchmarks/RESULTS.md``), so 4,096 (the learner's default, made for 384-d text
        features) is kept for wide inputs. Or a head by registry name (``"ridge"``,
        ``"ridge-ensemble"``, ``"slda"``, ``"ncm"``), or a :class:`~perennial.heads.Head`, which
        is cloned, never trained itself.
    scale
        Standardise each feature by the running mean and standard deviation of the examples
        learned so far, as river's ``preprocessing.StandardScaler`` does in front of a model
        (a feature with no spread yet maps to 0). On by default: random features and ridge
        penalties assume comparable scales, and river's numeric streams mix units. The head then
        holds statistics of examples as they were scaled when learned.
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
    >>> model = RiverClassifier(head="slda", scale=False)
    >>> model.predict_one({"x": 1.0}) is None
    True
    >>> model.learn_one({"x": 1.0, "y": 0.0}, True)
    >>> model.learn_one({"y": 1.0, "x": 0.0}, False)
    >>> model.predict_one({"x": 0.9, "y": 0.2})
    True
    >>> stream = datasets.Phishing().take(500)
    >>> evaluate.progressive_val_score(stream, RiverClassifier(), metrics.Accuracy())
    Accuracy: 87.37%
    """

    def __init__(
        self,
        head: str | Head = "auto",
        features: tuple[Hashable, ...] | None = None,
        new_features: str = "raise",
        blas_threads: int | None = 1,
        scale: bool = True,
    ) -> None:
        if not isinstance(head, (str, Head)):
            raise InvalidParameterError(
                f"head must be a Head, 'auto' or a head name ({', '.join(sorted(HEADS))}), "
                f"got {type(head).__name__} ({head!r})"
            )
        if isinstance(head, str):
            check_choice("head", head, ("auto", *sorted(HEADS)))
        if not isinstance(scale, (bool, np.bool_)):
            raise InvalidParameterError(f"scale must be True or False, got {scale!r}")
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
        self.scale = bool(scale)
        self.model_: LifelongClassifier | None = None
        self.features_: tuple[Hashable, ...] | None = None
        self.labels_: list[Any] = []  # any hashable value
        self._columns: dict[Hashable, int] = {}  # feature name -> position in the vector
        self._codes: dict[Hashable, int] = {}  # label -> the model's class
        # Running moments of the learned examples (Welford), for ``scale``.
        self._count = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None

    @property
    def _multiclass(self) -> bool:
        return True

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        # Small heads: river's checks run hundreds of short streams, and the memory check
        # wants the statistics' size reached early (a default ridge head's G is 128 MB).
        from perennial.heads import RidgeHead

        yield {"new_features": "ignore"}  # the default: scaled, ridge on 256 features
        yield {"head": RidgeHead(n_features=64), "new_features": "ignore", "scale": False}
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
        if not np.isfinite(row).all():  # checked here: scaling could hide a NaN as 0
            bad = [name for name, position in columns.items() if not np.isfinite(row[0, position])]
            raise InvalidInputError(
                f"feature {bad[0]!r} is {row[0, columns[bad[0]]]!r}; every value must be finite"
            )
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

    def _make_head(self, dim: int) -> Head:
        if isinstance(self.head, Head):
            return self.head.clone()
        if self.head == "auto":
            return make_head("ridge", n_features=auto_width(dim), balance_classes=True)
        return make_head(self.head)

    def _scaled(self, row: np.ndarray, mean: np.ndarray, m2: np.ndarray, n: int) -> np.ndarray:
        """``row`` standardised by the running moments (0 where a feature has no spread)."""
        std = np.sqrt(m2 / max(n, 1))
        out = np.zeros_like(row)
        np.divide(row - mean, std, out=out, where=std > 0)
        return out

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
            model = LifelongClassifier(head=self._make_head(row.shape[1]))
        moments = None
        if self.scale:  # river's StandardScaler: update the moments, then transform
            n = self._count + 1
            mean = np.zeros(row.shape[1]) if self._mean is None else self._mean
            m2 = np.zeros(row.shape[1]) if self._m2 is None else self._m2
            delta = row[0] - mean
            mean = mean + delta / n
            m2 = m2 + delta * (row[0] - mean)
            moments = (n, mean, m2)
            row = self._scaled(row, mean, m2, n)
        with _BlasThreads(self.blas_threads):
            model.learn_one(row[0], code)
        # Commit: the model learned the row.
        if columns is not None:
            self.model_, self._columns = model, columns
            self.features_ = tuple(columns)
        if moments is not None:
            self._count, self._mean, self._m2 = moments
        if code == len(self.labels_):
            self._codes[y] = code
            self.labels_.append(y)

    def _query(self, x: dict[Hashable, Any]) -> np.ndarray:
        row = self._vector(x, self._columns)
        if self.scale and self._mean is not None and self._m2 is not None:
            row = self._scaled(row, self._mean, self._m2, self._count)
        return row

    def predict_proba_one(self, x: dict[Hashable, Any], **kwargs: Any) -> dict[Any, float]:
        """Probability of each label seen; ``{}`` before anything is learned."""
        if self.model_ is None:
            return {}
        row = self._query(x)
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
        row = self._query(x)
        with _BlasThreads(self.blas_threads):
            code = self.model_.predict_one(row[0])
        return self.labels_[int(code)]


def auto_width(dim: int) -> int:
    """The random features of ``head="auto"`` for ``dim`` input features: clip(16 d, 256, 4096)."""
    return int(min(4096, max(256, 16 * dim)))


def _shown(columns: dict[Hashable, int], limit: int = 5) -> str:
    names = [repr(name) for name in columns]
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
