"""The ledger: what the store knows of the model without asking it.

The store acknowledges an update before the refresher applies it, so it cannot check an update
against the model. It checks it against the ledger instead: per class, the count, the feature
sums and the sums of squares of every acknowledged update (a
:class:`~perennial.heads.statistics.ClassStatistics` with squares, ``2 k d`` floats for ``k``
classes of ``d`` features, whatever was learned). An unlearn must name known classes, take no
more examples than a class counted, and leave no class with statistics that no examples have (a
negative variance, a variance in a class of one example, sums in a class of none: see
:func:`~perennial.heads.statistics.check_subtraction`). Examples a class never learned almost
always fail that test; the model itself then never receives them, and its covariances cannot be
left indefinite by them.

The refresher keeps its own copy in step with the working model (it applies the same records)
and saves it beside each snapshot (``snapshot-<version>/ledger/``), so that recovery rebuilds
it from the snapshot and the journal, without the examples. A snapshot saved without one (by an
earlier version, or a model adopted from ``LifelongClassifier.save``) gives a ledger whose
counts come from the head and whose sums and squares come from the open-set gate where it keeps
them; a class whose sums or squares are unknown (stored as NaN) is checked by its count alone
until it is forgotten or emptied.

A model with a pretrained classifier (:mod:`perennial.pretrained`) also has classes that no
example taught: the ledger keeps a copy of that classifier's mask of forgotten classes
(:attr:`Ledger.pretrained`), taken from the model it was rebuilt with and changed by the same
``forget`` and ``restore`` records as the model's, so that the store can check a forget or a
restore and list the classes in the model's order without asking the model. It is not saved
with the ledger: the snapshot's model records it.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from perennial.exceptions import ModelMismatchError, PersistenceError, UnknownLabelError
from perennial.heads.base import check_unlearnable
from perennial.heads.statistics import ClassStatistics
from perennial.persistence import read_model_files, write_model_files
from perennial.service.journal import Record

if TYPE_CHECKING:
    from perennial.learner import LifelongClassifier
    from perennial.pretrained import PretrainedHead

__all__ = ["LEDGER_DIRECTORY", "Ledger"]

#: Where a snapshot keeps its ledger, inside the snapshot directory.
LEDGER_DIRECTORY = "ledger"
_FORMAT = "perennial-ledger"

logger = logging.getLogger("perennial.service")


class Ledger:
    """Per-class counts, feature sums and sums of squares of the acknowledged updates.

    Examples
    --------
    >>> import numpy as np
    >>> ledger = Ledger()
    >>> ledger.apply(Record(1, "learn", ("a", "a"), np.array([[1.0], [3.0]], np.float32)))
    >>> ledger.counts()
    [('a', 2)]
    >>> ledger.check_unlearn(np.array([[2.0]]), ["a"])  # would leave one example with a variance
    Traceback (most recent call last):
    ...
    perennial.exceptions.InvalidInputError: cannot unlearn these examples of 'a': the one example it would keep has a sum of 2 but a sum of squares of 6 in feature 0, which no example has; they are not (all) examples the model learned
    """

    def __init__(self) -> None:
        self.labels: list[str] = []
        self._index: dict[str, int] = {}
        self.statistics: ClassStatistics | None = None  # made with the first learned example
        #: The model's pretrained classifier (its mask of forgotten classes is what changes).
        self.pretrained: PretrainedHead | None = None

    # --- reading ---------------------------------------------------------------------------------
    def counts(self) -> list[tuple[str, int]]:
        """The classes, in the model's order, with their example counts."""
        if self.statistics is None:
            return []
        return list(zip(self.labels, self.statistics.counts.tolist(), strict=True))

    def layout(self) -> list[tuple[str, int]]:
        """Every class the model answers, in its ``classes_`` order, with example counts.

        Without a pretrained classifier, :meth:`counts`. With one, its classes not forgotten
        first (in its output order, counting the examples of a learned class of the same name),
        then the other learned classes, as :attr:`LifelongClassifier.classes_` lists them.
        """
        counts = self.counts()
        pretrained = self.pretrained
        if pretrained is None:
            return counts
        learned = dict(counts)
        visible = [pretrained.names[i] for i in pretrained.visible]
        shown = set(visible)
        listed = [(name, learned.get(name, 0)) for name in visible]
        return listed + [(label, count) for label, count in counts if label not in shown]

    def __len__(self) -> int:
        return len(self.labels)

    def __contains__(self, label: object) -> bool:
        """Whether ``label`` is a learned class (see :meth:`check_forget` for the others)."""
        return label in self._index

    def check_forget(self, label: str) -> None:
        """Refuse to forget a class the model does not answer; changes nothing."""
        pretrained = self.pretrained
        if label in self._index or (pretrained is not None and pretrained.is_visible(label)):
            return
        known = f"{len(self.labels)} learned classes"
        if pretrained is not None:
            known += f" and the classes of {pretrained.name!r} not forgotten"
        raise UnknownLabelError(f"cannot forget {label!r}: the model has no such class ({known})")

    def check_restore(self, label: str) -> None:
        """Refuse to restore what is not a forgotten pretrained class; changes nothing.

        Raises :class:`~perennial.exceptions.NotFittedError` without a pretrained classifier,
        and what :meth:`PretrainedHead.restore` raises otherwise.
        """
        from perennial.exceptions import NotFittedError

        if self.pretrained is None:
            raise NotFittedError(
                f"cannot restore {label!r}: this model has no pretrained classifier (only a "
                "forgotten class of one can be restored)"
            )
        copy.deepcopy(self.pretrained).restore(label)  # the same checks, on a copy of the mask

    def check_unlearn(self, features: NDArray[np.float64], labels: list[str]) -> None:
        """Refuse an unlearn before it is acknowledged; changes nothing.

        Raises :class:`~perennial.exceptions.UnknownLabelError` for a class the model does not
        have, and :class:`~perennial.exceptions.InvalidInputError` for more examples than a
        class counted or examples whose removal would leave impossible statistics (the
        message names the class).
        """
        pretrained = self.pretrained
        if pretrained is not None:
            for label in labels:
                if label not in self._index and pretrained.index_of(label) is not None:
                    raise UnknownLabelError(
                        f"cannot unlearn examples of {label!r}: it is a class of the pretrained "
                        f"classifier {pretrained.name!r}, which learns nothing, and no example "
                        "of it was learned"
                    )
        check_unlearnable(labels, dict(self.counts()))
        assert self.statistics is not None  # known labels: something was learned
        columns = np.array([self._index[label] for label in labels], dtype=np.intp)
        self.statistics.check_subtract(features, columns, self.labels)

    # --- changing --------------------------------------------------------------------------------
    def apply(self, record: Record) -> None:
        """Take an acknowledged update into account (the store has checked it)."""
        labels = list(record.labels)
        if record.operation == "forget":
            # As LifelongClassifier.forget: the learned class of that name, if any, and the
            # pretrained class of that name, if it is answered.
            pretrained = self.pretrained
            if pretrained is not None and pretrained.is_visible(labels[0]):
                pretrained.hide(labels[0])
            index = self._index.get(labels[0])
            if index is not None:
                assert self.statistics is not None
                self.statistics.drop(index)
                del self.labels[index]
                self._reindex()
            return
        if record.operation == "restore":
            assert self.pretrained is not None
            self.pretrained.restore(labels[0])
            return
        assert record.features is not None
        X = record.features.astype(np.float64)
        if record.operation == "learn":
            if self.statistics is None:
                self.statistics = ClassStatistics(X.shape[1], squares=True)
            new: dict[str, int] = {}
            columns = []
            for label in labels:
                column = self._index.get(label)
                if column is None:
                    column = new.setdefault(label, len(self.labels) + len(new))
                columns.append(column)
            self.statistics.add(X, np.array(columns, dtype=np.intp), n_new=len(new))
            self.labels += list(new)
            self._reindex()
            return
        assert self.statistics is not None
        columns_array = np.array([self._index[label] for label in labels], dtype=np.intp)
        left = self.statistics.counts - np.bincount(columns_array, minlength=len(self.labels))
        kept = np.flatnonzero(left > 0).astype(np.intp)
        self.statistics.subtract(X, columns_array, kept)
        self.labels = [self.labels[i] for i in kept]
        self._reindex()

    def _reindex(self) -> None:
        self._index = {label: i for i, label in enumerate(self.labels)}

    # --- saving and rebuilding -------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """Write the ledger to ``directory`` (atomically, checksummed)."""
        stats = self.statistics
        payload: dict[str, Any] = {
            "format": _FORMAT,
            "labels": list(self.labels),
            "dim": None if stats is None else stats.dim,
        }
        write_model_files(directory, payload, {} if stats is None else stats.state_arrays())

    @classmethod
    def load(cls, directory: Path) -> Ledger:
        """Read what :meth:`save` wrote; :class:`PersistenceError` if it is damaged."""
        payload, arrays = read_model_files(directory)
        try:
            if payload.get("format") != _FORMAT:
                raise ValueError(f"format {payload.get('format')!r}, expected {_FORMAT!r}")
            labels = [str(label) for label in payload["labels"]]
            dim = None if payload["dim"] is None else int(payload["dim"])
        except (KeyError, TypeError, ValueError) as error:
            raise ModelMismatchError(f"{directory} is not a readable ledger: {error}") from error
        ledger = cls()
        if dim is None:
            if labels or arrays:
                raise ModelMismatchError(f"{directory}: an empty ledger holds classes or arrays")
            return ledger
        stats = ClassStatistics(dim, squares=True)
        expected = stats.expected_shapes(len(labels))
        found = {name: tuple(array.shape) for name, array in arrays.items()}
        if found != expected or len(set(labels)) != len(labels):
            raise ModelMismatchError(
                f"{directory}: a ledger of {len(labels)} distinct classes and {dim} features "
                f"needs arrays {expected}, got {found}"
            )
        stats.load_arrays(arrays, n=int(np.sum(arrays["counts"])))
        ledger.statistics, ledger.labels = stats, labels
        ledger._reindex()
        return ledger

    @classmethod
    def from_model(cls, model: LifelongClassifier) -> Ledger:
        """The ledger of a model saved without one: counts exact, sums and squares if kept."""
        ledger = cls()
        head = model.head
        if head.dim_ is None or not head.is_fitted:
            return ledger
        counts = np.array(head._class_counts(), dtype=np.int64)
        k, dim = len(counts), int(head.dim_)
        stats = ClassStatistics(dim, squares=True)
        stats.counts, stats.n = counts.copy(), int(counts.sum())
        stats.sums = np.full((k, dim), np.nan)
        stats.squares = np.full((k, dim), np.nan)
        kept = [model.gate_.statistics_ if model.gate_ is not None else None]
        kept.append(getattr(head, "statistics_", None))
        for source in kept:
            if (
                isinstance(source, ClassStatistics)
                and source.dim == dim
                and np.array_equal(source.counts, counts)
            ):
                stats.sums = source.sums.copy()
                if source.squares is not None:
                    stats.squares = source.squares.copy()
                break
        ledger.statistics, ledger.labels = stats, [str(label) for label in head.classes_]
        ledger._reindex()
        return ledger

    @classmethod
    def for_snapshot(cls, snapshot: Path | None, model: LifelongClassifier) -> Ledger:
        """The ledger saved in ``snapshot`` if it is there and agrees with ``model``; else
        :meth:`from_model` (logged). Either way with a copy of the model's pretrained classifier.
        """
        ledger = cls._for_snapshot(snapshot, model)
        ledger.pretrained = None if model.pretrained_ is None else copy.deepcopy(model.pretrained_)
        return ledger

    @classmethod
    def _for_snapshot(cls, snapshot: Path | None, model: LifelongClassifier) -> Ledger:
        if snapshot is not None and (snapshot / LEDGER_DIRECTORY).is_dir():
            try:
                ledger = cls.load(snapshot / LEDGER_DIRECTORY)
            except PersistenceError as error:
                logger.warning(
                    "the snapshot's ledger is unusable (%s); rebuilt from the model", error
                )
            else:
                head = model.head
                counts = head._class_counts().tolist() if head.is_fitted else []
                if ledger.counts() == [
                    (str(c), int(n)) for c, n in zip(head.classes_, counts, strict=True)
                ]:
                    return ledger
                logger.warning(
                    "the ledger in %s disagrees with the model's classes; rebuilt from the model",
                    snapshot,
                )
        elif snapshot is not None:
            logger.info(
                "the snapshot %s has no ledger (saved by an earlier version): classes whose "
                "squares the model does not keep are checked by count only",
                snapshot,
            )
        return cls.from_model(model)
