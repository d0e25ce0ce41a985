"""LifelongClassifier: a frozen encoder feeding a streaming head, and an optional open-set gate."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from perennial.encoders import ENCODERS
from perennial.encoders.base import (
    Encoder,
    IdentityEncoder,
    Precomputed,
    as_encoder,
    encoder_spec,
)
from perennial.exceptions import (
    FeatureDimensionError,
    InputTypeError,
    InvalidParameterError,
    ModelMismatchError,
    NotFittedError,
    PersistenceError,
)
from perennial.heads import HEADS, Head, RidgeHead, make_head, registered_name
from perennial.heads.base import FloatArray, Label, check_features, check_labels
from perennial.novelty import SCORES
from perennial.openset import OpenSetGate
from perennial.params import check_choice, check_fraction, check_int
from perennial.persistence import read_model_files, write_model_files

__all__ = ["LifelongClassifier"]

NOVELTY_SCORES = ("auto", *SCORES)


# Encoders whose ``encode`` returns check_features' output (as float32).
_VALIDATING_ENCODERS = (IdentityEncoder, Precomputed)


def _one(x: Any) -> Any:
    """A batch of the one input ``x`` (an array gains a leading axis: no list to convert)."""
    return x[np.newaxis] if isinstance(x, np.ndarray) else [x]


def _batch_length(inputs: Any) -> int:
    if isinstance(inputs, (str, bytes)) or not hasattr(inputs, "__len__"):
        raise InputTypeError(
            f"expected a batch (a list or array of inputs), got {type(inputs).__name__}"
        )
    return len(inputs)


def _resolve_head(head: Any) -> Head:
    if head is None:
        return RidgeHead()
    if isinstance(head, str):
        return make_head(head)
    if isinstance(head, Head):
        return head
    raise InvalidParameterError(
        f"head must be a Head, a head name ({', '.join(sorted(HEADS))}) or None, "
        f"got {type(head).__name__} ({head!r})"
    )


def _check_unknown_rate(rate: Any) -> float | None:
    return None if rate is None else check_fraction("unknown_rate", rate)


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
        A head from :mod:`perennial.heads` or its name (``"ridge"``, ``"ridge-ensemble"``,
        ``"slda"``, ``"ncm"``); default ``RidgeHead()``.
    unknown_rate
        Open-set recognition. None (default): closed set, every input gets the best known label,
        and no open-set statistics are kept. A rate ``r`` in (0, 1): an
        :class:`~perennial.openset.OpenSetGate` learns beside the head, and an input whose
        novelty exceeds the threshold calibrated for rejecting a share ``r`` of in-scope inputs is
        *unknown*: ``predict_one`` answers ``unknown_label`` for it. The threshold comes from the
        learning stream alone; :meth:`tune_threshold` sets one from labelled out-of-scope examples
        instead. Open set can be turned on while the model is empty; it can always be turned off.
    unknown_label
        What ``predict_one`` and ``predict_many`` answer for an unknown input (default None).
    novelty_score
        ``"auto"`` (default): ``"combined"`` for the text encoder's dense sentence embeddings,
        ``"relative"`` for other features; or either by name (see :mod:`perennial.novelty` for
        both and for why).

    Examples
    --------
    >>> model = LifelongClassifier(head="ncm")
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
        head: Head | str | None = None,
        *,
        unknown_rate: float | None = None,
        unknown_label: Any = None,
        novelty_score: str = "auto",
    ) -> None:
        self.encoder = encoder
        self._encoder: Encoder = as_encoder(encoder)
        self.head = _resolve_head(head)
        self.novelty_score = check_choice("novelty_score", novelty_score, NOVELTY_SCORES)
        self.unknown_label = unknown_label
        self._unknown_rate = _check_unknown_rate(unknown_rate)
        self.gate_: OpenSetGate | None = (
            self._new_gate() if self._unknown_rate is not None else None
        )

    # --- parameters -------------------------------------------------------------------------------
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's arguments, read back (scikit-learn's convention)."""
        names = [
            p.name
            for p in inspect.signature(type(self).__init__).parameters.values()
            if p.name != "self"
        ]
        return {name: getattr(self, name) for name in names}

    def set_params(self, **params: Any) -> LifelongClassifier:
        """Change parameters; only those that keep what was learned valid.

        ``unknown_rate``, ``unknown_label`` may change at any time (open set can be turned on only
        while the model is empty, or if it kept open-set statistics all along). ``encoder``,
        ``head`` and ``novelty_score`` may change only while the model has learned nothing.
        """
        known = self.get_params()
        for name in params:
            if name not in known:
                raise InvalidParameterError(
                    f"unknown parameter {name!r}; LifelongClassifier takes {', '.join(known)}"
                )
        structural = {"encoder", "head", "novelty_score"} & set(params)
        if structural and self.n_seen_ > 0:
            raise InvalidParameterError(
                f"cannot change {', '.join(sorted(structural))} of a model that has learned "
                f"{self.n_seen_} examples; build a new model"
            )
        merged = {**known, **params}
        fresh = type(self)(**merged)  # validates everything before anything changes
        if structural:
            self.__dict__.update(fresh.__dict__)
            return self
        if "unknown_rate" in params:
            self.unknown_rate = params["unknown_rate"]
        if "unknown_label" in params:
            self.unknown_label = params["unknown_label"]
        return self

    @property
    def unknown_rate(self) -> float | None:
        """The target in-scope rejection rate of the open-set gate, or None (closed set)."""
        return self._unknown_rate

    @unknown_rate.setter
    def unknown_rate(self, rate: float | None) -> None:
        rate = _check_unknown_rate(rate)
        if rate is not None and self.gate_ is None:
            if self.n_seen_ > 0:
                raise InvalidParameterError(
                    f"cannot turn open set on for a model that learned {self.n_seen_} examples "
                    "without it: the gate needs their statistics; build the model with "
                    "unknown_rate=... and learn again"
                )
            self.gate_ = self._new_gate()
        self._unknown_rate = rate

    def _resolved_novelty_score(self) -> str:
        if self.novelty_score != "auto":
            return self.novelty_score
        return "combined" if getattr(self._encoder, "kind", None) == "text" else "relative"

    def _new_gate(self) -> OpenSetGate:
        return OpenSetGate(
            score=self._resolved_novelty_score(),
            exact_forget=bool(getattr(self.head, "exact_forget", False)),
        )

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
        """Bytes of learned statistics, the open-set gate's included."""
        gate = self.gate_
        extra = 0 if gate is None or gate.statistics_ is None else gate.statistics_.nbytes
        return self.head.state_bytes + extra

    def __repr__(self) -> str:
        extra = "" if self.unknown_rate is None else f", unknown_rate={self.unknown_rate!r}"
        if self.novelty_score != "auto":
            extra += f", novelty_score={self.novelty_score!r}"
        return f"LifelongClassifier(encoder={self._encoder!r}, head={self.head!r}{extra})"

    def encode(self, inputs: Any) -> np.ndarray:
        """Features of a batch of inputs, as the head sees them."""
        _batch_length(inputs)
        return self._encoder.encode(inputs)

    def _features(self, inputs: Any) -> FloatArray:
        """Encoded, validated float64 features of the width the model learned."""
        dim = self.head.dim_
        if dim is None and self.gate_ is not None:
            dim = self.gate_.dim
        features = self.encode(inputs)
        if type(self._encoder) in _VALIDATING_ENCODERS:
            # Their output went through check_features already: finite, 2-D, not empty.
            if dim is not None and features.shape[1] != dim:
                check_features(features[:1], dim)  # raises the usual FeatureDimensionError
            return features.astype(np.float64)
        return check_features(features, dim)

    # --- learning ---------------------------------------------------------------------------------
    def learn_one(self, x: Any, y: Label) -> None:
        """Learn one example."""
        self.learn_many(_one(x), [y])

    def learn_many(self, X: Any, y: Any) -> None:
        """Learn a batch, whole or not at all."""
        labels = check_labels(y, _batch_length(X))  # cheap checks first, before any encoding
        self._learn([(self._features(X), labels)])

    def learn_batches(self, batches: Sequence[tuple[Any, Any]]) -> None:
        """Learn several batches as if one after another, all of them or none.

        The head's statistics are sums, so it takes the batches in one update: one pass over
        its second moment instead of one per batch (what a service that acknowledges examples
        one by one needs to keep up). The open-set gate calibrates batch by batch, as
        :meth:`learn_many` per batch would. The result equals learning the batches one after
        another, to rounding.
        """
        if isinstance(batches, (str, bytes)) or not isinstance(batches, Sequence):
            raise InputTypeError(
                f"expected a sequence of (inputs, labels) pairs, got {type(batches).__name__}"
            )
        if not batches:
            return
        pairs = []
        for X, y in batches:
            labels = check_labels(y, _batch_length(X))
            pairs.append((self._features(X), labels))
        self._learn(pairs)

    def _learn(
        self,
        batches: Sequence[tuple[FloatArray, list[Label]]],
        head: Head | None = None,
        gate: OpenSetGate | bool | None = True,
    ) -> None:
        """Learn validated ``(features, labels)`` batches in order; all of them or none.

        The gate scores its held-out examples first (a plan that changes nothing), then the head
        learns (all or nothing), then the gate commits the plan (which cannot fail).
        """
        head = self.head if head is None else head
        open_set = self.gate_ if gate is True else gate or None
        widths = {features.shape[1] for features, _ in batches}
        if len(widths) != 1:
            raise FeatureDimensionError(
                f"the batches' features have different widths ({sorted(widths)})"
            )
        labels = [label for _, y in batches for label in y]
        features = batches[0][0] if len(batches) == 1 else np.concatenate([f for f, _ in batches])
        plan = None
        columns, new = head.columns_for(labels)
        if open_set is not None:
            cuts = np.cumsum([len(y) for _, y in batches])[:-1]
            pieces = np.split(columns, cuts)
            plan = open_set.plan(
                [(f, c) for (f, _), c in zip(batches, pieces, strict=True)], len(new)
            )
        # Checked above, by _features and check_labels; the columns are those just planned.
        head._learn_checked(features, labels, (columns, new))
        if open_set is not None and plan is not None:
            open_set.commit(plan)

    def partial_fit(self, X: Any, y: Any) -> LifelongClassifier:
        """scikit-learn spelling of :meth:`learn_many`; returns the model."""
        self.learn_many(X, y)
        return self

    def fit(self, X: Any, y: Any) -> LifelongClassifier:
        """Forget everything, then learn ``X``; returns the model."""
        labels = check_labels(y, _batch_length(X))
        features = check_features(self.encode(X))
        head = self.head.clone()
        gate = self._new_gate() if self.unknown_rate is not None or self.gate_ is not None else None
        self._learn([(features, labels)], head=head, gate=gate)
        self.head, self.gate_ = head, gate
        return self

    def forget(self, label: Label) -> None:
        """Remove a class.

        The head and the open-set gate drop its statistics as each documents: exactly with
        ``exact_forget=True``; otherwise the class's examples stay in the shared second moments
        without their label (see :class:`~perennial.heads.RidgeHead`,
        :class:`~perennial.heads.SLDAHead` and
        :meth:`~perennial.heads.statistics.ClassStatistics.drop`).
        """
        index = self.head.column_of(label)  # raises for an unknown label, before any change
        if self.gate_ is not None:
            self.gate_.forget(index)
        self.head.forget(label)

    def unlearn_many(self, X: Any, y: Any, *, verify: bool = True) -> None:
        """Remove examples learned before, exactly: the model becomes the one that never saw them.

        The inputs are encoded again and their statistics subtracted (see
        :meth:`perennial.heads.Head.unlearn_many`). A class left with no example disappears.
        Classes are compared by label: a model retrained on the remaining data may list them in
        another order. The model cannot check that these are the very examples it learned (it
        kept none); it checks that each label is known, that no class loses more examples than
        it counted, and that the head's and the open-set gate's statistics left are ones some
        examples could have (a class of one example has no variance, no variance is negative,
        covariances stay positive semi-definite: see
        :func:`~perennial.heads.statistics.check_subtraction`), raising
        :class:`~perennial.exceptions.InvalidInputError` naming the class otherwise. Examples
        that pass these checks but were never learned corrupt the model silently. All or
        nothing: on any error the model is unchanged.

        ``verify=False`` skips the statistics checks (see :meth:`perennial.heads.Head.unlearn_many`):
        for replaying an update that was already acknowledged and must be applied whatever it
        leaves. Predictions never fail on such statistics; they are simply wrong.

        Examples
        --------
        >>> model = LifelongClassifier(head="ncm")
        >>> model.learn_many([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0]], ["cat", "dog", "dog"])
        >>> model.unlearn([[0.0, 1.0], [0.0, 2.0]], ["dog", "dog"])
        >>> model.classes_, model.n_seen_
        (['cat'], 1)
        """
        labels = check_labels(y, _batch_length(X))  # cheap checks first, before any encoding
        features = self._features(X)
        columns, kept = self.head.plan_unlearn(labels)  # raises before any change
        if verify and self.gate_ is not None:
            self.gate_.check_unlearn(features, columns, self.head.classes_)
        self.head.unlearn_many(features, labels, verify=verify)  # checks its own, then changes
        if self.gate_ is not None:
            self.gate_.unlearn(features, columns, kept)

    unlearn = unlearn_many

    def unlearn_one(self, x: Any, y: Label) -> None:
        """Remove one example learned before (see :meth:`unlearn_many`)."""
        self.unlearn_many(_one(x), [y])

    def merge(self, other: LifelongClassifier) -> None:
        """Add what ``other`` learned: this model becomes the model of both models' data.

        Both must use the same encoder (the same name, which identifies the feature space, as
        :meth:`load` checks) and heads of the same type, parameters and projection. Classes are
        matched by label; labels new to this model are appended. If this model has an open-set
        gate, ``other`` must have one with the same parameters (or have learned nothing).
        ``other`` is unchanged.

        Raises
        ------
        ModelMismatchError
            Different encoders, heads or gates; the message names the difference, and this model
            is unchanged.

        Examples
        --------
        >>> here, there = LifelongClassifier(head="ncm"), LifelongClassifier(head="ncm")
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
        gate, other_gate = self.gate_, other.gate_
        if gate is not None:
            if other_gate is None and other.n_seen_ > 0:
                raise ModelMismatchError(
                    "cannot merge a closed-set model into an open-set one: the other model kept "
                    "no open-set statistics of its examples"
                )
            if other_gate is not None:
                gate.check_mergeable(other_gate)
        columns, new = self.head.columns_for(list(other.head.classes_))
        self.head.merge(other.head)  # checks the heads; raises before any change
        if gate is not None and other_gate is not None:
            gate.merge(other_gate, columns, len(new))

    # --- prediction ------------------------------------------------------------------------------
    def _require_fitted(self) -> None:
        if not self.head.is_fitted:
            raise NotFittedError("the model has learned nothing yet; learn before predicting")

    def decision_scores(self, X: Any) -> FloatArray:
        """Scores (n, n_classes), columns ordered like ``classes_``."""
        self._require_fitted()
        return self.head._scores(self._features(X))  # checked once, by _features

    def predict_many(self, X: Any) -> list[Any]:
        """The most likely label of each input (``unknown_label`` for unknown inputs)."""
        self._check_open_set()
        if self.gate_ is None or self.unknown_threshold_ is None:
            scores = self.decision_scores(X)
            return [self.head.classes_[i] for i in np.argmax(scores, axis=1)]
        return [row["label"] for row in self.predict_detailed(X, top=1)]

    def predict_one(self, x: Any) -> Any:
        """The most likely label of one input, or ``unknown_label`` if it is unknown."""
        return self.predict_many(_one(x))[0]

    def predict(self, X: Any) -> np.ndarray:
        """scikit-learn spelling of :meth:`predict_many`, as an array."""
        labels = self.predict_many(X)
        result = np.empty(len(labels), dtype=object)
        result[:] = labels
        return result

    def predict_proba_many(self, X: Any) -> FloatArray:
        """Class probabilities (n, n_classes), columns ordered like ``classes_``."""
        self._require_fitted()
        return self.head.predict_proba_many(self._features(X))

    predict_proba = predict_proba_many

    def predict_proba_one(self, x: Any) -> dict[Label, float]:
        """Class probabilities of one input, by label."""
        row = self.predict_proba_many(_one(x))[0]
        return {label: float(p) for label, p in zip(self.head.classes_, row, strict=True)}

    # --- open-set recognition ----------------------------------------------------------------------
    def _check_open_set(self) -> None:
        if self.unknown_rate is not None and self.gate_ is None:
            raise NotFittedError(
                "this model asks for open set but has no open-set statistics (an earlier version "
                "saved it after switching them off); relearn it, or set unknown_rate=None"
            )

    def _require_gate(self) -> OpenSetGate:
        self._require_fitted()
        if self.gate_ is None:
            raise NotFittedError(
                "open set is off for this model: build it with unknown_rate=... to get novelty"
            )
        return self.gate_

    def novelty_scores(self, X: Any) -> FloatArray:
        """How unlike everything learned each input is (see :mod:`perennial.novelty`)."""
        gate = self._require_gate()
        return gate.novelty(self._features(X))

    @property
    def open_set_status_(self) -> str:
        """``"off"``, ``"on"``, or ``"calibrating: ..."`` saying what the gate still needs."""
        if self.unknown_rate is not None and self.gate_ is None:
            return "unavailable: no open-set statistics (saved so by an earlier version)"
        if self.gate_ is None or (
            self.unknown_rate is None and self.gate_.threshold_override_ is None
        ):
            return "off"
        return self.gate_.status()

    @property
    def unknown_threshold_(self) -> float | None:
        """The novelty above which an input is unknown (None while there is none)."""
        if self.gate_ is None:
            return None
        return self.gate_.threshold(self.unknown_rate)

    @property
    def threshold_override_(self) -> float | None:
        """The threshold set by :meth:`tune_threshold`, if any."""
        return None if self.gate_ is None else self.gate_.threshold_override_

    def predict_detailed(self, X: Any, top: int = 3) -> list[dict[str, Any]]:
        """Label, score, novelty, unknown decision and the ``top`` best labels of each input.

        ``label`` is the best known label, or ``unknown_label`` when the input is unknown;
        ``score`` is the head's score of the best known label; ``novelty`` is None while open set
        is off or the gate cannot score yet (fewer than two classes); ``unknown`` is False while
        there is no threshold yet (see :attr:`open_set_status_`); ``top`` lists
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
        top = check_int("top", top, minimum=1)
        self._require_fitted()
        self._check_open_set()
        features = self._features(X)
        scores = self.head._scores(features)
        gate = self.gate_
        threshold = self.unknown_threshold_
        novelty = gate.novelty(features) if gate is not None and gate.can_score() else None
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

    def tune_threshold(self, X_out: Any, X_in: Any = None) -> float:
        """Set the unknown threshold from labelled out-of-scope examples; returns it.

        Chooses the threshold that maximises the mean of the out-of-scope recall and the
        in-scope acceptance rate. ``X_in`` are in-scope examples (default: the calibration
        scores the model drew from its training stream stand in for them). The threshold is
        kept until :meth:`fit` or ``tune_threshold`` again; it is saved with the model.
        """
        gate = self._require_gate()
        if not gate.can_score():
            raise NotFittedError("novelty needs at least two learned classes")
        outside = self._features(X_out)
        inside = None if X_in is None else self._features(X_in)
        return gate.tune(outside, inside)

    # --- persistence ------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the learned statistics to the directory ``path`` (atomically)."""
        head_name = registered_name(self.head)
        if head_name is None:
            raise PersistenceError(f"cannot save a head of type {type(self.head).__name__}")
        head_meta, arrays = self.head.get_state()
        if any(key.startswith("gate.") for key in arrays):
            raise PersistenceError("head state names clash with the open-set statistics")
        spec = encoder_spec(self._encoder)
        if spec["kind"] not in ENCODERS:
            spec.pop("params")
        open_set: dict[str, Any] = {
            "unknown_rate": self.unknown_rate,
            "unknown_label": self.unknown_label,
            "novelty_score": self.novelty_score,
        }
        if self.gate_ is not None:
            gate_meta, gate_arrays = self.gate_.get_state()
            open_set["gate"] = gate_meta
            arrays = {**arrays, **{f"gate.{key}": value for key, value in gate_arrays.items()}}
        payload = {
            "learner": "LifelongClassifier",
            "encoder": spec,
            "head": {"name": head_name, "params": self.head.get_params(), "state": head_meta},
            "open_set": open_set,
        }
        return write_model_files(path, payload, arrays)

    @classmethod
    def load(cls, path: str | Path, encoder: Any = None) -> LifelongClassifier:
        """Read a model written by :meth:`save` (this version's format or the previous one's).

        Parameters
        ----------
        encoder
            The encoder to use; it must have the name recorded in the model. When None, a
            registered encoder (text, image, identity) is rebuilt from the record.
        """
        payload, arrays = read_model_files(path)
        try:
            encoder_record = dict(payload["encoder"])
            head_record = dict(payload["head"])
            head = make_head(str(head_record["name"]), **dict(head_record["params"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ModelMismatchError(
                f"{path}: the model record is incomplete or names an unknown head: {error}"
            ) from error
        if encoder is None:
            kind = encoder_record.get("kind")
            if kind not in ENCODERS:
                raise PersistenceError(
                    f"{path} was saved with the custom encoder {encoder_record.get('name')!r}; "
                    "pass it as load(path, encoder=...)"
                )
            from perennial.encoders import rebuild_encoder

            encoder = rebuild_encoder(str(kind), dict(encoder_record.get("params") or {}))
        resolved = as_encoder(encoder)
        if resolved.name != encoder_record.get("name"):
            raise ModelMismatchError(
                f"{path} was learned with encoder {encoder_record.get('name')!r}, "
                f"not {resolved.name!r}; its features would not match"
            )

        def prefixed(prefix: str) -> dict[str, np.ndarray]:
            return {k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)}

        head_arrays = {k: v for k, v in arrays.items() if not k.startswith(("gate.", "novelty."))}
        head.set_state(dict(head_record["state"]), head_arrays)
        open_set = dict(payload.get("open_set") or {})
        try:
            rate = open_set.get("unknown_rate")
            gate: OpenSetGate | None = None
            if "gate" in open_set:
                gate = OpenSetGate.from_state(
                    dict(open_set["gate"]), prefixed("gate."), len(head.classes_)
                )
                score = str(open_set.get("novelty_score", "auto"))
            elif "novelty" in open_set:  # the previous format: a detector with its own labels
                override = open_set.get("threshold_override")
                gate = OpenSetGate.from_detector_state(
                    dict(open_set["novelty"]),
                    prefixed("novelty."),
                    list(head.classes_),
                    head.n_seen_,
                    None if override is None else float(override),
                )
                score = "auto" if gate is None else gate.score
            else:
                score = "auto"
            model = cls(encoder=encoder, head=head, unknown_label=open_set.get("unknown_label"))
            model.novelty_score = check_choice("novelty_score", score, NOVELTY_SCORES)
            model.gate_ = gate
            if rate is not None and gate is not None:
                model.unknown_rate = rate
            elif rate is not None:
                # Saved by an earlier version with its open-set statistics switched off: it asks
                # for open set and cannot give it; predictions say so (open_set_status_).
                model._unknown_rate = _check_unknown_rate(rate)
        except (KeyError, TypeError, ValueError) as error:
            raise ModelMismatchError(
                f"{path}: the open-set record is incomplete: {error}"
            ) from error
        return model
