"""Choosing a configuration on held-out training data, checked against a hand-run split."""

from __future__ import annotations

import numpy as np
import pytest

from perennial.datasets import stratified_split
from perennial.encoders import FunctionEncoder, IdentityEncoder
from perennial.exceptions import EmptyInputError, InvalidParameterError, LabelLengthError
from perennial.heads import NCMHead, RidgeHead
from perennial.selection import Candidate, select_by_holdout


def _data(seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (4, 6))
    X = np.vstack([rng.normal(c, 1.2, (40, 6)) for c in centres])
    y = [f"c{k}" for k in range(4) for _ in range(40)]
    return X, y


def test_accuracies_match_a_manual_split_and_the_best_is_chosen():
    X, y = _data()
    # The second view throws away all but one coordinate, so it must score lower.
    narrow = FunctionEncoder(lambda rows: np.asarray(rows)[:, :1], name="first-column")
    candidates = [
        Candidate("narrow", narrow, NCMHead()),
        Candidate("full", IdentityEncoder(), RidgeHead(n_features=128, seed=3)),
    ]
    choice = select_by_holdout(X, y, candidates, holdout_fraction=0.25, seed=5, progress=None)

    fit, hold = stratified_split(np.asarray(y, dtype=object), 0.25, 5)
    labels = np.asarray(y, dtype=object)
    expected = []
    for encoder, head in [
        (narrow, NCMHead()),
        (IdentityEncoder(), RidgeHead(n_features=128, seed=3)),
    ]:
        features = encoder.encode(X)
        head.learn_many(features[fit], labels[fit].tolist())
        expected.append(
            float(np.mean(np.asarray(head.predict_many(features[hold])) == labels[hold]))
        )
    assert choice.accuracies == pytest.approx(tuple(expected), abs=0)
    assert choice.best == int(np.argmax(expected)) == 1
    assert (choice.n_fit, choice.n_holdout) == (len(fit), len(hold))
    # The candidates' heads are templates: they are cloned, never fitted in place.
    assert len(candidates[1].head.classes_) == 0


def test_bad_arguments_are_refused_before_any_work():
    X, y = _data()
    one = [Candidate("a", IdentityEncoder(), NCMHead())]
    with pytest.raises(EmptyInputError):
        select_by_holdout(X, y, [], progress=None)
    with pytest.raises(InvalidParameterError, match="distinct"):
        select_by_holdout(X, y, one + one, progress=None)
    with pytest.raises(LabelLengthError):
        select_by_holdout(X, y[:-1], one, progress=None)
    with pytest.raises(InvalidParameterError):
        select_by_holdout(X, y, one, holdout_fraction=1.5, progress=None)
