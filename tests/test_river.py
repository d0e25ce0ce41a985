"""RiverClassifier: river's own conformance checks, and answers checked against numpy."""

from __future__ import annotations

import itertools
import pickle
import random

import numpy as np
import pytest

pytest.importorskip("river")

from river import checks, datasets

from perennial.exceptions import InputTypeError, InvalidInputError, InvalidParameterError
from perennial.heads import RidgeHead
from perennial.learner import LifelongClassifier
from perennial.river import RiverClassifier

LAMBDA = 0.5  # a fixed ridge strength: the reference below is then one linear solve


@pytest.fixture(scope="module")
def phishing() -> list[tuple[dict[str, float], bool]]:
    return list(itertools.islice(datasets.Phishing(), 120))


@pytest.fixture(scope="module")
def segments() -> list[tuple[dict[str, float], str]]:
    return list(itertools.islice(datasets.ImageSegments(), 150))


@pytest.mark.parametrize(
    "params", list(RiverClassifier._unit_test_params()), ids=lambda p: repr(p.get("head", "auto"))
)
def test_river_check_estimator(params):
    # river's conformance suite for classifiers: clone, params, pickling, purity, shuffled and
    # missing features, answers before learning, probabilities, memory growth, ...
    checks.check_estimator(RiverClassifier(**params))


def test_default_passes_the_checks_but_the_documented_one():
    model = RiverClassifier()
    assert model._unit_test_skips() == {"check_emerging_features"}
    names = {check.__name__ for check in checks.yield_checks(model)}
    assert "check_emerging_features" in names
    with pytest.raises(InvalidInputError):
        # the skipped check, in short: a key the first example lacked
        model.learn_one({"a": 1.0}, "x")
        model.learn_one({"a": 1.0, "b": 2.0}, "y")


def test_answers_before_learning():
    model = RiverClassifier()
    assert model.predict_one({"a": 1.0}) is None
    assert model.predict_proba_one({"a": 1.0}) == {}
    assert model.model_ is None


def _reference_scores(
    stream: list[tuple[dict[str, float], object]], queries: list[dict[str, float]], m: int
) -> tuple[list[object], np.ndarray]:
    """Ridge on random ReLU features, in numpy: labels by first appearance, sorted features."""
    names = sorted(stream[0][0])
    labels: list[object] = []
    for _, y in stream:
        if y not in labels:
            labels.append(y)
    X = np.array([[float(x.get(k, 0.0)) for k in names] for x, _ in stream])
    Y = np.zeros((len(stream), len(labels)))
    Y[np.arange(len(stream)), [labels.index(y) for _, y in stream]] = 1.0
    R = np.random.default_rng(0).standard_normal((len(names), m))
    H = np.maximum(X @ R, 0.0)
    W = np.linalg.solve(H.T @ H + LAMBDA * np.eye(m), H.T @ Y)
    Q = np.array([[float(x.get(k, 0.0)) for k in names] for x in queries])
    return labels, np.maximum(Q @ R, 0.0) @ W


@pytest.mark.parametrize("m", [32, 256])  # the dual form (few examples), then the primal one
def test_ridge_answers_equal_the_closed_form(phishing, m):
    stream = phishing[:80]
    queries = [x for x, _ in phishing[80:]]
    queries.append({k: v for k, v in list(phishing[0][0].items())[:4]})  # features missing: 0
    model = RiverClassifier(RidgeHead(n_features=m, ridge=LAMBDA), scale=False)
    for x, y in stream:
        model.learn_one(x, y)
    labels, scores = _reference_scores(stream, queries, m)
    assert [model.predict_one(x) for x in queries] == [labels[i] for i in scores.argmax(axis=1)]
    proba = model.predict_proba_one(queries[0])
    expected = np.exp((scores[0] - scores[0].max()) / RidgeHead.proba_temperature)
    expected /= expected.sum()
    np.testing.assert_allclose([proba[label] for label in labels], expected, rtol=1e-6)
    assert list(proba) == labels


def test_progressive_answers_equal_the_learner_on_vectors(segments):
    # Predict, then learn, one at a time: the adapter must answer what the learner answers on
    # the same vectors (sorted features, labels as column numbers), step by step.
    names = sorted(segments[0][0])
    model = RiverClassifier("slda", scale=False)
    learner = LifelongClassifier(head="slda")
    codes: dict[str, int] = {}
    for x, y in segments:
        vector = [x[k] for k in names]
        answer = model.predict_one(x)
        if codes:
            inverse = {c: label for label, c in codes.items()}
            assert answer == inverse[learner.predict_one(vector)]
        else:
            assert answer is None
        model.learn_one(x, y)
        learner.learn_one(vector, codes.setdefault(y, len(codes)))
    assert model.labels_ == list(codes)


@pytest.mark.parametrize(
    "labels",
    [
        [True, False],
        [np.True_, np.False_],
        [3, -7],
        ["phish", "legit"],
        [("a", 1), ("b", 2)],
        [1.5, 2.5],
    ],
    ids=["bool", "numpy-bool", "int", "str", "tuple", "float"],
)
def test_any_hashable_label(phishing, labels):
    model = RiverClassifier("ncm")
    for x, y in phishing[:60]:
        model.learn_one(x, labels[0] if y else labels[1])
    bools = RiverClassifier("ncm")
    for x, y in phishing[:60]:
        bools.learn_one(x, y)
    for x, _ in phishing[60:]:
        expected = bools.predict_one(x)
        assert model.predict_one(x) == (labels[0] if expected else labels[1])
        proba = model.predict_proba_one(x)
        assert set(proba) == set(labels)
        assert type(model.predict_one(x)) is type(labels[0])


def test_key_order_does_not_matter(segments):
    shuffled_stream = []
    rng = random.Random(3)
    for x, y in segments:
        keys = list(x)
        rng.shuffle(keys)
        shuffled_stream.append(({k: x[k] for k in keys}, y))
    head = RidgeHead(n_features=64)
    plain, shuffled = RiverClassifier(head), RiverClassifier(head)
    for (x, y), (xs, ys) in zip(segments[:100], shuffled_stream[:100], strict=True):
        plain.learn_one(x, y)
        shuffled.learn_one(xs, ys)
    assert plain.features_ == shuffled.features_ == tuple(sorted(segments[0][0]))
    for (x, _), (xs, _) in zip(segments[100:], shuffled_stream[100:], strict=True):
        assert plain.predict_proba_one(x) == shuffled.predict_proba_one(xs)
    assert head.classes_ == []  # the parameter is cloned, never trained


def test_new_keys_refused_and_nothing_changes(phishing):
    model = RiverClassifier("slda")
    for x, y in phishing[:20]:
        model.learn_one(x, y)
    before = pickle.dumps(model)
    x = dict(phishing[20][0], colour=1.0)
    with pytest.raises(InvalidInputError, match="feature 'colour' is not one of the 9 features"):
        model.learn_one(x, "new label")
    with pytest.raises(InvalidInputError, match="'colour'"):
        model.predict_one(x)
    assert pickle.dumps(model) == before


def test_new_keys_ignored_when_asked(phishing):
    ignoring = RiverClassifier("slda", new_features="ignore")
    plain = RiverClassifier("slda")
    ignoring.learn_one(*phishing[0])  # the first example fixes the features
    plain.learn_one(*phishing[0])
    for x, y in phishing[1:40]:
        ignoring.learn_one(dict(x, extra=random.random()), y)
        plain.learn_one(x, y)
    for x, _ in phishing[40:60]:
        assert ignoring.predict_proba_one(dict(x, extra=5.0)) == plain.predict_proba_one(x)
    assert "extra" not in ignoring.features_


def test_given_features_fix_the_order_and_width(phishing):
    names = tuple(sorted([*phishing[0][0], "later"]))
    model = RiverClassifier("ncm", features=names[::-1])
    model.learn_one({"later": 2.0}, "a")  # the first example may lack features
    for x, y in phishing[:30]:
        model.learn_one(x, y)
    assert model.features_ == names
    assert model.model_.head.dim_ == len(names)


@pytest.mark.parametrize(
    ("x", "y", "error", "match"),
    [
        ({"a": "high"}, True, InputTypeError, "feature 'a' is 'high'"),
        ({"a": None}, True, InputTypeError, "feature 'a' is None"),
        ([1.0, 2.0], True, InputTypeError, "expected a dict of features"),
        ({}, True, InvalidInputError, "no features"),
        ({"a": float("nan")}, True, InvalidInputError, "NaN|finite"),
        ({"a": 1.0}, None, InvalidInputError, "label is None"),
        ({"a": 1.0}, ["list"], InputTypeError, "hashable"),
    ],
)
def test_bad_input_refused_and_nothing_learned(x, y, error, match):
    model = RiverClassifier("ncm")
    with pytest.raises(error, match=match):
        model.learn_one(x, y)
    assert model.model_ is None and model.labels_ == [] and model.features_ is None
    if x == {}:
        return  # once features are fixed, {} is an example with every feature missing (0)
    model.learn_one({"a": 1.0}, "ok")
    before = pickle.dumps(model)
    with pytest.raises(error, match=match):
        model.learn_one(x, y)
    assert pickle.dumps(model) == before


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"head": "forest"}, "head"),
        ({"head": 3}, "head must be a Head"),
        ({"new_features": "drop"}, "new_features"),
        ({"features": ()}, "at least one"),
        ({"features": ("a", "a")}, "twice"),
        ({"blas_threads": 0}, "blas_threads"),
        ({"scale": "yes"}, "scale must be True or False"),
    ],
)
def test_bad_parameters(params, match):
    with pytest.raises(InvalidParameterError, match=match):
        RiverClassifier(**params)


def test_clone_keeps_parameters_and_drops_learning(phishing):
    model = RiverClassifier(RidgeHead(n_features=64, seed=5), new_features="ignore")
    for x, y in phishing[:10]:
        model.learn_one(x, y)
    clone = model.clone()
    assert repr(clone) == repr(model)
    assert clone.model_ is None and clone.labels_ == []
    assert clone._get_params()["head"].seed == 5


def test_blas_threads_limited_during_calls_and_restored(phishing):
    from threadpoolctl import ThreadpoolController

    blas = ThreadpoolController().select(user_api="blas")
    seen: list[list[int]] = []

    class Watching(RidgeHead):  # records the BLAS threads while the head works
        def _learn(self, X, columns, n_new):
            seen.append([lib.num_threads for lib in blas.lib_controllers])
            super()._learn(X, columns, n_new)

    with blas.limit(limits=2):
        model = RiverClassifier(Watching(n_features=32))
        for x, y in phishing[:3]:
            model.learn_one(x, y)
            model.predict_one(x)
        assert [lib.num_threads for lib in blas.lib_controllers] == [2] * len(blas.lib_controllers)
        assert seen == [[1] * len(blas.lib_controllers)] * 3
        seen.clear()
        RiverClassifier(Watching(n_features=32), blas_threads=None).learn_one(*phishing[0])
        assert seen == [[2] * len(blas.lib_controllers)]


@pytest.mark.parametrize("head", ["slda", "ncm"])
def test_no_open_set_work_unless_asked(phishing, head):
    # Progressive validation asks for no "unknown": the learner keeps no open-set gate, so no
    # novelty statistics are updated or scored on the way.
    model = RiverClassifier(head)
    for x, y in phishing[:30]:
        model.predict_one(x)
        model.learn_one(x, y)
    assert model.model_.gate_ is None and model.model_.unknown_rate is None


def test_scaling_equals_rivers_standard_scaler_in_front(segments):
    # scale=True (the default) must answer as river's own StandardScaler piped into the
    # unscaled model: the same running mean and population variance, step by step.
    from river import preprocessing

    ours = RiverClassifier(RidgeHead(n_features=128, ridge=LAMBDA))
    theirs = preprocessing.StandardScaler() | RiverClassifier(
        RidgeHead(n_features=128, ridge=LAMBDA), scale=False
    )
    agree = 0
    for x, y in segments:
        mine, reference = ours.predict_proba_one(x), theirs.predict_proba_one(x)
        assert mine.keys() == reference.keys()
        np.testing.assert_allclose(
            [mine[k] for k in reference], list(reference.values()), rtol=1e-6, atol=1e-9
        )
        agree += ours.predict_one(x) == theirs.predict_one(x)
        ours.learn_one(x, y)
        theirs.learn_one(x, y)
    assert agree == len(segments)


def test_auto_head_width_follows_the_inputs(phishing, segments):
    from perennial.river import auto_width

    assert [auto_width(d) for d in (2, 9, 18, 100, 384)] == [256, 256, 288, 1600, 4096]
    model = RiverClassifier()
    for x, y in segments[:3]:
        model.learn_one(x, y)
    assert model.model_.head.n_features == auto_width(len(segments[0][0])) == 288
    assert model.model_.head.balance_classes  # a class met a few times is not outvoted


def test_the_auto_head_is_a_balanced_ridge_on_scaled_rows(segments):
    # The default against the same head built by hand behind river's own StandardScaler.
    from river import preprocessing

    from perennial.heads import RidgeHead

    ours = RiverClassifier()
    theirs = preprocessing.StandardScaler() | RiverClassifier(
        RidgeHead(n_features=288, balance_classes=True), scale=False
    )
    for x, y in segments[:140]:
        assert ours.predict_one(x) == theirs.predict_one(x)
        ours.learn_one(x, y)
        theirs.learn_one(x, y)
    probabilities = ours.predict_proba_one(segments[140][0])
    expected = theirs.predict_proba_one(segments[140][0])
    assert probabilities.keys() == expected.keys()
    for label, p in expected.items():
        assert probabilities[label] == pytest.approx(p, abs=1e-9)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_value_that_is_not_finite_is_refused_even_where_scaling_would_hide_it(phishing, value):
    model = RiverClassifier()  # the first example's scaled row is all zeros
    x = dict(phishing[0][0])
    x[next(iter(x))] = value
    with pytest.raises(InvalidInputError, match="every value must be finite"):
        model.learn_one(x, True)
    assert model.model_ is None
    model.learn_one(phishing[0][0], True)
    with pytest.raises(InvalidInputError, match="every value must be finite"):
        model.predict_one(x)
