"""LifelongClassifier: a frozen encoder feeding a streaming head."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from perennial.encoders.base import Encoder, as_encoder
from perennial.exceptions import (
    FeatureDimensionError,
    InputTypeError,
    InvalidParameterError,
    ModelMismatchError,
    NotFittedError,
    PersistenceError,
)
from perennial.heads import HEADS, Head, RidgeHead
from perennial.heads.base import FloatArray, Label, check_labels
from perennial.novelty import NoveltyDetector
from perennial.persistence import read_model_files, write_model_files

__all__ = ["LifelongClassifier"]

_REGISTERED_ENCODERS = ("text", "image", "identity")


def _batch_length(inputs: Any) -> int:
    if isinstance(inputs, (str, bytes)) or not hasattr(inputs, "__len__"):
        raise InputTypeError(
            f"expected a batch (a list or array of inputs), got {type(inputs).__name__}"
        )
    return len(inputs)


class LifelongClassifier:
    """A classifier that learns one pass, one example at a time, and never forgets.

    A frozen encoder turns inputs (texts, images, feature vectors) into features; a head keeps
    fixed-size statistics of them and answers from those alone. No input is kept: not in memory,
    not on disk. Learning a batch is all or nothing: on any error the model is unchanged.

    Parameters
    ----------
    encoder
        An encoder (``.name``, ``.encode``), a registry name (``"text"``, ``"image"``,
        ``"identity"``), any callable mapping a batch to an array, or None for numeric features.
    head
        A head from :mod:`perennial.heads`; default ``RidgeHead()``.
    unknown_rate
        Open-set recognition. None (default): every input gets the best known label. A rate
        ``r`` in (0, 1): an input whose novelty exceeds the threshold calibrated for rejecting a
        share ``r`` of in-scope inputs is *unknown*, and ``predict_one`` answers
        ``unknown_label`` for it. The threshold comes from the learned statistics alone (see
        :class:`perennial.novelty.NoveltyDetector`); :meth:`tune_threshold` sets one from
        labelled out-of-scope examples instead.
    unknown_label
        What ``predict_one`` and ``predict_many`` answer for an unknown input (default None).
    novelty_score
        The novelty score: ``"relative"`` (default, the relative Mahalanobis distance) or
        ``"combined"`` (adds per-class diagonal Gaussians; opt-in, see
        :mod:`perennial.novelty`).

    Examples
    --------
    >>> from perennial.heads import NCMHead
    >>> model = LifelongClassifier(head=NCMHead())
    >>> model.learn_many([[1.0, 0.0], [0.0, 1.0]], ["cat", "dog"])
    >>> model.learn_one([-1.0, -1.0], "bird")
    >>> model.predict_many([[0.9, 0.1], [-0.8, -1.2]])
    ['cat', 'bird']
    >>> model.classes_
    ['cat', 'dog', 'bird']
    """

    def __init__(
        self,
        encoder: Any = None,
        head: Head | None = None,
        *,
        unknown_rate: float | None = None,
        unknown_label: Any = None,
        novelty_score: str = "relative",
    ) -> None:
        self.encoder = encoder
        self.head = head if head is not None else RidgeHead()
        self.unknown_rate = unknown_rate
        self.unknown_label = unknown_label
        self._encoder: Encoder = as_encoder(encoder)
        if unknown_rate is not None and (
            isinstance(unknown_rate, bool)
            or not isinstance(unknown_rate, (int, float))
            or not 0.0 < unknown_rate < 1.0
        ):
            raise InvalidParameterError(
                f"unknown_rate must be None or strictly between 0 and 1, got {unknown_rate!r}"
            )
        self.novelty_: NoveltyDetector = NoveltyDetector(score=novelty_score)
        self.threshold_override_: float | None = None

    # --- introspection ----------------------------------------------------------------------------
    @property
    def classes_(self) -> list[Label]:
        """Known labels, in the order they were first learned."""
        return list(self.head.classes_)

    @property
    def n_seen_(self) -> int:
        """Examples whose statistics the model holds."""
        return self.head.n_seen_

    @property
    def state_bytes(self) -> int:
        """Bytes of learned statistics (fixed by the configuration and the number of classes)."""
        return self.head.state_bytes

    def __repr__(self) -> str:
        extra = "" if self.unknown_rate is None else f", unknown_rate={self.unknown_rate!r}"
        if self.novelty_.score_kind != "relative":
            extra += f", novelty_score={self.novelty_.score_kind!r}"
        return f"LifelongClassifier(encoder={self._encoder!r}, head={self.head!r}{extra})"

    def encode(self, inputs: Any) -> np.ndarray:
        """Features of a batch of inputs, as the head sees them."""
        _batch_length(inputs)
        return self._encoder.encode(inputs)

    # --- learning ---------------------------------------------------------------------------------
    def learn_one(self, x: Any, y: Label) -> None:
        """Learn one example."""
        self.learn_many([x], [y])

    def learn_many(self, X: Any, y: Any) -> None:
        """Learn a batch, whole or not at all."""
        n = _batch_length(X)
        check_labels(y, n)  # cheap checks first, before any encoding work
        features = self.encode(X)
        self._learn_features(self.head, self.novelty_, [(features, y)])

    def learn_batches(self, batches: Sequence[tuple[Any, Any]]) -> None:
        """Learn several batches as if one after another, all of them or none.

        The head's statistics are sums, so it takes the batches in one update: one pass over
        its second moment instead of one per batch (what a service that acknowledges examples
        one by one needs to keep up). The novelty detector takes them in order, batch by
        batch, so its calibration is the one :meth:`learn_many` per batch would give. The
        result equals learning the batches one after another, to rounding.
        """
        if isinstance(batches, (str, bytes)) or not isinstance(batches, Sequence):
            raise InputTypeError(
                f"expected a sequence of (inputs, labels) pairs, got {type(batches).__name__}"
            )
        if not batches:
            return
        pairs = []
        for X, y in batches:
            check_labels(y, _batch_length(X))
            pairs.append((self.encode(X), list(y)))
        self._learn_features(self.head, self.novelty_, pairs)

    def _novelty_in_sync(self) -> bool:
        """Whether the novelty statistics describe the same examples as the head.

        They do unless the head was changed directly, or the model was saved before open-set
        recognition existed; then novelty is off for this model (and stays off) rather than wrong.
        """
        novelty, head = self.novelty_, self.head
        if getattr(self, "_novelty_off", False):
            return False
        return novelty.n_seen == head.n_seen_ and set(novelty.labels_) == set(head.classes_)

    @staticmethod
    def _learn_features(
        head: Head, novelty: NoveltyDetector, batches: Sequence[tuple[Any, Any]]
    ) -> None:
        """Learn encoded ``(features, labels)`` batches, in order; all of them or none.

        The novelty detector takes them one by one (its calibration scores each batch before
        learning it); the head, whose statistics are sums, takes them in one update.
        """
        if len(batches) == 1:
            features, labels = batches[0]
        else:
            widths = {np.shape(f)[1] if np.ndim(f) == 2 else None for f, _ in batches}
            if len(widths) != 1:
                raise FeatureDimensionError(
                    f"the batches' features have different widths ({sorted(map(str, widths))})"
                )
            features = np.concatenate([f for f, _ in batches])
            labels = [label for _, y in batches for label in y]
        in_sync = novelty.n_seen == head.n_seen_ and set(novelty.labels_) == set(head.classes_)
        if not in_sync:
            head.learn_many(features, labels)
            return
        before = novelty._snapshot()
        try:
            for part, y in batches:
                novelty.learn_many(part, y)
            head.learn_many(features, labels)
        except BaseException:
            novelty._restore(before)
            raise

    def partial_fit(self, X: Any, y: Any) -> LifelongClassifier:
        """scikit-learn spelling of :meth:`learn_many`; returns the model."""
        self.learn_many(X, y)
        return self

    def fit(self, X: Any, y: Any) -> LifelongClassifier:
        """Forget everything, then learn ``X``; returns the model."""
        n = _batch_length(X)
        check_labels(y, n)
        features = self.encode(X)
        fresh = self.head.clone()
        novelty = NoveltyDetector(**self.novelty_.get_params())
        self._learn_features(fresh, novelty, [(features, y)])
        self.head, self.novelty_, self.threshold_override_ = fresh, novelty, None
        return self

    def forget(self, label: Label) -> None:
        """Remove a class; see the head's documentation for what is removed exactly."""
        in_sync = self._novelty_in_sync()
        self.head.forget(label)
        if in_sync and label in self.novelty_.labels_:
            self.novelty_.forget(label)

    def unlearn_many(self, X: Any, y: Any) -> None:
        """Remove examples learned before, exactly: the model becomes the one that never saw them.

        The inputs are encoded again and their statistics subtracted (see
        :meth:`perennial.heads.Head.unlearn_many`). A class left with no example disappears.
        Classes are compared by label: a model retrained on the remaining data may list them in
        another order. The model cannot check that these are the very examples it learned (it
        kept none); it checks that each label is known and that no class loses more examples
        than it counted. Unlearning examples that were never learned corrupts the model silently.
        All or nothing: on any error the model is unchanged.

        Examples
        --------
        >>> from perennial.heads import NCMHead
        >>> model = LifelongClassifier(head=NCMHead())
        >>> model.learn_many([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0]], ["cat", "dog", "dog"])
        >>> model.unlearn([[0.0, 1.0], [0.0, 2.0]], ["dog", "dog"])
        >>> model.classes_, model.n_seen_
        (['cat'], 1)
        """
        n = _batch_length(X)
        check_labels(y, n)  # cheap checks first, before any encoding work
        features = self.encode(X)
        if not self._novelty_in_sync():
            self.head.unlearn_many(features, y)
            return
        before = self.novelty_._snapshot()
        self.novelty_.unlearn_many(features, y)
        try:
            self.head.unlearn_many(features, y)
        except BaseException:
            self.novelty_._restore(before)
            raise

    unlearn = unlearn_many

    def unlearn_one(self, x: Any, y: Label) -> None:
        """Remove one example learned before (see :meth:`unlearn_many`)."""
        self.unlearn_many([x], [y])

    def merge(self, other: LifelongClassifier) -> None:
        """Add what ``other`` learned: this model becomes the model of both models' data.

        Both must use the same encoder (the same name, which identifies the feature space, as
        :meth:`load` checks) and heads of the same type, parameters and projection. Classes are
        matched by label; labels new to this model are appended. ``other`` is unchanged.

        Raises
        ------
        ModelMismatchError
            Different encoders or heads; the message names the difference, and this model is
            unchanged.

        Examples
        --------
        >>> from perennial.heads import NCMHead
        >>> here, there = LifelongClassifier(head=NCMHead()), LifelongClassifier(head=NCMHead())
        >>> here.learn_many([[1.0, 0.0]], ["cat"])
        >>> there.learn_many([[0.0, 1.0], [0.8, 0.0]], ["dog", "cat"])
        >>> here.merge(there)
        >>> here.classes_, here.n_seen_
        (['cat', 'dog'], 3)
        """
        if not isinstance(other, LifelongClassifier):
            raise InputTypeError(f"can only merge a LifelongClassifier, got {type(other).__name__}")
        mine, theirs = self._encoder.name, other._encoder.name
        if mine != theirs:
            raise ModelMismatchError(
                f"cannot merge models with different encoders: {mine!r} here, {theirs!r} in the "
                "other; their features would not match"
            )
        if not (self._novelty_in_sync() and other._novelty_in_sync()):
            self.head.merge(other.head)
            self.novelty_ = NoveltyDetector(**self.novelty_.get_params())
            self._novelty_off = self.head.n_seen_ > 0
            return
        before = self.novelty_._snapshot()
        self.novelty_.merge(other.novelty_)
        try:
            self.head.merge(other.head)
        except BaseException:
            self.novelty_._restore(before)
            raise

    # --- prediction ------------------------------------------------------------------------------
    def _require_fitted(self) -> None:
        if not self.head.is_fitted:
            raise NotFittedError("the model has learned nothing yet; learn before predicting")

    # --- prediction, public ------------------------------------------------------------------
    def decision_scores(self, X: Any) -> FloatArray:
        """Scores (n, n_classes), columns ordered like ``classes_``."""
        self._require_fitted()
        return self.head.decision_scores(self.encode(X))

    def predict_many(self, X: Any) -> list[Any]:
        """The most likely label of each input (``unknown_label`` for unknown inputs)."""
        if self.unknown_rate is None and self.threshold_override_ is None:
            scores = self.decision_scores(X)
            return [self.head.classes_[i] for i in np.argmax(scores, axis=1)]
        return [row["label"] for row in self.predict_detailed(X, top=1)]

    def predict_one(self, x: Any) -> Any:
        """The most likely label of one input, or ``unknown_label`` if it is unknown."""
        return self.predict_many([x])[0]

    # --- open-set recognition ----------------------------------------------------------------------
    def novelty_scores(self, X: Any) -> FloatArray:
        """How unlike everything learned each input is (relative Mahalanobis distance)."""
        self._require_novelty()
        return self.novelty_.score(self.encode(X))

    def _require_novelty(self) -> None:
        self._require_fitted()
        if not self._novelty_in_sync():
            raise NotFittedError(
                "this model has no open-set statistics (saved before they existed, or its head "
                "was changed directly); relearn it to get novelty scores"
            )

    @property
    def unknown_threshold_(self) -> float | None:
        """The novelty above which an input is unknown (None while open-set is off)."""
        if self.threshold_override_ is not None:
            return self.threshold_override_
        if self.unknown_rate is None:
            return None
        self._require_novelty()
        return self.novelty_.threshold(self.unknown_rate)

    def predict_detailed(self, X: Any, top: int = 3) -> list[dict[str, Any]]:
        """Label, score, novelty, unknown decision and the ``top`` best labels of each input.

        ``label`` is the best known label, or ``unknown_label`` when the input is unknown;
        ``score`` is the head's score of the best known label; ``top`` lists
        ``{"label", "score"}`` pairs, best first.

        Examples
        --------
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> X = np.vstack([rng.normal(m, 1.0, (50, 4)) for m in (-4, 0, 4)])
        >>> model = LifelongClassifier(unknown_rate=0.05)
        >>> model.learn_many(X, ["a"] * 50 + ["b"] * 50 + ["c"] * 50)
        >>> [row["label"] for row in model.predict_detailed([[4, 4, 4, 4], [0, 30, -30, 0]])]
        ['c', None]
        """
        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise InvalidParameterError(f"top must be a positive int, got {top!r}")
        self._require_fitted()
        features = self.encode(X)
        scores = self.head.decision_scores(features)
        threshold = self.unknown_threshold_
        novelty = (
            self.novelty_.score(features) if threshold is not None or self._has_novelty() else None
        )
        classes = self.head.classes_
        order = np.argsort(-scores, axis=1, kind="stable")[:, :top]
        rows = []
        for i in range(len(scores)):
            best = int(order[i, 0])
            value = None if novelty is None else float(novelty[i])
            unknown = bool(threshold is not None and value is not None and value > threshold)
            rows.append(
                {
                    "label": self.unknown_label if unknown else classes[best],
                    "score": float(scores[i, best]),
                    "novelty": value,
                    "unknown": unknown,
                    "top": [{"label": classes[j], "score": float(scores[i, j])} for j in order[i]],
                }
            )
        return rows

    def _has_novelty(self) -> bool:
        return self._novelty_in_sync() and int((self.novelty_.counts_ > 0).sum()) >= 2

    def tune_threshold(self, X_out: Any, X_in: Any = None) -> float:
        """Set the unknown threshold from labelled out-of-scope examples; returns it.

        Chooses the threshold that maximises the mean of the out-of-scope recall and the
        in-scope acceptance rate. ``X_in`` are in-scope examples (default: the calibration
        scores the model drew from its training stream stand in for them). The threshold is
        kept until :meth:`fit` or ``tune_threshold`` again; it is saved with the model.
        """
        self._require_novelty()
        outside = self.novelty_.score(self.encode(X_out))
        inside = (
            self.novelty_.calibration_scores()
            if X_in is None
            else self.novelty_.score(self.encode(X_in))
        )
        if len(inside) == 0:
            raise NotFittedError("no in-scope scores to tune against; pass X_in")
        candidates = np.unique(np.concatenate([inside, outside]))
        recall = 1.0 - np.searchsorted(np.sort(outside), candidates, side="right") / len(outside)
        accept = np.searchsorted(np.sort(inside), candidates, side="right") / len(inside)
        best = int(np.argmax(recall + accept))
        self.threshold_override_ = float(candidates[best])
        return self.threshold_override_

    def predict(self, X: Any) -> np.ndarray:
        """scikit-learn spelling of :meth:`predict_many`, as an array."""
        labels = self.predict_many(X)
        result = np.empty(len(labels), dtype=object)
        result[:] = labels
        return result

    def predict_proba_many(self, X: Any) -> FloatArray:
        """Class probabilities (n, n_classes), columns ordered like ``classes_``."""
        self._require_fitted()
        return self.head.predict_proba_many(self.encode(X))

    predict_proba = predict_proba_many

    def predict_proba_one(self, x: Any) -> dict[Label, float]:
        """Class probabilities of one input, by label."""
        row = self.predict_proba_many([x])[0]
        return {label: float(p) for label, p in zip(self.head.classes_, row, strict=True)}

    # --- persistence ------------------------------------------------------------------------------
    def _encoder_spec(self) -> dict[str, Any]:
        kind = getattr(self._encoder, "kind", None)
        spec: dict[str, Any] = {"name": self._encoder.name, "kind": kind}
        if kind in _REGISTERED_ENCODERS:
            params = {}
            for key in ("pooling", "backend", "layers", "batch_size", "num_threads", "image_size"):
                if hasattr(self._encoder, key):
                    params[key] = getattr(self._encoder, key)
            spec["params"] = params
        return spec

    def save(self, path: str | Path) -> Path:
        """Write the learned statistics to the directory ``path`` (atomically)."""
        head_name = next((n for n, cls in HEADS.items() if type(self.head) is cls), None)
        if head_name is None:
            raise PersistenceError(f"cannot save a head of type {type(self.head).__name__}")
        head_meta, arrays = self.head.get_state()
        novelty_meta, novelty_arrays = self.novelty_.get_state()
        if any(key.startswith("novelty.") for key in arrays):
            raise PersistenceError("head state names clash with the novelty statistics")
        arrays = {**arrays, **{f"novelty.{key}": value for key, value in novelty_arrays.items()}}
        payload = {
            "learner": "LifelongClassifier",
            "encoder": self._encoder_spec(),
            "head": {"name": head_name, "params": self.head.get_params(), "state": head_meta},
            "open_set": {
                "unknown_rate": self.unknown_rate,
                "unknown_label": self.unknown_label,
                "threshold_override": self.threshold_override_,
                "novelty": novelty_meta,
            },
        }
        return write_model_files(path, payload, arrays)

    @classmethod
    def load(cls, path: str | Path, encoder: Any = None) -> LifelongClassifier:
        """Read a model written by :meth:`save`.

        Parameters
        ----------
        encoder
            The encoder to use; it must have the name recorded in the model. When None, a
            registered encoder (text, image, identity) is rebuilt from the record.
        """
        payload, arrays = read_model_files(path)
        try:
            encoder_spec = dict(payload["encoder"])
            head_spec = dict(payload["head"])
            head_cls = HEADS[str(head_spec["name"])]
            head = head_cls(**dict(head_spec["params"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ModelMismatchError(
                f"{path}: the model record is incomplete or names an unknown head: {error}"
            ) from error
        if encoder is None:
            kind = encoder_spec.get("kind")
            if kind not in _REGISTERED_ENCODERS:
                raise PersistenceError(
                    f"{path} was saved with the custom encoder {encoder_spec.get('name')!r}; "
                    "pass it as load(path, encoder=...)"
                )
            from perennial.encoders import make_encoder

            encoder = make_encoder(str(kind), **encoder_spec.get("params", {}))
        resolved = as_encoder(encoder)
        if resolved.name != encoder_spec.get("name"):
            raise ModelMismatchError(
                f"{path} was learned with encoder {encoder_spec.get('name')!r}, "
                f"not {resolved.name!r}; its features would not match"
            )
        novelty_arrays = {
            key.removeprefix("novelty."): value
            for key, value in arrays.items()
            if key.startswith("novelty.")
        }
        head_arrays = {k: v for k, v in arrays.items() if not k.startswith("novelty.")}
        head.set_state(dict(head_spec["state"]), head_arrays)
        open_set = dict(payload.get("open_set") or {})
        try:
            model = cls(
                encoder=encoder,
                head=head,
                unknown_rate=open_set.get("unknown_rate"),
                unknown_label=open_set.get("unknown_label"),
            )
            if open_set:
                novelty_meta = dict(open_set["novelty"])
                model.novelty_ = NoveltyDetector(**dict(novelty_meta["params"]))
                model.novelty_.set_state(novelty_meta, novelty_arrays)
                override = open_set.get("threshold_override")
                model.threshold_override_ = None if override is None else float(override)
        except (KeyError, TypeError, ValueError) as error:
            raise ModelMismatchError(
                f"{path}: the open-set record is incomplete: {error}"
            ) from error
        return model
