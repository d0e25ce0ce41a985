"""Metrics against hand-computed examples and independent loop/scipy references."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from perennial import metrics
from perennial.exceptions import (
    EmptyInputError,
    InputTypeError,
    InvalidInputError,
    InvalidParameterError,
    NonFiniteInputError,
)
from perennial.metrics import (
    AccuracyMatrix,
    ResourceMeter,
    average_accuracy,
    average_performance,
    backward_transfer,
    continual_world_forgetting,
    forgetting,
    forward_transfer,
    forward_transfer_auc,
    intransigence,
    mean_ci90,
    stored_bytes,
    summarize,
)

nan = math.nan

# Row i: after training task i; column j: tested on task j.
R3 = [
    [0.90, 0.10, 0.20],
    [0.95, 0.80, 0.30],
    [0.60, 0.50, 0.95],
]
BASELINE3 = [0.10, 0.20, 0.25]  # random-init accuracy per task (b_0 unused)
REFERENCE3 = [0.92, 0.85, 0.90]  # joint-training accuracy a*_k per task


# --- hand-computed examples ------------------------------------------------------------------------
def test_average_accuracy_by_hand():
    # last row: (0.60 + 0.50 + 0.95) / 3 = 2.05 / 3
    assert average_accuracy(R3) == pytest.approx(0.6833333333333333)


def test_backward_transfer_by_hand():
    # ((R[2,0] - R[0,0]) + (R[2,1] - R[1,1])) / 2 = ((0.6 - 0.9) + (0.5 - 0.8)) / 2 = -0.3
    assert backward_transfer(R3) == pytest.approx(-0.3)


def test_forward_transfer_by_hand():
    # ((R[0,1] - b_1) + (R[1,2] - b_2)) / 2 = ((0.1 - 0.2) + (0.3 - 0.25)) / 2 = -0.025
    assert forward_transfer(R3, BASELINE3) == pytest.approx(-0.025)


def test_forgetting_by_hand():
    # task 0: max(R[0,0], R[1,0]) - R[2,0] = 0.95 - 0.6 = 0.35  (the peak came after task 1)
    # task 1: max(R[0,1], R[1,1]) - R[2,1] = 0.80 - 0.5 = 0.30
    # mean: 0.325 (BWT only sees 0.9 - 0.6 for task 0, hence -0.3)
    assert forgetting(R3) == pytest.approx(0.325)


def test_forgetting_follows_the_paper_over_all_earlier_rows():
    # Chaudhry et al.: max over l in 0..T-2, including rows before task j was trained.
    R = [
        [0.5, 0.9, 0.0],
        [0.5, 0.7, 0.0],
        [0.5, 0.6, 0.8],
    ]
    # task 0: 0.5 - 0.5 = 0; task 1: max(0.9, 0.7) - 0.6 = 0.3; mean 0.15
    assert forgetting(R) == pytest.approx(0.15)
    # The same entry not measured (NaN) is skipped: task 1 gives 0.7 - 0.6 = 0.1; mean 0.05
    R[0][1] = nan
    assert forgetting(R) == pytest.approx(0.05)


def test_intransigence_by_hand():
    # a*_k - R[k,k]: 0.92 - 0.90 = 0.02, 0.85 - 0.80 = 0.05, 0.90 - 0.95 = -0.05; mean 0.02 / 3
    assert intransigence(R3, REFERENCE3) == pytest.approx(0.02 / 3)


def test_summarize_by_hand():
    summary = summarize(R3, baseline=BASELINE3, reference=REFERENCE3)
    assert summary == pytest.approx(
        {
            "average_accuracy": 2.05 / 3,
            "forgetting": 0.325,
            "bwt": -0.3,
            "fwt": -0.025,
            "intransigence": 0.02 / 3,
        }
    )
    bare = summarize(R3)
    assert math.isnan(bare["fwt"]) and math.isnan(bare["intransigence"])
    assert bare["bwt"] == pytest.approx(-0.3)


def test_single_task_leaves_transfer_and_forgetting_undefined():
    R = [[0.7]]
    assert average_accuracy(R) == 0.7
    assert math.isnan(backward_transfer(R))
    assert math.isnan(forgetting(R))
    assert math.isnan(forward_transfer(R, [0.1]))
    assert intransigence(R, [0.9]) == pytest.approx(0.2)
    summary = summarize(R, baseline=[0.1], reference=[0.9])
    assert summary["average_accuracy"] == 0.7
    assert all(math.isnan(summary[key]) for key in ("bwt", "forgetting", "fwt"))


def test_lower_triangular_matrix_from_the_accumulator():
    # Only tasks already seen are evaluated: fine for ACC, BWT and forgetting; FWT needs R[0, 1].
    matrix = AccuracyMatrix()
    for trained, evaluated, accuracy in [(0, 0, 0.9), (1, 0, 0.7), (1, 1, 0.8)]:
        matrix.update(trained, evaluated, accuracy)
    R = matrix.result()
    assert average_accuracy(R) == pytest.approx(0.75)
    assert backward_transfer(R) == pytest.approx(-0.2)
    assert forgetting(R) == pytest.approx(0.2)
    with pytest.raises(NonFiniteInputError, match=r"R\[0, 1\].*NaN"):
        forward_transfer(R, [0.1, 0.1])
    assert math.isnan(summarize(R)["fwt"])


def test_forward_transfer_ignores_the_first_baseline_entry():
    R = [[0.9, 0.3], [0.6, 0.8]]
    assert forward_transfer(R, [nan, 0.2]) == pytest.approx(0.1)
    assert forward_transfer(R, [0.0, 0.2]) == pytest.approx(0.1)


# --- the accumulator -------------------------------------------------------------------------------
def test_accuracy_matrix_fills_grows_overwrites_and_resets():
    matrix = AccuracyMatrix()
    assert matrix.result().shape == (0, 0)
    matrix.update(2, 0, 0.5)
    expected = np.full((3, 3), nan)
    expected[2, 0] = 0.5
    np.testing.assert_array_equal(matrix.result(), expected)
    matrix.update(np.int64(2), np.int64(0), np.float32(0.25))  # numpy scalars accepted
    matrix.update(1, 1, 1)
    expected[2, 0], expected[1, 1] = 0.25, 1.0
    np.testing.assert_array_equal(matrix.result(), expected)
    copy = matrix.result()
    copy[0, 0] = 0.0
    assert math.isnan(matrix.result()[0, 0])  # result() is a copy
    matrix.reset()
    assert matrix.result().shape == (0, 0)
    fixed = AccuracyMatrix(n_tasks=4)
    fixed.update(0, 0, 0.3)
    assert fixed.result().shape == (4, 4)
    assert np.isnan(fixed.result()).sum() == 15


@pytest.mark.parametrize(
    ("trained", "evaluated", "accuracy", "error", "message"),
    [
        (-1, 0, 0.5, InvalidParameterError, "trained must be a task index >= 0, got -1"),
        (0, 2, 0.5, InvalidParameterError, "below n_tasks=2, got 2"),
        (1.0, 0, 0.5, InputTypeError, "trained must be a task index"),
        (True, 0, 0.5, InputTypeError, "trained must be a task index"),
        (0, "1", 0.5, InputTypeError, "evaluated must be a task index"),
        (0, 0, 1.5, InvalidInputError, "got 1.5"),
        (0, 0, 85.0, InvalidInputError, "percentage"),
        (0, 0, -0.1, InvalidInputError, "got -0.1"),
        (0, 0, nan, NonFiniteInputError, "must be finite, got nan"),
        (0, 0, "0.5", InputTypeError, "got '0.5'"),
        (0, 0, None, InputTypeError, "got None"),
    ],
)
def test_accuracy_matrix_rejects_bad_updates_and_records_nothing(
    trained, evaluated, accuracy, error, message
):
    matrix = AccuracyMatrix(n_tasks=2)
    matrix.update(1, 1, 0.4)
    before = matrix.result()
    with pytest.raises(error, match=message):
        matrix.update(trained, evaluated, accuracy)
    np.testing.assert_array_equal(matrix.result(), before)


@pytest.mark.parametrize("n_tasks", [0, -3, 1.5, True, "3"])
def test_accuracy_matrix_rejects_bad_n_tasks(n_tasks):
    with pytest.raises(InvalidParameterError, match="n_tasks"):
        AccuracyMatrix(n_tasks=n_tasks)


# --- bad inputs to the matrix metrics --------------------------------------------------------------
MATRIX_METRICS = [
    average_accuracy,
    backward_transfer,
    forgetting,
    lambda R: forward_transfer(R, np.full(np.shape(R)[0], 0.1) if np.ndim(R) == 2 else [0.1]),
    lambda R: intransigence(R, np.full(np.shape(R)[0], 0.9) if np.ndim(R) == 2 else [0.9]),
    summarize,
]


@pytest.mark.parametrize("metric", MATRIX_METRICS)
@pytest.mark.parametrize(
    ("R", "error", "message"),
    [
        ([0.5, 0.5], InvalidInputError, r"2-D .* shape \(2,\)"),
        (np.full((2, 2, 2), 0.5), InvalidInputError, r"2-D .* shape \(2, 2, 2\)"),
        ([[0.5, 0.5]], InvalidInputError, r"square .* shape \(1, 2\)"),
        (np.zeros((0, 0)), EmptyInputError, "empty"),
        ([[0.5, 0.5], [0.5, 1.5]], InvalidInputError, r"R\[1, 1\] = 1.5"),
        ([[0.5, 0.5], [0.5, 85.0]], InvalidInputError, "percentage"),
        ([[-0.2, 0.5], [0.5, 0.5]], InvalidInputError, r"R\[0, 0\] = -0.2"),
        ([[0.5, np.inf], [0.5, 0.5]], NonFiniteInputError, r"R\[0, 1\] is inf"),
        ([["a", "b"], ["c", "d"]], InputTypeError, "dtype"),
        ([[0.5, 0.5], [0.5, 0.5j]], InputTypeError, "dtype complex"),
        ("0.5", InputTypeError, "numbers"),
    ],
)
def test_matrix_metrics_reject_bad_matrices(metric, R, error, message):
    with pytest.raises(error, match=message):
        metric(R)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: average_accuracy([[0.9, 0.1], [0.6, nan]]), r"average_accuracy needs R\[1, 1\]"),
        (lambda: backward_transfer([[nan, 0.1], [0.6, 0.8]]), r"backward_transfer needs R\[0, 0\]"),
        (lambda: forgetting([[0.9, 0.1], [nan, 0.8]]), r"forgetting needs R\[1, 0\]"),
        (
            lambda: forgetting([[0.9, 0.1, 0.1], [0.5, 0.8, 0.1], [0.5, nan, 0.1]]),
            r"forgetting needs R\[2, 1\]",
        ),
        (
            lambda: forgetting([[0.9, 0.1, 0.1], [nan, 0.8, 0.1], [0.5, 0.5, 0.1]]),
            r"forgetting needs R\[1, 0\]",
        ),
        (lambda: forward_transfer(R3, [0.1, nan, 0.2]), r"needs baseline\[1\]"),
        (lambda: intransigence([[0.9, 0.1], [0.6, nan]], [0.9, 0.9]), r"R\[1, 1\]"),
        (lambda: intransigence(R3, [0.9, nan, 0.9]), r"needs reference\[1\]"),
    ],
)
def test_needed_values_that_are_nan_are_named(call, message):
    with pytest.raises(NonFiniteInputError, match=message):
        call()


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: forward_transfer(R3, [0.1, 0.2]),
            InvalidInputError,
            r"baseline must hold one accuracy per task \(3 .*\(2,\)",
        ),
        (lambda: forward_transfer(R3, [[0.1, 0.2, 0.3]]), InvalidInputError, "baseline"),
        (lambda: forward_transfer(R3, [0.1, 0.2, 2.0]), InvalidInputError, r"baseline\[2\] = 2"),
        (lambda: forward_transfer(R3, [0.1, np.inf, 0.2]), NonFiniteInputError, "baseline"),
        (
            lambda: intransigence(R3, [0.9] * 4),
            InvalidInputError,
            r"reference must hold one accuracy per task \(3 .*\(4,\)",
        ),
        (lambda: intransigence(R3, [0.9, 0.9, -1.0]), InvalidInputError, r"reference\[2\]"),
        (lambda: summarize(R3, baseline=[0.1]), InvalidInputError, "baseline"),
        (lambda: summarize(R3, reference=[0.1]), InvalidInputError, "reference"),
    ],
)
def test_bad_baseline_and_reference(call, error, message):
    with pytest.raises(error, match=message):
        call()


# --- brute-force references on random matrices -----------------------------------------------------
def random_matrix(n_tasks: int, seed: int, nan_above_diagonal: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Half the time a coarse grid, so ties, exact 0 and exact 1 show up.
    R = rng.integers(0, 11, (n_tasks, n_tasks)) / 10 if seed % 2 else rng.random((n_tasks, n_tasks))
    if nan_above_diagonal:
        R[np.triu_indices(n_tasks, 1)] = nan
    return R


def loop_reference(R: np.ndarray, b: np.ndarray, a_star: np.ndarray) -> dict[str, float]:
    T = len(R)
    out = {"average_accuracy": sum(R[T - 1][j] for j in range(T)) / T}
    out["intransigence"] = sum(a_star[k] - R[k][k] for k in range(T)) / T
    if T == 1:
        out.update(bwt=nan, fwt=nan, forgetting=nan)
        return out
    out["bwt"] = sum(R[T - 1][i] - R[i][i] for i in range(T - 1)) / (T - 1)
    out["fwt"] = sum(R[i - 1][i] - b[i] for i in range(1, T)) / (T - 1)
    total = 0.0
    for j in range(T - 1):
        best = -1.0
        for row in range(T - 1):
            if not math.isnan(R[row][j]) and R[row][j] > best:
                best = R[row][j]
        total += best - R[T - 1][j]
    out["forgetting"] = total / (T - 1)
    return out


@settings(max_examples=150, deadline=None)
@given(n_tasks=st.integers(1, 7), seed=st.integers(0, 2**32 - 1))
def test_matrix_metrics_match_loops_on_random_matrices(n_tasks, seed):
    R = random_matrix(n_tasks, seed)
    rng = np.random.default_rng(seed + 1)
    b, a_star = rng.random(n_tasks), rng.random(n_tasks)
    expected = loop_reference(R, b, a_star)
    got = summarize(R, baseline=b, reference=a_star)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(value, abs=1e-12), key
    if n_tasks > 1:
        # the best accuracy a task ever had is at least the one just after training it
        assert got["forgetting"] >= -got["bwt"] - 1e-12


@settings(max_examples=60, deadline=None)
@given(n_tasks=st.integers(2, 7), seed=st.integers(0, 2**32 - 1))
def test_forgetting_on_lower_triangular_matrices_matches_loops(n_tasks, seed):
    R = random_matrix(n_tasks, seed, nan_above_diagonal=True)
    expected = loop_reference(R, np.zeros(n_tasks), np.zeros(n_tasks))
    assert forgetting(R) == pytest.approx(expected["forgetting"], abs=1e-12)
    assert backward_transfer(R) == pytest.approx(expected["bwt"], abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(n_tasks=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
def test_accuracy_matrix_in_any_order_gives_the_matrix(n_tasks, seed):
    R = random_matrix(n_tasks, seed)
    cells = [(i, j) for i in range(n_tasks) for j in range(n_tasks)]
    order = np.random.default_rng(seed).permutation(len(cells))
    matrix = AccuracyMatrix()
    for k in order:
        i, j = cells[k]
        matrix.update(i, j, float(R[i, j]))
    np.testing.assert_array_equal(matrix.result(), R)


# --- Continual World curves ------------------------------------------------------------------------
def test_average_performance_by_hand():
    p = [[0.2, 0.4], [0.6, 1.0], [0.1, 0.1]]
    # columns: (0.2 + 0.6 + 0.1) / 3 = 0.3, (0.4 + 1.0 + 0.1) / 3 = 0.5
    np.testing.assert_allclose(average_performance(p), [0.3, 0.5])


def test_continual_world_forgetting_by_hand_positive_means_lost():
    p = [
        [0.2, 0.9, 0.7, 0.4],  # task 0 ends at point 1: 0.9 - 0.4 = 0.5 lost
        [0.0, 0.1, 0.8, 0.6],  # task 1 ends at point 2: 0.8 - 0.6 = 0.2 lost
        [0.0, 0.0, 0.2, 0.9],  # task 2 ends at the last point: 0
    ]
    np.testing.assert_allclose(continual_world_forgetting(p, [1, 2, 3]), [0.5, 0.2, 0.0])
    gained = [[0.3, 0.3, 0.5], [0.0, 0.6, 0.7]]  # later training helped task 0 and task 1
    np.testing.assert_allclose(continual_world_forgetting(gained, [0, 1]), [-0.2, -0.1])


def test_forward_transfer_auc_by_hand():
    # AUC = 0.5·(0 + 0.5)/2 + 0.5·(0.5 + 1)/2 = 0.5; AUC_b = 0.5·0.25/2 + 0.5·0.75/2 = 0.25
    # FT = (0.5 - 0.25) / (1 - 0.25) = 1/3
    assert forward_transfer_auc([0.0, 0.5, 1.0], [0.0, 0.25, 0.5]) == pytest.approx(1 / 3)
    # uneven times: AUC = 0.2·(0.2 + 0.6)/2 + 0.8·0.6 = 0.56, AUC_b = 0.4; FT = 0.16 / 0.6
    got = forward_transfer_auc([0.2, 0.6, 0.6], [0.4, 0.4, 0.4], times=[0.0, 0.2, 1.0])
    assert got == pytest.approx(0.16 / 0.6)
    # never learning while the reference sits at 0.5: (0 - 0.5) / 0.5 = -1
    assert forward_transfer_auc([0.0, 0.0], [0.5, 0.5]) == pytest.approx(-1.0)


def test_forward_transfer_auc_is_nan_when_the_reference_is_perfect_from_the_start():
    assert math.isnan(forward_transfer_auc([0.5, 1.0, 1.0], [1.0, 1.0, 1.0]))
    assert math.isnan(forward_transfer_auc(np.ones(11), np.ones(11)))


@settings(max_examples=80, deadline=None)
@given(n_points=st.integers(2, 30), seed=st.integers(0, 2**32 - 1))
def test_forward_transfer_auc_matches_scipy_trapezoid(n_points, seed):
    rng = np.random.default_rng(seed)
    curve, reference = rng.random(n_points), rng.random(n_points) * 0.99
    inner = np.sort(rng.choice(np.arange(1, 1000), n_points - 2, replace=False)) / 1000
    times = np.concatenate([[0.0], inner, [1.0]])
    auc, auc_b = integrate.trapezoid(curve, times), integrate.trapezoid(reference, times)
    expected = (auc - auc_b) / (1 - auc_b)
    assert forward_transfer_auc(curve, reference, times) == pytest.approx(expected, abs=1e-12)
    even_auc = integrate.trapezoid(curve, dx=1 / (n_points - 1))
    even_auc_b = integrate.trapezoid(reference, dx=1 / (n_points - 1))
    assert forward_transfer_auc(curve, reference) == pytest.approx(
        (even_auc - even_auc_b) / (1 - even_auc_b), abs=1e-12
    )


@settings(max_examples=40, deadline=None)
@given(n_tasks=st.integers(1, 5), n_points=st.integers(1, 9), seed=st.integers(0, 2**32 - 1))
def test_curve_metrics_match_loops(n_tasks, n_points, seed):
    rng = np.random.default_rng(seed)
    p = rng.random((n_tasks, n_points))
    expected = [sum(p[i][t] for i in range(n_tasks)) / n_tasks for t in range(n_points)]
    np.testing.assert_allclose(average_performance(p), expected, atol=1e-12)
    if n_points >= n_tasks:
        ends = np.sort(rng.choice(n_points, n_tasks, replace=False))
        expected_f = [p[i][ends[i]] - p[i][n_points - 1] for i in range(n_tasks)]
        np.testing.assert_allclose(continual_world_forgetting(p, ends), expected_f, atol=1e-12)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: average_performance([0.5, 0.5]), InvalidInputError, r"2-D .* \(2,\)"),
        (lambda: average_performance(np.zeros((0, 3))), EmptyInputError, "empty"),
        (lambda: average_performance([[0.5, 1.2]]), InvalidInputError, r"p\[0, 1\] = 1.2"),
        (lambda: average_performance([[0.5, nan]]), NonFiniteInputError, r"p\[0, 1\] is NaN"),
        (lambda: average_performance([[0.5, -np.inf]]), NonFiniteInputError, r"p\[0, 1\]"),
        (lambda: continual_world_forgetting([[0.5, 0.5]], [0, 1]), InvalidInputError, "one"),
        (lambda: continual_world_forgetting([[0.5, 0.5]], 0), InvalidInputError, "one"),
        (lambda: continual_world_forgetting([[0.5, 0.5]], [0.0]), InputTypeError, "int"),
        (lambda: continual_world_forgetting([[0.5, 0.5]], [2]), InvalidInputError, r"= 2 .*0..1"),
        (lambda: continual_world_forgetting([[0.5, 0.5]], [-1]), InvalidInputError, "= -1"),
        (
            lambda: continual_world_forgetting([[0.5, 0.5], [0.5, 0.5]], [1, 1]),
            InvalidInputError,
            "strictly increasing",
        ),
        (
            lambda: continual_world_forgetting([[0.5, nan, 0.5], [0.5, 0.5, 0.5]], [1, 2]),
            NonFiniteInputError,
            r"p\[0, 1\]",
        ),
        (
            lambda: continual_world_forgetting([[0.5, 0.5, nan], [0.5, 0.5, 0.5]], [1, 2]),
            NonFiniteInputError,
            r"p\[0, 2\]",
        ),
        (lambda: forward_transfer_auc([0.5], [0.5]), InvalidInputError, "at least 2"),
        (lambda: forward_transfer_auc([[0.5, 0.5]], [0.5, 0.5]), InvalidInputError, "1-D"),
        (lambda: forward_transfer_auc([0.5, 0.5], [0.5, 0.5, 0.5]), InvalidInputError, "2 and 3"),
        (lambda: forward_transfer_auc([0.5, 1.5], [0.5, 0.5]), InvalidInputError, r"curve\[1\]"),
        (
            lambda: forward_transfer_auc([0.5, 0.5], [0.5, nan]),
            NonFiniteInputError,
            r"reference_curve\[1\] is NaN",
        ),
        (
            lambda: forward_transfer_auc([0.5, 0.5], [0.5, 0.5], times=[0.0, 0.5, 1.0]),
            InvalidInputError,
            "one fraction per point",
        ),
        (
            lambda: forward_transfer_auc([0.5, 0.5], [0.5, 0.5], times=[0.1, 1.0]),
            InvalidInputError,
            r"exactly 0 to exactly 1, got \[0.1, 1.0\]",
        ),
        (
            lambda: forward_transfer_auc([0.5] * 3, [0.5] * 3, times=[0.0, 0.7, 0.5]),
            InvalidInputError,
            "strictly increasing",
        ),
        (
            lambda: forward_transfer_auc([0.5] * 3, [0.5] * 3, times=[0.0, nan, 1.0]),
            NonFiniteInputError,
            "times must be finite",
        ),
    ],
)
def test_curve_metrics_reject_bad_inputs(call, error, message):
    with pytest.raises(error, match=message):
        call()


# --- confidence interval ---------------------------------------------------------------------------
def test_mean_ci90_textbook_value():
    # n = 5, mean 3, s = √2.5, t_{0.95, 4} = 2.132 (t table): 3 ± 2.132·√2.5/√5 = 3 ± 1.5075
    mean, (low, high) = mean_ci90([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean == 3.0
    assert low == pytest.approx(3 - 2.131847 * math.sqrt(2.5) / math.sqrt(5), abs=1e-6)
    assert high == pytest.approx(4.507443, abs=1e-6)
    assert (low, high) == pytest.approx(stats.t.interval(0.90, 4, loc=3.0, scale=math.sqrt(0.5)))


def test_mean_ci90_edge_cases():
    assert mean_ci90([0.4]) == (0.4, (0.4, 0.4))
    assert mean_ci90([0.4, nan]) == (0.4, (0.4, 0.4))
    mean, (low, high) = mean_ci90([0.2, 0.2, 0.2])
    assert (mean, low, high) == pytest.approx((0.2, 0.2, 0.2))
    mean, (low, high) = mean_ci90([nan, nan])
    assert math.isnan(mean) and math.isnan(low) and math.isnan(high)
    assert mean_ci90([1.0, nan, 2.0, 3.0, 4.0, 5.0]) == mean_ci90([1.0, 2.0, 3.0, 4.0, 5.0])


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False), min_size=2, max_size=20
    )
)
def test_mean_ci90_matches_scipy(values):
    x = np.array(values)
    mean, (low, high) = mean_ci90(x)
    assert mean == pytest.approx(np.mean(x), abs=1e-9)
    sem = stats.sem(x)
    if sem == 0:
        assert low == pytest.approx(mean, abs=1e-9) and high == pytest.approx(mean, abs=1e-9)
        return
    expected_low, expected_high = stats.t.interval(0.90, len(x) - 1, loc=np.mean(x), scale=sem)
    assert low == pytest.approx(expected_low, rel=1e-9, abs=1e-9)
    assert high == pytest.approx(expected_high, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize(
    ("values", "error", "message"),
    [
        ([], EmptyInputError, "at least one value"),
        ([1.0, np.inf], NonFiniteInputError, "inf at index 1"),
        ([[1.0, 2.0]], InvalidInputError, r"1-D .* \(1, 2\)"),
        (["a", "b"], InputTypeError, "dtype"),
        ("0.5", InputTypeError, "numbers"),
    ],
)
def test_mean_ci90_rejects_bad_values(values, error, message):
    with pytest.raises(error, match=message):
        mean_ci90(values)


# --- resources -------------------------------------------------------------------------------------
def lifetime_peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


@pytest.mark.skipif(not metrics.os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_resource_meter_sees_a_200_mb_peak_freed_inside_the_block():
    outside = time.perf_counter()
    with ResourceMeter() as meter:
        block = np.ones(25_000_000)  # 200 MB, every page written
        time.sleep(0.05)
        # Hold the block until the sampler has read the resident size twice since it was
        # written (the first read may have begun before): on a loaded machine the sampler
        # thread may wait far longer than its 5 ms interval, and no time budget is assumed.
        seen = meter.samples
        waited = time.monotonic()
        while meter.samples < seen + 2 and time.monotonic() - waited < 300:
            time.sleep(0.005)  # 300 s guards a dead sampler thread only (a failure, not a hang)
        assert meter.samples >= seen + 2, "the sampler thread stopped sampling"
        del block
    outside = time.perf_counter() - outside
    assert meter.memory_source == "statm"
    assert meter.peak_rss_increase_bytes > 150e6
    assert meter.peak_rss_bytes >= meter.peak_rss_increase_bytes + 10e6  # the interpreter itself
    assert meter.peak_rss_bytes <= lifetime_peak_rss_bytes() + 1e6  # the kernel's own peak
    assert 0.05 <= meter.seconds <= outside  # no wall-time budget: the suite may run niced


def test_resource_meter_times_a_sleep_and_a_quiet_block_adds_no_memory():
    # The reference is the same clock read around the block: a loaded or niced machine makes
    # both longer, so the test states no wall-time budget.
    outside = time.perf_counter()
    with ResourceMeter() as meter:
        time.sleep(0.2)
    outside = time.perf_counter() - outside
    assert 0.2 <= meter.seconds <= outside
    assert 0 <= meter.peak_rss_increase_bytes < 20e6


def test_resource_meter_falls_back_to_getrusage(monkeypatch, tmp_path):
    monkeypatch.setattr(metrics, "_STATM_PATH", str(tmp_path / "no-proc"))
    with ResourceMeter() as meter:
        block = np.ones(25_000_000)
    del block
    assert meter.memory_source == "getrusage"
    assert meter.samples == 0  # no sampler thread without /proc
    assert meter.peak_rss_bytes > 200e6  # the lifetime peak includes the block
    assert meter.peak_rss_bytes == pytest.approx(lifetime_peak_rss_bytes(), abs=1e6)
    assert meter.peak_rss_increase_bytes >= 0


def test_resource_meter_records_a_block_that_raises_and_can_be_reused():
    meter = ResourceMeter(interval=0.001)
    assert math.isnan(meter.seconds)
    with pytest.raises(KeyError), meter:
        time.sleep(0.1)
        raise KeyError("boom")
    assert meter.seconds >= 0.1
    outside = time.perf_counter()
    with meter:
        pass
    outside = time.perf_counter() - outside
    assert meter.seconds <= outside  # the second block's own time, not the first one's
    assert meter.peak_rss_increase_bytes >= 0


@pytest.mark.parametrize("interval", [0, -0.01, nan, np.inf, "0.01", True])
def test_resource_meter_rejects_bad_intervals(interval):
    with pytest.raises(InvalidParameterError, match="interval must be a positive number"):
        ResourceMeter(interval=interval)


class FakeTensor:
    """Torch-like: no nbytes, only element_size() and nelement()."""

    def element_size(self) -> int:
        return 4

    def nelement(self) -> int:
        return 6


def test_stored_bytes_of_arrays_and_tensors():
    images = np.zeros((10, 3, 4, 4), dtype=np.uint8)  # 480 bytes
    labels = np.zeros(10, dtype=np.int64)  # 80 bytes
    features = np.zeros((10, 8), dtype=np.float32)  # 320 bytes
    assert stored_bytes(images, labels, features) == 880
    assert stored_bytes(FakeTensor()) == 24
    assert stored_bytes() == 0
    assert stored_bytes(features[:5]) == 160  # a view counts its own elements


def test_stored_bytes_of_real_torch_tensors():
    torch = pytest.importorskip("torch")
    assert stored_bytes(torch.zeros(10, 8), torch.zeros(10, dtype=torch.int64)) == 320 + 80


@pytest.mark.parametrize("bad", [[1.0, 2.0], "abc", 3, None])
def test_stored_bytes_rejects_what_is_not_an_array(bad):
    with pytest.raises(InputTypeError, match=r"argument 1 is a"):
        stored_bytes(np.zeros(2), bad)
