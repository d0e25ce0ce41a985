"""Readers for the CIFAR-10 and CIFAR-100 "python version" pickles.

Each batch is a pickled dict with bytes keys: ``b"data"`` is a uint8 array of shape
``(n, 3072)`` holding, per image, the 1024 red, then 1024 green, then 1024 blue values of a
32x32 image in row-major order. The loaders return images as ``(n, 32, 32, 3)`` (HWC).

Pickles can run arbitrary code when loaded, so these files go through an unpickler that only
admits what CIFAR batches contain: dicts, lists, bytes, numbers and numpy arrays.
"""

from __future__ import annotations

import importlib
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from perennial.datasets.base import Dataset, Split, data_root
from perennial.exceptions import DatasetError, DatasetNotFoundError, InvalidParameterError

__all__ = ["CIFAR100_LABEL_MODES", "load_cifar10", "load_cifar100"]

CIFAR100_LABEL_MODES = ("fine", "coarse")

_SIDE = 32
_PIXELS = _SIDE * _SIDE * 3


def _numpy_core(submodule: str) -> Any:
    """numpy's core submodule (``numpy._core`` since 2.0, ``numpy.core`` before)."""
    try:
        return importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:  # numpy < 2
        return importlib.import_module(f"numpy.core.{submodule}")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    multiarray = _numpy_core("multiarray")
    numeric = _numpy_core("numeric")
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): importlib.import_module("_codecs").encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[f"{core}.multiarray", "_reconstruct"] = multiarray._reconstruct
        allowed[f"{core}.multiarray", "scalar"] = multiarray.scalar
        if hasattr(numeric, "_frombuffer"):
            allowed[f"{core}.numeric", "_frombuffer"] = numeric._frombuffer
    return allowed


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global except the few numpy needs to rebuild arrays."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[module, name]
        except KeyError:
            raise DatasetError(
                f"refusing to load {module}.{name} from the pickle at {self._path}: a CIFAR "
                "python-version batch holds only dicts, lists, bytes, numbers and numpy arrays"
            ) from None


def _unpickle(path: Path, what: str) -> dict[Any, Any]:
    if not path.is_file():
        raise DatasetNotFoundError(f"expected {what} at {path}, but there is no such file")
    try:
        with path.open("rb") as handle:
            obj = _CifarUnpickler(handle, path).load()
    except DatasetError:
        raise
    except OSError as error:
        raise DatasetNotFoundError(f"could not read {what} at {path}: {error}") from error
    except Exception as error:  # pickle raises many types on garbage input
        raise DatasetError(
            f"expected {what} (a pickled dict) at {path}, but it does not unpickle: "
            f"{type(error).__name__}: {error}"
        ) from error
    if not isinstance(obj, dict):
        raise DatasetError(f"expected {what} (a pickled dict) at {path}, got {type(obj).__name__}")
    return obj


def _get(batch: dict[Any, Any], key: str, path: Path, what: str) -> Any:
    """``batch[b"key"]``, also accepting a str key (files re-saved from Python 3)."""
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    present = ", ".join(sorted(repr(k) for k in batch))
    raise DatasetError(
        f"expected {what} at {path} to have the key b{key!r}; its keys are {present}"
    )


def _names(batch: dict[Any, Any], key: str, path: Path, what: str) -> list[str]:
    raw = _get(batch, key, path, what)
    if not isinstance(raw, (list, tuple)) or not all(isinstance(n, (bytes, str)) for n in raw):
        raise DatasetError(f"expected {key} in {what} at {path} to be a list of names")
    try:
        return [n.decode("utf-8") if isinstance(n, bytes) else n for n in raw]
    except UnicodeDecodeError as error:
        raise DatasetError(f"expected UTF-8 {key} in {what} at {path}: {error}") from error


def _images(batch: dict[Any, Any], path: Path, what: str) -> NDArray[np.uint8]:
    raw = _get(batch, "data", path, what)
    try:
        data = np.asarray(raw)
    except (TypeError, ValueError) as error:
        raise DatasetError(
            f"expected b'data' in {what} at {path} to be an array: {error}"
        ) from error
    if data.ndim != 2 or data.shape[1] != _PIXELS:
        raise DatasetError(
            f"expected b'data' in {what} at {path} of shape (n, {_PIXELS}) "
            f"(32x32 RGB, channel-major rows), got shape {data.shape}"
        )
    if data.dtype != np.uint8:
        if data.dtype.kind not in "iu" or (data.size and (data.min() < 0 or data.max() > 255)):
            raise DatasetError(
                f"expected uint8 pixel values in b'data' of {what} at {path}, "
                f"got dtype {data.dtype}"
            )
        data = data.astype(np.uint8)
    images = data.reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images)


def _labels(
    batch: dict[Any, Any], key: str, n_images: int, n_classes: int, path: Path, what: str
) -> NDArray[np.int64]:
    raw = _get(batch, key, path, what)
    try:
        labels = np.asarray(raw)
    except (TypeError, ValueError) as error:
        raise DatasetError(f"expected integer b{key!r} in {what} at {path}: {error}") from error
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DatasetError(
            f"expected b{key!r} in {what} at {path} to be a list of integers, "
            f"got an array of dtype {labels.dtype} and shape {labels.shape}"
        )
    if len(labels) != n_images:
        raise DatasetError(
            f"expected one label per image in {what} at {path}: "
            f"{n_images} images but {len(labels)} entries in b{key!r}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise DatasetError(
            f"expected b{key!r} in {what} at {path} to lie in 0..{n_classes - 1} "
            f"({n_classes} label names), got values from {labels.min()} to {labels.max()}"
        )
    return labels.astype(np.int64)


def _read_batches(
    paths: list[Path], key: str, n_classes: int, what: str
) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    images: list[NDArray[np.uint8]] = []
    labels: list[NDArray[np.int64]] = []
    for path in paths:
        batch = _unpickle(path, what)
        batch_images = _images(batch, path, what)
        images.append(batch_images)
        labels.append(_labels(batch, key, len(batch_images), n_classes, path, what))
    return np.concatenate(images), np.concatenate(labels)


def _folder(directory: str | os.PathLike[str] | None, default: str, files: str) -> Path:
    folder = Path(directory) if directory is not None else data_root() / default
    if not folder.is_dir():
        raise DatasetNotFoundError(
            f"expected a CIFAR python-version folder at {folder} holding {files}, "
            "but there is no such folder"
        )
    return folder


def load_cifar10(directory: str | os.PathLike[str] | None = None) -> Dataset:
    """Load CIFAR-10 from the python-version pickles.

    Parameters
    ----------
    directory : str or path-like, optional
        The ``cifar-10-batches-py`` folder (``data_batch_1`` .. ``data_batch_5``,
        ``test_batch``, ``batches.meta``). Defaults to ``data_root() / "cifar-10-batches-py"``.

    Returns
    -------
    Dataset
        Images uint8 ``(n, 32, 32, 3)``, labels int64 in 0..9, ``metadata["label_names"]``.

    Raises
    ------
    DatasetNotFoundError
        If the folder or a batch file is missing.
    DatasetError
        If a file does not unpickle to the expected dict, or has missing keys or bad shapes.
    """
    folder = _folder(
        directory, "cifar-10-batches-py", "data_batch_1..data_batch_5, test_batch, batches.meta"
    )
    meta_what = "a CIFAR-10 batches.meta pickle"
    meta_path = folder / "batches.meta"
    label_names = _names(_unpickle(meta_path, meta_what), "label_names", meta_path, meta_what)
    what = "a CIFAR-10 batch pickle"
    train_paths = [folder / f"data_batch_{i}" for i in range(1, 6)]
    train_x, train_y = _read_batches(train_paths, "labels", len(label_names), what)
    test_x, test_y = _read_batches([folder / "test_batch"], "labels", len(label_names), what)
    return Dataset(
        name="cifar10",
        train=Split(inputs=train_x, labels=train_y),
        test=Split(inputs=test_x, labels=test_y),
        metadata={"kind": "image", "label_names": label_names, "source": str(folder)},
    )


def load_cifar100(
    directory: str | os.PathLike[str] | None = None, label_mode: str = "fine"
) -> Dataset:
    """Load CIFAR-100 from the python-version pickles.

    Parameters
    ----------
    directory : str or path-like, optional
        The ``cifar-100-python`` folder (``train``, ``test``, ``meta``). Defaults to
        ``data_root() / "cifar-100-python"``.
    label_mode : {"fine", "coarse"}
        The 100 fine classes or the 20 coarse superclasses.

    Returns
    -------
    Dataset
        Images uint8 ``(n, 32, 32, 3)``, labels int64, ``metadata["label_names"]`` for the
        chosen mode and ``metadata["label_mode"]``.

    Raises
    ------
    InvalidParameterError
        If ``label_mode`` is not ``"fine"`` or ``"coarse"``.
    DatasetNotFoundError
        If the folder or a file is missing.
    DatasetError
        If a file does not unpickle to the expected dict, or has missing keys or bad shapes.
    """
    if label_mode not in CIFAR100_LABEL_MODES:
        raise InvalidParameterError(f"expected label_mode 'fine' or 'coarse', got {label_mode!r}")
    folder = _folder(directory, "cifar-100-python", "train, test, meta")
    meta_what = "a CIFAR-100 meta pickle"
    meta_path = folder / "meta"
    meta = _unpickle(meta_path, meta_what)
    label_names = _names(meta, f"{label_mode}_label_names", meta_path, meta_what)
    key = f"{label_mode}_labels"
    what = "a CIFAR-100 pickle"
    train_x, train_y = _read_batches([folder / "train"], key, len(label_names), what)
    test_x, test_y = _read_batches([folder / "test"], key, len(label_names), what)
    return Dataset(
        name="cifar100",
        train=Split(inputs=train_x, labels=train_y),
        test=Split(inputs=test_x, labels=test_y),
        metadata={
            "kind": "image",
            "label_names": label_names,
            "label_mode": label_mode,
            "source": str(folder),
        },
    )
