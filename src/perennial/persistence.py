"""Saving learned statistics: safetensors arrays plus JSON metadata, written atomically.

A saved model is a directory holding ``meta.json`` and one ``state-<digest>.safetensors`` file.
``meta.json`` names the arrays file, its SHA-256 and every array's dtype and shape. A save writes
the new arrays file under a new name and syncs it and its directory entry to disk, then atomically
replaces ``meta.json`` (a synced temporary file renamed, then the directory synced); so at every
instant ``meta.json`` names a complete arrays file, and a crash mid-save leaves the previous
model readable.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from perennial.exceptions import (
    CorruptedModelError,
    FormatVersionError,
    ModelMismatchError,
    PersistenceError,
)

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "read_model_files", "write_model_files"]

FORMAT_NAME = "perennial-model"
#: The newest format version this perennial writes and reads. Version 2 is written only for
#: what a reader of version 1 would misread (a model with a pretrained classifier, whose classes
#: it would not know); everything else is still written as version 1, which every release reads.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
META_FILE = "meta.json"


def _write_durably(directory: Path, name: str, data: bytes) -> None:
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, directory / name)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a synced temporary file and a rename."""
    _write_durably(path.parent if str(path.parent) else Path("."), path.name, data)
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` durable (a no-op where it cannot be done)."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_model_files(
    path: str | Path,
    payload: dict[str, Any],
    arrays: dict[str, np.ndarray],
    *,
    format_version: int = 1,
) -> Path:
    """Write ``arrays`` and the JSON-able ``payload`` to the directory ``path``, atomically.

    ``format_version``: the oldest version that reads ``payload`` right (see
    :data:`FORMAT_VERSION`).
    """
    from safetensors.numpy import save as save_arrays

    if format_version not in READABLE_VERSIONS:
        raise ValueError(f"format_version must be one of {READABLE_VERSIONS}, got {format_version}")

    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise PersistenceError(
            f"cannot save a model to {directory}: it is a file, expected a directory"
        )
    directory.mkdir(parents=True, exist_ok=True)
    contiguous = {name: np.ascontiguousarray(array) for name, array in arrays.items()}
    data = save_arrays(contiguous) if contiguous else b""
    digest = hashlib.sha256(data).hexdigest()
    arrays_file = f"state-{digest[:20]}.safetensors"
    _write_durably(directory, arrays_file, data)
    fsync_directory(directory)  # the arrays file's name is on disk before meta.json names it
    meta = {
        "format": FORMAT_NAME,
        "format_version": format_version,
        "arrays_file": arrays_file,
        "arrays_sha256": digest,
        "arrays": {
            name: {"dtype": array.dtype.str, "shape": list(array.shape)}
            for name, array in contiguous.items()
        },
        "payload": payload,
    }
    _write_durably(directory, META_FILE, json.dumps(meta, indent=1, sort_keys=True).encode())
    fsync_directory(directory)
    for stale in directory.glob("state-*.safetensors"):
        if stale.name != arrays_file:
            stale.unlink(missing_ok=True)
    return directory


def read_model_files(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and verify what :func:`write_model_files` wrote: (payload, arrays)."""
    from safetensors.numpy import load as load_arrays

    directory = Path(path)
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise PersistenceError(
            f"no saved model at {directory}: expected a directory with {META_FILE}"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptedModelError(f"{meta_path} is not readable JSON: {error}") from error
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CorruptedModelError(
            f"{meta_path} is not a perennial model file (no format {FORMAT_NAME!r})"
        )
    version = meta.get("format_version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise FormatVersionError(
            f"{meta_path} has format version {version!r}; this perennial reads versions "
            f"{' and '.join(map(str, READABLE_VERSIONS))}"
        )
    try:
        arrays_path = directory / str(meta["arrays_file"])
        expected_digest = str(meta["arrays_sha256"])
        declared = dict(meta["arrays"])
        payload = dict(meta["payload"])
    except (KeyError, TypeError, ValueError) as error:
        raise CorruptedModelError(f"{meta_path} lacks a required field: {error}") from error
    try:
        data = arrays_path.read_bytes()
    except OSError as error:
        raise CorruptedModelError(f"cannot read the arrays file {arrays_path}: {error}") from error
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected_digest:
        raise CorruptedModelError(
            f"{arrays_path} is damaged: its SHA-256 is {digest[:16]}..., meta.json expects "
            f"{expected_digest[:16]}..."
        )
    try:
        arrays = dict(load_arrays(data)) if data else {}
    except Exception as error:
        raise CorruptedModelError(
            f"{arrays_path} is not a readable safetensors file: {error}"
        ) from error
    if set(arrays) != set(declared):
        raise ModelMismatchError(
            f"{arrays_path} holds arrays {sorted(arrays)}, meta.json declares {sorted(declared)}"
        )
    for name, spec in declared.items():
        array = arrays[name]
        if array.dtype.str != spec.get("dtype") or list(array.shape) != list(spec.get("shape", [])):
            raise ModelMismatchError(
                f"array {name!r} in {arrays_path} is {array.dtype.str}{list(array.shape)}, "
                f"meta.json declares {spec.get('dtype')}{spec.get('shape')}"
            )
    return payload, arrays
