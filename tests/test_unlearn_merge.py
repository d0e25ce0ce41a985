"""Unlearning and merging against retraining from scratch, for every head.

"The same model" means: the same classes as a set, the same counts and statistics label by label,
and decision scores within 1e-6 relative, compared label by label. Column order may differ: a
head lists classes in order of first appearance in the data it learned, and a head retrained on
the remaining data sees them in another order.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perennial import LifelongClassifier
from perennial.encoders import FunctionEncoder, IdentityEncoder
from perennial.exceptions import (
    EmptyInputError,
    FeatureDimensionError,
    InputTypeError,
    InvalidInputError,
    LabelLengthError,
    ModelMismatchError,
    NonFiniteInputError,
    UnknownLabelError,
)
from perennial.heads import NCMHead, RidgeEnsembleHead, RidgeHead, SLDAHead
from perennial.heads.base import Head
from perennial.heads.statistics import covariance_factor

FACTORIES: dict[str, Callable[[], Head]] = {
    "ridge-auto": lambda: RidgeHead(n_features=48, max_pending=6),
    "ridge-fixed": lambda: RidgeHead(n_features=32, ridge=0.5, max_pending=6),
    "ridge-exact": lambda: RidgeHead(n_features=32, exact_forget=True, max_pending=6),
    "ridge-ensemble": lambda: RidgeEnsembleHead(n_members=2, n_features=24, max_pending=5),
    # 48 examples <= 256 // 4: kept in the dual form; merged with itself, it turns primal.
    "ridge-dual": lambda: RidgeHead(n_features=256, max_pending=6),
    "ridge-dual-exact": lambda: RidgeHead(n_features=256, ridge=0.5, exact_forget=True),
    "slda": lambda: SLDAHead(),
    "slda-exact": lambda: SLDAHead(exact_forget=True),
    "ncm": lambda: NCMHead(),
    "ncm-euclidean": lambda: NCMHead(metric="euclidean"),
}
NAMES = sorted(FACTORIES)
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def blobs(seed: int, n_classes: int = 4, per_class: int = 12, dim: int = 5):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2, (n_classes, dim))
    X = np.vstack([c + rng.normal(0, 1, (per_class, dim)) for c in centers])
    y = [f"c{k}" for k in range(n_classes) for _ in range(per_class)]
    order = rng.permutation(len(y))
    return X[order], [y[i] for i in order]


def new_examples(seed: int, n: int = 5):
    """A few examples not in ``blobs(seed)``.

    Not the same examples again: with repeated examples and fewer examples than random features,
    the ridge head's GCV choice depends on rounding, whether or not anything was unlearned (see
    ``test_ridge_gcv_with_repeated_examples_does_not_depend_on_the_batch_split``).
    """
    X, y = blobs(seed + 100_000)
    return X[:n], y[:n]


def learn_in_batches(head: Head, X, y, rows, rng: np.random.Generator) -> None:
    """Learn ``rows`` in random small batches, predicting after each one.

    The predictions keep the ridge head's eigendecomposition alive, so most batches go through
    its pending (Woodbury) updates rather than a re-solve.
    """
    rows = list(rows)
    start = 0
    while start < len(rows):
        size = int(rng.integers(1, 5)) if start else int(rng.integers(1, len(rows) + 1))
        piece = rows[start : start + size]
        head.learn_many(X[piece], [y[i] for i in piece])
        head.decision_scores(X[:2])
        start += size


def as_primal(head: Head, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays, with a ridge head's dual rows (features, classes) replaced by G, C and G_c.

    Two heads holding the same data may be in different forms (one turned primal on the way);
    their statistics are compared in the primal form, computed here with numpy.
    """
    members = getattr(head, "members_", [head])
    out = dict(arrays)
    for i, member in enumerate(members):
        prefix = f"member{i}." if member is not head else ""
        if f"{prefix}features" not in out:
            continue
        X, columns = out.pop(f"{prefix}features"), out.pop(f"{prefix}feature_columns")
        H = np.maximum(X @ member.projection_, 0)
        n_classes = len(head.classes_)
        Y = np.array([[1.0 if c == k else 0.0 for k in range(n_classes)] for c in columns])
        out[f"{prefix}gram"] = H.T @ H
        out[f"{prefix}targets"] = H.T @ Y.reshape(len(columns), n_classes)
        if getattr(member, "exact_forget", False):
            for k in range(n_classes):
                out[f"{prefix}class_gram.{k}"] = H[columns == k].T @ H[columns == k]
    return out


def statistics_by_label(head: Head) -> dict[tuple[str | int, ...], np.ndarray]:
    """Every state array, with per-class rows/columns/matrices keyed by label, not position."""
    meta, arrays = head.get_state()
    arrays = as_primal(head, arrays)
    classes = meta["classes"]
    out: dict[tuple[str | int, ...], np.ndarray] = {}
    for name, array in arrays.items():
        parts = tuple(name.split("."))
        if parts[-1].isdigit():  # class_gram.3, class_second_moment.0
            out[(*parts[:-1], classes[int(parts[-1])])] = array
        elif parts[-1] == "targets":  # (n_features, n_classes)
            out.update({(*parts, c): array[:, i] for i, c in enumerate(classes)})
        elif parts[-1] in ("sums", "counts"):  # one row per class
            out.update({(*parts, c): array[i] for i, c in enumerate(classes)})
        else:
            out[parts] = array
    return out


def relative_gap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def scores_by_label(head: Head, X, classes) -> np.ndarray:
    return head.decision_scores(X)[:, [head.classes_.index(c) for c in classes]]


def assert_same_model(got: Head, expected: Head, X) -> None:
    """``got`` equals ``expected`` label by label (see the module docstring)."""
    if not expected.classes_:
        assert got.get_state() == expected.get_state()  # both empty: nothing at all
        return
    for head in (got, expected):
        if getattr(head, "ridge", None) == "auto":
            # lam is chosen when the decomposition is rebuilt; examples learned since (at most
            # max_pending) use it, so two heads of the same data may differ by that lag alone.
            head.refresh()
    assert set(got.classes_) == set(expected.classes_)
    assert len(got.classes_) == len(expected.classes_)
    assert got.n_seen_ == expected.n_seen_ and got.dim_ == expected.dim_
    mine, theirs = statistics_by_label(got), statistics_by_label(expected)
    assert mine.keys() == theirs.keys()
    scale = max(float(np.max(np.abs(v))) for v in theirs.values())
    for key, value in theirs.items():
        if value.dtype.kind == "i":
            np.testing.assert_array_equal(mine[key], value, err_msg=str(key))
        else:
            assert np.max(np.abs(mine[key] - value), initial=0.0) <= 1e-9 * scale, key
    classes = expected.classes_
    assert relative_gap(scores_by_label(got, X, classes), expected.decision_scores(X)) < 1e-6
    if isinstance(expected, RidgeHead):
        assert isinstance(got, RidgeHead)
        assert got.ridge_ == pytest.approx(expected.ridge_, rel=1e-9)  # GCV follows the statistics


def snapshot(head: Head):
    meta, arrays = head.get_state()
    return meta, {k: v.copy() for k, v in arrays.items()}


def assert_unchanged(head: Head, before) -> None:
    meta, arrays = head.get_state()
    assert meta == before[0]
    assert arrays.keys() == before[1].keys()
    for key, value in arrays.items():
        np.testing.assert_array_equal(value, before[1][key], err_msg=key)


# --- unlearning == retraining without the examples --------------------------------------------------
@PROPERTY
@given(
    name=st.sampled_from(NAMES),
    seed=st.integers(0, 10_000),
    removed=st.sets(st.integers(0, 47)),
    whole_classes=st.sets(st.sampled_from(["c0", "c1", "c2", "c3"]), max_size=4),
    n_pieces=st.integers(1, 3),
)
def test_unlearning_equals_retraining_without_the_examples(
    name, seed, removed, whole_classes, n_pieces
):
    X, y = blobs(seed)
    rng = np.random.default_rng(seed + 1)
    B = sorted(removed | {i for i, label in enumerate(y) if label in whole_classes})
    A = sorted(set(range(len(y))) - set(B))
    head = FACTORIES[name]()
    learn_in_batches(head, X, y, rng.permutation(len(y)), rng)
    for piece in np.array_split(rng.permutation(B), n_pieces):  # subtractions commute too
        if len(piece):
            head.unlearn_many(X[piece], [y[i] for i in piece])
    never = FACTORIES[name]()
    if A:
        never.learn_many(X[A], [y[i] for i in A])
    assert not set(head.classes_) & (whole_classes - {y[i] for i in A})
    assert_same_model(head, never, X)
    # Learning goes on from there exactly as from the retrained head.
    X_new, y_new = new_examples(seed)
    head.learn_many(X_new, y_new)
    never.learn_many(X_new, y_new)
    assert_same_model(head, never, X)


@pytest.mark.parametrize("name", ["ridge-auto", "ridge-exact", "ridge-ensemble"])
def test_ridge_unlearning_while_updates_are_pending(name):
    X, y = blobs(3)
    head = FACTORIES[name]()
    head.learn_many(X[:30], y[:30])
    head.decision_scores(X[:2])  # takes the eigendecomposition
    head.learn_many(X[30:33], y[30:33])
    head.learn_one(X[33], y[33])
    members = head.members_ if isinstance(head, RidgeEnsembleHead) else [head]
    assert all(m._primal is not None and m._primal.k for m in members)  # the Woodbury path is live
    head.unlearn_many(X[28:34], y[28:34])  # two from the base, all the pending ones
    never = FACTORIES[name]()
    never.learn_many(X[:28], y[:28])
    assert_same_model(head, never, X)


@pytest.mark.parametrize("name", NAMES)
def test_unlearning_after_a_save_load_round_trip(tmp_path, name):
    X, y = blobs(4)
    B = [i for i, label in enumerate(y) if label == "c1" or i % 7 == 0]
    A = [i for i in range(len(y)) if i not in set(B)]
    model = LifelongClassifier(IdentityEncoder(), FACTORIES[name]())
    learn_in_batches(
        model.head, IdentityEncoder().encode(X), y, range(len(y)), np.random.default_rng(0)
    )
    model.save(tmp_path / "m")
    loaded = LifelongClassifier.load(tmp_path / "m")
    loaded.unlearn(X[B], [y[i] for i in B])
    never = LifelongClassifier(IdentityEncoder(), FACTORIES[name]())
    never.learn_many(X[A], [y[i] for i in A])
    assert "c1" not in loaded.classes_
    assert_same_model(loaded.head, never.head, IdentityEncoder().encode(X))


@pytest.mark.parametrize("name", NAMES)
def test_unlearning_everything_leaves_an_empty_head(name):
    X, y = blobs(5)
    head = FACTORIES[name]()
    head.learn_many(X, y)
    head.unlearn_many(X[::-1], y[::-1])
    assert head.get_state() == FACTORIES[name]().get_state()
    assert not head.is_fitted
    head.learn_many(X[:, :3], y)  # a new width is fine: nothing is left of the old one
    assert head.dim_ == 3


def test_an_unlearned_class_comes_back_last():
    X, y = blobs(6)
    head = NCMHead()
    head.learn_many(X, y)
    first = head.classes_[0]
    rows = [i for i, label in enumerate(y) if label == first]
    head.unlearn_many(X[rows], [first] * len(rows))
    assert first not in head.classes_
    head.learn_one(X[rows[0]], first)
    assert head.classes_[-1] == first and head.counts_[-1] == 1


def test_a_class_removed_by_default_forget_cannot_be_unlearned():
    X, y = blobs(7)
    head = RidgeHead(n_features=16)
    head.learn_many(X, y)
    head.forget("c2")  # its rows stay in G without a label
    rows = [i for i, label in enumerate(y) if label == "c2"]
    with pytest.raises(UnknownLabelError, match="'c2'"):
        head.unlearn_many(X[rows], ["c2"] * len(rows))


@pytest.mark.parametrize("form", ["dual", "primal"])
@pytest.mark.parametrize("seed", range(40))
def test_ridge_gcv_with_repeated_examples_does_not_depend_on_the_batch_split(seed, form):
    # Learning an example twice with fewer examples than random features fits the targets to
    # within rounding at weak ridges; that noise must not pick the strength.
    X, y = blobs(seed)
    limit = "auto" if form == "dual" else 0
    whole = RidgeHead(n_features=48, max_dual_examples=limit)
    whole.learn_many(np.vstack([X[:4], X[:5]]), y[:4] + y[:5])
    split = RidgeHead(n_features=48, max_dual_examples=limit)
    split.learn_many(X[:4], y[:4])
    split.decision_scores(X[:1])  # the next batch goes through the pending updates
    split.learn_many(X[:5], y[:5])  # four of them again
    split.refresh()  # lam is chosen again at the rebuild: the pending five differ by lag alone
    assert split.ridge_ == pytest.approx(whole.ridge_, rel=1e-9)
    np.testing.assert_allclose(
        split.decision_scores(X), whole.decision_scores(X), rtol=1e-6, atol=1e-9
    )


# --- merging == training on the union ----------------------------------------------------------------
def split_by_class(y, modes, parts, n_parts):
    """Rows per part: a class whose mode is an int goes whole to that part, else row by row."""
    groups: list[list[int]] = [[] for _ in range(n_parts)]
    for i, label in enumerate(y):
        mode = modes[int(label[1:])]
        groups[mode if mode < n_parts else parts[i]].append(i)
    return groups


@PROPERTY
@given(
    name=st.sampled_from(NAMES),
    seed=st.integers(0, 10_000),
    modes=st.lists(st.integers(0, 2), min_size=4, max_size=4),  # 2 = mixed between the parts
    parts=st.lists(st.integers(0, 1), min_size=48, max_size=48),
)
def test_merge_equals_training_on_the_union(name, seed, modes, parts):
    X, y = blobs(seed)
    rng = np.random.default_rng(seed + 2)
    first, second = split_by_class(y, modes, parts, 2)
    a, b = FACTORIES[name](), FACTORIES[name]()
    # Each head learns its own part in its own order, so their class orders differ.
    learn_in_batches(a, X, y, rng.permutation(first), rng)
    learn_in_batches(b, X, y, rng.permutation(second), rng)
    b_before = snapshot(b)
    a.merge(b)
    assert_unchanged(b, b_before)  # the other head is only read
    union = FACTORIES[name]()
    union.learn_many(X, y)
    assert_same_model(a, union, X)
    # Learning goes on from the merged statistics as from the union's.
    X_new, y_new = new_examples(seed)
    a.learn_many(X_new, y_new)
    union.learn_many(X_new, y_new)
    assert_same_model(a, union, X)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(NAMES),
    seed=st.integers(0, 10_000),
    modes=st.lists(st.integers(0, 3), min_size=4, max_size=4),  # 3 = mixed between the parts
    parts=st.lists(st.integers(0, 2), min_size=48, max_size=48),
)
def test_three_way_merge_is_associative(name, seed, modes, parts):
    X, y = blobs(seed)
    rng = np.random.default_rng(seed + 3)
    groups = split_by_class(y, modes, parts, 3)

    def learned(rows) -> Head:
        head = FACTORIES[name]()
        if rows:
            order = rng.permutation(rows)
            head.learn_many(X[order], [y[i] for i in order])
        return head

    heads = [learned(rows) for rows in groups]
    left = FACTORIES[name]()
    left.set_state(*heads[0].get_state())
    left.merge(heads[1])
    left.merge(heads[2])  # (a + b) + c
    right_tail = FACTORIES[name]()
    right_tail.set_state(*heads[1].get_state())
    right_tail.merge(heads[2])
    right = FACTORIES[name]()
    right.set_state(*heads[0].get_state())
    right.merge(right_tail)  # a + (b + c)
    assert left.classes_ == right.classes_  # same order too: a's, then b's new, then c's new
    assert_same_model(left, right, X)
    union = FACTORIES[name]()
    union.learn_many(X, y)
    assert_same_model(left, union, X)


@pytest.mark.parametrize("name", NAMES)
def test_merging_an_empty_head_is_a_no_op_and_merging_into_one_copies(name):
    X, y = blobs(8)
    trained = FACTORIES[name]()
    trained.learn_many(X, y)
    before = snapshot(trained)
    trained.merge(FACTORIES[name]())
    assert_unchanged(trained, before)
    empty = FACTORIES[name]()
    empty.merge(trained)
    assert_unchanged(empty, before)
    np.testing.assert_array_equal(empty.decision_scores(X), trained.decision_scores(X))
    empty.learn_many(X[:4], y[:4])  # a copy, not a view
    assert_unchanged(trained, before)


@pytest.mark.parametrize("name", NAMES)
def test_merging_a_head_with_itself_counts_its_data_twice(name):
    X, y = blobs(9)
    head, twice = FACTORIES[name](), FACTORIES[name]()
    head.learn_many(X, y)
    twice.learn_many(np.vstack([X, X]), y + y)
    head.merge(head)
    assert_same_model(head, twice, X)


# --- bad input changes nothing ---------------------------------------------------------------------
BAD_UNLEARN = [
    ("unknown", lambda X: X[:2], ["c0", "zebra"], UnknownLabelError, "'zebra'"),
    ("too-many", lambda X: X[:13], ["c0"] * 13, InvalidInputError, "13 examples of 'c0', which has counted 12"),
    ("mixed-too-many", lambda X: X[:14], ["c1"] + ["c2"] * 13, InvalidInputError, "'c2'"),
    ("nan", lambda X: np.where(np.arange(X[:4].size).reshape(4, -1) == 3, np.nan, X[:4]), ["c0"] * 4, NonFiniteInputError, "nan"),
    ("inf", lambda X: np.where(np.arange(X[:4].size).reshape(4, -1) == 2, -np.inf, X[:4]), ["c0"] * 4, NonFiniteInputError, "inf"),
    ("width", lambda X: X[:4, :-1], ["c0"] * 4, FeatureDimensionError, "expected 5"),
    ("empty", lambda X: X[:0], [], EmptyInputError, "empty"),
    ("labels", lambda X: X[:4], ["c0"] * 3, LabelLengthError, "4 inputs but 3 labels"),
    ("rank", lambda X: X[0], ["c0"], InvalidInputError, "shape"),
    ("text", lambda X: "abc", ["c0"], InputTypeError, "str"),
    ("float-label", lambda X: X[:2], [1.5, "c0"], InputTypeError, "1.5"),
]  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("case", "make", "labels", "error", "text"), BAD_UNLEARN, ids=[b[0] for b in BAD_UNLEARN]
)
def test_bad_unlearning_raises_and_changes_nothing(name, case, make, labels, error, text):
    X, y = blobs(10)
    order = np.argsort(y, kind="stable")  # rows of c0 first, then c1, ...
    X, y = X[order], [y[i] for i in order]
    head = FACTORIES[name]()
    head.learn_many(X, y)
    scores = head.decision_scores(X)
    before = snapshot(head)
    with pytest.raises(error, match=text):
        head.unlearn_many(make(X), labels)
    assert_unchanged(head, before)
    np.testing.assert_array_equal(head.decision_scores(X), scores)  # caches intact too


def test_unlearning_from_an_empty_head_names_the_label():
    head = RidgeHead(n_features=8)
    with pytest.raises(UnknownLabelError, match="'a'"):
        head.unlearn_one([1.0, 2.0], "a")
    assert head.get_state() == RidgeHead(n_features=8).get_state()


MISMATCHES = [
    ("type", lambda: RidgeHead(n_features=32), lambda: NCMHead(), "NCMHead into a RidgeHead"),
    ("n_features", lambda: RidgeHead(n_features=32), lambda: RidgeHead(n_features=16), "n_features=32 here, 16"),
    ("seed", lambda: RidgeHead(n_features=32), lambda: RidgeHead(n_features=32, seed=1), "seed=0 here, 1"),
    ("ridge", lambda: RidgeHead(n_features=32), lambda: RidgeHead(n_features=32, ridge=0.5), "ridge='auto' here, 0.5"),
    ("exact", lambda: RidgeHead(n_features=32), lambda: RidgeHead(n_features=32, exact_forget=True), "exact_forget=False here, True"),
    ("slda-exact", lambda: SLDAHead(), lambda: SLDAHead(exact_forget=True), "exact_forget"),
    ("shrinkage", lambda: SLDAHead(), lambda: SLDAHead(shrinkage=0.1), "shrinkage"),
    ("metric", lambda: NCMHead(), lambda: NCMHead(metric="euclidean"), "metric='cosine' here, 'euclidean'"),
    ("members", lambda: RidgeEnsembleHead(n_features=16), lambda: RidgeEnsembleHead(n_members=3, n_features=16), "n_members=2 here, 3"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "make", "make_other", "text"), MISMATCHES, ids=[m[0] for m in MISMATCHES]
)
def test_mismatched_merge_raises_and_changes_nothing(case, make, make_other, text):
    X, y = blobs(11)
    head, other = make(), make_other()
    head.learn_many(X, y)
    other.learn_many(X[:10], y[:10])
    before = snapshot(head)
    with pytest.raises(ModelMismatchError, match=text):
        head.merge(other)
    assert_unchanged(head, before)


@pytest.mark.parametrize("name", NAMES)
def test_merging_different_input_widths_or_projections_is_refused(name):
    X, y = blobs(12)
    head, narrow = FACTORIES[name](), FACTORIES[name]()
    head.learn_many(X, y)
    narrow.learn_many(X[:10, :3], y[:10])
    before = snapshot(head)
    with pytest.raises(ModelMismatchError, match="5 per example here, 3 in the other"):
        head.merge(narrow)
    assert_unchanged(head, before)
    with pytest.raises(InputTypeError, match="ndarray"):
        head.merge(X)  # type: ignore[arg-type]
    tampered = FACTORIES[name]()
    tampered.learn_many(X[:10], y[:10])
    members = getattr(tampered, "members_", [tampered])
    if not isinstance(members[-1], RidgeHead):
        return
    members[-1].projection_ = members[-1].projection_ * 1.5  # e.g. another numpy's generator
    with pytest.raises(ModelMismatchError, match="projections differ"):
        head.merge(tampered)
    assert_unchanged(head, before)


# --- through the LifelongClassifier -----------------------------------------------------------------
def test_lifelong_classifier_unlearns_and_merges_end_to_end():
    X, y = blobs(13, per_class=15)
    rng = np.random.default_rng(0)
    B = [i for i, label in enumerate(y) if label == "c3" or rng.random() < 0.3]
    A = [i for i in range(len(y)) if i not in set(B)]

    def model() -> LifelongClassifier:
        return LifelongClassifier(IdentityEncoder(), RidgeHead(n_features=48, max_pending=8))

    everything = model()
    everything.learn_many(X, y)
    everything.unlearn(X[B[1:]], [y[i] for i in B[1:]])
    everything.unlearn_one(X[B[0]], y[B[0]])
    only_a = model()
    only_a.learn_many(X[A], [y[i] for i in A])
    features = IdentityEncoder().encode(X)
    assert "c3" not in everything.classes_
    assert_same_model(everything.head, only_a.head, features)
    assert everything.predict_many(X) == only_a.predict_many(X)

    # Two models trained apart, merged, equal the model trained on everything.
    part_b = model()
    part_b.learn_many(X[B[::-1]], [y[i] for i in B[::-1]])
    only_a.merge(part_b)
    union = model()
    union.learn_many(X, y)
    assert_same_model(only_a.head, union.head, features)
    np.testing.assert_allclose(
        only_a.decision_scores(X),
        scores_by_label(union.head, features, only_a.classes_),
        rtol=1e-6,
        atol=1e-9,
    )


def test_lifelong_classifier_refuses_to_merge_other_encoders_or_heads():
    X, y = blobs(14)
    model = LifelongClassifier(IdentityEncoder(), NCMHead())
    model.learn_many(X, y)
    before = snapshot(model.head)
    other_encoder = LifelongClassifier(FunctionEncoder(lambda b: b, name="scaled"), NCMHead())
    other_encoder.learn_many(X, y)
    with pytest.raises(ModelMismatchError, match="'identity' here, 'scaled' in the other"):
        model.merge(other_encoder)
    other_head = LifelongClassifier(IdentityEncoder(), SLDAHead())
    other_head.learn_many(X, y)
    with pytest.raises(ModelMismatchError, match="SLDAHead into a NCMHead"):
        model.merge(other_head)
    with pytest.raises(InputTypeError, match="NCMHead"):
        model.merge(NCMHead())  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="13 examples of 'c0'"):
        model.unlearn(X[:13], ["c0"] * 13)
    with pytest.raises(LabelLengthError):
        model.unlearn(X[:3], ["c0"])
    assert_unchanged(model.head, before)


# --- examples never learned: refused, and what a bypassed check leaves still predicts ------------------
# Heads whose statistics show an impossible removal; the dual ridge head holds its examples.
NEVER_LEARNED = {
    "ridge": lambda: RidgeHead(n_features=64, ridge=0.5, max_dual_examples=0),
    "ridge-exact": lambda: RidgeHead(n_features=32, ridge=0.5, exact_forget=True, max_dual_examples=0),
    "ridge-dual": lambda: RidgeHead(n_features=512, ridge=0.5),  # 75 examples <= 512 // 4
    "ridge-ensemble": lambda: RidgeEnsembleHead(n_members=2, n_features=48, ridge=0.5, max_dual_examples=0),
    "slda": lambda: SLDAHead(),
    "slda-exact": lambda: SLDAHead(exact_forget=True),
    "ncm": lambda: NCMHead(),
}  # fmt: skip
# An NCM head keeps only sums and counts, which any 24 examples of 25 may leave.
CASES = [(n, o) for n in sorted(NEVER_LEARNED) for o in (True, False) if (n, o) != ("ncm", False)]
PROBES = np.random.default_rng(77).normal(0.0, 4.0, (9, 6))


def three_topics(seed: int = 0) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Classes 'a', 'b', 'c' of 25 examples each, and 25 off-topic examples far from all."""
    rng = np.random.default_rng(seed)
    centres = np.eye(6)[:3] * 4.0
    X = np.vstack([rng.normal(c, 0.5, (25, 6)) for c in centres])
    off_topic = rng.normal(0.0, 1.0, (25, 6)) + np.eye(6)[5] * 12.0
    # float32 values, as an encoder gives them
    return X.astype(np.float32).astype(np.float64), ["a"] * 25 + ["b"] * 25 + ["c"] * 25, off_topic


def open_set_model(name: str, open_set: bool) -> LifelongClassifier:
    return LifelongClassifier(
        IdentityEncoder(), NEVER_LEARNED[name](), unknown_rate=0.02 if open_set else None
    )


def model_state(model: LifelongClassifier) -> list:
    """Everything learned, and every answer on the probes (compared exactly)."""
    gate = [] if model.gate_ is None else [model.gate_.get_state()]
    answers = model.predict_detailed(PROBES, top=3)
    return [model.head.get_state(), *gate, answers, model.decision_scores(PROBES).tolist()]


def assert_same_state(got: list, want: list) -> None:
    assert len(got) == len(want)
    for mine, theirs in zip(got, want, strict=True):
        if isinstance(theirs, tuple):  # (meta, arrays)
            assert mine[0] == theirs[0]
            assert mine[1].keys() == theirs[1].keys()
            for key in theirs[1]:
                np.testing.assert_array_equal(mine[1][key], theirs[1][key], err_msg=key)
        else:
            assert mine == theirs


@pytest.mark.parametrize(("name", "open_set"), CASES)
def test_unlearning_examples_never_learned_is_refused_and_changes_nothing(name, open_set):
    # The scenario: 24 off-topic examples unlearned from a class of 25.
    X, y, off_topic = three_topics()
    model = open_set_model(name, open_set)
    model.learn_many(X, y)
    before = model_state(model)
    with pytest.raises(InvalidInputError, match=r"cannot unlearn .*'a'"):
        model.unlearn_many(off_topic[:24], ["a"] * 24)
    assert_same_state(model_state(model), before)
    # The examples it did learn are still unlearned, exactly as retraining without them.
    model.unlearn_many(X[:24], ["a"] * 24)
    retrained = open_set_model(name, open_set)
    retrained.learn_many(X[24:], y[24:])
    assert model.classes_ == retrained.classes_ == ["a", "b", "c"]
    np.testing.assert_allclose(
        model.decision_scores(PROBES), retrained.decision_scores(PROBES), rtol=1e-6, atol=1e-9
    )
    if open_set:
        np.testing.assert_allclose(
            model.gate_.novelty_terms(PROBES)[0],
            retrained.gate_.novelty_terms(PROBES)[0],
            rtol=1e-6,
        )


@pytest.mark.parametrize("name", sorted(NEVER_LEARNED))
def test_unlearning_a_whole_class_with_other_examples_is_refused(name):
    X, y, off_topic = three_topics(1)
    model = open_set_model(name, open_set=False)
    model.learn_many(X, y)
    before = model_state(model)
    with pytest.raises(
        InvalidInputError, match=r"cannot unlearn (these examples|example 0 \(label) .*'a'"
    ):
        model.unlearn_many(off_topic, ["a"] * 25)
    assert_same_state(model_state(model), before)
    model.unlearn_many(X[:25][::-1], ["a"] * 25)  # its own examples, in any order
    assert model.classes_ == ["b", "c"]


def test_an_emptied_class_must_have_summed_to_what_it_learned():
    head = NCMHead()
    head.learn_many([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0]], ["a", "a", "b"])
    with pytest.raises(
        InvalidInputError,
        match="'a': they are all of its examples, yet their feature 0 sums to 5 where its examples summed to 4",
    ):
        head.unlearn_many([[2.0, 0.0], [3.0, 0.0]], ["a", "a"])
    head.unlearn_many([[3.0, 0.0], [1.0, 0.0]], ["a", "a"])
    assert head.classes_ == ["b"]


def clipped(S: np.ndarray) -> np.ndarray:
    """``S`` with its eigenvalues raised to 1e-10 of the largest magnitude (numpy)."""
    values, vectors = np.linalg.eigh((S + S.T) / 2)
    floor = 1e-10 * np.abs(values).max()
    return (vectors * np.maximum(values, floor)) @ vectors.T


def test_an_indefinite_covariance_is_factored_with_its_eigenvalues_clipped(caplog):
    rng = np.random.default_rng(3)
    A = rng.normal(size=(5, 5))
    S = A @ A.T - 4.0 * np.outer(A[0], A[0])  # one direction with a negative variance
    assert np.linalg.eigvalsh(S).min() < 0
    with caplog.at_level("WARNING"):
        L = covariance_factor(S)
    assert "not positive definite" in caplog.text
    assert np.allclose(np.tril(L), L) and np.all(np.diagonal(L) > 0)
    np.testing.assert_allclose(L @ L.T, clipped(S), atol=1e-9 * np.abs(S).max())
    B = A @ A.T + np.eye(5)  # positive definite: the plain Cholesky factor
    np.testing.assert_array_equal(covariance_factor(B), np.linalg.cholesky(B))


@pytest.mark.parametrize("name", ["slda", "ridge", "ncm"])
def test_predictions_never_fail_on_indefinite_statistics(name):
    X, y, _ = three_topics(2)
    model = open_set_model(name, open_set=True)
    model.learn_many(X, y)
    # Written directly, as an unlearn that skipped its check could leave them: a second moment
    # with a large negative variance along feature 0.
    model.gate_.statistics_.moment[0, 0] -= 1e5
    if name == "slda":
        model.head.statistics_.moment[0, 0] -= 1e5
        model.head._solution = None
    rows = model.predict_detailed(PROBES)
    novelty = model.novelty_scores(PROBES)
    assert np.isfinite(novelty).all() and [r["novelty"] for r in rows] == novelty.tolist()
    # The gate's score from the same statistics, written out with numpy on the clipped matrices.
    stats = model.gate_.statistics_
    T, sums, counts, n = stats.full_moment(), stats.sums, stats.counts, stats.n
    means = sums / counts[:, None]
    within = (T - (sums.T / counts) @ sums) / n
    mu = sums.sum(axis=0) / n
    overall = T / n - np.outer(mu, mu)

    def inverse(S):
        shrunk = 0.5 * S + 0.5 * max(np.trace(S) / len(S), 1e-12) * np.eye(len(S))
        return np.linalg.inv(clipped(shrunk))

    P, P0 = inverse(within), inverse(overall)
    nearest = np.array([min((q - m) @ P @ (q - m) for m in means) for q in PROBES])
    background = np.array([(q - mu) @ P0 @ (q - mu) for q in PROBES])
    np.testing.assert_allclose(
        model.gate_.novelty_terms(PROBES)[0], nearest - background, rtol=1e-4
    )
    if name == "slda":
        head = model.head
        cov = clipped((1 - head.shrinkage) * head.covariance_ + head.shrinkage * np.eye(6))
        weights = np.linalg.solve(cov, head.means_.T)
        want = PROBES @ weights - 0.5 * np.sum(head.means_.T * weights, axis=0)
        np.testing.assert_allclose(model.decision_scores(PROBES), want, rtol=1e-4)


def test_unverified_unlearning_of_rows_a_dual_head_does_not_hold_subtracts_them_in_the_primal_form():
    X, y, off_topic = three_topics(3)
    head = RidgeHead(n_features=512, ridge=0.5)
    head.learn_many(X, y)
    assert head.form_ == "dual"
    with pytest.raises(InvalidInputError, match="holds no example"):
        head.unlearn_many(off_topic[:3], ["b"] * 3)
    head.unlearn_many(off_topic[:3], ["b"] * 3, verify=False)  # as a service replays it
    assert head.form_ == "primal" and head.counts_.tolist() == [25, 22, 25]
    H, H_off = np.maximum(X @ head.projection_, 0), np.maximum(off_topic[:3] @ head.projection_, 0)
    Y = np.repeat(np.eye(3), 25, axis=0)
    gram = H.T @ H - H_off.T @ H_off
    np.testing.assert_allclose(np.triu(head.gram_), np.triu(gram), atol=1e-9 * np.abs(gram).max())
    targets = H.T @ Y - H_off.T @ np.eye(3)[[1, 1, 1]]
    np.testing.assert_allclose(head.targets_, targets, atol=1e-9 * np.abs(targets).max())
    assert np.isfinite(head.decision_scores(PROBES)).all()


@pytest.mark.parametrize("name", sorted(NEVER_LEARNED))
def test_rows_given_back_with_an_encoders_rounding_are_unlearned(name):
    # An encoder's float32 features of a text change with its batch-mates by ~1e-7: the README's
    # model (9 unit vectors in 384-d, 3 per class, so the scatter is far from full rank) learns a
    # batch and unlearns one text encoded alone. That must be accepted, and still match the model
    # retrained without it; another unit vector must still be refused.
    rng = np.random.default_rng(5)
    X = rng.normal(size=(9, 384))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    X = X.astype(np.float32).astype(np.float64)
    y = ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    model = open_set_model(name, open_set=True)
    model.learn_many(X, y)
    stranger = rng.normal(size=(1, 384))
    stranger /= np.linalg.norm(stranger)
    probes = rng.normal(size=(5, 384))
    before = model.decision_scores(probes)
    with pytest.raises(InvalidInputError, match=r"cannot unlearn .*'a'"):
        model.unlearn_many(stranger, ["a"])
    np.testing.assert_array_equal(model.decision_scores(probes), before)
    again = (X[:1] + rng.normal(0.0, 1e-7 / np.sqrt(384), (1, 384))).astype(np.float32)
    assert 0 < np.abs(again - X[:1]).max() < 1e-6
    model.unlearn_many(again.astype(np.float64), ["a"])
    retrained = open_set_model(name, open_set=True)
    retrained.learn_many(X[1:], y[1:])
    # Loosely: SLDA's covariance of 6 examples in 384-d is nearly singular and magnifies the
    # 1e-7 difference to ~1e-3 of its scores; the answers are the same.
    assert model.predict_many(probes) == retrained.predict_many(probes)
    np.testing.assert_allclose(
        model.decision_scores(probes), retrained.decision_scores(probes), rtol=1e-2, atol=1e-5
    )
