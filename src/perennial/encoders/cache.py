"""A disk cache of encoded features, keyed by encoder name and a hash of the inputs.

Only features are written, never the inputs themselves: the key is a SHA-256 digest.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from perennial.encoders.base import Encoder, Float32Array
from perennial.encoders.image_loading import is_pil_image

__all__ = ["FeatureCache", "default_cache_dir", "file_sha256", "inputs_digest"]


def default_cache_dir() -> Path:
    """``$PERENNIAL_CACHE`` if set, else ``~/.cache/perennial/features``."""
    env = os.environ.get("PERENNIAL_CACHE")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "perennial" / "features"


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def inputs_digest(inputs: Any, *, files: bool = False) -> str:
    """SHA-256 of a batch of inputs, independent of Python's hash seed.

    Texts and arrays are hashed as they are, encoded images (bytes) by their bytes, PIL images
    by their pixels and EXIF orientation. With ``files`` (an image encoder's batch), a path
    (``str`` or ``os.PathLike``) is hashed by the contents of its file, so a file rewritten
    under the same name is encoded again; otherwise a string is a text.
    """
    digest = hashlib.sha256()
    if isinstance(inputs, np.ndarray):
        array = np.ascontiguousarray(inputs)
        digest.update(f"array:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
        return digest.hexdigest()
    items = list(inputs)
    digest.update(f"list:{len(items)}".encode())
    for item in items:
        if files and isinstance(item, str | os.PathLike):
            try:
                content = file_sha256(os.fsdecode(item))
            except OSError:
                content = "unreadable"  # the encoder will say why; nothing is cached
            digest.update(f"f{content}:".encode())
        elif isinstance(item, str | os.PathLike):
            data = item.encode("utf-8") if isinstance(item, str) else os.fsencode(item)
            digest.update(b"s%d:" % len(data))
            digest.update(data)
        elif isinstance(item, bytes | bytearray | memoryview):
            data = bytes(item)
            digest.update(b"b%d:" % len(data))
            digest.update(data)
        elif is_pil_image(item):
            orientation = item.getexif().get(0x0112, 1)
            digest.update(f"p:{item.mode}:{item.size}:{orientation}:".encode())
            digest.update(item.tobytes())
        else:
            array = np.ascontiguousarray(np.asarray(item))
            digest.update(f"a:{array.dtype.str}:{array.shape}:".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


class FeatureCache:
    """Encode through a cache folder: a batch seen before is read back instead of re-encoded.

    Parameters
    ----------
    directory
        Where the ``.npy`` files live; created on first write.
    per_layer
        For an encoder that computes several poolings from one pass (a
        :class:`~perennial.encoders.TextEncoder`: ``encode_per_layer`` and ``pool``), keep the
        token means of every layer instead of the pooled features, so that every pooling and
        layer choice of the same model reads them back (what a selection over poolings wants;
        ``layers`` times the space). Off by default. Whichever is on, a batch cached either way
        is read back: its pooled features first, else its per-layer means, pooled.

    Examples
    --------
    >>> import tempfile
    >>> from perennial.encoders.base import IdentityEncoder
    >>> cache = FeatureCache(tempfile.mkdtemp())
    >>> cache.encode(IdentityEncoder(), np.eye(2)).shape
    (2, 2)
    """

    def __init__(self, directory: str | Path | None = None, *, per_layer: bool = False) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.per_layer = bool(per_layer)

    def path_for(self, encoder: Encoder, inputs: Any, *, name: str | None = None) -> Path:
        """The file of ``inputs`` encoded by ``encoder`` (or under another encoder ``name``)."""
        files = getattr(encoder, "kind", None) == "image"
        digest = inputs_digest(inputs, files=files)
        if name is None:
            # An encoder may name its features more finely than by its name (a TextEncoder's
            # ONNX backends add their export-format version).
            name = getattr(encoder, "cache_name", None)
            name = name if isinstance(name, str) else encoder.name
        key = hashlib.sha256(f"{name}\0{digest}".encode()).hexdigest()
        return self.directory / f"{key}.npy"

    def encode(self, encoder: Encoder, inputs: Any) -> Float32Array:
        """The features of ``inputs``: read back if this batch was seen, else encoded and saved."""
        return self.read_or_encode(encoder, inputs)[0]

    def read_or_encode(self, encoder: Encoder, inputs: Any) -> tuple[Float32Array, bool]:
        """Like :meth:`encode`, and whether the features were read from the cache."""
        path = self.path_for(encoder, inputs)
        cached = self._read(path, len(inputs), ndim=2)
        if cached is not None:
            return cached, True
        name = getattr(encoder, "per_layer_name", None)
        if not isinstance(name, str):
            features = encoder.encode(inputs)
            self._write(path, features)
            return features, False
        pool = encoder.pool  # type: ignore[attr-defined]
        layered = self.path_for(encoder, inputs, name=name)
        per_layer = self._read(layered, len(inputs), ndim=3)
        if per_layer is not None:
            return pool(per_layer), True
        if not self.per_layer:
            features = encoder.encode(inputs)
            self._write(path, features)
            return features, False
        per_layer = encoder.encode_per_layer(inputs)  # type: ignore[attr-defined]
        self._write(layered, per_layer)
        return pool(per_layer), False

    @staticmethod
    def _read(path: Path, rows: int, *, ndim: int) -> Float32Array | None:
        if not path.exists():
            return None
        try:
            cached = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None  # an unreadable entry is recomputed and overwritten
        if cached.ndim != ndim or cached.shape[0] != rows:
            return None
        return np.asarray(cached, dtype=np.float32)

    def _write(self, path: Path, features: np.ndarray) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as stream:
                np.save(stream, features, allow_pickle=False)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
