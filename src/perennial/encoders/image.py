"""Image encoder: frozen ImageNet EfficientNet-Lite0 features for numpy images.

Two runtimes compute the network. ``torch`` runs :mod:`perennial.encoders.efficientnet_lite`; it
is the reference. ``onnx`` and ``onnx-fp32`` run an ONNX export of the same weights with ONNX
Runtime (int8 or float32), built once per input size and cached on disk
(:mod:`perennial.encoders.image_onnx`). The backend only changes what maps the network's input
tensor to features and logits: the images are read, resized and scaled the same way.

torch is imported only when images are encoded, so importing this module stays cheap.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from perennial.encoders.cache import file_sha256
from perennial.exceptions import (
    EmptyInputError,
    InputTypeError,
    InvalidInputError,
    InvalidParameterError,
    NonFiniteInputError,
)

if TYPE_CHECKING:
    import torch

    from perennial.encoders.efficientnet_lite import EfficientNetLite0
    from perennial.encoders.image_onnx import ImageOnnxRuntime

__all__ = ["BACKENDS", "ImageBatch", "ImageEncoder"]

#: ``torch``: the reference. ``onnx``: ONNX Runtime with int8 weights and activations (features
#: within about 0.99 cosine of torch's, so under another encoder name). ``onnx-fp32``: ONNX
#: Runtime in float32, torch's numbers to about 1e-5.
BACKENDS = ("torch", "onnx", "onnx-fp32")
_NAME_SUFFIX = {"torch": "", "onnx": "+onnx-int8", "onnx-fp32": "+onnx-fp32"}
_ONNX_VARIANT = {"onnx": "int8", "onnx-fp32": "fp32"}
# efficientnet_lite.NUM_CLASSES, which cannot be imported here without torch.
_NUM_CLASSES = 1000

ImageBatch = NDArray[Any] | Sequence[NDArray[Any]]
"""An ``(n, H, W)`` / ``(n, H, W, 1)`` / ``(n, H, W, 3)`` array, or a sequence of single images."""

# Float images must lie in [0, 1]; this slack tolerates rounding from earlier processing while
# still catching images on the 0..255 scale stored as floats.
_FLOAT_SLACK = 0.01


@lru_cache(maxsize=8)
def _sha256_hex(path: str) -> str:
    return file_sha256(path)


def _check_int(value: object, name: str, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        expected = "a positive integer or None" if allow_none else "a positive integer"
        raise InvalidParameterError(f"{name} must be {expected}, got {value!r}")


def _available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def _where(index: int | None) -> str:
    return "" if index is None else f" at index {index}"


def _check_values(array: NDArray[Any], index: int | None) -> None:
    """Check dtype, finiteness and value range of one image or of a whole batch."""
    dtype = array.dtype
    if np.issubdtype(dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise InvalidInputError(
                f"integer images must hold values in 0..255, got values in [{low}, {high}] "
                f"(dtype {dtype}){_where(index)}"
            )
        return
    if not np.issubdtype(dtype, np.floating):
        raise InputTypeError(
            f"expected images of a real numeric dtype (uint8 in 0..255 or float in [0, 1]), "
            f"got dtype {dtype}{_where(index)}"
        )
    finite = np.isfinite(array)
    if not finite.all():
        if index is None:
            bad = int(np.flatnonzero(~finite.reshape(len(array), -1).all(axis=1))[0])
        else:
            bad = index
        raise NonFiniteInputError(f"images contain NaN or infinity (first at index {bad})")
    fmin, fmax = float(array.min()), float(array.max())
    if fmin < -_FLOAT_SLACK or fmax > 1.0 + _FLOAT_SLACK:
        raise InvalidInputError(
            f"float images must hold values in [0, 1], got values in [{fmin:g}, {fmax:g}]"
            f"{_where(index)}; divide 0..255 data by 255 or pass it as uint8"
        )


def _check_channels(shape: tuple[int, ...], what: str, index: int | None) -> None:
    if shape[-1] not in (1, 3):
        raise InvalidInputError(
            f"expected 1 (grayscale) or 3 (RGB) channels in the last axis, got {shape[-1]} in "
            f"{what} of shape {shape}{_where(index)}"
        )


def _prepare_array(images: NDArray[Any]) -> NDArray[Any]:
    """Validate a batch array; return it as ``(n, H, W, C)`` with C in {1, 3}."""
    if images.ndim not in (3, 4):
        raise InvalidInputError(
            "expected a batch of images of shape (n, H, W), (n, H, W, 1) or (n, H, W, 3), "
            f"got an array of shape {images.shape}"
            + ("; wrap a single image in a list" if images.ndim == 2 else "")
        )
    if images.shape[0] == 0:
        raise EmptyInputError(f"expected at least one image, got an empty batch {images.shape}")
    if images.ndim == 4:
        _check_channels(images.shape, "a batch", None)
    if images.shape[1] == 0 or images.shape[2] == 0:
        raise InvalidInputError(
            f"expected images of nonzero size, got a batch of shape {images.shape}"
        )
    _check_values(images, None)
    return images if images.ndim == 4 else images[..., None]


def _prepare_list(images: Sequence[Any]) -> list[NDArray[Any]]:
    """Validate a sequence of single images; return each as ``(H, W, C)`` with C in {1, 3}."""
    if len(images) == 0:
        raise EmptyInputError("expected at least one image, got an empty sequence")
    prepared: list[NDArray[Any]] = []
    for index, image in enumerate(images):
        if not isinstance(image, np.ndarray):
            raise InputTypeError(
                f"expected each image to be a numpy array, got {type(image).__name__} at index "
                f"{index}"
            )
        if image.ndim not in (2, 3):
            raise InvalidInputError(
                "expected each image of shape (H, W), (H, W, 1) or (H, W, 3), got shape "
                f"{image.shape} at index {index}"
            )
        if image.ndim == 3:
            _check_channels(image.shape, "an image", index)
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise InvalidInputError(
                f"expected an image of nonzero size, got shape {image.shape} at index {index}"
            )
        _check_values(image, index)
        prepared.append(image if image.ndim == 3 else image[..., None])
    return prepared


class ImageEncoder:
    """Encode images into 1280-d ImageNet features with a frozen EfficientNet-Lite0.

    Each image is turned to RGB (grayscale is repeated), resized to ``image_size`` x
    ``image_size`` with bilinear interpolation (antialiased when shrinking), scaled as the
    weights expect (``(pixel - 127) / 128`` for pixels in 0..255) and passed through the network;
    the output is the global average of the last feature map (after the head's ReLU6).

    Parameters
    ----------
    image_size
        Side of the square input given to the network (the weights were trained at 224).
    batch_size
        Number of images per forward pass.
    num_threads
        torch intra-op threads while encoding; ``None`` keeps torch's setting. With an ONNX
        backend also the number of batches run at the same time, one thread each (``None``: one
        per available core).
    backend
        ``"torch"`` (default, the reference), ``"onnx"`` (ONNX Runtime with int8 weights and
        activations; features within ~0.99 cosine of torch's, so the encoder name gets a
        ``+onnx-int8`` suffix) or ``"onnx-fp32"`` (ONNX Runtime in float32, ``+onnx-fp32``).
        The ONNX backends export the packaged weights on first use, once per ``image_size``
        (some seconds; torch and onnx needed, and scikit-image for the int8 calibration).
        Speeds and accuracy: ``benchmarks/RESULTS.md``.
    onnx_dir
        Folder of the cached ONNX exports; None: ``$PERENNIAL_CACHE/onnx`` or
        ``~/.cache/perennial/onnx``.

    Notes
    -----
    The network and its weights are loaded on the first call to :meth:`encode`. A 3-D array is
    read as a batch of grayscale images ``(n, H, W)``, never as one RGB image. Non-square images
    are stretched to the square input, not cropped.

    Examples
    --------
    >>> encoder = ImageEncoder(image_size=64)
    >>> encoder.dim
    1280
    >>> encoder.encode(np.zeros((2, 28, 28), dtype=np.uint8)).shape  # doctest: +SKIP
    (2, 1280)
    """

    kind = "image"
    dim = 1280

    def __init__(
        self,
        *,
        image_size: int = 224,
        batch_size: int = 32,
        num_threads: int | None = None,
        backend: str = "torch",
        onnx_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        _check_int(image_size, "image_size")
        _check_int(batch_size, "batch_size")
        _check_int(num_threads, "num_threads", allow_none=True)
        if not isinstance(backend, str) or backend not in BACKENDS:
            raise InvalidParameterError(
                f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}"
            )
        if onnx_dir is not None and not isinstance(onnx_dir, str | os.PathLike):
            raise InvalidParameterError(
                f"onnx_dir must be a path or None, got {type(onnx_dir).__name__} ({onnx_dir!r})"
            )
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.num_threads = None if num_threads is None else int(num_threads)
        self.backend = backend
        self.onnx_dir = None if onnx_dir is None else os.fspath(onnx_dir)
        self._network: EfficientNetLite0 | None = None
        self._runtime: ImageOnnxRuntime | None = None
        self._lock = threading.Lock()

    def get_params(self) -> dict[str, Any]:
        """What rebuilds this encoder on another machine (the export folder is local)."""
        return {
            "image_size": self.image_size,
            "batch_size": self.batch_size,
            "num_threads": self.num_threads,
            "backend": self.backend,
        }

    def __getstate__(self) -> dict[str, Any]:
        # Pickle the settings only; the network or the session is rebuilt lazily after unpickling.
        state = self.__dict__.copy()
        state["_network"] = None
        state["_runtime"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # An encoder pickled before the ONNX backends existed ran torch.
        self.__dict__.update({"backend": "torch", "onnx_dir": None, "_runtime": None, **state})
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        extra = "" if self.backend == "torch" else f", backend={self.backend!r}"
        if self.onnx_dir is not None:
            extra += f", onnx_dir={self.onnx_dir!r}"
        return (
            f"ImageEncoder(image_size={self.image_size}, batch_size={self.batch_size}, "
            f"num_threads={self.num_threads}{extra})"
        )

    @property
    def weights_path(self) -> Path:
        """Path of the packaged weight file (raises ``EncoderError`` if the package is missing)."""
        from perennial.encoders.lite0_weights import default_weights_path

        return default_weights_path()

    @property
    def name(self) -> str:
        """Identity of the feature space: network, input size and weight-file hash.

        Features computed at different ``image_size`` differ, so the size is part of the name,
        e.g. ``"efficientnet-lite0-224px@57934424"``; so do the int8 ONNX backend's
        (``...@57934424+onnx-int8``) and, to about 1e-5, the float32 one's (``+onnx-fp32``).
        """
        digest = _sha256_hex(str(self.weights_path.resolve()))
        return f"efficientnet-lite0-{self.image_size}px@{digest[:8]}{_NAME_SUFFIX[self.backend]}"

    def onnx_directory(self) -> Path:
        """Folder of the cached ONNX exports this encoder reads and writes."""
        from perennial.encoders.onnx_cache import default_onnx_dir

        return Path(self.onnx_dir) if self.onnx_dir is not None else default_onnx_dir()

    def _get_network(self) -> EfficientNetLite0:
        with self._lock:
            if self._network is None:
                from perennial.encoders.efficientnet_lite import load_efficientnet_lite0

                self._network = load_efficientnet_lite0(self.weights_path)
            return self._network

    def _get_runtime(self) -> ImageOnnxRuntime:
        with self._lock:
            if self._runtime is None:
                from perennial.encoders.image_onnx import (
                    ImageOnnxRuntime,
                    ensure_image_onnx_model,
                )

                cached = ensure_image_onnx_model(
                    self.onnx_directory(),
                    _ONNX_VARIANT[self.backend],
                    self.image_size,
                    self.weights_path,
                )
                self._runtime = ImageOnnxRuntime(cached)
            return self._runtime

    def _forward(
        self, with_logits: bool
    ) -> Callable[[torch.Tensor], tuple[NDArray[np.float32], NDArray[np.float32] | None]]:
        """The backend's map from the network's input tensor to features (and logits)."""
        if self.backend != "torch":
            runtime = self._get_runtime()

            def run_onnx(
                inputs: torch.Tensor,
            ) -> tuple[NDArray[np.float32], NDArray[np.float32] | None]:
                features, logits = runtime.run(inputs.numpy())
                return features, logits if with_logits else None

            return run_onnx
        network = self._get_network()

        def run_torch(
            inputs: torch.Tensor,
        ) -> tuple[NDArray[np.float32], NDArray[np.float32] | None]:
            features = network.forward_features(inputs)
            logits = network._fc(features).numpy() if with_logits else None
            return features.numpy(), logits

        return run_torch

    def encode(self, images: ImageBatch) -> NDArray[np.float32]:
        """Return the ``(n, 1280)`` float32 features of ``images``.

        Parameters
        ----------
        images
            An array ``(n, H, W)``, ``(n, H, W, 1)`` or ``(n, H, W, 3)``, or a sequence of single
            images ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` of possibly different sizes; uint8
            (or another integer type) in 0..255, or float in [0, 1].

        Raises
        ------
        EmptyInputError
            No images.
        InputTypeError
            Not an array or a sequence of arrays, or a non-numeric dtype.
        InvalidInputError
            Wrong number of axes, a channel count other than 1 or 3, an image of zero size, or
            values outside 0..255 (integers) / [0, 1] (floats).
        NonFiniteInputError
            NaN or infinity.
        EncoderError
            The weights cannot be loaded.
        """
        return self._encode(images, with_logits=False)[0]

    def encode_with_logits(
        self, images: ImageBatch
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Return the ``(n, 1280)`` features and the ``(n, 1000)`` ImageNet logits of ``images``.

        The logits are the packaged classifier's (``_fc``) on those features, computed by the
        same backend; ``images`` are taken and checked as by :meth:`encode`.
        """
        return self._encode(images, with_logits=True)

    def _encode(
        self, images: ImageBatch, *, with_logits: bool
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Features and logits (``(n, 0)`` unless ``with_logits``) of ``images``."""
        batch: NDArray[Any] | list[NDArray[Any]]
        if isinstance(images, np.ndarray):
            batch = _prepare_array(images)
        elif isinstance(images, Sequence) and not isinstance(images, str | bytes):
            batch = _prepare_list(images)
        else:
            raise InputTypeError(
                "expected images as a numpy array or a list of numpy arrays, got "
                f"{type(images).__name__}"
            )

        import torch

        forward = self._forward(with_logits)
        count = len(batch)
        features = np.empty((count, self.dim), dtype=np.float32)
        logits = np.empty((count, _NUM_CLASSES if with_logits else 0), dtype=np.float32)

        def store(start: int, stop: int, outputs: tuple[Any, Any]) -> None:
            features[start:stop] = outputs[0]
            if with_logits:
                logits[start:stop] = outputs[1]

        # torch runs one batch at a time with its own threads. ONNX Runtime runs up to
        # `workers` batches at once, one thread each, while the next batches are prepared; a
        # call with fewer than workers x batch_size images is split evenly over the workers.
        workers = 1 if self.backend == "torch" else self.num_threads or _available_cores()
        step = self.batch_size if workers == 1 else min(self.batch_size, -(-count // workers))
        pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 and count > step else None
        pending: deque[tuple[int, int, Future[tuple[Any, Any]]]] = deque()
        previous_threads = torch.get_num_threads()
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        try:
            with torch.inference_mode():
                for start in range(0, count, step):
                    stop = min(start + step, count)
                    if isinstance(batch, np.ndarray):
                        inputs = self._to_input(batch[start:stop])
                    else:
                        inputs = torch.cat(
                            [self._to_input(image[None]) for image in batch[start:stop]]
                        )
                    if pool is None:
                        store(start, stop, forward(inputs))
                        continue
                    pending.append((start, stop, pool.submit(forward, inputs)))
                    if len(pending) >= workers:
                        first, last, future = pending.popleft()
                        store(first, last, future.result())
                while pending:
                    first, last, future = pending.popleft()
                    store(first, last, future.result())
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            if self.num_threads is not None:
                torch.set_num_threads(previous_threads)
        return features, logits

    def _to_input(self, images: NDArray[Any]) -> torch.Tensor:
        """Turn validated ``(b, H, W, C)`` images into a normalized ``(b, 3, S, S)`` tensor."""
        import torch
        from torch.nn import functional

        from perennial.encoders.efficientnet_lite import PIXEL_MEAN, PIXEL_STD

        # A float32 copy: writable, native byte order, whatever the caller's dtype was.
        pixels = np.array(images, dtype=np.float32)
        # Affine map to the network's input scale; bilinear resizing commutes with it.
        scale = (1.0 if np.issubdtype(images.dtype, np.integer) else 255.0) / PIXEL_STD
        tensor = torch.from_numpy(pixels).permute(0, 3, 1, 2) * scale - PIXEL_MEAN / PIXEL_STD
        height, width = images.shape[1], images.shape[2]
        size = self.image_size
        if (height, width) != (size, size):
            tensor = functional.interpolate(
                tensor,
                size=(size, size),
                mode="bilinear",
                align_corners=False,
                antialias=height > size or width > size,
            )
        if tensor.shape[1] == 1:
            tensor = tensor.expand(-1, 3, -1, -1)
        return tensor.contiguous()
