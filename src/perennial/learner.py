"""LifelongClassifier: a frozen encoder feeding a streaming head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from perennial.encoders.base import Encoder, as_encoder
from perennial.exceptions import (
    InputTypeError,
    ModelMismatchError,
    NotFittedError,
    PersistenceError,
)
from perennial.heads import HEADS, Head, RidgeHead
from perennial.heads.base import FloatArray, Label, check_labels
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

    def __init__(self, encoder: Any = None, head: Head | None = None) -> None:
        self.encoder = encoder
        self.head = head if head is not None else RidgeHead()
        self._encoder: Encoder = as_encoder(encoder)

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
        return f"LifelongClassifier(encoder={self._encoder!r}, head={self.head!r})"

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
        self.head.learn_many(features, y)

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
        fresh.learn_many(features, y)
        self.head = fresh
        return self

    def forget(self, label: Label) -> None:
        """Remove a class; see the head's documentation for what is removed exactly."""
        self.head.forget(label)

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
        self.head.unlearn_many(features, y)

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
        self.head.merge(other.head)

    # --- prediction ------------------------------------------------------------------------------
    def _require_fitted(self) -> None:
        if not self.head.is_fitted:
            raise NotFittedError("the model has learned nothing yet; learn before predicting")

    # --- prediction, public ------------------------------------------------------------------
    def decision_scores(self, X: Any) -> FloatArray:
        """Scores (n, n_classes), columns ordered like ``classes_``."""
        self._require_fitted()
        return self.head.decision_scores(self.encode(X))

    def predict_many(self, X: Any) -> list[Label]:
        """The most likely label of each input."""
        scores = self.decision_scores(X)
        return [self.head.classes_[i] for i in np.argmax(scores, axis=1)]

    def predict_one(self, x: Any) -> Label:
        """The most likely label of one input."""
        return self.predict_many([x])[0]

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
        payload = {
            "learner": "LifelongClassifier",
            "encoder": self._encoder_spec(),
            "head": {"name": head_name, "params": self.head.get_params(), "state": head_meta},
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
        head.set_state(dict(head_spec["state"]), arrays)
        return cls(encoder=encoder, head=head)
