"""Choose an encoder view and a head for a data set from its training data alone.

Which transformer layers to pool, how many random projections to ensemble and how wide they are
depend on the data set, and the test set must never decide. :func:`select_by_holdout` holds out a
stratified share of the *training* examples, learns each candidate on the rest, scores it on the
held-out share, and returns the ranking. The held-out examples are only scored, never kept: the
caller then learns the whole training stream with the winner. Because every head here is exact
(the model does not depend on the order or batching of the examples), learning the candidate's
training share at once gives the same model as learning it class by class.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np

from perennial.datasets.base import stratified_split
from perennial.encoders.base import Encoder, Precomputed
from perennial.encoders.cache import FeatureCache
from perennial.exceptions import EmptyInputError, InvalidParameterError, LabelLengthError
from perennial.heads.base import Head

__all__ = ["Candidate", "Selection", "select_by_holdout", "text_candidates"]


@dataclass(frozen=True)
class Candidate:
    """One configuration to try: an encoder (view of the inputs) and an unfitted head."""

    name: str
    encoder: Encoder
    head: Head


@dataclass(frozen=True)
class Selection:
    """Held-out accuracy of every candidate, in the order given, and the winner.

    Ties go to the candidate listed first, so list the cheaper configurations first.
    """

    names: tuple[str, ...]
    accuracies: tuple[float, ...]
    best: int
    n_fit: int
    n_holdout: int

    @property
    def best_name(self) -> str:
        return self.names[self.best]

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidates": dict(zip(self.names, self.accuracies, strict=True)),
            "chosen": self.best_name,
            "n_fit": self.n_fit,
            "n_holdout": self.n_holdout,
        }


def text_candidates(
    models: Sequence[str] = ("all-MiniLM-L6-v2",), *, backend: str = "torch"
) -> list[Candidate]:
    """The text configurations ``--select`` compares, for each model in the order given.

    Per model, cheapest first: the layer average with a ridge head, the last layer (the
    standard sentence embedding) with a ridge head, the concatenated layers with a ridge head,
    the concatenated layers with an ensemble of two ridge heads, and the concatenated layers
    with one ridge head twice as wide (8,192 random features: ``G`` takes 512 MiB and a solve
    about eight times as long; the concatenation of mpnet's 12 layers is 9,216-d, wider than
    the default head). List the cheaper model
    first: ties go to the earlier candidate. Every candidate of one model computes its features
    from the same per-layer token means, so with a :class:`FeatureCache` made with
    ``per_layer=True`` each model encodes the training texts once.

    >>> [c.name for c in text_candidates(["minilm", "mpnet"])][::5]
    ['all-MiniLM-L6-v2 mean-layers + ridge', 'all-mpnet-base-v2 mean-layers + ridge']
    """
    from perennial.encoders.text import TextEncoder
    from perennial.encoders.text_models import text_model
    from perennial.heads import make_head

    if isinstance(models, str) or not models:
        raise InvalidParameterError(f"models must be a non-empty list of names, got {models!r}")
    names = [text_model(model).name for model in models]
    if len(set(names)) != len(names):
        raise InvalidParameterError(f"models must not repeat a model, got {list(models)}")
    candidates = []
    for model in names:

        def encoder(pooling: str, model: str = model) -> TextEncoder:
            return TextEncoder(model, pooling=pooling, backend=backend)

        candidates += [
            Candidate(f"{model} mean-layers + ridge", encoder("mean-layers"), make_head("ridge")),
            Candidate(f"{model} last + ridge", encoder("last"), make_head("ridge")),
            Candidate(f"{model} layers + ridge", encoder("layers"), make_head("ridge")),
            Candidate(
                f"{model} layers + ridge-ensemble(2)",
                encoder("layers"),
                make_head("ridge-ensemble", n_members=2),
            ),
            Candidate(
                f"{model} layers + ridge(8192)",
                encoder("layers"),
                make_head("ridge", n_features=8192),
            ),
        ]
    return candidates


def select_by_holdout(
    inputs: Any,
    labels: Sequence[Any],
    candidates: Sequence[Candidate],
    *,
    holdout_fraction: float = 0.1,
    seed: int = 0,
    cache: FeatureCache | None = None,
    progress: TextIO | None = sys.stderr,
) -> Selection:
    """Rank ``candidates`` by accuracy on a stratified held-out share of the training data.

    Parameters
    ----------
    inputs, labels
        The training examples (texts, images or feature rows) and their labels.
    candidates
        Configurations to compare; each head is cloned, never fitted in place.
    holdout_fraction
        Share of each class held out for scoring, strictly between 0 and 1.
    seed
        Seed of the split.
    cache
        Feature cache for the encoders (None: encode every time).

    Examples
    --------
    >>> import numpy as np
    >>> from perennial.encoders import IdentityEncoder
    >>> from perennial.heads import NCMHead, RidgeHead
    >>> rng = np.random.default_rng(0)
    >>> X = np.vstack([rng.normal(0, 1, (30, 4)) + 2, rng.normal(0, 1, (30, 4)) - 2])
    >>> y = ["a"] * 30 + ["b"] * 30
    >>> choice = select_by_holdout(X, y, [
    ...     Candidate("ncm", IdentityEncoder(), NCMHead()),
    ...     Candidate("ridge", IdentityEncoder(), RidgeHead(n_features=64)),
    ... ], progress=None)
    >>> choice.accuracies
    (1.0, 1.0)
    >>> choice.best_name  # a tie goes to the first candidate
    'ncm'
    """
    if not candidates:
        raise EmptyInputError("select_by_holdout needs at least one candidate")
    names = [candidate.name for candidate in candidates]
    if len(set(names)) != len(names):
        raise InvalidParameterError(f"candidate names must be distinct, got {names}")
    if len(inputs) != len(labels):
        raise LabelLengthError(f"got {len(inputs)} inputs but {len(labels)} labels")
    if len(labels) == 0:
        raise EmptyInputError("select_by_holdout needs training examples, got none")
    label_array = np.asarray(list(labels), dtype=object)
    fit_rows, holdout_rows = stratified_split(label_array, holdout_fraction, seed)
    if len(holdout_rows) == 0:
        raise InvalidParameterError(
            f"holdout_fraction={holdout_fraction!r} holds out no example of {len(labels)}"
        )
    from perennial.learner import LifelongClassifier
    from perennial.protocols.incremental import encode_split

    accuracies = []
    for candidate in candidates:
        features = encode_split(
            candidate.encoder, inputs, cache, progress=progress, what=f"inputs for {candidate.name}"
        )
        model = LifelongClassifier(Precomputed(candidate.encoder), candidate.head.clone())
        model.learn_many(features[fit_rows], label_array[fit_rows].tolist())
        predicted = np.asarray(model.predict_many(features[holdout_rows]), dtype=object)
        accuracy = float(np.mean(predicted == label_array[holdout_rows]))
        accuracies.append(accuracy)
        if progress is not None:
            print(
                f"  held-out accuracy {100 * accuracy:6.2f}%  {candidate.name}",
                file=progress,
                flush=True,
            )
    best = int(np.argmax(accuracies))
    return Selection(
        tuple(names), tuple(accuracies), best, n_fit=len(fit_rows), n_holdout=len(holdout_rows)
    )
