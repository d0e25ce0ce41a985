"""Continual-learning metrics: the accuracy matrix and what derives from it.

An accuracy matrix ``R`` is a ``(T, T)`` float array where ``R[i, j]`` is the accuracy (a fraction
in [0, 1]) on task ``j``'s test set after training on task ``i``, both counted from 0. ``NaN``
marks a value that was not measured; a metric that needs such a value raises
:class:`~perennial.exceptions.NonFiniteInputError` naming the entry.

From the matrix: :func:`average_accuracy`, :func:`backward_transfer`, :func:`forward_transfer`
(Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning", 2017), and
:func:`forgetting`, :func:`intransigence` (Chaudhry et al., "Riemannian Walk for Incremental
Learning", 2018). From performance curves sampled during training: :func:`average_performance`,
:func:`continual_world_forgetting`, :func:`forward_transfer_auc` (Wołczyk et al., "Continual
World", 2021). Around them: :func:`mean_ci90` over seeds, :class:`ResourceMeter` for time and
memory, :func:`stored_bytes` for replay buffers. Pure numpy; torch is never imported.
"""

from __future__ import annotations

import math
import numbers
import operator
import os
import sys
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from perennial.exceptions import (
    EmptyInputError,
    InputTypeError,
    InvalidInputError,
    InvalidParameterError,
    NonFiniteInputError,
)

__all__ = [
    "AccuracyMatrix",
    "ResourceMeter",
    "average_accuracy",
    "average_performance",
    "backward_transfer",
    "bootstrap_ci90",
    "continual_world_forgetting",
    "forgetting",
    "forward_transfer",
    "forward_transfer_auc",
    "intransigence",
    "mean_ci90",
    "stored_bytes",
    "summarize",
]

FloatArray = NDArray[np.float64]

# Where the resident set size is read; a module constant so tests can point it elsewhere.
_STATM_PATH = "/proc/self/statm"

# Below this, 1 - AUC of the reference curve counts as 0 (a reference perfect from the start).
_AUC_TOLERANCE = 1e-12


# --- validation ------------------------------------------------------------------------------------
def _as_float_array(values: Any, name: str) -> FloatArray:
    """``values`` as a float64 array, refusing text, objects and complex numbers."""
    if isinstance(values, (str, bytes)):
        raise InputTypeError(f"{name} must be numbers, got {type(values).__name__} {values!r}")
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as error:
        raise InputTypeError(f"{name} must be an array of numbers: {error}") from error
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.integer)
        or np.issubdtype(array.dtype, np.floating)
        or np.issubdtype(array.dtype, np.bool_)
    ):
        raise InputTypeError(f"{name} must be real numbers, got an array of dtype {array.dtype}")
    return array.astype(np.float64)


def _where(name: str, index: tuple[int, ...]) -> str:
    return f"{name}[{', '.join(str(int(k)) for k in index)}]"


def _check_fractions(array: FloatArray, name: str) -> None:
    """Every measured value of ``array`` is a finite fraction in [0, 1]; NaN (not measured) passes."""
    infinite = np.isinf(array)
    if infinite.any():
        index = tuple(np.argwhere(infinite)[0])
        raise NonFiniteInputError(
            f"{_where(name, index)} is {array[index]}; accuracies are fractions in [0, 1] "
            "(NaN marks a value not measured)"
        )
    outside = (array < 0.0) | (array > 1.0)  # False for NaN
    if outside.any():
        index = tuple(np.argwhere(outside)[0])
        value = float(array[index])
        hint = " (a percentage? divide by 100)" if 1.0 < value <= 100.0 else ""
        raise InvalidInputError(
            f"accuracies are fractions in [0, 1], got {_where(name, index)} = {value!r}{hint}"
        )


def _accuracy_matrix(R: ArrayLike) -> FloatArray:
    array = _as_float_array(R, "R")
    if array.ndim != 2:
        raise InvalidInputError(
            f"R must be a 2-D (T, T) accuracy matrix, got an array of shape {array.shape}"
        )
    if array.shape[0] != array.shape[1]:
        raise InvalidInputError(
            f"R must be square (T, T): row i is 'after training task i', column j is "
            f"'tested on task j'; got shape {array.shape}"
        )
    if array.shape[0] == 0:
        raise EmptyInputError("R is empty (shape (0, 0)); at least one task is needed")
    _check_fractions(array, "R")
    return array


def _task_vector(values: ArrayLike, name: str, n_tasks: int) -> FloatArray:
    array = _as_float_array(values, name)
    if array.ndim != 1 or array.shape[0] != n_tasks:
        raise InvalidInputError(
            f"{name} must hold one accuracy per task ({n_tasks} for a {n_tasks}x{n_tasks} R), "
            f"got an array of shape {array.shape}"
        )
    _check_fractions(array, name)
    return array


def _require_cells(R: FloatArray, cells: Sequence[tuple[int, int]], function: str) -> None:
    for i, j in cells:
        if math.isnan(R[i, j]):
            raise NonFiniteInputError(
                f"{function} needs R[{i}, {j}] (accuracy on task {j} after training on task {i}), "
                "but it is NaN (not measured)"
            )


def _require_entries(values: FloatArray, name: str, indices: range, function: str) -> None:
    for k in indices:
        if math.isnan(values[k]):
            raise NonFiniteInputError(
                f"{function} needs {name}[{k}] (task {k}), but it is NaN (not measured)"
            )


def _task_index(value: Any, name: str, n_tasks: int | None) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise InputTypeError(f"{name} must be a task index (int), got {value!r}")
    try:
        index = operator.index(value)
    except TypeError as error:
        raise InputTypeError(
            f"{name} must be a task index (int), got {value!r} of type {type(value).__name__}"
        ) from error
    if index < 0:
        raise InvalidParameterError(f"{name} must be a task index >= 0, got {index}")
    if n_tasks is not None and index >= n_tasks:
        raise InvalidParameterError(
            f"{name} must be a task index below n_tasks={n_tasks}, got {index}"
        )
    return index


# --- the accuracy matrix ---------------------------------------------------------------------------
class AccuracyMatrix:
    """Collects ``R[i, j]``, the accuracy on task ``j`` after training on task ``i``.

    Fill it with :meth:`update` as evaluations come in; :meth:`result` gives the ``(T, T)``
    matrix with ``NaN`` wherever nothing was measured. ``T`` is ``n_tasks`` when given, otherwise
    one more than the largest task index seen so far. Updating a cell twice keeps the later value.

    Parameters
    ----------
    n_tasks
        Number of tasks in the stream, or ``None`` to grow with the indices seen.

    Examples
    --------
    >>> matrix = AccuracyMatrix(n_tasks=2)
    >>> matrix.update(trained=0, evaluated=0, accuracy=0.9)
    >>> matrix.update(trained=1, evaluated=0, accuracy=0.7)
    >>> matrix.update(trained=1, evaluated=1, accuracy=0.8)
    >>> matrix.result()
    array([[0.9, nan],
           [0.7, 0.8]])
    >>> round(backward_transfer(matrix.result()), 6)
    -0.2
    """

    def __init__(self, n_tasks: int | None = None) -> None:
        if n_tasks is not None:
            if isinstance(n_tasks, bool) or not isinstance(n_tasks, (int, np.integer)):
                raise InvalidParameterError(
                    f"n_tasks must be a positive int or None, got {n_tasks!r}"
                )
            if n_tasks < 1:
                raise InvalidParameterError(f"n_tasks must be at least 1, got {n_tasks}")
        self.n_tasks = n_tasks
        self.reset()

    def reset(self) -> None:
        """Forget every measurement."""
        self.values_: dict[tuple[int, int], float] = {}

    def update(self, trained: int, evaluated: int, accuracy: float) -> None:
        """Record the accuracy on task ``evaluated`` after training on task ``trained``.

        A call that fails validation records nothing.
        """
        i = _task_index(trained, "trained", self.n_tasks)
        j = _task_index(evaluated, "evaluated", self.n_tasks)
        if isinstance(accuracy, (bool, np.bool_)) or not isinstance(
            accuracy, (int, float, np.integer, np.floating)
        ):
            raise InputTypeError(
                f"accuracy must be a number in [0, 1], got {accuracy!r} of type "
                f"{type(accuracy).__name__}"
            )
        value = float(accuracy)
        if not math.isfinite(value):
            raise NonFiniteInputError(
                f"accuracy after training task {i} on task {j} must be finite, got {value}"
            )
        if not 0.0 <= value <= 1.0:
            hint = " (a percentage? divide by 100)" if 1.0 < value <= 100.0 else ""
            raise InvalidInputError(
                f"accuracy is a fraction in [0, 1], got {value!r} after training task {i} "
                f"on task {j}{hint}"
            )
        self.values_[(i, j)] = value

    def result(self) -> FloatArray:
        """The ``(T, T)`` accuracy matrix, ``NaN`` where not measured (a fresh copy)."""
        if self.n_tasks is not None:
            size = self.n_tasks
        else:
            size = 1 + max((max(cell) for cell in self.values_), default=-1)
        matrix = np.full((size, size), np.nan)
        for (i, j), value in self.values_.items():
            matrix[i, j] = value
        return matrix

    def __repr__(self) -> str:
        return f"AccuracyMatrix(n_tasks={self.n_tasks!r})"


# --- metrics of the accuracy matrix ----------------------------------------------------------------
def average_accuracy(R: ArrayLike) -> float:
    """Mean accuracy over all tasks after training on the last one (ACC of Lopez-Paz & Ranzato).

    ``ACC = 1/T Σ_j R[T-1, j]``; needs the whole last row.

    Examples
    --------
    >>> average_accuracy([[0.9, 0.1], [0.6, 0.8]])
    0.7
    """
    matrix = _accuracy_matrix(R)
    last = matrix.shape[0] - 1
    _require_cells(matrix, [(last, j) for j in range(last + 1)], "average_accuracy")
    return float(matrix[last].mean())


def backward_transfer(R: ArrayLike) -> float:
    """Backward transfer BWT of Lopez-Paz & Ranzato (2017, GEM).

    ``BWT = 1/(T-1) Σ_{i<T-1} (R[T-1, i] - R[i, i])``: how training on later tasks changed the
    accuracy on earlier ones. Negative values mean forgetting. With a single task BWT is
    undefined and the result is ``nan`` (no error).

    Examples
    --------
    >>> round(backward_transfer([[0.9, 0.1], [0.6, 0.8]]), 6)
    -0.3
    >>> backward_transfer([[0.9]])
    nan
    """
    matrix = _accuracy_matrix(R)
    T = matrix.shape[0]
    if T == 1:
        return math.nan
    earlier = range(T - 1)
    _require_cells(
        matrix, [(T - 1, i) for i in earlier] + [(i, i) for i in earlier], "backward_transfer"
    )
    return float(np.mean(matrix[T - 1, : T - 1] - np.diag(matrix)[: T - 1]))


def forward_transfer(R: ArrayLike, baseline: ArrayLike) -> float:
    """Forward transfer FWT of Lopez-Paz & Ranzato (2017, GEM).

    ``FWT = 1/(T-1) Σ_{i>=1} (R[i-1, i] - b_i)``, where ``b_i`` is the accuracy on task ``i`` of
    the randomly initialised model: how training on earlier tasks helps a task not yet seen.
    ``baseline`` holds one value per task; ``b_0`` is not used (it may be NaN). It needs the
    entries just above the diagonal, so evaluate every task after every task. With a single task
    FWT is undefined and the result is ``nan`` (no error).

    Examples
    --------
    >>> round(forward_transfer([[0.9, 0.3], [0.6, 0.8]], baseline=[0.1, 0.2]), 6)
    0.1
    """
    matrix = _accuracy_matrix(R)
    T = matrix.shape[0]
    b = _task_vector(baseline, "baseline", T)
    if T == 1:
        return math.nan
    later = range(1, T)
    _require_cells(matrix, [(i - 1, i) for i in later], "forward_transfer")
    _require_entries(b, "baseline", later, "forward_transfer")
    idx = np.arange(1, T)
    return float(np.mean(matrix[idx - 1, idx] - b[1:]))


def forgetting(R: ArrayLike) -> float:
    """Average forgetting after the last task (Chaudhry et al. 2018, Riemannian Walk).

    ``f_j = max_{l in 0..T-2} R[l, j] - R[T-1, j]`` for each ``j < T-1``, averaged over those
    ``T-1`` tasks: the drop from the best accuracy a task ever had to its final one. Positive
    means accuracy was lost. As in the paper, ``l`` runs over all earlier rows; entries measured
    before task ``j`` was trained (``l < j``) take part when present and are skipped when NaN,
    while ``R[l, j]`` for ``j <= l <= T-2`` and the last row are required. With a single task
    forgetting is undefined and the result is ``nan`` (no error).

    Examples
    --------
    >>> R = [[0.9, 0.1, 0.2],
    ...      [0.95, 0.8, 0.3],
    ...      [0.6, 0.5, 0.95]]
    >>> round(forgetting(R), 6)  # ((0.95 - 0.6) + (0.8 - 0.5)) / 2
    0.325
    """
    matrix = _accuracy_matrix(R)
    T = matrix.shape[0]
    if T == 1:
        return math.nan
    cells = [(row, j) for j in range(T - 1) for row in range(j, T - 1)]
    cells += [(T - 1, j) for j in range(T - 1)]
    _require_cells(matrix, cells, "forgetting")
    best = np.nanmax(matrix[: T - 1, : T - 1], axis=0)  # R[j, j] is there, so never all-NaN
    return float(np.mean(best - matrix[T - 1, : T - 1]))


def intransigence(R: ArrayLike, reference: ArrayLike) -> float:
    """Mean intransigence over tasks (Chaudhry et al. 2018, Riemannian Walk).

    ``I_k = a*_k - R[k, k]``, where ``a*_k`` (``reference[k]``) is the accuracy on task ``k`` of a
    reference model trained jointly on all data up to task ``k``: how much the continual learner
    fails to learn task ``k`` compared with joint training. The paper defines ``I_k`` per task;
    this returns the mean over all ``T`` tasks. Lower is better; it can be negative.

    Examples
    --------
    >>> round(intransigence([[0.9, 0.1], [0.6, 0.8]], reference=[0.92, 0.86]), 6)
    0.04
    """
    matrix = _accuracy_matrix(R)
    T = matrix.shape[0]
    a_star = _task_vector(reference, "reference", T)
    _require_cells(matrix, [(k, k) for k in range(T)], "intransigence")
    _require_entries(a_star, "reference", range(T), "intransigence")
    return float(np.mean(a_star - np.diag(matrix)))


def summarize(
    R: ArrayLike, *, baseline: ArrayLike | None = None, reference: ArrayLike | None = None
) -> dict[str, float]:
    """The headline numbers of an accuracy matrix.

    Keys: ``average_accuracy``, ``forgetting``, ``bwt``, ``fwt`` (``nan`` without ``baseline``)
    and ``intransigence`` (``nan`` without ``reference``). With a single task ``forgetting``,
    ``bwt`` and ``fwt`` are ``nan``.

    Examples
    --------
    >>> summary = summarize([[0.9, 0.1], [0.6, 0.8]])
    >>> {name: round(value, 6) for name, value in summary.items()}
    {'average_accuracy': 0.7, 'forgetting': 0.3, 'bwt': -0.3, 'fwt': nan, 'intransigence': nan}
    """
    matrix = _accuracy_matrix(R)
    return {
        "average_accuracy": average_accuracy(matrix),
        "forgetting": forgetting(matrix),
        "bwt": backward_transfer(matrix),
        "fwt": math.nan if baseline is None else forward_transfer(matrix, baseline),
        "intransigence": math.nan if reference is None else intransigence(matrix, reference),
    }


# --- metrics of performance curves (Continual World) -----------------------------------------------
def _performance_curves(p: ArrayLike) -> FloatArray:
    array = _as_float_array(p, "p")
    if array.ndim != 2:
        raise InvalidInputError(
            f"p must be a 2-D array (n_tasks, n_points) of performance curves, "
            f"got an array of shape {array.shape}"
        )
    if array.size == 0:
        raise EmptyInputError(f"p is empty (shape {array.shape}); need at least one task and point")
    _check_fractions(array, "p")
    return array


def average_performance(p: ArrayLike) -> FloatArray:
    """Average performance ``P(t) = 1/N Σ_i p_i(t)`` of Continual World (Wołczyk et al. 2021).

    ``p[i, t]`` is the performance (for example success rate or accuracy, in [0, 1]) on task
    ``i`` at the ``t``-th evaluation point; the result has one value per point. Every value is
    needed.

    Examples
    --------
    >>> average_performance([[1.0, 0.5, 0.25], [0.0, 0.5, 0.75]])
    array([0.5, 0.5, 0.5])
    """
    curves = _performance_curves(p)
    if np.isnan(curves).any():
        i, t = np.argwhere(np.isnan(curves))[0]
        raise NonFiniteInputError(
            f"average_performance needs every p[i, t], but p[{i}, {t}] is NaN (not measured)"
        )
    result: FloatArray = curves.mean(axis=0)
    return result


def continual_world_forgetting(p: ArrayLike, task_ends: ArrayLike) -> FloatArray:
    """Forgetting of each task in Continual World (Wołczyk et al. 2021).

    ``F_i = p_i(i·Δ) - p_i(T)``: performance on task ``i`` when its training ended minus at the
    end of the whole sequence. Positive means performance was lost, as in the paper's tables
    (fine-tuning forgets 0.73). (Some transcriptions write the difference the other way round.)

    Parameters
    ----------
    p
        Performance curves, shape ``(n_tasks, n_points)``; ``p[i, t]`` is the performance on task
        ``i`` at the ``t``-th evaluation point, the last point being the end of the sequence.
    task_ends
        For each task, the index into the points where its training ended; strictly increasing.

    Returns
    -------
    numpy.ndarray
        ``F_i`` for each task. Continual World reports their mean over all tasks, ``F.mean()``
        (the last task's ``F`` is 0 when its training ends at the last point).

    Examples
    --------
    >>> p = [[0.2, 0.9, 0.7, 0.4],
    ...      [0.0, 0.1, 0.8, 0.6],
    ...      [0.0, 0.0, 0.2, 0.9]]
    >>> continual_world_forgetting(p, task_ends=[1, 2, 3]).round(6)
    array([0.5, 0.2, 0. ])
    """
    curves = _performance_curves(p)
    n_tasks, n_points = curves.shape
    ends_array = np.asarray(task_ends)
    if ends_array.ndim != 1 or ends_array.shape[0] != n_tasks:
        raise InvalidInputError(
            f"task_ends must hold one point index per task ({n_tasks} rows in p), "
            f"got {ends_array.tolist()!r}"
        )
    if not np.issubdtype(ends_array.dtype, np.integer):
        raise InputTypeError(
            f"task_ends must be int point indices, got {ends_array.tolist()!r} "
            f"(dtype {ends_array.dtype})"
        )
    ends = [int(e) for e in ends_array]
    for i, end in enumerate(ends):
        if not 0 <= end < n_points:
            raise InvalidInputError(
                f"task_ends[{i}] = {end} is not a point index of p (0..{n_points - 1})"
            )
    for i in range(1, n_tasks):
        if ends[i] <= ends[i - 1]:
            raise InvalidInputError(
                f"task_ends must be strictly increasing (tasks are trained one after another), "
                f"got task_ends[{i - 1}] = {ends[i - 1]} and task_ends[{i}] = {ends[i]}"
            )
    for i, end in enumerate(ends):
        for t in (end, n_points - 1):
            if math.isnan(curves[i, t]):
                raise NonFiniteInputError(
                    f"continual_world_forgetting needs p[{i}, {t}], but it is NaN (not measured)"
                )
    result: FloatArray = curves[np.arange(n_tasks), ends] - curves[:, -1]
    return result


def _trapezoid(values: FloatArray, times: FloatArray) -> float:
    return float(np.sum(np.diff(times) * (values[1:] + values[:-1]) / 2.0))


def forward_transfer_auc(
    curve: ArrayLike, reference_curve: ArrayLike, times: ArrayLike | None = None
) -> float:
    """Forward transfer of one task by area under the curve (Continual World, Wołczyk et al. 2021).

    ``FT_i = (AUC_i - AUC_i^b) / (1 - AUC_i^b)``, where ``AUC_i`` is the area under the task's
    performance curve during its own training in the continual run and ``AUC_i^b`` the same for a
    reference trained on the task from scratch. Time is normalised to [0, 1] over the task's
    training, and the areas come from the trapezoid rule. Positive means the continual learner
    reached good performance faster than learning from scratch.

    If the reference curve is perfect from the start (``AUC_i^b == 1``), ``FT_i`` is undefined
    and the result is ``nan`` (no error).

    Parameters
    ----------
    curve, reference_curve
        Performance in [0, 1] at the same fractions of training time.
    times
        Those fractions: strictly increasing, from exactly 0 to exactly 1. By default evenly
        spaced, both ends included.

    Examples
    --------
    >>> round(forward_transfer_auc([0.0, 0.5, 1.0], [0.0, 0.25, 0.5]), 6)  # (0.5 - 0.25) / 0.75
    0.333333
    """
    values = _as_float_array(curve, "curve")
    reference = _as_float_array(reference_curve, "reference_curve")
    for name, array in (("curve", values), ("reference_curve", reference)):
        if array.ndim != 1 or array.shape[0] < 2:
            raise InvalidInputError(
                f"{name} must be a 1-D curve of at least 2 points, got shape {array.shape}"
            )
        _check_fractions(array, name)
        if np.isnan(array).any():
            raise NonFiniteInputError(
                f"forward_transfer_auc needs every point, but {name}"
                f"[{int(np.argmax(np.isnan(array)))}] is NaN (not measured)"
            )
    if reference.shape != values.shape:
        raise InvalidInputError(
            f"curve and reference_curve must be sampled at the same times, got "
            f"{values.shape[0]} and {reference.shape[0]} points"
        )
    if times is None:
        grid = np.linspace(0.0, 1.0, values.shape[0])
    else:
        grid = _as_float_array(times, "times")
        if grid.shape != values.shape:
            raise InvalidInputError(
                f"times must hold one fraction per point ({values.shape[0]}), "
                f"got shape {grid.shape}"
            )
        if not np.isfinite(grid).all():
            raise NonFiniteInputError(f"times must be finite, got {grid.tolist()}")
        if grid[0] != 0.0 or grid[-1] != 1.0 or np.any(np.diff(grid) <= 0):
            raise InvalidInputError(
                "times are fractions of the task's training time: strictly increasing from "
                f"exactly 0 to exactly 1, got {grid.tolist()}"
            )
    auc = _trapezoid(values, grid)
    auc_reference = _trapezoid(reference, grid)
    if 1.0 - auc_reference <= _AUC_TOLERANCE:
        return math.nan
    return (auc - auc_reference) / (1.0 - auc_reference)


# --- aggregation over seeds ------------------------------------------------------------------------
def mean_ci90(values: ArrayLike) -> tuple[float, tuple[float, float]]:
    """Mean and two-sided 90% confidence interval by Student's t.

    ``mean ± t_{0.95, n-1} · s / √n`` with ``s`` the sample standard deviation (``ddof=1``), as
    Continual World reports its results over seeds. NaN values are ignored; if all are NaN the
    result is ``(nan, (nan, nan))``. A single value ``v`` gives ``(v, (v, v))``.

    Examples
    --------
    >>> mean, (low, high) = mean_ci90([1.0, 2.0, 3.0, 4.0, 5.0])
    >>> mean, round(low, 4), round(high, 4)  # 3 ± 2.1318 · √2.5 / √5
    (3.0, 1.4926, 4.5074)
    """
    array = _as_float_array(values, "values")
    if array.ndim != 1:
        raise InvalidInputError(f"values must be 1-D (one per seed), got shape {array.shape}")
    if array.shape[0] == 0:
        raise EmptyInputError("mean_ci90 needs at least one value, got none")
    if np.isinf(array).any():
        raise NonFiniteInputError(
            f"values must be finite or NaN (ignored), got {array[np.isinf(array)][0]} "
            f"at index {int(np.argmax(np.isinf(array)))}"
        )
    kept = array[~np.isnan(array)]
    n = kept.shape[0]
    if n == 0:
        return math.nan, (math.nan, math.nan)
    mean = float(kept.mean())
    if n == 1:
        return mean, (mean, mean)
    from scipy import stats  # scipy.stats takes a while to import; only load it when needed

    half_width = float(stats.t.ppf(0.95, n - 1)) * float(kept.std(ddof=1)) / math.sqrt(n)
    return mean, (mean - half_width, mean + half_width)


#: Resamples drawn by :func:`bootstrap_ci90`.
BOOTSTRAP_RESAMPLES = 10_000


def bootstrap_ci90(
    values: ArrayLike, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, tuple[float, float]]:
    """Mean and 90% percentile-bootstrap confidence interval of the mean.

    The ``values`` (one per seed) are resampled with replacement ``resamples`` times; the
    interval runs from the 5th to the 95th percentile of the resampled means (Efron &
    Tibshirani 1993, ch. 13). Each resampled mean lies between the smallest and the largest
    value, so the interval respects any range the values respect: seconds and MiB never get a
    negative bound, accuracies and forgetting never leave [0, 1] and [-1, 1] (a Student-t
    interval, :func:`mean_ci90`, can). With few values it is narrower than the t interval and
    covers less than 90%: with 5 seeds it is a description of the spread, not a guarantee.
    The resampling draws from ``seed``, so the same values give the same interval. NaN values
    are ignored; all NaN gives ``(nan, (nan, nan))``; one value ``v`` gives ``(v, (v, v))``.

    Examples
    --------
    >>> mean, (low, high) = bootstrap_ci90([0.0, 0.0, 0.0, 3.0])
    >>> mean, low >= 0.0, high <= 3.0
    (0.75, True, True)
    >>> bootstrap_ci90([2.0])
    (2.0, (2.0, 2.0))
    """
    array = _as_float_array(values, "values")
    if array.ndim != 1:
        raise InvalidInputError(f"values must be 1-D (one per seed), got shape {array.shape}")
    if array.shape[0] == 0:
        raise EmptyInputError("bootstrap_ci90 needs at least one value, got none")
    if np.isinf(array).any():
        raise NonFiniteInputError(
            f"values must be finite or NaN (ignored), got {array[np.isinf(array)][0]} "
            f"at index {int(np.argmax(np.isinf(array)))}"
        )
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise InvalidParameterError(f"resamples must be a positive int, got {resamples!r}")
    kept = array[~np.isnan(array)]
    n = kept.shape[0]
    if n == 0:
        return math.nan, (math.nan, math.nan)
    mean = float(kept.mean())
    if n == 1 or np.all(kept == kept[0]):
        return mean, (mean, mean)
    rng = np.random.default_rng(seed)
    means = kept[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    low, high = np.quantile(means, [0.05, 0.95])
    # Rounding in the means can put a bound a few ulps outside the values; keep it inside.
    return mean, (float(max(low, kept.min())), float(min(high, kept.max())))


# --- resources -------------------------------------------------------------------------------------
def _statm_rss_bytes() -> int:
    with open(_STATM_PATH, "rb") as handle:
        resident_pages = int(handle.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def _maxrss_bytes() -> int:
    import resource  # POSIX only, hence imported here

    maxrss = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB on Linux


class ResourceMeter:
    """Wall time and peak resident memory of a ``with`` block.

    Time is measured with :func:`time.perf_counter`. Memory is the resident set size, sampled
    from ``/proc/self/statm`` by a background thread every ``interval`` seconds and once more at
    each end of the block (``memory_source == "statm"``); a peak that rises and falls between two
    samples, inside a single call that holds the GIL, can be missed. Where ``/proc`` is missing
    (macOS) it falls back to :func:`resource.getrusage`'s ``ru_maxrss`` (``memory_source ==
    "getrusage"``), the process's lifetime peak: then ``peak_rss_bytes`` may predate the block
    and ``peak_rss_increase_bytes`` is how much the block raised that lifetime peak (0 if it stayed
    below an earlier one). Linux and macOS only.

    Attributes are set when the block ends (also when it raises): ``seconds``,
    ``peak_rss_bytes`` and ``peak_rss_increase_bytes`` (peak minus the resident size at entry).
    Before that they are ``nan``, 0 and 0. ``samples`` counts the background samples taken so far
    in the current block (it grows while the block runs; 0 with ``getrusage``): code that must be
    sure a peak was seen can hold it until the count has grown by two. A meter may be reused for
    another block, one at a time.

    Parameters
    ----------
    interval
        Seconds between memory samples.

    Examples
    --------
    >>> with ResourceMeter() as meter:
    ...     buffer = np.ones(1_000_000)
    >>> meter.seconds > 0
    True
    >>> meter.peak_rss_bytes >= meter.peak_rss_increase_bytes >= 0
    True
    """

    def __init__(self, interval: float = 0.005) -> None:
        if (
            isinstance(interval, bool)
            or not isinstance(interval, (int, float, np.integer, np.floating))
            or not math.isfinite(interval)
            or interval <= 0
        ):
            raise InvalidParameterError(
                f"interval must be a positive number of seconds, got {interval!r}"
            )
        self.interval = interval
        self.seconds: float = math.nan
        self.peak_rss_bytes: int = 0
        self.peak_rss_increase_bytes: int = 0
        self.memory_source: str = ""
        self.samples: int = 0
        self._start_time = 0.0
        self._start_rss = 0
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample_forever(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, _statm_rss_bytes())
            self.samples += 1

    def __enter__(self) -> ResourceMeter:
        self.seconds = math.nan
        self.peak_rss_bytes = self.peak_rss_increase_bytes = 0
        self.samples = 0
        try:
            self._start_rss = _statm_rss_bytes()
            self.memory_source = "statm"
        except (OSError, IndexError, ValueError):
            self._start_rss = _maxrss_bytes()
            self.memory_source = "getrusage"
        self._peak = self._start_rss
        if self.memory_source == "statm":
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._sample_forever, name="perennial-resource-meter", daemon=True
            )
            self._thread.start()
        self._start_time = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.seconds = time.perf_counter() - self._start_time
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._peak = max(self._peak, _statm_rss_bytes())
        else:
            self._peak = _maxrss_bytes()
        self.peak_rss_bytes = self._peak
        self.peak_rss_increase_bytes = self._peak - self._start_rss

    def __repr__(self) -> str:
        return f"ResourceMeter(interval={self.interval!r})"


def stored_bytes(*arrays: Any) -> int:
    """Bytes held by stored examples (replay buffers and the like).

    Each argument is a numpy array (``.nbytes``) or a torch tensor (``.nbytes``, or
    ``element_size() * nelement()``); torch is not imported. Counts the bytes of the elements,
    so a view counts as if it owned its data.

    Examples
    --------
    >>> stored_bytes(np.zeros((10, 4)), np.zeros(3, dtype=np.int8))  # 10·4·8 + 3·1
    323
    >>> stored_bytes()
    0
    """
    total = 0
    for position, array in enumerate(arrays):
        nbytes = getattr(array, "nbytes", None)
        if nbytes is None and callable(getattr(array, "element_size", None)):
            nbytes = array.element_size() * array.nelement()
        if isinstance(nbytes, bool) or not isinstance(nbytes, numbers.Integral):
            raise InputTypeError(
                f"stored_bytes takes numpy arrays or torch tensors; argument {position} is a "
                f"{type(array).__name__} (convert lists with numpy.asarray first)"
            )
        total += int(nbytes)
    return total
