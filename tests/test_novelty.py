"""Open-set recognition: the novelty score against numpy, its calibration, and the learner's API."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

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


def reference_diagonal(X, y, Q, shrinkage):
    """The per-class diagonal Gaussian term from the raw data, written out with numpy."""
    labels = sorted(set(y))
    y = np.asarray(y)
    means = np.array([X[y == c].mean(axis=0) for c in labels])
    variances = np.array([X[y == c].var(axis=0) for c in labels])
    centred = np.vstack([X[y == c] - X[y == c].mean(axis=0) for c in labels])
    pooled = (centred**2).sum(axis=0) / len(X)
    mixed = 0.5 * variances + 0.5 * pooled
    overall = np.cov(X.T, bias=True)
    d = X.shape[1]
    P0 = np.linalg.inv((1 - shrinkage) * overall + shrinkage * np.trace(overall) / d * np.eye(d))
    mu = X.mean(axis=0)
    out = []
    for q in Q:
        nll = min(
            sum((q[j] - m[j]) ** 2 / v[j] + np.log(v[j]) for j in range(d))
            for m, v in zip(means, mixed, strict=True)
        )
        out.append(nll - (q - mu) @ P0 @ (q - mu))
    return np.array(out)


def reference_combined(relative, diagonal, reservoir_relative, reservoir_diagonal):
    """Both terms standardised over the calibration reservoir; the diagonal one weighs 0.5."""
    z1 = (relative - np.mean(reservoir_relative)) / np.std(reservoir_relative)
    z2 = (diagonal - np.mean(reservoir_diagonal)) / np.std(reservoir_diagonal)
    return z1 + 0.5 * z2


def old_relative_score(detector, X):
    """NoveltyDetector._score before the combined score existed, copied verbatim."""
    factors, white_means, total_mean = detector._prepare()
    Z = scipy.linalg.solve_triangular(factors[0][0], X.T, lower=True).T
    nearest = (
        np.sum(Z * Z, axis=1)[:, None] - 2.0 * Z @ white_means.T + np.sum(white_means**2, axis=1)
    ).min(axis=1)
    R = scipy.linalg.solve_triangular(factors[1][0], (X - total_mean).T, lower=True).T
    return nearest - np.sum(R * R, axis=1)


@pytest.mark.parametrize("shrinkage", [0.1, 0.5, 1.0])
def test_score_matches_numpy(shrinkage):
    X, y = blobs(0)
    Q = np.random.default_rng(1).normal(0, 4, (25, 5))
    detector = NoveltyDetector(shrinkage=shrinkage, score="relative")
    detector.learn_many(X, y)
    np.testing.assert_allclose(detector.score(Q), reference_scores(X, y, Q, shrinkage), rtol=1e-8)


@pytest.mark.parametrize("shrinkage", [0.1, 0.5, 1.0])
def test_combined_score_and_reservoir_match_numpy(shrinkage):
    # Batch 1 brings six classes: the first half of each class is learned, the second half is
    # scored against it (all held-out rows fit in the reservoir, in order), then learned.
    # Batch 2 brings more examples of known classes: all are scored against batch 1, then learned.
    X, y = blobs(14, k=6, n=40)
    X2, y2 = blobs(14, k=6, n=10)
    X2 = X2 + np.random.default_rng(15).normal(0, 0.3, X2.shape)
    Q = np.random.default_rng(16).normal(0, 4, (25, 5))
    detector = NoveltyDetector(shrinkage=shrinkage, reservoir_size=1000, score="combined")
    detector.learn_many(X, y)
    first = np.array([i % 40 < 20 for i in range(len(y))])
    Xf, yf = X[first], [label for label, f in zip(y, first, strict=True) if f]
    want_relative = np.r_[
        reference_scores(Xf, yf, X[~first], shrinkage), reference_scores(X, y, X2, shrinkage)
    ]
    want_diagonal = np.r_[
        reference_diagonal(Xf, yf, X[~first], shrinkage), reference_diagonal(X, y, X2, shrinkage)
    ]
    detector.learn_many(X2, y2)
    np.testing.assert_allclose(detector.scores_, want_relative, rtol=1e-8)
    np.testing.assert_allclose(detector.diag_scores_, want_diagonal, rtol=1e-8)
    Xa, ya = np.vstack([X, X2]), y + y2
    relative, diagonal = detector.score_components(Q)
    np.testing.assert_allclose(relative, reference_scores(Xa, ya, Q, shrinkage), rtol=1e-8)
    np.testing.assert_allclose(diagonal, reference_diagonal(Xa, ya, Q, shrinkage), rtol=1e-8)
    want = reference_combined(
        reference_scores(Xa, ya, Q, shrinkage),
        reference_diagonal(Xa, ya, Q, shrinkage),
        want_relative,
        want_diagonal,
    )
    np.testing.assert_allclose(detector.score(Q), want, rtol=1e-8)
    calibration = reference_combined(want_relative, want_diagonal, want_relative, want_diagonal)
    np.testing.assert_allclose(detector.calibration_scores(), calibration, rtol=1e-8, atol=1e-12)
    for rate in (0.02, 0.1, 0.5):
        want_threshold = np.quantile(calibration, 1 - rate)
        assert detector.threshold(rate) == pytest.approx(want_threshold, rel=1e-8, abs=1e-12)


def test_combined_sums_of_squares_match_numpy():
    X, y = blobs(17)
    detector = NoveltyDetector(score="combined")
    detector.learn_many(X, y)
    labels = np.asarray(y)
    want = np.array([(X[labels == c] ** 2).sum(axis=0) for c in detector.labels_])
    np.testing.assert_allclose(detector.sq_sums_, want, rtol=1e-12)
    assert NoveltyDetector(score="relative").sq_sums_ is None


def test_relative_score_reproduces_the_old_implementation_bit_for_bit():
    X, y = blobs(18)
    Q = np.random.default_rng(19).normal(0, 4, (20, 5))
    detector = NoveltyDetector(score="relative", reservoir_size=64)
    order = np.random.default_rng(20).permutation(len(y))
    for chunk in np.array_split(order, 5):
        detector.learn_many(X[chunk], [y[i] for i in chunk])
    np.testing.assert_array_equal(detector.score(Q), old_relative_score(detector, Q))
    relative, diagonal = detector.score_components(Q)
    np.testing.assert_array_equal(relative, old_relative_score(detector, Q))
    assert diagonal is None and detector.diag_scores_ is None
    np.testing.assert_array_equal(detector.calibration_scores(), detector.scores_)
    assert detector.threshold(0.05) == np.quantile(detector.scores_, 0.95)
    # The combined detector's reservoir holds the same rMD values, with the same sampling.
    combined = NoveltyDetector(reservoir_size=64, score="combined")
    for chunk in np.array_split(order, 5):
        combined.learn_many(X[chunk], [y[i] for i in chunk])
    np.testing.assert_array_equal(combined.score_classes_, detector.score_classes_)
    np.testing.assert_allclose(combined.scores_, detector.scores_, rtol=1e-12)
    assert combined.offered_ == detector.offered_


@pytest.mark.parametrize("score", ["relative", "combined"])
def test_statistics_do_not_depend_on_order_or_batches(score):
    X, y = blobs(2)
    Q = np.random.default_rng(3).normal(0, 4, (10, 5))
    whole = NoveltyDetector(score=score)
    whole.learn_many(X, y)
    pieces = NoveltyDetector(score=score)
    order = np.random.default_rng(4).permutation(len(y))
    for chunk in np.array_split(order, 7):
        pieces.learn_many(X[chunk], [y[i] for i in chunk])
    if score == "relative":
        np.testing.assert_allclose(pieces.score(Q), whole.score(Q), rtol=1e-9)
    else:  # the reservoirs (and so the standardisation) differ; the statistics do not
        for got, want in zip(pieces.score_components(Q), whole.score_components(Q), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-9)
        rows = [pieces.labels_.index(label) for label in whole.labels_]
        np.testing.assert_allclose(pieces.sq_sums_[rows], whole.sq_sums_, rtol=1e-12)


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


@pytest.mark.parametrize("score", ["relative", "combined"])
@pytest.mark.parametrize("operation", ["unlearn", "forget", "merge"])
def test_removal_and_merging_equal_retraining(operation, score):
    X, y = blobs(7)
    Q = np.random.default_rng(8).normal(0, 4, (10, 5))
    keep = [i for i, label in enumerate(y) if label != "c2" and i % 5]
    drop = [i for i in range(len(y)) if i not in set(keep)]
    reference = NoveltyDetector(score=score)
    reference.learn_many(X[keep], [y[i] for i in keep])
    detector = NoveltyDetector(score=score)
    if operation == "merge":
        other = NoveltyDetector(score=score)
        detector.learn_many(X[drop[::2] + keep[::2]], [y[i] for i in drop[::2] + keep[::2]])
        other.learn_many(X[drop[1::2] + keep[1::2]], [y[i] for i in drop[1::2] + keep[1::2]])
        detector.merge(other)
        reference.learn_many(X[drop], [y[i] for i in drop])
    else:
        detector.learn_many(X, y)
        detector.unlearn_many(X[drop], [y[i] for i in drop])
    if operation == "forget":
        detector = NoveltyDetector(score=score)
        detector.learn_many(X[keep], [y[i] for i in keep])
    if score == "relative":
        np.testing.assert_allclose(detector.score(Q), reference.score(Q), rtol=1e-8)
    else:  # the reservoirs differ (unlearning keeps scores); the statistics must not
        got, want = detector.score_components(Q), reference.score_components(Q)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-8)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-8)
        rows = [detector.labels_.index(label) for label in reference.labels_]
        np.testing.assert_allclose(detector.sq_sums_[rows], reference.sq_sums_, rtol=1e-8)
        assert len(detector.diag_scores_) == len(detector.scores_)
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


def test_bad_score_parameter_is_refused_and_params_round_trip():
    for bad in ("bogus", "", None, 1, "Combined"):
        with pytest.raises(InvalidParameterError, match="score"):
            NoveltyDetector(score=bad)
    detector = NoveltyDetector(score="relative")
    assert detector.get_params()["score"] == "relative"
    assert "score='relative'" in repr(detector)
    assert NoveltyDetector().get_params()["score"] == "relative"  # the default
    assert NoveltyDetector(score="combined").get_params()["score"] == "combined"
    assert NoveltyDetector(**detector.get_params()).get_params() == detector.get_params()
    X, y = blobs(21)
    detector.learn_many(X, y)
    combined = NoveltyDetector(score="combined")
    combined.learn_many(X, y)
    with pytest.raises(ModelMismatchError, match="parameters differ"):
        combined.merge(detector)
    with pytest.raises(ModelMismatchError, match="parameters differ"):
        detector.merge(combined)


def test_merge_pools_both_terms_of_each_calibration_entry_together():
    X, y = blobs(22, n=60)
    order = np.random.default_rng(23).permutation(len(y))
    parts = np.array_split(order, 2)
    here, there = (
        NoveltyDetector(reservoir_size=40, score="combined"),
        NoveltyDetector(reservoir_size=40, score="combined"),
    )
    for detector, part in zip((here, there), parts, strict=True):
        for chunk in np.array_split(part, 3):
            detector.learn_many(X[chunk], [y[i] for i in chunk])
    pairs = {
        (a, b)
        for detector in (here, there)
        for a, b in zip(detector.scores_, detector.diag_scores_, strict=True)
    }
    assert len(here.scores_) + len(there.scores_) > 40  # the pool is subsampled
    here.merge(there)
    assert len(here.scores_) == len(here.diag_scores_) == len(here.score_classes_) == 40
    assert all(pair in pairs for pair in zip(here.scores_, here.diag_scores_, strict=True))


def test_failed_learning_restores_the_sums_of_squares(monkeypatch):
    X, y = blobs(24)
    detector = NoveltyDetector(score="combined")
    detector.learn_many(X[:160], y[:160])
    meta, arrays = detector.get_state()
    arrays = {key: value.copy() for key, value in arrays.items()}

    def broken(self, X):
        raise RuntimeError("boom")

    monkeypatch.setattr(NoveltyDetector, "_components", broken)
    with pytest.raises(RuntimeError, match="boom"):
        detector.learn_many(X[100:], y[100:])  # c2 rows are learned before the failure
    monkeypatch.undo()
    after_meta, after = detector.get_state()
    assert after_meta == meta and after.keys() == arrays.keys()
    for key in arrays:
        np.testing.assert_array_equal(after[key], arrays[key])


def test_unlearning_a_whole_class_drops_both_terms_of_its_calibration_scores():
    X, y = blobs(25)
    detector = NoveltyDetector(score="combined")
    detector.learn_many(X, y)
    i = detector.labels_.index("c1")
    kept = detector.score_classes_ != i
    want = detector.scores_[kept], detector.diag_scores_[kept]
    assert 0 < kept.sum() < len(kept)
    rows = [r for r, label in enumerate(y) if label == "c1"]
    detector.unlearn_many(X[rows], ["c1"] * len(rows))
    np.testing.assert_array_equal(detector.scores_, want[0])
    np.testing.assert_array_equal(detector.diag_scores_, want[1])
    assert detector.sq_sums_.shape == (5, 5) and "c1" not in detector.labels_


def test_state_round_trip_and_inconsistent_states_are_refused():
    X, y = blobs(26)
    Q = np.random.default_rng(27).normal(0, 4, (10, 5))
    detector = NoveltyDetector(score="combined")
    detector.learn_many(X, y)
    meta, arrays = detector.get_state()
    assert {"sq_sums", "diag_scores"} <= arrays.keys()
    restored = NoveltyDetector(score="combined")
    restored.set_state(meta, arrays)
    np.testing.assert_array_equal(restored.score(Q), detector.score(Q))
    assert restored.threshold(0.05) == detector.threshold(0.05)
    before = restored.get_state()
    for change in (
        {"sq_sums": arrays["sq_sums"][:-1]},
        {"diag_scores": arrays["diag_scores"][:-1]},
        {"diag_scores": None},
    ):
        bad = {**arrays, **change}
        bad = {key: value for key, value in bad.items() if value is not None}
        with pytest.raises(ModelMismatchError):
            restored.set_state(meta, bad)
        after = restored.get_state()
        assert after[0] == before[0]
        for key in before[1]:
            np.testing.assert_array_equal(after[1][key], before[1][key])


def old_state(detector):
    """A detector's state as saved before the combined score existed."""
    meta, arrays = detector.get_state()
    meta = {**meta, "params": {k: v for k, v in meta["params"].items() if k != "score"}}
    arrays = {k: v for k, v in arrays.items() if k not in ("sq_sums", "diag_scores")}
    return meta, arrays


def test_a_state_saved_before_the_combined_score_loads_as_relative():
    X, y = blobs(28)
    Q = np.random.default_rng(29).normal(0, 4, (10, 5))
    old = NoveltyDetector(score="relative")  # scores exactly as the detector used to
    old.learn_many(X, y)
    meta, arrays = old_state(old)
    assert "score" not in meta["params"]
    detector = NoveltyDetector(**meta["params"], score="combined")  # a combined detector
    assert detector.get_params()["score"] == "combined"
    detector.set_state(meta, arrays)
    assert detector.get_params()["score"] == "relative"
    assert detector.sq_sums_ is None and detector.diag_scores_ is None
    np.testing.assert_array_equal(detector.score(Q), old_relative_score(detector, Q))
    np.testing.assert_allclose(detector.score(Q), reference_scores(X, y, Q, 0.5), rtol=1e-8)
    assert detector.threshold(0.05) == old.threshold(0.05)
    detector.learn_many(X[:20], y[:20])  # keeps learning as before, and saves as relative
    assert "sq_sums" not in detector.get_state()[1]


def test_learner_save_and_load_keeps_the_combined_score(tmp_path):
    X, y = blobs(30, d=4)
    Q = np.random.default_rng(31).normal(0, 4, (10, 4))
    model = LifelongClassifier(
        IdentityEncoder(), RidgeHead(n_features=64), unknown_rate=0.05, novelty_score="combined"
    )
    assert "novelty_score='combined'" in repr(model)
    order = np.random.default_rng(32).permutation(len(y))
    for chunk in np.array_split(order, 4):
        model.learn_many(X[chunk], [y[i] for i in chunk])
    assert model.novelty_.get_params()["score"] == "combined"
    model.save(tmp_path / "m")
    loaded = LifelongClassifier.load(tmp_path / "m")
    assert loaded.novelty_.get_params() == model.novelty_.get_params()
    np.testing.assert_array_equal(loaded.novelty_scores(Q), model.novelty_scores(Q))
    assert loaded.unknown_threshold_ == model.unknown_threshold_
    np.testing.assert_array_equal(loaded.novelty_.sq_sums_, model.novelty_.sq_sums_)
    np.testing.assert_array_equal(loaded.novelty_.diag_scores_, model.novelty_.diag_scores_)
    assert loaded.predict_many(Q) == model.predict_many(Q)


def test_learner_loads_a_model_saved_before_the_combined_score(tmp_path):
    from perennial.persistence import read_model_files, write_model_files

    X, y = blobs(33, d=4)
    Q = np.random.default_rng(34).normal(0, 4, (10, 4))
    model = LifelongClassifier(IdentityEncoder(), RidgeHead(n_features=64), unknown_rate=0.05)
    model.learn_many(X, y)
    model.save(tmp_path / "new")
    payload, arrays = read_model_files(tmp_path / "new")
    novelty = payload["open_set"]["novelty"]
    novelty["params"] = {k: v for k, v in novelty["params"].items() if k != "score"}
    arrays = {
        k: v for k, v in arrays.items() if k not in ("novelty.sq_sums", "novelty.diag_scores")
    }
    write_model_files(tmp_path / "old", payload, arrays)
    loaded = LifelongClassifier.load(tmp_path / "old")
    assert loaded.novelty_.get_params()["score"] == "relative"
    np.testing.assert_array_equal(loaded.novelty_scores(Q), model.novelty_scores(Q))
    assert loaded.unknown_threshold_ == model.unknown_threshold_


def test_tune_threshold_uses_the_calibration_scores_on_the_score_scale():
    X, y = blobs(35, d=4)
    model = LifelongClassifier(IdentityEncoder(), NCMHead(), novelty_score="combined")
    model.learn_many(X, y)
    far = np.random.default_rng(36).normal(0, 1, (30, 4)) + 8.0
    inside = model.novelty_.calibration_scores()
    outside = model.novelty_scores(far)
    candidates = np.unique(np.r_[inside, outside])
    recall = np.array([np.mean(outside > c) for c in candidates])
    accept = np.array([np.mean(inside <= c) for c in candidates])
    want = candidates[int(np.argmax(recall + accept))]
    assert model.tune_threshold(far) == want
    assert not np.allclose(inside, model.novelty_.scores_)  # not the raw rMD values
