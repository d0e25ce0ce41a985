"""The open-set gate: novelty against numpy, calibration, and every operation followed by prediction."""

from __future__ import annotations

import json
from pathlib import Path

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
from perennial.heads import NCMHead, RidgeEnsembleHead, RidgeHead, SLDAHead
from perennial.openset import OpenSetGate


def blobs(seed: int, k: int = 6, n: int = 40, d: int = 5) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (k, d))
    X = np.vstack([rng.normal(c, 1.0, (n, d)) for c in centres])
    # Values the encoders' float32 output represents exactly, so references see what models see.
    X = X.astype(np.float32).astype(np.float64)
    return X, [f"c{i}" for i in range(k) for _ in range(n)]


def reference_scores(X, y, Q, shrinkage, deviations=None):
    """Relative Mahalanobis distance from the raw data, written out with numpy.

    ``deviations`` are unlabelled rows (a forgotten class's examples minus their mean): they
    count in both covariances and in n, and belong to no class.
    """
    labels = sorted(set(y))
    y = np.asarray(y)
    means = np.array([X[y == c].mean(axis=0) for c in labels])
    centred = np.vstack([X[y == c] - X[y == c].mean(axis=0) for c in labels])
    rows = X
    if deviations is not None:
        centred = np.vstack([centred, deviations])
        rows = np.vstack([X, deviations])
    within = centred.T @ centred / len(rows)
    overall = np.cov(rows.T, bias=True)

    def shrink(S):
        return (1 - shrinkage) * S + shrinkage * np.trace(S) / len(S) * np.eye(len(S))

    P, P0 = np.linalg.inv(shrink(within)), np.linalg.inv(shrink(overall))
    nearest = np.array([min((q - m) @ P @ (q - m) for m in means) for q in Q])
    mu = rows.mean(axis=0)
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


def gated(score: str = "relative", head=None, **params) -> LifelongClassifier:
    """A model on numeric features with the open-set gate on."""
    return LifelongClassifier(
        IdentityEncoder(),
        head if head is not None else NCMHead(),
        unknown_rate=params.pop("unknown_rate", 0.1),
        novelty_score=score,
        **params,
    )


def learn_in_chunks(model, X, y, n_chunks: int, seed: int) -> None:
    order = np.random.default_rng(seed).permutation(len(y))
    for chunk in np.array_split(order, n_chunks):
        model.learn_many(X[chunk], [y[i] for i in chunk])


@pytest.mark.parametrize("shrinkage", [0.1, 0.5, 1.0])
def test_score_matches_numpy(shrinkage):
    X, y = blobs(0)
    Q = np.random.default_rng(1).normal(0, 4, (25, 5))
    gate = OpenSetGate(shrinkage=shrinkage)
    columns = np.array([int(label[1:]) for label in y])
    gate.commit(gate.plan([(X, columns)], n_new=6))
    np.testing.assert_allclose(gate.novelty(Q), reference_scores(X, y, Q, shrinkage), rtol=1e-8)


@pytest.mark.parametrize("shrinkage", [0.1, 0.5, 1.0])
def test_combined_score_and_reservoir_match_numpy(shrinkage):
    # Batch 1 brings six classes: the first half of each class is learned, the second half is
    # scored against it (all held-out rows fit in the reservoir, in order), then learned.
    # Batch 2 brings more examples of known classes: all are scored against batch 1, then learned.
    X, y = blobs(14, k=6, n=40)
    X2, y2 = blobs(14, k=6, n=10)
    X2 = X2 + np.random.default_rng(15).normal(0, 0.3, X2.shape)
    Q = np.random.default_rng(16).normal(0, 4, (25, 5))
    gate = OpenSetGate(shrinkage=shrinkage, reservoir_size=1000, score="combined")
    columns = np.array([int(label[1:]) for label in y])
    gate.commit(gate.plan([(X, columns)], n_new=6))
    first = np.array([i % 40 < 20 for i in range(len(y))])
    Xf, yf = X[first], [label for label, f in zip(y, first, strict=True) if f]
    want_relative = np.r_[
        reference_scores(Xf, yf, X[~first], shrinkage), reference_scores(X, y, X2, shrinkage)
    ]
    want_diagonal = np.r_[
        reference_diagonal(Xf, yf, X[~first], shrinkage), reference_diagonal(X, y, X2, shrinkage)
    ]
    gate.commit(gate.plan([(X2, np.array([int(label[1:]) for label in y2]))], n_new=0))
    np.testing.assert_allclose(gate.scores_, want_relative, rtol=1e-8)
    np.testing.assert_allclose(gate.diag_scores_, want_diagonal, rtol=1e-8)
    Xa, ya = np.vstack([X, X2]), y + y2
    relative, diagonal = gate.novelty_terms(Q)
    np.testing.assert_allclose(relative, reference_scores(Xa, ya, Q, shrinkage), rtol=1e-8)
    np.testing.assert_allclose(diagonal, reference_diagonal(Xa, ya, Q, shrinkage), rtol=1e-8)
    # Batch 1's scores were taken against classes of 20 examples (120 rows learned), batch 2's
    # against 40 (240 rows); of 50 examples per class now, only scores taken with at least half
    # of them calibrate: batch 2's.
    context = np.r_[np.tile([20, 120], (120, 1)), np.tile([40, 240], (60, 1))]
    np.testing.assert_array_equal(gate.score_context_, context)
    recent = np.r_[np.zeros(120, dtype=bool), np.ones(60, dtype=bool)]
    np.testing.assert_array_equal(gate.recent(), recent)
    want = reference_combined(
        reference_scores(Xa, ya, Q, shrinkage),
        reference_diagonal(Xa, ya, Q, shrinkage),
        want_relative[recent],
        want_diagonal[recent],
    )
    np.testing.assert_allclose(gate.novelty(Q), want, rtol=1e-8)
    calibration = reference_combined(
        want_relative[recent], want_diagonal[recent], want_relative[recent], want_diagonal[recent]
    )
    np.testing.assert_allclose(gate.calibration_scores(), calibration, rtol=1e-8, atol=1e-12)
    for rate in (0.02, 0.1, 0.5):
        want_threshold = np.quantile(calibration, 1 - rate)
        assert gate.threshold(rate) == pytest.approx(want_threshold, rel=1e-8, abs=1e-12)


def test_combined_sums_of_squares_match_numpy():
    X, y = blobs(17)
    model = gated("combined")
    model.learn_many(X, y)
    labels = np.asarray(y)
    want = np.array([(X[labels == c] ** 2).sum(axis=0) for c in model.classes_])
    np.testing.assert_allclose(model.gate_.statistics_.squares, want, rtol=1e-12)
    relative = gated("relative")
    relative.learn_many(X, y)
    assert relative.gate_.statistics_.squares is None and relative.gate_.diag_scores_ is None


def test_a_closed_set_model_keeps_no_open_set_statistics():
    X, y = blobs(18)
    closed = LifelongClassifier(IdentityEncoder(), NCMHead())
    closed.learn_many(X, y)
    assert closed.gate_ is None and closed.open_set_status_ == "off"
    assert closed.state_bytes == closed.head.state_bytes
    with pytest.raises(NotFittedError, match="open set is off"):
        closed.novelty_scores(X[:2])
    with pytest.raises(InvalidParameterError, match="cannot turn open set on"):
        closed.unknown_rate = 0.05
    assert closed.gate_ is None and closed.unknown_rate is None
    empty = LifelongClassifier(IdentityEncoder(), NCMHead())
    empty.unknown_rate = 0.05  # an empty model may turn it on
    empty.learn_many(X, y)
    assert empty.gate_ is not None and empty.open_set_status_ == "on"


@pytest.mark.parametrize("score", ["relative", "combined"])
def test_statistics_do_not_depend_on_order_or_batches(score):
    X, y = blobs(2)
    Q = np.random.default_rng(3).normal(0, 4, (10, 5))
    whole = gated(score)
    whole.learn_many(X, y)
    pieces = gated(score)
    learn_in_chunks(pieces, X, y, 7, seed=4)
    got, want = pieces.gate_.novelty_terms(Q), whole.gate_.novelty_terms(Q)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-9)
    if score == "combined":  # the reservoirs (and so the standardisation) differ
        np.testing.assert_allclose(got[1], want[1], rtol=1e-9)


def test_threshold_rejects_about_the_target_share_of_new_in_scope_inputs():
    rng = np.random.default_rng(5)
    centres = rng.normal(0, 2, (30, 8))
    scales = rng.uniform(0.5, 1.5, 30)
    model = gated("relative")
    for step in range(3):  # classes arrive in three steps, each class in one batch
        for c in range(step * 10, step * 10 + 10):
            model.learn_many(rng.normal(centres[c], scales[c], (60, 8)), [c] * 60)
    fresh = np.vstack([rng.normal(centres[c], scales[c], (100, 8)) for c in range(30)])
    for rate in (0.02, 0.05, 0.1):
        model.unknown_rate = rate
        realised = np.mean(model.novelty_scores(fresh) > model.unknown_threshold_)
        assert abs(realised - rate) < 0.5 * rate + 0.01, (rate, realised)


def test_one_example_at_a_time_calibrates_conservatively():
    # learn_one scores with a covariance factored a few examples earlier (the cost rule). From a
    # fresh model, the first held-out scores come from classes of two or three examples, whose
    # means are still far from the final ones: those scores are high, so the threshold rejects
    # fewer new in-scope inputs than the target (2-4% for 5% here), never more.
    rng = np.random.default_rng(37)
    centres = rng.normal(0, 2, (10, 8))
    model = gated("relative", unknown_rate=0.05)
    for i in rng.permutation(10 * 80):
        c = int(i % 10)
        model.learn_one(rng.normal(centres[c], 1.0, 8), c)
    fresh = np.vstack([rng.normal(centres[c], 1.0, (200, 8)) for c in range(10)])
    realised = np.mean(model.novelty_scores(fresh) > model.unknown_threshold_)
    assert 0.01 <= realised <= 0.05, realised


def test_reservoir_is_bounded_and_holds_scores_only():
    X, y = blobs(6, k=4, n=200)
    gate = OpenSetGate(reservoir_size=50)
    gate.commit(gate.plan([(X, np.array([int(label[1:]) for label in y]))], n_new=4))
    assert len(gate.scores_) == 50 and gate.offered_ > 50
    assert gate.scores_.dtype == np.float64 and gate.scores_.ndim == 1


# --- every operation, then open-set prediction, for every head ----------------------------------
HEADS = {
    "ncm": lambda: NCMHead(),
    "slda": lambda: SLDAHead(),
    "slda-exact": lambda: SLDAHead(exact_forget=True),
    "ridge": lambda: RidgeHead(n_features=48, ridge=0.5),
    "ridge-exact": lambda: RidgeHead(n_features=48, ridge=0.5, exact_forget=True),
    "ridge-ensemble": lambda: RidgeEnsembleHead(n_members=2, n_features=24, ridge=0.5),
}


def assert_same_predictions(got, want):
    assert [r["label"] for r in got] == [r["label"] for r in want]
    assert [r["unknown"] for r in got] == [r["unknown"] for r in want]
    np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in want], rtol=1e-6)


@pytest.mark.parametrize("score", ["relative", "combined"])
@pytest.mark.parametrize("name", sorted(HEADS))
def test_forget_then_open_set_prediction(name, score):
    X, y = blobs(40)
    Q = np.vstack([X[::17], np.random.default_rng(41).normal(0, 6, (8, 5))])
    model = gated(score, HEADS[name]())
    learn_in_chunks(model, X, y, 3, seed=42)
    threshold_before = model.unknown_threshold_
    model.forget("c2")
    rows = model.predict_detailed(Q)  # works, with novelty, after a forget
    assert all(row["novelty"] is not None for row in rows)
    assert "c2" not in model.classes_ and model.gate_.statistics_.n_classes == 5
    assert not np.any(model.gate_.score_classes_ >= 5)
    assert model.unknown_threshold_ is not None and threshold_before is not None
    keep = [i for i, label in enumerate(y) if label != "c2"]
    gate = model.gate_
    relative, _ = gate.novelty_terms(Q)
    exact = bool(getattr(model.head, "exact_forget", False))
    if exact:  # exactly the statistics of a model that never saw c2
        want = reference_scores(X[keep], [y[i] for i in keep], Q, 0.5)
    else:  # c2's examples stay as unlabelled deviations from their class mean
        rows2 = X[[i for i, label in enumerate(y) if label == "c2"]]
        want = reference_scores(
            X[keep], [y[i] for i in keep], Q, 0.5, deviations=rows2 - rows2.mean(axis=0)
        )
    np.testing.assert_allclose(relative, want, rtol=1e-8)
    model.learn_many(X[:10], y[:10])  # keeps learning after a forget
    assert model.predict_detailed(Q[:2])[0]["novelty"] is not None


@pytest.mark.parametrize("score", ["relative", "combined"])
@pytest.mark.parametrize("name", sorted(HEADS))
def test_merge_then_open_set_prediction_equals_training_on_the_union(name, score):
    X, y = blobs(43)
    Q = np.vstack([X[::13], np.random.default_rng(44).normal(0, 6, (8, 5))])
    order = np.random.default_rng(45).permutation(len(y))
    here, there, union = (
        gated(score, HEADS[name]()),
        gated(score, HEADS[name]()),
        gated(score, HEADS[name]()),
    )
    half = len(order) // 2
    here.learn_many(X[order[:half]], [y[i] for i in order[:half]])
    there.learn_many(X[order[half:]], [y[i] for i in order[half:]])
    union.learn_many(X[order], [y[i] for i in order])
    here.merge(there)
    for got, want in zip(here.gate_.novelty_terms(Q), union.gate_.novelty_terms(Q), strict=True):
        if want is not None:
            np.testing.assert_allclose(got, want, rtol=1e-8)
    rows = here.predict_detailed(Q)
    assert all(row["novelty"] is not None for row in rows)
    np.testing.assert_allclose(
        [r["score"] for r in rows], [r["score"] for r in union.predict_detailed(Q)], rtol=1e-6
    )
    # fit after a merge: a fresh model of the new data, open set included
    here.fit(X[order[:half]], [y[i] for i in order[:half]])
    fresh = gated(score, HEADS[name]())
    fresh.learn_many(X[order[:half]], [y[i] for i in order[:half]])
    assert_same_predictions(here.predict_detailed(Q), fresh.predict_detailed(Q))
    np.testing.assert_array_equal(here.gate_.scores_, fresh.gate_.scores_)


@pytest.mark.parametrize("score", ["relative", "combined"])
@pytest.mark.parametrize("name", sorted(HEADS))
def test_unlearn_then_open_set_prediction_equals_retraining(name, score):
    X, y = blobs(46)
    Q = np.vstack([X[::11], np.random.default_rng(47).normal(0, 6, (8, 5))])
    drop = [i for i, label in enumerate(y) if label == "c3" or i % 7 == 0]
    keep = [i for i in range(len(y)) if i not in set(drop)]
    model, reference = gated(score, HEADS[name]()), gated(score, HEADS[name]())
    learn_in_chunks(model, X, y, 4, seed=48)
    reference.learn_many(X[keep], [y[i] for i in keep])
    model.unlearn(X[drop], [y[i] for i in drop])
    assert "c3" not in model.classes_
    for got, want in zip(
        model.gate_.novelty_terms(Q), reference.gate_.novelty_terms(Q), strict=True
    ):
        if want is not None:
            np.testing.assert_allclose(got, want, rtol=1e-7)
    assert all(row["novelty"] is not None for row in model.predict_detailed(Q))
    assert not np.any(model.gate_.score_classes_ >= len(model.classes_))


def test_merging_a_closed_set_model_into_an_open_set_one_is_refused():
    X, y = blobs(49)
    here, closed = gated(), LifelongClassifier(IdentityEncoder(), NCMHead())
    here.learn_many(X[:100], y[:100])
    closed.learn_many(X[100:], y[100:])
    before = here.gate_.get_state()
    with pytest.raises(ModelMismatchError, match="closed-set"):
        here.merge(closed)
    assert here.n_seen_ == 100 and here.gate_.get_state()[0] == before[0]
    with pytest.raises(ModelMismatchError, match="parameters"):
        here.merge(gated("combined"))
    closed.merge(here)  # open into closed: the head merges, no gate to keep
    assert closed.n_seen_ == len(y) and closed.gate_ is None


def test_slda_default_forget_leaves_the_pooled_covariance_of_the_closed_form():
    X, y = blobs(50)
    head = SLDAHead()
    head.learn_many(X, y)
    head.forget("c4")
    labels = np.asarray(y)
    kept = [c for c in sorted(set(y)) if c != "c4"]
    rows4 = X[labels == "c4"]
    scatter = sum(
        (X[labels == c] - X[labels == c].mean(axis=0)).T
        @ (X[labels == c] - X[labels == c].mean(axis=0))
        for c in kept
    )
    scatter = scatter + (rows4 - rows4.mean(axis=0)).T @ (rows4 - rows4.mean(axis=0))
    np.testing.assert_allclose(head.covariance_, scatter / len(X), rtol=1e-10)
    assert head.n_seen_ == len(X) and head.classes_ == kept
    exact = SLDAHead(exact_forget=True)
    exact.learn_many(X, y)
    exact.forget("c4")
    rest = X[labels != "c4"]
    within = sum(
        (X[labels == c] - X[labels == c].mean(axis=0)).T
        @ (X[labels == c] - X[labels == c].mean(axis=0))
        for c in kept
    )
    np.testing.assert_allclose(exact.covariance_, within / len(rest), rtol=1e-10)


def test_forget_drops_the_class_and_its_calibration_scores():
    X, y = blobs(9)
    model = gated()
    model.learn_many(X, y)
    gate = model.gate_
    i = model.classes_.index("c1")
    before = len(gate.scores_)
    kept_scores = gate.scores_[gate.score_classes_ != i]
    model.forget("c1")
    assert 0 < len(gate.scores_) < before
    np.testing.assert_array_equal(gate.scores_, kept_scores)


def gate_state(model):
    meta, arrays = model.gate_.get_state()
    return meta, {k: v.copy() for k, v in arrays.items()}


def assert_state_equal(got, want):
    assert got[0] == want[0] and got[1].keys() == want[1].keys()
    for key in want[1]:
        np.testing.assert_array_equal(got[1][key], want[1][key], err_msg=key)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_bad_input_changes_nothing_the_gate_included(name):
    X, y = blobs(10)
    model = gated("combined", HEADS[name]())
    model.learn_many(X, y)
    state = gate_state(model)
    head_state = model.head.get_state()
    bad = X[:3].copy()
    bad[1, 2] = np.nan
    with pytest.raises(NonFiniteInputError):
        model.learn_many(bad, y[:3])
    with pytest.raises(FeatureDimensionError):
        model.learn_many(X[:3, :4], y[:3])
    with pytest.raises(UnknownLabelError):
        model.unlearn(X[:2], ["nope", "c0"])
    with pytest.raises(InvalidInputError, match="41 examples of 'c0'"):
        model.unlearn(X[:41], ["c0"] * 41)
    with pytest.raises(UnknownLabelError):
        model.forget("nope")
    with pytest.raises(ModelMismatchError):
        model.merge(gated("relative", HEADS[name]()))
    with pytest.raises(InvalidParameterError):
        model.unknown_rate = 1.0
    assert_state_equal(gate_state(model), state)
    after = model.head.get_state()
    assert after[0] == head_state[0]
    for key in head_state[1]:
        np.testing.assert_array_equal(after[1][key], head_state[1][key], err_msg=key)


def test_a_head_that_fails_leaves_the_gate_unchanged(monkeypatch):
    X, y = blobs(24)
    model = gated("combined", SLDAHead())
    model.learn_many(X[:160], y[:160])
    state = gate_state(model)

    def broken(self, X, columns, n_new):
        raise RuntimeError("boom")

    monkeypatch.setattr(SLDAHead, "_learn", broken)
    with pytest.raises(RuntimeError, match="boom"):
        model.learn_many(X[100:], y[100:])
    monkeypatch.undo()
    assert_state_equal(gate_state(model), state)


def test_a_plan_never_committed_leaves_no_trace_in_later_held_out_scores():
    # The gate caches whitened class means by class count. A plan whose second batch reads rows
    # of its first batch must not leave those rows' mean in the cache: a later learn that
    # reaches the same count without being scored (the reservoir is full and passes it over)
    # would otherwise have the next held-out rows scored against rows never learned.
    X, y = blobs(25)
    columns = np.array([int(label[1:]) for label in y])
    rng = np.random.default_rng(26)
    never, then = rng.normal(0, 3, (2, 5)), rng.normal(0, 3, (1, 5))
    later = X[:40] + rng.normal(0, 0.1, (40, 5))  # near class 0, so its mean decides
    zeros = np.zeros(len(later), dtype=np.intp)

    def learned(abandon: bool) -> OpenSetGate:
        # 120 held-out scores offered to 25 slots. With seed 1 the reservoir takes the second
        # row of the abandoned plan and passes over the first, and so the row learned instead.
        gate = OpenSetGate(reservoir_size=25, seed=1)
        gate.commit(gate.plan([(X, columns)], n_new=6))
        gate.novelty_terms(X[:1])  # the committed statistics' factors, as a prediction leaves them
        if abandon:
            gate.plan([(never[:1], zeros[:1]), (never[1:], zeros[:1])], n_new=0)
        scores = gate.scores_.copy()
        gate.commit(gate.plan([(then, zeros[:1])], n_new=0))
        assert gate.offered_ == 121 and gate.statistics_.counts[0] == 41
        np.testing.assert_array_equal(gate.scores_, scores)  # passed over: not scored
        gate.commit(gate.plan([(later, zeros)], n_new=0))
        return gate

    got, want = learned(abandon=True), learned(abandon=False)
    np.testing.assert_array_equal(got.scores_, want.scores_)


def test_a_young_model_answers_and_says_what_it_still_needs():
    model = gated("relative")
    model.learn_one([1.0, 0.0, 0.0], "a")
    row = model.predict_detailed([[1.0, 0.0, 0.0]])[0]
    assert row["label"] == "a" and row["novelty"] is None and not row["unknown"]
    assert model.open_set_status_.startswith("calibrating: novelty needs two")
    model.learn_one([0.0, 1.0, 0.0], "b")
    model.learn_one([0.0, 0.0, 1.0], "c")
    assert model.open_set_status_.startswith("on (young model)")
    near, far = model.predict_detailed([[0.1, 0.9, 0.0], [0.0, 6.0, -6.0]])
    assert near["label"] == "b" and not near["unknown"]
    assert far["label"] is None and far["unknown"]


def young_reference(X, y, Q):
    """Young-model novelty and threshold from the raw data, written out with numpy."""
    labels = sorted(set(y), key=str)
    y = np.asarray(y)
    means = np.array([X[y == c].mean(axis=0) for c in labels])
    novelty = np.array([min(np.sum((q - m) ** 2) for m in means) for q in Q])
    nearest = [
        min(np.sum((m - o) ** 2) for j, o in enumerate(means) if j != i)
        for i, m in enumerate(means)
    ]
    return novelty, float(np.median(nearest))


@pytest.mark.parametrize("per_class", [1, 2, 3])
def test_the_young_model_rule_matches_numpy(per_class):
    X, y = blobs(51, k=5, n=per_class)
    Q = np.random.default_rng(52).normal(0, 4, (12, 5)).astype(np.float32).astype(np.float64)
    model = gated("relative")
    for i in range(len(y)):  # one at a time: few held-out scores, so the model stays young
        model.learn_one(X[i], y[i])
    assert model.gate_.young() and len(model.gate_.scores_) < 20
    novelty, threshold = young_reference(X, y, Q)
    np.testing.assert_allclose(model.novelty_scores(Q), novelty, rtol=1e-8)
    assert model.unknown_threshold_ == pytest.approx(threshold, rel=1e-8)
    flagged = [row["unknown"] for row in model.predict_detailed(Q)]
    assert flagged == list(novelty > threshold)


def test_the_gate_grows_out_of_the_young_rule_at_twenty_recent_held_out_scores():
    X, y = blobs(53, k=4, n=12)  # 48 examples of 5 features: the width is passed early
    model = gated("relative", unknown_rate=0.05)
    order = np.random.default_rng(54).permutation(len(y))
    counts: dict[str, int] = {}
    scored = []  # (class, its count, rows learned) when each held-out score was taken
    for n, i in enumerate(order):
        if counts.get(y[i], 0) >= 2 and len(counts) >= 2:
            scored.append((y[i], counts[y[i]], n))
        counts[y[i]] = counts.get(y[i], 0) + 1
        model.learn_one(X[i], y[i])
        gate = model.gate_
        context = np.array([(c, rows) for _, c, rows in scored]).reshape(-1, 2)
        np.testing.assert_array_equal(gate.score_context_, context)
        # Recent: taken once the class had half its examples of now, and the statistics
        # min(half their rows of now, two per feature).
        recent = np.array(
            [
                c >= 0.5 * counts[label] and rows >= min(0.5 * (n + 1), 10)
                for label, c, rows in scored
            ],
            dtype=bool,
        )
        if gate.young():
            assert recent.sum() < 20 or n + 1 < 5
        else:
            assert recent.sum() >= 20 and n + 1 >= 5
            want = np.quantile(gate.scores_[recent], 0.95)
            assert model.unknown_threshold_ == pytest.approx(want, rel=1e-12)
    assert not model.gate_.young() and model.open_set_status_ == "on"
    wide = gated("relative")  # more features than examples: young, whatever the reservoir holds
    Xw, yw = blobs(55, k=3, n=20, d=80)
    wide.learn_many(Xw, yw)
    assert len(wide.gate_.scores_) >= 20 and wide.gate_.young()


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
    assert_state_equal(gate_state(loaded), gate_state(model))


def test_closed_set_by_default_and_tuning_on_out_of_scope_examples():
    X, y = blobs(12, d=4)
    model = LifelongClassifier(IdentityEncoder(), NCMHead(), unknown_rate=0.05)
    model.unknown_rate = None  # the gate keeps learning; nothing is flagged
    model.learn_many(X, y)
    far = np.random.default_rng(13).normal(0, 1, (30, 4)) + 30.0
    assert None not in model.predict_many(far)
    threshold = model.tune_threshold(far, X_in=X)
    assert model.novelty_scores(X).max() <= threshold < model.novelty_scores(far).min()
    assert model.predict_many(far) == [None] * 30


def test_novelty_score_parameter_defaults_and_validation():
    for bad in ("bogus", "", None, 1, "Combined"):
        with pytest.raises(InvalidParameterError, match="novelty_score"):
            LifelongClassifier(novelty_score=bad)
        with pytest.raises(InvalidParameterError, match="score"):
            OpenSetGate(score=bad)
    numeric = LifelongClassifier(unknown_rate=0.1)
    assert numeric.novelty_score == "auto" and numeric.gate_.score == "relative"

    class FakeText:
        kind = "text"
        name = "fake-text"

        def encode(self, texts):
            return np.ones((len(texts), 3), dtype=np.float32)

    text = LifelongClassifier(FakeText(), unknown_rate=0.1)
    assert text.gate_.score == "combined"  # dense sentence embeddings (see perennial.novelty)
    forced = LifelongClassifier(FakeText(), unknown_rate=0.1, novelty_score="relative")
    assert forced.gate_.score == "relative" and "novelty_score='relative'" in repr(forced)
    gate = OpenSetGate(score="combined", shrinkage=0.3)
    assert OpenSetGate(**gate.get_params()).get_params() == gate.get_params()


def test_merge_pools_both_terms_of_each_calibration_entry_together():
    X, y = blobs(22, n=60)
    order = np.random.default_rng(23).permutation(len(y))
    parts = np.array_split(order, 2)
    here, there = gated("combined"), gated("combined")
    here.gate_.reservoir_size = there.gate_.reservoir_size = 40
    for model, part in zip((here, there), parts, strict=True):
        for chunk in np.array_split(part, 3):
            model.learn_many(X[chunk], [y[i] for i in chunk])
    pairs = {
        (a, b)
        for model in (here, there)
        for a, b in zip(model.gate_.scores_, model.gate_.diag_scores_, strict=True)
    }
    assert len(here.gate_.scores_) + len(there.gate_.scores_) > 40  # the pool is subsampled
    here.merge(there)
    gate = here.gate_
    assert len(gate.scores_) == len(gate.diag_scores_) == len(gate.score_classes_) == 40
    assert all(pair in pairs for pair in zip(gate.scores_, gate.diag_scores_, strict=True))


def test_merge_stretches_each_side_s_score_contexts_to_the_merged_classes():
    # Each side's (class count, rows) at scoring time scale to the merged model: a score from
    # the later half of one side's stream stays in the later half of the merged one.
    X, y = blobs(28, k=3, n=30)
    order = np.random.default_rng(29).permutation(len(y))
    here, there = gated("relative"), gated("relative")
    for i in order[:60]:
        here.learn_one(X[i], y[i])
    for i in order[60:]:
        there.learn_one(X[i], y[i])
    own = {m: dict(zip(m.classes_, m.head.counts_.tolist(), strict=True)) for m in (here, there)}
    before = {
        m: (m.gate_.score_context_.copy(), list(m.gate_.score_classes_)) for m in (here, there)
    }
    rows = {here: 60, there: 30}
    labels = {m: list(m.classes_) for m in (here, there)}
    here.merge(there)
    merged = dict(zip(here.classes_, here.head.counts_.tolist(), strict=True))
    want = []
    for m in (here, there):
        context, classes = before[m]
        for (count, n), column in zip(context, classes, strict=True):
            label = labels[m][column]
            want.append(
                (
                    int(np.floor(count * merged[label] / own[m][label])),
                    int(np.floor(n * 90 / rows[m])),
                )
            )
    np.testing.assert_array_equal(here.gate_.score_context_, np.array(want))


def test_unlearning_a_whole_class_drops_both_terms_of_its_calibration_scores():
    X, y = blobs(25)
    model = gated("combined")
    model.learn_many(X, y)
    gate = model.gate_
    i = model.classes_.index("c1")
    kept = gate.score_classes_ != i
    want = gate.scores_[kept], gate.diag_scores_[kept]
    assert 0 < kept.sum() < len(kept)
    rows = [r for r, label in enumerate(y) if label == "c1"]
    model.unlearn(X[rows], ["c1"] * len(rows))
    np.testing.assert_array_equal(gate.scores_, want[0])
    np.testing.assert_array_equal(gate.diag_scores_, want[1])
    assert gate.statistics_.squares.shape == (5, 5) and "c1" not in model.classes_


def test_state_round_trip_and_inconsistent_states_are_refused():
    X, y = blobs(26)
    Q = np.random.default_rng(27).normal(0, 4, (10, 5))
    model = gated("combined")
    model.learn_many(X, y)
    meta, arrays = model.gate_.get_state()
    assert {"sq_sums", "diag_scores"} <= arrays.keys()
    restored = OpenSetGate.from_state(meta, arrays, n_classes=6)
    np.testing.assert_array_equal(restored.novelty(Q), model.gate_.novelty(Q))
    assert restored.threshold(0.05) == model.gate_.threshold(0.05)
    for change in (
        {"sq_sums": arrays["sq_sums"][:-1]},
        {"diag_scores": arrays["diag_scores"][:-1]},
        {"diag_scores": None},
        {"score_classes": arrays["score_classes"] + 6},
    ):
        bad = {**arrays, **change}
        bad = {key: value for key, value in bad.items() if value is not None}
        with pytest.raises(ModelMismatchError):
            OpenSetGate.from_state(meta, bad, n_classes=6)
    with pytest.raises(ModelMismatchError):
        OpenSetGate.from_state(meta, arrays, n_classes=5)
    with pytest.raises(ModelMismatchError):
        OpenSetGate.from_state(meta, {**arrays, "score_context": arrays["score_context"][:-1]}, 6)
    # A state saved before score contexts were kept: every score calibrates, as it did then.
    older = {key: value for key, value in arrays.items() if key != "score_context"}
    restored = OpenSetGate.from_state(meta, older, n_classes=6)
    assert restored.recent().all() and len(restored.scores_) == len(model.gate_.scores_)


def test_learner_save_and_load_keeps_the_combined_score(tmp_path):
    X, y = blobs(30, d=4)
    Q = np.random.default_rng(31).normal(0, 4, (10, 4))
    model = LifelongClassifier(
        IdentityEncoder(), RidgeHead(n_features=64), unknown_rate=0.05, novelty_score="combined"
    )
    assert "novelty_score='combined'" in repr(model)
    learn_in_chunks(model, X, y, 4, seed=32)
    model.save(tmp_path / "m")
    loaded = LifelongClassifier.load(tmp_path / "m")
    assert loaded.gate_.get_params() == model.gate_.get_params()
    np.testing.assert_array_equal(loaded.novelty_scores(Q), model.novelty_scores(Q))
    assert loaded.unknown_threshold_ == model.unknown_threshold_
    assert loaded.predict_many(Q) == model.predict_many(Q)


FORMAT_1 = Path(__file__).parent / "data" / "format-1"


@pytest.mark.parametrize("name", ["ncm-relative", "ridge-combined", "slda-relative"])
def test_models_saved_by_the_previous_format_load_and_answer_the_same(name):
    expected = json.loads((FORMAT_1 / "expected.json").read_text())[name]
    probe = np.load(FORMAT_1 / "probe.npy")
    model = LifelongClassifier.load(FORMAT_1 / name)
    assert model.classes_ == expected["classes"]
    np.testing.assert_allclose(model.decision_scores(probe), expected["scores"], rtol=1e-9)
    np.testing.assert_allclose(model.novelty_scores(probe), expected["novelty"], rtol=1e-9)
    assert model.unknown_threshold_ == pytest.approx(expected["threshold"], rel=1e-9)
    assert model.predict_many(probe) == expected["predictions"]
    model.learn_many(probe[:2], expected["classes"][:2])  # keeps learning, in the new format
    assert model.gate_.statistics_.n == model.n_seen_


def test_a_previous_format_model_whose_open_set_was_switched_off_says_so():
    expected = json.loads((FORMAT_1 / "expected.json").read_text())["ridge-forgotten"]
    probe = np.load(FORMAT_1 / "probe.npy")
    model = LifelongClassifier.load(FORMAT_1 / "ridge-forgotten")
    assert model.gate_ is None and model.open_set_status_.startswith("unavailable")
    with pytest.raises(NotFittedError, match="no open-set statistics"):
        model.predict_many(probe)
    model.unknown_rate = None
    np.testing.assert_allclose(model.decision_scores(probe), expected["scores"], rtol=1e-9)


def test_tune_threshold_uses_the_calibration_scores_on_the_score_scale():
    X, y = blobs(35, d=4)
    model = gated("combined")
    model.unknown_rate = None
    model.learn_many(X, y)
    far = np.random.default_rng(36).normal(0, 1, (30, 4)) + 8.0
    inside = model.gate_.calibration_scores()
    outside = model.novelty_scores(far)
    candidates = np.unique(np.r_[inside, outside])
    recall = np.array([np.mean(outside > c) for c in candidates])
    accept = np.array([np.mean(inside <= c) for c in candidates])
    want = candidates[int(np.argmax(recall + accept))]
    assert model.tune_threshold(far) == want
    assert not np.allclose(inside, model.gate_.scores_)  # not the raw rMD values


@pytest.mark.parametrize("operation", ["forget", "unlearn", "merge"])
@pytest.mark.parametrize("name", sorted(HEADS))
def test_each_operation_then_save_load_then_open_set_prediction(tmp_path, name, operation):
    X, y = blobs(56)
    Q = np.vstack([X[::19], np.random.default_rng(57).normal(0, 6, (6, 5))])
    model = gated("combined", HEADS[name]())
    learn_in_chunks(model, X[:150], y[:150], 3, seed=58)
    if operation == "forget":
        model.forget("c1")
    elif operation == "unlearn":
        model.unlearn(X[:30], y[:30])
    else:
        other = gated("combined", HEADS[name]())
        other.learn_many(X[150:], y[150:])
        model.merge(other)
    model.save(tmp_path / "m")
    loaded = LifelongClassifier.load(tmp_path / "m")
    assert_state_equal(gate_state(loaded), gate_state(model))
    assert loaded.classes_ == model.classes_
    want, got = model.predict_detailed(Q), loaded.predict_detailed(Q)
    assert_same_predictions(got, want)
    np.testing.assert_allclose([r["novelty"] for r in got], [r["novelty"] for r in want], rtol=1e-9)
    loaded.learn_many(X[150:160], y[150:160])  # and it keeps learning with open set on
    assert loaded.gate_.statistics_.n_classes == len(loaded.classes_)
