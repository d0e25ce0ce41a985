"""Containers for labelled data, where to find it on disk, and a seeded stratified split.

A :class:`Dataset` is a plain bundle of in-memory splits: texts as lists of python strings,
images as uint8 arrays, labels as 1-D arrays (python ``str`` objects or int64). Nothing here
knows about encoders or heads.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from perennial.exceptions import DatasetNotFoundError, InvalidParameterError

__all__ = [
    "DATA_ENV_VAR",
    "Dataset",
    "Split",
    "check_seed",
    "check_test_fraction",
    "data_root",
    "stratified_split",
]

#: Environment variable that, when set, names the folder holding the data sets.
DATA_ENV_VAR = "PERENNIAL_DATA"

IndexArray = NDArray[np.int64]


def _as_label_array(labels: Any) -> NDArray[Any]:
    """Return labels as a 1-D array: int64 for integers, object (python ``str``) for text."""
    if isinstance(labels, np.ndarray):
        array = labels
    else:
        items = list(labels)
        n_str = sum(isinstance(item, str) for item in items)
        if n_str and n_str != len(items):
            raise InvalidParameterError(
                "expected labels that are all str or all integers, got a mix of both"
            )
        if n_str:
            array = np.empty(len(items), dtype=object)
            array[:] = items
        else:
            array = np.asarray(items)
            if array.size == 0:
                array = array.astype(np.int64)
    if array.ndim != 1:
        raise InvalidParameterError(
            f"expected 1-D labels (one per example), got an array of shape {array.shape}"
        )
    if array.dtype.kind in "iu" or array.dtype == np.bool_:
        if array.dtype.kind == "u" and array.size and array.max() > np.iinfo(np.int64).max:
            raise InvalidParameterError("integer labels must fit in int64")
        return array.astype(np.int64, copy=False)
    if array.dtype.kind in "US":
        decoded = [str(item) if array.dtype.kind == "U" else bytes(item).decode() for item in array]
        out = np.empty(len(decoded), dtype=object)
        out[:] = decoded
        return out
    if array.dtype == object:
        return array
    raise InvalidParameterError(
        f"expected str or integer labels, got an array of dtype {array.dtype}"
    )


@dataclass(frozen=True, eq=False)
class Split:
    """One labelled split: ``inputs[i]`` has label ``labels[i]``.

    Parameters
    ----------
    inputs : list of str or numpy.ndarray
        Texts as a list of python strings, or images as a uint8 array of shape ``(n, H, W)``
        or ``(n, H, W, 3)``.
    labels : numpy.ndarray
        One label per input. Strings are stored as an object array of python ``str``,
        integers as int64.

    Notes
    -----
    Equality is identity (``eq=False``): element-wise comparison of arrays has no single truth
    value, so comparing two splits field by field would raise.
    """

    inputs: list[str] | NDArray[np.uint8]
    labels: NDArray[Any]

    def __post_init__(self) -> None:
        inputs = self.inputs
        if isinstance(inputs, tuple):
            inputs = list(inputs)
        if not isinstance(inputs, (list, np.ndarray)):
            raise InvalidParameterError(
                "expected Split inputs as a list of str or a numpy array, "
                f"got {type(inputs).__name__}"
            )
        labels = _as_label_array(self.labels)
        if len(inputs) != len(labels):
            raise InvalidParameterError(
                f"expected one label per input, got {len(inputs)} inputs and {len(labels)} labels"
            )
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int] | NDArray[Any]) -> Split:
        """Return a new split holding the examples at ``indices`` (integers or a boolean mask)."""
        index = np.asarray(indices)
        n = len(self)
        if index.dtype == np.bool_:
            if index.shape != (n,):
                raise InvalidParameterError(
                    f"expected a boolean mask of shape ({n},), got shape {index.shape}"
                )
            index = np.flatnonzero(index)
        elif index.size == 0:
            index = np.zeros(0, dtype=np.int64)
        elif index.dtype.kind not in "iu":
            raise InvalidParameterError(
                f"expected integer indices or a boolean mask, got an array of dtype {index.dtype}"
            )
        if index.ndim != 1:
            raise InvalidParameterError(f"expected 1-D indices, got shape {index.shape}")
        if index.size and (index.min() < 0 or index.max() >= n):
            bad = index[(index < 0) | (index >= n)][0]
            raise InvalidParameterError(f"index {bad} is out of range for a split of {n} examples")
        if isinstance(self.inputs, np.ndarray):
            inputs: list[str] | NDArray[np.uint8] = self.inputs[index]
        else:
            inputs = [self.inputs[i] for i in index.tolist()]
        return Split(inputs=inputs, labels=self.labels[index])


@dataclass(frozen=True, eq=False)
class Dataset:
    """A named data set: a train split, a test split and optional extra splits.

    Parameters
    ----------
    name : str
        Short name, for example ``"clinc150"``.
    train, test : Split
        The training and evaluation splits.
    extra : dict of str to Split
        Further splits, for example ``"val"`` or ``"oos_test"``.
    metadata : dict
        Free-form facts about the data, for example ``"kind"`` (``"text"`` or ``"image"``),
        ``"label_names"`` or ``"domains"``.
    """

    name: str
    train: Split
    test: Split
    extra: dict[str, Split] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> list[Any]:
        """Sorted distinct labels of the training split (python ``str`` or ``int``)."""
        return sorted(set(self.train.labels.tolist()))


def data_root() -> Path:
    """Return the folder that holds the data sets.

    ``$PERENNIAL_DATA`` wins when set (and must name an existing folder). Otherwise the first
    existing folder among ``../shared/data`` relative to the current directory and
    ``<repo root>/../shared/data`` relative to this source file.

    Raises
    ------
    DatasetNotFoundError
        If the chosen folder (or every candidate) does not exist.
    """
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        root = Path(env).expanduser()
        if not root.is_dir():
            raise DatasetNotFoundError(
                f"${DATA_ENV_VAR} is set to {env!r}, but {root.resolve()} is not an existing "
                "folder; "
                "expected a folder holding data sets such as mnist-10k/, banking77/, clinc150/"
            )
        return root.resolve()
    candidates = [
        Path.cwd().parent / "shared" / "data",
        Path(__file__).resolve().parents[3].parent / "shared" / "data",
    ]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    tried = " and ".join(str(c) for c in candidates)
    raise DatasetNotFoundError(
        f"no data folder found: looked in {tried}; set ${DATA_ENV_VAR} to a folder holding "
        "data sets such as mnist-10k/, banking77/, clinc150/"
    )


def check_test_fraction(test_fraction: Any) -> float:
    """Return ``test_fraction`` as a float, or raise unless it is a real number in (0, 1)."""
    if (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, numbers.Real)
        or not math.isfinite(float(test_fraction))
        or not 0.0 < float(test_fraction) < 1.0
    ):
        raise InvalidParameterError(
            f"expected test_fraction strictly between 0 and 1, got {test_fraction!r}"
        )
    return float(test_fraction)


def check_seed(seed: Any) -> int:
    """Return ``seed`` as an int, or raise unless it is a non-negative integer."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or int(seed) < 0:
        raise InvalidParameterError(f"expected seed to be a non-negative integer, got {seed!r}")
    return int(seed)


def stratified_split(
    labels: Sequence[Any] | NDArray[Any], test_fraction: float, seed: int
) -> tuple[IndexArray, IndexArray]:
    """Split example indices into train and test, class by class.

    A class with ``n`` examples sends ``round(test_fraction * n)`` of them (Python rounding,
    halves to even) to test, clipped so that at least one stays in train and, when ``n >= 2``,
    at least one goes to test. The choice is random but fixed by ``seed``.

    Parameters
    ----------
    labels : sequence
        One hashable, sortable label per example.
    test_fraction : float
        Share of each class sent to test, strictly between 0 and 1.
    seed : int
        Non-negative seed; the same seed always gives the same split.

    Returns
    -------
    train_idx, test_idx : numpy.ndarray
        Sorted int64 indices; disjoint, and together they cover every example.

    Examples
    --------
    >>> train, test = stratified_split(["a", "a", "b", "b", "b"], 0.4, seed=0)
    >>> len(train), len(test)
    (3, 2)
    """
    fraction = check_test_fraction(test_fraction)
    rng = np.random.default_rng(check_seed(seed))
    array = _as_label_array(labels)
    if len(array) == 0:
        raise InvalidParameterError("expected at least one label to split, got none")
    try:
        _, codes = np.unique(array, return_inverse=True)
    except TypeError as error:
        raise InvalidParameterError(
            f"labels must be mutually comparable (all str or all int): {error}"
        ) from error
    codes = codes.reshape(-1)
    test_parts: list[IndexArray] = []
    for code in range(int(codes.max()) + 1):
        members = np.flatnonzero(codes == code)
        n = len(members)
        n_test = round(fraction * n)
        n_test = min(max(n_test, 1), n - 1) if n >= 2 else 0
        chosen = rng.permutation(members)[:n_test]
        test_parts.append(chosen.astype(np.int64))
    test_idx = np.sort(np.concatenate(test_parts)).astype(np.int64)
    mask = np.ones(len(array), dtype=bool)
    mask[test_idx] = False
    train_idx = np.flatnonzero(mask).astype(np.int64)
    return train_idx, test_idx
