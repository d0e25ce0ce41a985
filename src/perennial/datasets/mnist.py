"""Reader for IDX files and the MNIST family (MNIST, Fashion-MNIST, KMNIST) stored in them.

An IDX file is a big-endian header -- two zero bytes, a type code (``0x08`` for unsigned
bytes), the number of dimensions, then one uint32 per dimension -- followed by the raw values.
So an image file has magic ``0x00000803`` (2051) and a label file ``0x00000801`` (2049).
Files may be gzip-compressed; that is detected from their first bytes, not their name.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from perennial.datasets.base import Dataset, Split, data_root
from perennial.exceptions import DatasetError, DatasetNotFoundError

__all__ = ["MNIST_FILES", "load_mnist", "read_idx"]

#: The standard file names, keyed by (split, part).
MNIST_FILES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}

_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"
_IDX_FORMAT = "an IDX file (two zero bytes, type code 0x08 for unsigned bytes, a dimension count)"


def _read_bytes(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise DatasetNotFoundError(f"expected {what} at {path}, but there is no such file")
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DatasetNotFoundError(f"could not read {what} at {path}: {error}") from error
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise DatasetError(
            f"expected {what} at {path}; it starts like gzip but does not decompress: {error}"
        ) from error


def _read_idx(path: Path, ndim: int | None, what: str) -> NDArray[np.uint8]:
    data = _read_bytes(path, what)
    if len(data) < 4:
        raise DatasetError(
            f"expected {what} at {path}, got only {len(data)} bytes (shorter than the IDX header)"
        )
    (magic,) = struct.unpack(">I", data[:4])
    if ndim is not None and magic != (_UBYTE << 8) + ndim:
        raise DatasetError(
            f"expected {what} (magic {(_UBYTE << 8) + ndim}) at {path}, got magic {magic}"
        )
    zeros, type_code, n_dims = data[0:2], data[2], data[3]
    if zeros != b"\x00\x00":
        raise DatasetError(f"expected {what} at {path}, got magic {magic} (first bytes not zero)")
    if type_code != _UBYTE:
        raise DatasetError(
            f"expected {what} with unsigned-byte data (type code 0x08) at {path}, "
            f"got type code 0x{type_code:02X}"
        )
    if n_dims == 0:
        raise DatasetError(f"expected {what} with at least one dimension at {path}, got 0")
    header = 4 + 4 * n_dims
    if len(data) < header:
        raise DatasetError(
            f"expected {what} at {path}: the header announces {n_dims} dimensions "
            f"({header} header bytes) but the file holds only {len(data)} bytes"
        )
    dims = struct.unpack(f">{n_dims}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    payload = len(data) - header
    if payload != expected:
        shape = "x".join(str(d) for d in dims)
        problem = "truncated" if payload < expected else "has trailing bytes"
        raise DatasetError(
            f"expected {what} at {path} with {expected} data bytes for shape {shape}, "
            f"got {payload} ({problem})"
        )
    array = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)
    return array.copy()  # writable, and independent of the decompressed buffer


def read_idx(path: str | os.PathLike[str], *, ndim: int | None = None) -> NDArray[np.uint8]:
    """Read an unsigned-byte IDX file (plain or gzip) into an array of its declared shape.

    Parameters
    ----------
    path : str or path-like
        The IDX file.
    ndim : int, optional
        If given, the file must declare exactly this many dimensions (3 for MNIST images,
        1 for labels).

    Returns
    -------
    numpy.ndarray
        A writable uint8 array.

    Raises
    ------
    DatasetNotFoundError
        If the file does not exist.
    DatasetError
        If the magic number, type code or dimensions are wrong, or the data length does not
        match the declared shape (for example a truncated download).
    """
    what = _IDX_FORMAT if ndim is None else f"an IDX file with {ndim} dimension(s)"
    return _read_idx(Path(path), ndim, what)


def _find(directory: Path, name: str) -> Path:
    """The standard gzip name, or the same name without ``.gz`` if only that exists."""
    gz = directory / name
    plain = directory / name.removesuffix(".gz")
    if not gz.is_file() and plain.is_file():
        return plain
    return gz


def load_mnist(directory: str | os.PathLike[str] | None = None) -> Dataset:
    """Load an MNIST-format folder: the four standard IDX files, gzip or not.

    Parameters
    ----------
    directory : str or path-like, optional
        Folder holding ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
        ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz`` (or the same names
        without ``.gz``). Defaults to ``data_root() / "mnist-10k"``. Full MNIST, Fashion-MNIST
        and KMNIST use the same names.

    Returns
    -------
    Dataset
        Images as uint8 arrays of shape ``(n, H, W)`` (28x28 for MNIST), labels as int64;
        ``metadata["kind"] == "image"``.

    Raises
    ------
    DatasetNotFoundError
        If the folder or one of the four files is missing.
    DatasetError
        If a file is malformed, or images and labels disagree in number or image size.
    """
    folder = Path(directory) if directory is not None else data_root() / "mnist-10k"
    if not folder.is_dir():
        names = ", ".join(MNIST_FILES.values())
        raise DatasetNotFoundError(
            f"expected an MNIST-format folder at {folder} holding {names}, "
            "but there is no such folder"
        )
    splits: dict[str, Split] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for split in ("train", "test"):
        image_path = _find(folder, MNIST_FILES[split, "images"])
        label_path = _find(folder, MNIST_FILES[split, "labels"])
        images = _read_idx(image_path, 3, "an MNIST IDX image file")
        labels = _read_idx(label_path, 1, "an MNIST IDX label file")
        if len(images) != len(labels):
            raise DatasetError(
                f"expected as many labels as images: {image_path} holds {len(images)} images "
                f"but {label_path} holds {len(labels)} labels"
            )
        shapes[split] = images.shape[1:]
        splits[split] = Split(inputs=images, labels=labels.astype(np.int64))
    if shapes["train"] != shapes["test"]:
        raise DatasetError(
            f"expected train and test images of the same size in {folder}, "
            f"got {shapes['train']} and {shapes['test']}"
        )
    return Dataset(
        name="mnist",
        train=splits["train"],
        test=splits["test"],
        metadata={"kind": "image", "source": str(folder), "image_shape": shapes["train"]},
    )
