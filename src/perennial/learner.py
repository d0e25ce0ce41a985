"""LifelongClassifier: a frozen encoder feeding a streaming head, and an optional open-set gate."""

from __future__ import annotations

import inspect
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

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
    UnknownLabelError,
)
from perennial.heads import HEADS, Head, RidgeHead, make_head, registered_name
from perennial.heads.base import FloatArray, Label, check_features, check_labels
from perennial.novelty import SCORES
from perennial.openset import OpenSetGate
from perennial.params import check_choice, check_fraction, check_int
from perennial.persistence import read_model_files, write_model_files
from perennial.pretrained import PRETRAINED, PretrainedHead
from perennial.progress import Output

__all__ = ["LifelongClassifier"]

NOVELTY_SCORES = ("auto", *SCORES)


# Encoders whose ``encode`` returns check_features' output (as float32).
_VALIDATING_ENCODERS = (IdentityEncoder, Precomputed)

#: Inputs encoded at a time when :meth:`LifelongClassifier.encode` reports its progress.
ENCODE_CHUNK = 256


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


def _nfc(label: Any) -> Any:
    key = label.item() if isinstance(label, np.generic) else label
    return unicodedata.normalize("NFC", key) if isinstance(key, str) else key


def _check_pretrained(
    name: Any, encoder: Encoder, unknown_rate: float | None, unknown_label: Any
) -> PretrainedHead:
    """The pretrained classifier ``name``, once the other arguments are checked against it."""
    if not isinstance(name, str) or name not in PRETRAINED:
        raise InvalidParameterError(
            f"pretrained must be None or one of {', '.join(PRETRAINED)}, got {name!r}"
        )
    if unknown_rate is None:
        raise InvalidParameterError(
            "a model with a pretrained classifier needs unknown_rate in (0, 1), got None: the "
            "open-set gate decides which inputs its instant head answers"
        )
    if unknown_label is not None:
        raise InvalidParameterError(
            f"unknown_label must be None for a model with a pretrained classifier, got "
            f"{unknown_label!r}: the pretrained classifier answers every input the instant head "
            "does not, so no input is unknown"
        )
    pretrained = PretrainedHead.load(name)
    feature_name = encoder.name
    expected = f"@{pretrained.weights_sha256[:8]}"
    if (
        getattr(encoder, "kind", None) != "image"
        or not feature_name.startswith(name)
        or not feature_name.split("/")[0].endswith(expected)  # "/crop": the preprocessing
    ):
        raise InvalidParameterError(
            f"the pretrained classifier {name!r} reads the features of the image encoder with "
            f"the same weights (a name such as '{name}-224px{expected}'), got encoder "
            f"{feature_name!r}"
        )
    return pretrained


def _check_same_pretrained(mine: PretrainedHead | None, theirs: PretrainedHead | None) -> None:
    def identity(p: PretrainedHead | None) -> tuple[str, str, str] | None:
        return None if p is None else (p.name, p.weights_sha256, p.classes.sha256)

    def describe(p: PretrainedHead | None) -> str:
        return "none" if p is None else f"{p.name!r} (weights {p.weights_sha256[:8]})"

    if identity(mine) != identity(theirs):
        raise ModelMismatchError(
            "cannot merge models with different pretrained classifiers: "
            f"{describe(mine)} here, {describe(theirs)} in the other"
        )


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
    pretrained
        None (default), or the name of a pretrained classifier to keep beside the head
        (``"efficientnet-lite0"``: its 1,000 ImageNet classes); see :meth:`from_pretrained`,
        the usual way to build such a model. ``encoder`` None then means the image encoder.

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
        pretrained: str | None = None,
    ) -> None:
        self.encoder = encoder
        self._encoder: Encoder = as_encoder(
            "image" if encoder is None and pretrained is not None else encoder
        )
        self.head = _resolve_head(head)
        self.novelty_score = check_choice("novelty_score", novelty_score, NOVELTY_SCORES)
        self.unknown_label = unknown_label
        self._unknown_rate = _check_unknown_rate(unknown_rate)
        self.pretrained = pretrained
        self.pretrained_: PretrainedHead | None = (
            None
            if pretrained is None
            else _check_pretrained(pretrained, self._encoder, self._unknown_rate, unknown_label)
        )
        self.gate_: OpenSetGate | None = (
            self._new_gate() if self._unknown_rate is not None else None
        )

    @classmethod
    def from_pretrained(
        cls,
        name: str = "efficientnet-lite0",
        *,
        encoder: Any = None,
        head: Head | str | None = None,
        unknown_rate: float = 0.02,
        novelty_score: str = "auto",
    ) -> LifelongClassifier:
        """A model that knows the pretrained network's own classes and learns more beside them.

        EfficientNet-Lite0 ends in a 1000-way ImageNet classifier. This model keeps it as a fixed
        head (:class:`~perennial.pretrained.PretrainedHead`) beside the instant head: new classes
        go to the instant head, and ``classes_`` lists the 1,000 ImageNet names (see
        :mod:`perennial.pretrained` for how they are read and made unique) followed by the new
        ones. Equivalent to ``LifelongClassifier(encoder, head, unknown_rate=unknown_rate,
        novelty_score=novelty_score, pretrained=name)``.

        **Which head answers.** One decision per input, by the open-set gate
        (:meth:`~perennial.openset.OpenSetGate.accepts`): the instant head answers when the gate
        finds the input one of its classes (novelty within the threshold calibrated for
        ``unknown_rate``; with one class, a squared distance to its mean within three times what
        a new example of it is expected to have); otherwise the pretrained classifier answers.
        Before anything is learned the pretrained classifier answers every input. No input is
        *unknown*: ``unknown_label`` stays None and ``predict_detailed`` always says
        ``"unknown": False``, with ``"source"`` (``"instant"`` or ``"pretrained"``) naming the head
        that answered. ``predict_proba`` gives the answering head's probabilities (the instant
        head's softmax, or the ImageNet classifier's) in the columns of its classes and 0 in
        every other column, so its argmax is the prediction; ``decision_scores`` returns the
        same.

        **The fixed head never learns.** ``learn``, ``unlearn``, ``merge`` and ``fit`` change the
        instant head and the gate only. A learned label that is also an ImageNet name (say
        ``"tabby"``) is a class of the instant head like any other, listed once in ``classes_``
        at its ImageNet place; either head may answer it. ``forget`` of an ImageNet class leaves
        the weights as they are and masks the class: it is never answered and leaves
        ``classes_`` (and the instant head's class of that name, if any, is forgotten too);
        :meth:`restore_pretrained` brings it back. ``fit`` starts over: nothing learned, nothing
        masked. ``merge`` needs the other model to have the same pretrained classifier (or none
        on both); this model's mask stays as it is. A saved model references the classifier by
        the SHA-256 of its weights file and of its class names instead of copying it, and
        :meth:`load` refuses an installation whose weights or names differ.

        Parameters
        ----------
        name
            The pretrained classifier: ``"efficientnet-lite0"``.
        encoder
            The image encoder (default ``ImageEncoder()``, the 224-pixel input the classifier
            was trained at), or ``Precomputed`` of one; it must use the same weights.
        head, unknown_rate, novelty_score
            As for the constructor; ``unknown_rate`` must be in (0, 1).

        Raises
        ------
        InvalidParameterError
            An unknown name, an encoder of other features, or ``unknown_rate`` None.
        EncoderError
            The weights or the ImageNet class names are not installed.

        Examples
        --------
        >>> model = LifelongClassifier.from_pretrained("efficientnet-lite0")  # doctest: +SKIP
        >>> len(model.classes_), model.classes_[281]  # doctest: +SKIP
        (1000, 'tabby')
        >>> model.learn_many(brick_crops, ["brick"] * len(brick_crops))  # doctest: +SKIP
        >>> len(model.classes_), model.classes_[-1]  # doctest: +SKIP
        (1001, 'brick')
        """
        return cls(
            encoder=encoder,
            head=head,
            unknown_rate=unknown_rate,
            novelty_score=novelty_score,
            pretrained=name,
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
        ``head``, ``novelty_score`` and ``pretrained`` may change only while the model has learned
        nothing (and forgotten none of its pretrained classes).
        """
        known = self.get_params()
        for name in params:
            if name not in known:
                raise InvalidParameterError(
                    f"unknown parameter {name!r}; LifelongClassifier takes {', '.join(known)}"
                )
        structural = {"encoder", "head", "novelty_score", "pretrained"} & set(params)
        if structural and self.n_seen_ > 0:
            raise InvalidParameterError(
                f"cannot change {', '.join(sorted(structural))} of a model that has learned "
                f"{self.n_seen_} examples; build a new model"
            )
        if structural and self.pretrained_ is not None and self.pretrained_.hidden_.any():
            raise InvalidParameterError(
                f"cannot change {', '.join(sorted(structural))} of a model that has forgotten "
                f"{int(self.pretrained_.hidden_.sum())} pretrained classes; build a new model"
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
        if rate is None and self.pretrained_ is not None:
            raise InvalidParameterError(
                "a model with a pretrained classifier needs unknown_rate in (0, 1), got None: "
                "the open-set gate decides which inputs its instant head answers"
            )
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
        """Known labels, in the order they were first learned.

        With a pretrained classifier: its classes (those not forgotten) in its output order,
        then the learned labels that are not among them.
        """
        if self.pretrained_ is None:
            return list(self.head.classes_)
        return self._pretrained_layout()[0]

    def _pretrained_layout(self) -> tuple[list[Label], NDArray[np.intp]]:
        """``classes_``, and the column there of each head class.

        The visible pretrained classes take the first columns, in their output order.
        """
        pretrained = self.pretrained_
        assert pretrained is not None
        visible = pretrained.visible
        labels: list[Label] = [pretrained.names[i] for i in visible]
        place = np.full(len(pretrained.names), -1, dtype=np.intp)
        place[visible] = np.arange(len(visible))
        head_columns = np.empty(len(self.head.classes_), dtype=np.intp)
        for column, label in enumerate(self.head.classes_):
            index = pretrained.index_of(label)
            if index is not None and place[index] >= 0:
                head_columns[column] = place[index]
            else:
                head_columns[column] = len(labels)
                labels.append(label)
        return labels, head_columns

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
        if self.pretrained is not None:
            extra += f", pretrained={self.pretrained!r}"
        return f"LifelongClassifier(encoder={self._encoder!r}, head={self.head!r}{extra})"

    def encode(self, inputs: Any, *, progress: Output = None) -> np.ndarray:
        """Features of a batch of inputs, as the head sees them.

        With ``progress`` (a text stream, drawn in place on a terminal, or a callable taking one
        line; see :class:`perennial.progress.ProgressBar`) the inputs are encoded in chunks of
        ``ENCODE_CHUNK`` and each chunk is reported with the count, rate and time left.
        """
        n = _batch_length(inputs)
        if progress is None:
            return self._encoder.encode(inputs)
        from perennial.progress import ProgressBar

        chunks = []
        with ProgressBar(n, "encoding", unit="inputs", output=progress) as bar:
            for start in range(0, n, ENCODE_CHUNK):
                chunk = inputs[start : start + ENCODE_CHUNK]
                chunks.append(np.asarray(self._encoder.encode(chunk)))
                bar.update(len(chunk))
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    def _features(self, inputs: Any, progress: Output = None) -> FloatArray:
        """Encoded, validated float64 features of the width the model learned."""
        dim = self.head.dim_
        if dim is None and self.gate_ is not None:
            dim = self.gate_.dim
        if dim is None and self.pretrained_ is not None:
            dim = self.pretrained_.dim
        features = self.encode(inputs, progress=progress)
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

    def learn_many(self, X: Any, y: Any, *, progress: Output = None) -> None:
        """Learn a batch, whole or not at all; ``progress``: see :meth:`encode`."""
        labels = check_labels(y, _batch_length(X))  # cheap checks first, before any encoding
        self._learn([(self._features(X, progress), labels)])

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
        """Forget everything, then learn ``X``; returns the model.

        A pretrained classifier stays, with every class it has answerable again.
        """
        labels = check_labels(y, _batch_length(X))
        features = check_features(self.encode(X))
        head = self.head.clone()
        gate = self._new_gate() if self.unknown_rate is not None or self.gate_ is not None else None
        self._learn([(features, labels)], head=head, gate=gate)
        self.head, self.gate_ = head, gate
        if self.pretrained_ is not None:
            self.pretrained_.hidden_[:] = False
        return self

    def forget(self, label: Label) -> None:
        """Remove a class.

        The head and the open-set gate drop its statistics as each documents: exactly with
        ``exact_forget=True``; otherwise the class's examples stay in the shared second moments
        without their label (see :class:`~perennial.heads.RidgeHead`,
        :class:`~perennial.heads.SLDAHead` and
        :meth:`~perennial.heads.statistics.ClassStatistics.drop`).
        """
        if self.pretrained_ is not None:
            self._forget_with_pretrained(label)
            return
        index = self.head.column_of(label)  # raises for an unknown label, before any change
        if self.gate_ is not None:
            self.gate_.forget(index)
        self.head.forget(label)

    def _forget_with_pretrained(self, label: Label) -> None:
        pretrained = self.pretrained_
        assert pretrained is not None
        key = _nfc(label)
        in_pretrained = pretrained.is_visible(key)
        try:
            index: int | None = self.head.column_of(label)
        except UnknownLabelError:
            if not in_pretrained:
                raise UnknownLabelError(
                    f"unknown label {label!r}: neither the pretrained classifier "
                    f"{pretrained.name!r} (its classes not forgotten) nor the "
                    f"{len(self.head.classes_)} learned classes have it"
                ) from None
            index = None
        if index is not None:
            if self.gate_ is not None:
                self.gate_.forget(index)
            self.head.forget(label)
        if in_pretrained:
            pretrained.hide(key)

    def restore_pretrained(self, label: Label) -> None:
        """Answer again a class of the pretrained classifier that :meth:`forget` masked.

        Forgetting a pretrained class never changed the classifier's weights, so the class comes
        back exactly as it was. A learned class of that name forgotten with it stays forgotten.

        Raises
        ------
        NotFittedError
            The model has no pretrained classifier.
        UnknownLabelError
            Not one of its classes.
        InvalidParameterError
            The class is not forgotten.
        """
        if self.pretrained_ is None:
            raise NotFittedError(
                "this model has no pretrained classifier; build it with from_pretrained(...)"
            )
        self.pretrained_.restore(_nfc(label))

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
        pretrained = self.pretrained_
        if pretrained is not None:
            learned = set(self.head.classes_)
            for label in labels:
                if label not in learned and pretrained.index_of(label) is not None:
                    raise UnknownLabelError(
                        f"cannot unlearn examples of {label!r}: it is a class of the pretrained "
                        f"classifier {pretrained.name!r}, which learns nothing, and no example "
                        "of it was learned"
                    )
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
        _check_same_pretrained(self.pretrained_, other.pretrained_)
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
        """Scores (n, n_classes), columns ordered like ``classes_``.

        With a pretrained classifier, the probabilities of :meth:`predict_proba_many` (the two
        heads' scores are not on one scale).
        """
        if self.pretrained_ is not None:
            return self.predict_proba_many(X)
        self._require_fitted()
        return self.head._scores(self._features(X))  # checked once, by _features

    def predict_many(self, X: Any) -> list[Any]:
        """The most likely label of each input (``unknown_label`` for unknown inputs)."""
        self._check_open_set()
        if self.pretrained_ is not None:
            return [row["label"] for row in self._pretrained_rows(self._features(X), top=1)]
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
        """Class probabilities (n, n_classes), columns ordered like ``classes_``.

        With a pretrained classifier, the probabilities of the head that answers each input (see
        :meth:`from_pretrained`), 0 in the columns of the other head's classes.
        """
        if self.pretrained_ is None:
            self._require_fitted()
            return self.head.predict_proba_many(self._features(X))
        features = self._features(X)
        labels, head_columns = self._pretrained_layout()
        instant = self._instant_rows(features)
        result = np.zeros((len(features), len(labels)))
        rows = np.flatnonzero(instant)
        if len(rows):
            result[np.ix_(rows, head_columns)] = self.head.predict_proba_many(features[rows])
        rows = np.flatnonzero(~instant)
        if len(rows):
            visible = self.pretrained_.visible
            result[rows, : len(visible)] = self.pretrained_.proba(features[rows])[:, visible]
        return result

    predict_proba = predict_proba_many

    def predict_proba_one(self, x: Any) -> dict[Label, float]:
        """Class probabilities of one input, by label."""
        row = self.predict_proba_many(_one(x))[0]
        return {label: float(p) for label, p in zip(self.classes_, row, strict=True)}

    # --- with a pretrained classifier --------------------------------------------------------------
    def _instant_rows(self, features: FloatArray) -> NDArray[np.bool_]:
        """Which inputs the instant head answers: the gate's one decision (see from_pretrained)."""
        gate = self.gate_
        if gate is None or not self.head.is_fitted:
            return np.zeros(len(features), dtype=bool)
        return gate.accepts(features, self.unknown_rate)

    def _pretrained_rows(self, features: FloatArray, top: int) -> list[dict[str, Any]]:
        """:meth:`predict_detailed`'s rows for a model with a pretrained classifier."""
        pretrained = self.pretrained_
        assert pretrained is not None
        instant = self._instant_rows(features)
        gate = self.gate_
        novelty = gate.novelty(features) if gate is not None and gate.can_score() else None
        rows: list[dict[str, Any]] = [{} for _ in range(len(features))]
        picks = np.flatnonzero(instant)
        if len(picks):
            scores = self.head._scores(features[picks])
            self._fill_rows(rows, picks, scores, list(self.head.classes_), top, "instant")
        picks = np.flatnonzero(~instant)
        if len(picks):
            visible = pretrained.visible
            scores = pretrained.proba(features[picks])[:, visible]
            names = [pretrained.names[i] for i in visible]
            self._fill_rows(rows, picks, scores, names, top, "pretrained")
        for i, row in enumerate(rows):
            row["novelty"] = None if novelty is None else float(novelty[i])
        return rows

    @staticmethod
    def _fill_rows(
        rows: list[dict[str, Any]],
        picks: NDArray[np.intp],
        scores: FloatArray,
        classes: list[Any],
        top: int,
        source: str,
    ) -> None:
        order = np.argsort(-scores, axis=1, kind="stable")[:, :top]
        for k, i in enumerate(picks):
            best = int(order[k, 0])
            rows[i].update(
                label=classes[best],
                score=float(scores[k, best]),
                unknown=False,
                source=source,
                top=[{"label": classes[j], "score": float(scores[k, j])} for j in order[k]],
            )

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

    def predict_detailed(
        self, X: Any, top: int = 3, *, progress: Output = None
    ) -> list[dict[str, Any]]:
        """Label, score, novelty, unknown decision and the ``top`` best labels of each input.

        ``label`` is the best known label, or ``unknown_label`` when the input is unknown;
        ``score`` is the head's score of the best known label; ``novelty`` is None while open set
        is off or the gate cannot score yet (fewer than two classes); ``unknown`` is False while
        there is no threshold yet (see :attr:`open_set_status_`); ``top`` lists
        ``{"label", "score"}`` pairs, best first.

        With a pretrained classifier, each row also says which head answered (``"source"``:
        ``"instant"`` or ``"pretrained"``); ``score`` and ``top`` are that head's (the instant
        head's scores, or the ImageNet classifier's probabilities), and ``unknown`` is False.
        ``progress`` reports the encoding (see :meth:`encode`).

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
        if self.pretrained_ is not None:
            return self._pretrained_rows(self._features(X, progress), top)
        self._require_fitted()
        self._check_open_set()
        features = self._features(X, progress)
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
        """Write the learned statistics to the directory ``path`` (atomically).

        A pretrained classifier is saved as a reference (its name, the SHA-256 of its weights and
        of its class names, the forgotten classes), not as weights.
        """
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
        version = 1
        if self.pretrained_ is not None:
            # A reference by digest, not the 5 MB of weights: load() rebuilds and checks it.
            payload["pretrained"] = self.pretrained_.record()
            version = 2  # a reader of version 1 would drop the 1,000 classes without a word
        return write_model_files(path, payload, arrays, format_version=version)

    @classmethod
    def load(cls, path: str | Path, encoder: Any = None) -> LifelongClassifier:
        """Read a model written by :meth:`save` (this version's format or the previous one's).

        ``path`` may also be a directory served by ``perennial serve`` (it holds
        ``service.json``): the model is then the one a restarted service would serve, its latest
        snapshot plus the updates its journal holds beyond it, read without writing anything
        (see :mod:`perennial.service.directory`).

        Parameters
        ----------
        encoder
            The encoder to use; it must have the name recorded in the model. When None, a
            registered encoder (text, image, identity) is rebuilt from the record.

        Raises
        ------
        ModelMismatchError
            Among others: a model saved with a pretrained classifier whose weights or class names
            are not those installed here.
        """
        from perennial.service.directory import is_service_directory

        if is_service_directory(path):
            return cls._load_service_directory(path, encoder)
        return cls._load_saved(path, encoder)

    @classmethod
    def _load_saved(cls, path: str | Path, encoder: Any = None) -> LifelongClassifier:
        """:meth:`load` of a directory written by :meth:`save` only.

        The service reads its snapshots with it: a snapshot may be the service's directory
        itself (a saved model it adopted), which :meth:`load` would read as a service's.
        """
        payload, arrays = read_model_files(path)
        pretrained: PretrainedHead | None = None
        if payload.get("pretrained") is not None:
            record = payload["pretrained"]
            if not isinstance(record, dict):
                raise ModelMismatchError(f"{path}: the pretrained record is not an object")
            pretrained = PretrainedHead.from_record(record, str(path))
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
            with_pretrained: dict[str, Any] = (
                {} if pretrained is None else {"pretrained": pretrained.name, "unknown_rate": rate}
            )
            model = cls(
                encoder=encoder,
                head=head,
                unknown_label=open_set.get("unknown_label"),
                **with_pretrained,
            )
            if pretrained is not None:
                model.pretrained_ = pretrained
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

    @classmethod
    def _load_service_directory(cls, path: str | Path, encoder: Any) -> LifelongClassifier:
        """The model of a service directory, with the encoder the service encodes with."""
        from perennial.service.directory import read_service_directory

        state = read_service_directory(path, None if encoder is None else as_encoder(encoder))
        model = state.model
        adapter = model._encoder
        assert isinstance(adapter, Precomputed)  # what read_service_directory builds on
        # The service journals features, so its model learned through a Precomputed encoder;
        # the same encoder, reading raw inputs again, takes its place.
        model.encoder = adapter.encoder if encoder is None else encoder
        model._encoder = adapter.encoder
        return model
