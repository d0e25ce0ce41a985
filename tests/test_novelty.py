"""Open-set recognition: the novelty score against numpy, its calibration, and the learner's API."""

from __future__ import annotations

import numpy as np
import pytest

from perennial import LifelongClassifier
from perennial.encoders import IdentityEncoder
from perennial.exceptions import (
    FeatureDimensionError,
    InvalidInputError,
    InvalidParameterError,
    ModelMismatchError,
    NonFiniteInputError,
    NotFittedError,
    UnknownLabelError,
)
from perennial.heads import NCMHead, RidgeHead
from perennial.novelty import NoveltyDetector


def blobs(seed: int, k: int = 6, n: int = 40, d: int = 5) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (k, d))
    X = np.vstack([rng.normal(c, 1.0, (n, d)) for c in centres])
    return X, [f"c{i}" for i in range(k) for _ in range(n)]


def reference_scores(X, y, Q, shrinkage):
    """Relative Mahalanobis distance from the raw data, written out with numpy."""
    labels = sorted(set(y))
    y = np.asarray(y)
    means = np.array([X[y == c].mean(axis=0) for c in labels])
    centred = np.vstack([X[y == c] - X[y == c].mean(axis=0) for c in labels])
    within = centred.T @ centred / len(X)
    overall = np.cov(X.T, bias=True)

    def shrink(S):
        return (1 - shrinkage) * S + shrinkage * np.trace(S) / len(S) * np.eye(len(S))

    P, P0 = np.linalg.inv(shrink(within)), np.linalg.inv(shrink(overall))
    nearest = np.array([min((q - m) @ P @ (q - m) for m in means) for q in Q])
    mu = X.mean(axis=0)
    return nearest - np.array([(q - mu) @ P0 @ (q - mu) for q in Q])


@pytest.mark.parametrize("shrinkage", [0.1, 0.5, 1.0])
def test_score_matches_numpy(shrinkage):
    X, y = blobs(0)
    Q = np.random.default_rng(1).normal(0, 4, (25, 5))
    detector = NoveltyDetector(shrinkage=shrinkage)
    detector.learn_many(X, y)
    np.testing.assert_allclose(detector.score(Q), reference_scores(X, y, Q, shrinkage), rtol=1e-8)


def test_statistics_do_not_depend_on_order_or_batches():
    X, y = blobs(2)
    Q = np.random.default_rng(3).normal(0, 4, (10, 5))
    whole = NoveltyDetector()
    whole.learn_many(X, y)
    pieces = NoveltyDetector()
    order = np.random.default_rng(4).permutation(len(y))
    for chunk in np.array_split(order, 7):
        pieces.learn_many(X[chunk], [y[i] for i in chunk])
    np.testing.assert_allclose(pieces.score(Q), whole.score(Q), rtol=1e-9)


def test_threshold_rejects_about_the_target_share_of_new_in_scope_inputs():
    rng = np.random.default_rng(5)
    centres = rng.normal(0, 2, (30, 8))
    scales = rng.uniform(0.5, 1.5, 30)
    detector = NoveltyDetector()
    for step in range(3):  # classes arrive in three steps, each class in one batch
        for c in range(step * 10, step * 10 + 10):
            detector.learn_many(rng.normal(centres[c], scales[c], (60, 8)), [c] * 60)
    fresh = np.vstack([rng.normal(centres[c], scales[c], (100, 8)) for c in range(30)])
    for rate in (0.02, 0.05, 0.1):
        realised = np.mean(detector.score(fresh) > detector.threshold(rate))
        assert abs(realised - rate) < 0.5 * rate + 0.01, (rate, realised)


def test_reservoir_is_bounded_and_holds_scores_only():
    X, y = blobs(6, k=4, n=200)
    detector = NoveltyDetector(reservoir_size=50)
    detector.learn_many(X, y)
    assert len(detector.scores_) == 50 and detector.offered_ > 50
    assert detector.scores_.dtype == np.float64 and detector.scores_.ndim == 1


@pytest.mark.parametrize("operation", ["unlearn", "forget", "merge"])
def test_removal_and_merging_equal_retraining(operation):
    X, y = blobs(7)
    Q = np.random.default_rng(8).normal(0, 4, (10, 5))
    keep = [i for i, label in enumerate(y) if label != "c2" and i % 5]
    drop = [i for i in range(len(y)) if i not in set(keep)]
    reference = NoveltyDetector()
    reference.learn_many(X[keep], [y[i] for i in keep])
    detector = NoveltyDetector()
    if operation == "merge":
        other = NoveltyDetector()
        detector.learn_many(X[drop[::2] + keep[::2]], [y[i] for i in drop[::2] + keep[::2]])
        other.learn_many(X[drop[1::2] + keep[1::2]], [y[i] for i in drop[1::2] + keep[1::2]])
        detector.merge(other)
        reference.learn_many(X[drop], [y[i] for i in drop])
    else:
        detector.learn_many(X, y)
        detector.unlearn_many(X[drop], [y[i] for i in drop])
    if operation == "forget":
        detector = NoveltyDetector()
        detector.learn_many(X[keep], [y[i] for i in keep])
    np.testing.assert_allclose(detector.score(Q), reference.score(Q), rtol=1e-8)
    if operation == "unlearn":
        assert "c2" not in detector.labels_


def test_forget_drops_the_class_and_its_calibration_scores():
    X, y = blobs(9)
    detector = NoveltyDetector()
    detector.learn_many(X, y)
    before = len(detector.scores_)
    detector.forget("c1")
    assert "c1" not in detector.labels_ and 0 < len(detector.scores_) < before


def test_bad_input_changes_nothing():
    X, y = blobs(10)
    detector = NoveltyDetector()
    detector.learn_many(X, y)
    state = detector.get_state()
    bad = X[:3].copy()
    bad[1, 2] = np.nan
    with pytest.raises(NonFiniteInputError):
        detector.learn_many(bad, y[:3])
    with pytest.raises(FeatureDimensionError):
        detector.learn_many(X[:3, :4], y[:3])
    with pytest.raises(UnknownLabelError):
        detector.unlearn_many(X[:2], ["nope", "c0"])
    with pytest.raises(InvalidInputError, match="41 examples of 'c0'"):
        detector.unlearn_many(np.vstack([X[:41]]), ["c0"] * 41)
    with pytest.raises(ModelMismatchError):
        detector.merge(NoveltyDetector(shrinkage=0.3))
    with pytest.raises(InvalidParameterError):
        detector.threshold(1.0)
    after = detector.get_state()
    assert after[0] == state[0]
    for key in state[1]:
        np.testing.assert_array_equal(after[1][key], state[1][key])
    with pytest.raises(NotFittedError):
        NoveltyDetector().threshold(0.05)
    one_class = NoveltyDetector()
    one_class.learn_many(X[:40], y[:40])
    with pytest.raises(NotFittedError, match="two learned classes"):
        one_class.score(X[:1])


def test_learner_flags_unknown_inputs_and_keeps_it_through_save_and_load(tmp_path):
    X, y = blobs(11, d=4)
    model = LifelongClassifier(
        IdentityEncoder(), RidgeHead(n_features=64), unknown_rate=0.05, unknown_label="?"
    )
    model.learn_many(X, y)
    far = np.full((1, 4), 40.0)
    assert model.predict_one(far[0]) == "?"
    rows = model.predict_detailed(np.vstack([X[:1], far]), top=2)
    assert rows[0]["label"] == model.predict_many(X[:1])[0] and not rows[0]["unknown"]
    assert rows[1]["unknown"] and rows[1]["novelty"] > model.unknown_threshold_
    top_scores = [t["score"] for t in rows[0]["top"]]
    assert len(top_scores) == 2 and top_scores == sorted(top_scores, reverse=True)
    assert rows[0]["top"][0] == {"label": rows[0]["label"], "score": rows[0]["score"]}
    model.save(tmp_path / "m")
    loaded = LifelongClassifier.load(tmp_path / "m")
    assert loaded.unknown_threshold_ == model.unknown_threshold_
    np.testing.assert_allclose(loaded.novelty_scores(X[:5]), model.novelty_scores(X[:5]))
    assert loaded.predict_one(far[0]) == "?"


def test_closed_set_by_default_and_tuning_on_out_of_scope_examples():
    X, y = blobs(12, d=4)
    model = LifelongClassifier(IdentityEncoder(), NCMHead())
    model.learn_many(X, y)
    far = np.random.default_rng(13).normal(0, 1, (30, 4)) + 30.0
    assert None not in model.predict_many(far)  # no unknown decisions unless asked for
    threshold = model.tune_threshold(far, X_in=X)
    assert model.novelty_scores(X).max() <= threshold < model.novelty_scores(far).min()
    assert model.predict_many(far) == [None] * 30
