"""Checks that a model keeps no raw inputs, in memory or in its saved files."""

from __future__ import annotations

import gc
import tempfile
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


def raw_bytes_in_memory(root: Any, inputs: Iterable[Any], allowed: Iterable[str] = ()) -> int:
    """Bytes of ``inputs`` reachable from ``root``: equal strings, or arrays sharing their memory."""
    items = list(inputs)
    allowed_set = set(allowed)
    texts = {item for item in items if isinstance(item, str) and item not in allowed_set}
    arrays = [item for item in items if isinstance(item, np.ndarray)]
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
        if isinstance(obj, np.ndarray):
            found += sum(item.nbytes for item in arrays if np.shares_memory(obj, item))
            if obj.dtype != object:
                continue
        module = type(obj).__module__ or ""
        if module.startswith(_SKIPPED_MODULES) or isinstance(obj, type):
            continue
        stack.extend(gc.get_referents(obj))
    return found


def raw_bytes_stored(model: Any, inputs: Iterable[Any]) -> int:
    """Raw input bytes a model holds in memory or writes when saved (0 for perennial models)."""
    items = list(inputs)
    labels = [str(label) for label in getattr(model, "classes_", [])]
    in_memory = raw_bytes_in_memory(model, items, labels)
    with tempfile.TemporaryDirectory() as directory:
        model.save(Path(directory) / "model")
        on_disk = raw_bytes_in_files(directory, items, labels)
    return in_memory + on_disk
