"""Load a data set by name, or any ``text,category`` CSV file by path."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from perennial.datasets.base import Dataset, data_root
from perennial.datasets.cifar import load_cifar10, load_cifar100
from perennial.datasets.intents import load_banking77, load_clinc150, load_intent_csv
from perennial.datasets.mnist import load_mnist
from perennial.exceptions import DatasetNotFoundError, InvalidParameterError

__all__ = ["DATASET_NAMES", "load_dataset"]

_LOADERS: dict[str, Callable[[], Dataset]] = {
    "banking77": load_banking77,
    "cifar10": lambda: load_cifar10(data_root() / "cifar-10-batches-py"),
    "cifar100": lambda: load_cifar100(data_root() / "cifar-100-python"),
    "clinc150": load_clinc150,
    "mnist": load_mnist,
}

#: The names :func:`load_dataset` knows, besides CSV paths.
DATASET_NAMES: tuple[str, ...] = tuple(sorted(_LOADERS))


def load_dataset(
    name_or_path: str | os.PathLike[str],
    *,
    test: str | os.PathLike[str] | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Load a known data set by name, or a ``text,category`` CSV file by path.

    Parameters
    ----------
    name_or_path : str or path-like
        One of :data:`DATASET_NAMES` (case-insensitive, looked up under :func:`data_root`), or
        the path of an existing ``.csv`` file read with :func:`load_intent_csv`.
    test : str or path-like, optional
        For a CSV file only: a separate test CSV file.
    test_fraction, seed : float, int
        For a CSV file without ``test``: the stratified hold-out split.

    Returns
    -------
    Dataset

    Raises
    ------
    InvalidParameterError
        If the name is unknown and not an existing CSV file, or ``test`` is given with a
        named data set.
    DatasetNotFoundError
        If the data set's files are missing, or a ``.csv`` path does not exist.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise InvalidParameterError(
            f"expected a data set name or a CSV path, got {type(name_or_path).__name__}"
        )
    key = os.fspath(name_or_path).strip().lower() if isinstance(name_or_path, str) else None
    if key in _LOADERS:
        if test is not None:
            raise InvalidParameterError(
                f"test= applies only to CSV files, not to the named data set {key!r} "
                "(it has its own test split)"
            )
        return _LOADERS[key]()
    path = Path(name_or_path)
    if path.suffix.lower() == ".csv":
        if not path.is_file():
            raise DatasetNotFoundError(
                f"expected a CSV file with 'text' and 'category' columns at {path}, "
                "but there is no such file"
            )
        return load_intent_csv(path, test, test_fraction=test_fraction, seed=seed)
    raise InvalidParameterError(
        f"unknown data set {os.fspath(name_or_path)!r}: expected one of "
        f"{', '.join(DATASET_NAMES)}, or the path of an existing .csv file "
        "with 'text' and 'category' columns"
    )
