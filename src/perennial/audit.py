"""Checks that a model keeps no raw inputs, in memory or in its saved files."""

from __future__ import annotations

import gc
import tempfile
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["raw_bytes_in_files", "raw_bytes_in_memory", "raw_bytes_stored"]

# Frozen third-party encoder internals (weights, vocabularies) are not searched: they were fixed
# before any data arrived and are large.
_SKIPPED_MODULES = (
    "torch",
    "transformers",
    "tokenizers",
    "sentence_transformers",
    "huggingface_hub",
)
# Shorter byte strings occur by chance inside megabytes of float statistics.
MIN_SEARCHED_BYTES = 8


def _text_needles(inputs: Iterable[Any], allowed: set[str]) -> set[bytes]:
    needles = set()
    for item in inputs:
        if isinstance(item, str) and item not in allowed:
            data = item.encode("utf-8")
            if len(data) >= MIN_SEARCHED_BYTES:
                needles.add(data)
    return needles


def raw_bytes_in_files(
    directory: str | Path, inputs: Iterable[Any], allowed: Iterable[str] = ()
) -> int:
    """Bytes of ``inputs`` (texts, or arrays as raw bytes) found inside the files under ``directory``.

    Strings in ``allowed`` (for example the class labels, which a model must store) are not
    searched, nor are inputs shorter than :data:`MIN_SEARCHED_BYTES` bytes.
    """
    items = list(inputs)
    needles = _text_needles(items, set(allowed))
    needles |= {
        np.ascontiguousarray(item).tobytes()
        for item in items
        if isinstance(item, np.ndarray) and item.nbytes >= MIN_SEARCHED_BYTES
    }
    found = 0
    for path in Path(directory).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += sum(len(needle) * data.count(needle) for needle in needles)
    return found


class _RowIndex:
    """Rows of input arrays (one example each), to find copies of them inside other arrays."""

    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.rows: dict[int, list[np.ndarray]] = {}
        for array in arrays:
            flat = array.reshape(len(array), -1) if array.ndim >= 2 else array.reshape(1, -1)
            self.rows.setdefault(flat.shape[1], []).append(flat)

    def bytes_found_in(self, candidate: np.ndarray) -> int:
        if candidate.size == 0 or not np.issubdtype(candidate.dtype, np.number):
            return 0
        found = 0
        for width, groups in self.rows.items():
            if candidate.shape[-1] != width and candidate.size % width:
                continue
            stored = {row.tobytes() for row in np.ascontiguousarray(candidate).reshape(-1, width)}
            for flat in groups:
                cast = np.ascontiguousarray(flat.astype(candidate.dtype, copy=False))
                found += sum(
                    original.nbytes
                    for original, row in zip(flat, cast, strict=True)
                    if row.tobytes() in stored
                )
        return found


def _filled(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - probing an empty closure cell raises
    except ValueError:
        return False
    return True


def raw_bytes_in_memory(root: Any, inputs: Iterable[Any], allowed: Iterable[str] = ()) -> int:
    """Bytes of ``inputs`` reachable from ``root``: equal strings, or arrays sharing their memory."""
    items = list(inputs)
    allowed_set = set(allowed)
    texts = {item for item in items if isinstance(item, str) and item not in allowed_set}
    arrays = [item for item in items if isinstance(item, np.ndarray)]
    rows = _RowIndex(arrays)
    seen: set[int] = set()
    stack = [root]
    found = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, str):
            if obj in texts:
                found += len(obj.encode("utf-8"))
            continue
        if isinstance(obj, np.ndarray) and obj.dtype != object:
            shared = sum(item.nbytes for item in arrays if np.shares_memory(obj, item))
            found += shared or rows.bytes_found_in(obj)
            continue
        module = getattr(type(obj), "__module__", "")
        if not isinstance(module, str) or module.startswith(_SKIPPED_MODULES):
            continue
        if isinstance(obj, (type, types.ModuleType, types.CodeType, types.BuiltinFunctionType)):
            continue  # program, not data: classes, modules and code reach the whole interpreter
        if isinstance(obj, types.FunctionType):
            # A function holds data only through its closure and defaults, not its globals.
            stack.extend(cell.cell_contents for cell in obj.__closure__ or () if _filled(cell))
            stack.extend(obj.__defaults__ or ())
            stack.extend((obj.__kwdefaults__ or {}).values())
            continue
        stack.extend(gc.get_referents(obj))
    return found


def raw_bytes_stored(
    model: Any, inputs: Iterable[Any], file_sample: int = 256, seed: int = 0
) -> int:
    """Raw input bytes a model holds in memory or writes when saved (0 for perennial models).

    Memory is searched for every input. The saved files are searched for a random sample of
    ``file_sample`` inputs (each search scans the whole file), which finds any leak of more than a
    few percent of the inputs with near certainty.
    """
    items = list(inputs)
    labels = [str(label) for label in getattr(model, "classes_", [])]
    in_memory = raw_bytes_in_memory(model, items, labels)
    if len(items) > file_sample:
        picked = np.random.default_rng(seed).choice(len(items), size=file_sample, replace=False)
        items = [items[i] for i in sorted(picked)]
    with tempfile.TemporaryDirectory() as directory:
        model.save(Path(directory) / "model")
        on_disk = raw_bytes_in_files(directory, items, labels)
    return in_memory + on_disk
