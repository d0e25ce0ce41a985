"""``LifelongClassifier.learn_batches`` against learning the same batches one after another.

The service's refresher groups consecutive acknowledged learns into one head update with it;
recovery replays the journal one record at a time. Both must give the same model.
"""

from __future__ import annotations

import numpy as np
import pytest

from perennial import LifelongClassifier
from perennial.encoders import IdentityEncoder
from perennial.exceptions import (
    FeatureDimensionError,
    InputTypeError,
    InvalidInputError,
    LabelLengthError,
)
from perennial.heads import NCMHead, RidgeEnsembleHead, RidgeHead, SLDAHead
from perennial.service.journal import Record
from perennial.service.refresher import _learn_runs

HEADS = {
    "ridge": lambda: RidgeHead(n_features=64, max_pending=16),
    "ridge-ensemble": lambda: RidgeEnsembleHead(n_members=2, n_features=32),
    "slda": lambda: SLDAHead(),
    "ncm": lambda: NCMHead(),
}


def stream(seed: int, n_batches: int = 12, dim: int = 6):
    """Small batches of Gaussian blobs; classes appear one after another."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(5, dim))
    batches = []
    for i in range(n_batches):
        size = int(rng.integers(1, 4))
        labels = [f"c{min(int(rng.integers(0, 2 + i // 3)), 4)}" for _ in range(size)]
        X = np.array([centres[int(label[1:])] for label in labels]) + rng.normal(size=(size, dim))
        batches.append((X, labels))
    return batches


def model(name: str) -> LifelongClassifier:
    return LifelongClassifier(IdentityEncoder(), HEADS[name](), unknown_rate=0.1)


@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_batches_equal_sequential_learning(name, seed):
    batches = stream(seed)
    one_by_one, grouped = model(name), model(name)
    for X, y in batches[:3]:  # a common start, then the rest grouped in two runs
        one_by_one.learn_many(X, y)
        grouped.learn_many(X, y)
    for X, y in batches[3:]:
        one_by_one.learn_many(X, y)
    grouped.learn_batches(batches[3:8])
    grouped.learn_batches(batches[8:])

    assert grouped.classes_ == one_by_one.classes_
    probe = np.vstack([X for X, _ in batches]) + 0.5
    want = one_by_one.head.decision_scores(probe)
    got = grouped.head.decision_scores(probe)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())
    # The open-set gate saw the same batches in the same order: same statistics, same
    # calibration scores, same threshold.
    mine, theirs = grouped.gate_, one_by_one.gate_
    np.testing.assert_allclose(
        mine.statistics_.full_moment(), theirs.statistics_.full_moment(), rtol=1e-12
    )
    np.testing.assert_array_equal(mine.statistics_.counts, theirs.statistics_.counts)
    np.testing.assert_allclose(mine.scores_, theirs.scores_, rtol=1e-9)
    assert grouped.unknown_threshold_ == pytest.approx(one_by_one.unknown_threshold_, rel=1e-9)


def snapshot(learner: LifelongClassifier) -> dict[str, np.ndarray]:
    # The head's saved state: G, C and counts, or its examples while it is in the dual form.
    _, arrays = learner.head.get_state()
    return {
        **{f"head.{name}": array.copy() for name, array in arrays.items()},
        "gate_moment": learner.gate_.statistics_.full_moment(),
        "gate_sums": learner.gate_.statistics_.sums.copy(),
        "gate_counts": learner.gate_.statistics_.counts.copy(),
        "scores": learner.gate_.scores_.copy(),
    }


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ((np.ones((2, 6)), ["c0"]), LabelLengthError),  # labels of another length
        ((np.ones((1, 5)), ["c0"]), FeatureDimensionError),  # another feature width
        ((np.full((1, 6), np.nan), ["c0"]), InvalidInputError),  # not finite
    ],
)
def test_a_bad_batch_anywhere_changes_nothing(bad, error):
    batches = stream(3)
    learner = LifelongClassifier(IdentityEncoder(), RidgeHead(n_features=64), unknown_rate=0.1)
    for X, y in batches[:6]:
        learner.learn_many(X, y)
    before = snapshot(learner)
    n_seen = learner.n_seen_
    with pytest.raises(error):
        learner.learn_batches([*batches[6:9], bad, *batches[9:]])
    after = snapshot(learner)
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)
    assert learner.n_seen_ == n_seen


def test_learn_batches_refuses_what_is_not_a_sequence_of_pairs():
    learner = model("ncm")
    with pytest.raises(InputTypeError):
        learner.learn_batches("not batches")
    learner.learn_batches([])  # nothing to learn is not an error
    assert learner.n_seen_ == 0


def test_the_refresher_groups_only_consecutive_learns():
    def record(version: int, operation: str, rows: int = 1) -> Record:
        return Record(
            version=version,
            operation=operation,
            labels=tuple(["a"] * rows),
            features=np.zeros((rows, 3)) if operation != "forget" else None,
        )

    records = [
        record(1, "learn"),
        record(2, "learn", 3),
        record(3, "unlearn"),
        record(4, "learn"),
        record(5, "forget"),
        record(6, "learn"),
        record(7, "learn"),
    ]
    runs = _learn_runs(records)
    assert [[r.version for r in run] for run in runs] == [[1, 2], [3], [4], [5], [6, 7]]
