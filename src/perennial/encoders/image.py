"""Image encoder: frozen ImageNet EfficientNet-Lite0 features for images as people have them.

Two runtimes compute the network. ``torch`` runs :mod:`perennial.encoders.efficientnet_lite`; it
is the reference. ``onnx`` and ``onnx-fp32`` run an ONNX export of the same weights with ONNX
Runtime (int8 or float32), built once per input size and cached on disk
(:mod:`perennial.encoders.image_onnx`). The backend only changes what maps the network's input
tensor to features and logits: the images are read, cropped, resized and scaled the same way.

torch is imported only when images are encoded, and Pillow only when one is read, so importing
this module stays cheap.
"""

from __future__ import annotations

import math
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
from perennial.encoders.image_loading import (
    ALPHA_CHANNELS,
    DEFAULT_MAX_PIXELS,
    ImageSource,
    check_channels,
    check_max_pixels,
    check_source,
    check_values,
    composite_array,
    is_pil_image,
    list_image_files,
    load_image,
    read_rgb,
    read_rgb_reduced,
    where,
)
from perennial.exceptions import (
    EmptyInputError,
    InputTypeError,
    InvalidInputError,
    InvalidParameterError,
)

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image as PILImage

    from perennial.encoders.efficientnet_lite import EfficientNetLite0
    from perennial.encoders.image_onnx import ImageOnnxRuntime

__all__ = [
    "BACKENDS",
    "CROP_FRACTION",
    "RESIZE_MODES",
    "ImageBatch",
    "ImageEncoder",
    "center_crop_box",
    "list_image_files",
    "load_image",
]

ImageBatch = NDArray[Any] | Sequence[ImageSource]
"""An ``(n, H, W)`` or ``(n, H, W, C)`` array (C: 1 grey, 2 grey and alpha, 3 RGB, 4 RGBA), or a
sequence of single images (file paths, encoded bytes, PIL images, arrays), mixed as they come."""

RESIZE_MODES = ("crop", "stretch")
"""How an image is brought to the network's square input (see :class:`ImageEncoder`)."""

CROP_FRACTION = 0.875
"""Share of the shorter side kept by the centre crop: 224 of 256, as the weights were evaluated."""

#: ``torch``: the reference. ``onnx``: ONNX Runtime with int8 weights and activations (features
#: within about 0.99 cosine of torch's, so under another encoder name). ``onnx-fp32``: ONNX
#: Runtime in float32, torch's numbers to about 1e-5.
BACKENDS = ("torch", "onnx", "onnx-fp32")
_NAME_SUFFIX = {"torch": "", "onnx": "+onnx-int8", "onnx-fp32": "+onnx-fp32"}
_ONNX_VARIANT = {"onnx": "int8", "onnx-fp32": "fp32"}
# efficientnet_lite.NUM_CLASSES, which cannot be imported here without torch.
_NUM_CLASSES = 1000

# A large JPEG is decoded at a reduced scale (1/2, 1/4, 1/8) only while its shorter side keeps
# at least this many times the pixels of the crop's final side, so that the bicubic reduction
# that follows still does most of the shrinking (see ImageEncoder's notes and its test).
_DRAFT_MARGIN = 2.0


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


def _prepare_array(images: NDArray[Any]) -> NDArray[Any]:
    """Validate a batch array; return it as ``(n, H, W, C)`` with C in {1, 3}.

    A batch with an alpha channel (C 2 or 4) comes back composited onto the white background,
    image by image, by the code that composites files (:func:`composite_array`).
    """
    if images.ndim not in (3, 4):
        raise InvalidInputError(
            "expected a batch of images of shape (n, H, W) or (n, H, W, C) with C 1, 2, 3 or 4, "
            f"got an array of shape {images.shape}"
            + ("; wrap a single image in a list" if images.ndim == 2 else "")
        )
    if images.shape[0] == 0:
        raise EmptyInputError(f"expected at least one image, got an empty batch {images.shape}")
    if images.ndim == 4:
        check_channels(images.shape, "a batch", None)
    if images.shape[1] == 0 or images.shape[2] == 0:
        raise InvalidInputError(
            f"expected images of nonzero size, got a batch of shape {images.shape}"
        )
    check_values(images, None, batch=True)
    if images.ndim == 3:
        return images[..., None]
    if images.shape[3] in ALPHA_CHANNELS:
        return np.stack(
            [composite_array(image, f"the image{where(i)}") for i, image in enumerate(images)]
        )
    return images


def _prepare_list(images: Sequence[Any]) -> list[Any]:
    """The cheap checks of every image of a sequence, before anything is decoded."""
    if len(images) == 0:
        raise EmptyInputError("expected at least one image, got an empty sequence")
    return [check_source(image, index) for index, image in enumerate(images)]


def center_crop_box(width: int, height: int, image_size: int) -> tuple[int, int, int, int]:
    """The ``(left, top, right, bottom)`` centre square that becomes the network's input.

    The geometry of the reference evaluation of EfficientNet(-Lite) (``_decode_and_center_crop``
    in TensorFlow's ``efficientnet/preprocessing.py``): a square whose side is
    ``image_size / (image_size + padding)`` of the shorter side, with ``padding =
    round(image_size / 7)`` (so 224 / 256 = :data:`CROP_FRACTION` at 224), truncated to whole
    pixels in float32 arithmetic as there, and at least one pixel; the odd pixel of the margins
    goes to the bottom / right.

    Examples
    --------
    >>> center_crop_box(451, 300, 224)
    (95, 19, 357, 281)
    """
    padding = round(image_size * (1 / CROP_FRACTION - 1))
    fraction = np.float32(image_size / (image_size + padding))
    side = max(int(fraction * np.float32(min(width, height))), 1)
    top = (height - side + 1) // 2
    left = (width - side + 1) // 2
    return left, top, left + side, top + side


def _crop_and_resize(
    image: PILImage, full_size: tuple[int, int], image_size: int
) -> NDArray[np.uint8]:
    """The centre crop of an RGB image, resized to ``image_size`` square with bicubic.

    ``full_size`` is the image's size at full scale: when it was decoded smaller (a JPEG's
    ``draft``), the crop of the full image is mapped onto the reduced pixels (each covers
    ``scale`` x ``scale`` full ones) and resampled from there.
    """
    from PIL import Image

    size = (image_size, image_size)
    box = center_crop_box(full_size[0], full_size[1], image_size)
    if image.size == full_size:
        crop = image.crop(box)
        if crop.size != size:
            crop = crop.resize(size, Image.Resampling.BICUBIC)
        return np.asarray(crop, dtype=np.uint8)
    scale = round(full_size[0] / image.width)
    left, top, right, bottom = (coordinate / scale for coordinate in box)
    reduced = image.resize(size, Image.Resampling.BICUBIC, box=(left, top, right, bottom))
    return np.asarray(reduced, dtype=np.uint8)


class ImageEncoder:
    """Encode images into 1280-d ImageNet features with a frozen EfficientNet-Lite0.

    Images come as file paths (JPEG, PNG, BMP, WebP, GIF, TIFF), encoded bytes, PIL images or
    numpy arrays, mixed in one batch; each is read as upright RGB (see
    :mod:`perennial.encoders.image_loading` for EXIF orientation, transparency, 16-bit, CMYK,
    ...), brought to the network's square input as ``resize`` says, scaled as the weights
    expect (``(pixel - 127) / 128``) and passed through the network; the output is the global
    average of the last feature map (after the head's ReLU6).

    Parameters
    ----------
    image_size
        Side of the square input given to the network (the weights were trained at 224).
    batch_size
        Number of images per forward pass; images are decoded one at a time, a batch ahead.
    num_threads
        torch intra-op threads while encoding; ``None`` keeps torch's setting. With an ONNX
        backend also the number of batches run at the same time, one thread each (``None``: one
        per available core).
    resize
        ``"crop"`` (default): the preprocessing the weights were evaluated with, that of
        :func:`center_crop_box` followed by a bicubic resize of the square to ``image_size``.
        ``"stretch"``: the whole image resized to the square with bilinear interpolation
        (antialiased when shrinking), its aspect ratio lost; what models saved before this
        parameter existed use, and keep using when loaded.
    max_pixels
        Files, bytes and PIL images with more pixels than this are refused before they are
        decoded (:class:`~perennial.exceptions.ImageTooLargeError`).
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
    What the weights expect. The packaged file is Google's EfficientNet-Lite0 checkpoint
    (``tensorflow/tpu``, ``models/official/efficientnet/lite``) converted to PyTorch. Its
    reference evaluation (``preprocessing.py``, ``eval_ckpt_main.py`` there): decode as RGB,
    crop the centre square of 224/256 of the shorter side, resize it to 224 x 224 with bicubic
    interpolation, subtract 127 and divide by 128 (``MEAN_RGB``, ``STDDEV_RGB`` of the Lite
    builder; not the ImageNet mean and deviation of EfficientNet-B*). ``resize="crop"`` does
    that with Pillow's bicubic filter, which also widens its kernel when shrinking. TensorFlow
    1's ``resize_bicubic`` there does not, which aliases on photos much larger than ImageNet's,
    and maps coordinates without the half-pixel offset; timm's port of the same weights
    (``tf_efficientnet_lite0``) uses Pillow's bicubic too. The two filters' inputs differ by 1.4
    to 7 grey levels on average on scikit-image's photos and agree on their ImageNet classes
    (``benchmarks/bench_image_inputs.py``). The resized crop is rounded to 8-bit pixels, as
    Pillow keeps RGB images.

    A JPEG whose shorter side is at least 4.6 times ``image_size`` (1,024 pixels at 224) is
    decoded at 1/2, 1/4 or 1/8 of its size by libjpeg (``draft``), keeping at least twice the
    crop's final side, and the crop of the full image is mapped onto the reduced pixels: a
    12-megapixel photo is read about four times faster, and the features stay within 0.998
    cosine of a full decode (tested; 0.9996 for that photo).

    The network and its weights are loaded on the first call to :meth:`encode`. A 3-D array is
    read as a batch of grayscale images ``(n, H, W)``, never as one RGB image. Every image is
    checked cheaply (type, array values, that a file exists and is not empty) before anything
    is decoded; a file that fails to decode raises, naming it, and nothing is returned.

    Examples
    --------
    >>> encoder = ImageEncoder(image_size=64)
    >>> encoder.dim
    1280
    >>> encoder.encode([np.zeros((28, 28), dtype=np.uint8), "photo.jpg"]).shape  # doctest: +SKIP
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
        resize: str = "crop",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        backend: str = "torch",
        onnx_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        _check_int(image_size, "image_size")
        _check_int(batch_size, "batch_size")
        _check_int(num_threads, "num_threads", allow_none=True)
        if resize not in RESIZE_MODES:
            raise InvalidParameterError(
                f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}"
            )
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
        self.resize = resize
        self.max_pixels = check_max_pixels(max_pixels)
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
            "resize": self.resize,
            "max_pixels": self.max_pixels,
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
        # An encoder pickled before resize and max_pixels existed stretched its images; one
        # pickled before the ONNX backends existed ran torch.
        state.setdefault("resize", "stretch")
        state.setdefault("max_pixels", DEFAULT_MAX_PIXELS)
        state.setdefault("backend", "torch")
        state.setdefault("onnx_dir", None)
        state.setdefault("_runtime", None)
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        extra = "" if self.max_pixels == DEFAULT_MAX_PIXELS else f", max_pixels={self.max_pixels}"
        if self.backend != "torch":
            extra += f", backend={self.backend!r}"
        if self.onnx_dir is not None:
            extra += f", onnx_dir={self.onnx_dir!r}"
        return (
            f"ImageEncoder(image_size={self.image_size}, batch_size={self.batch_size}, "
            f"num_threads={self.num_threads}, resize={self.resize!r}{extra})"
        )

    @property
    def weights_path(self) -> Path:
        """Path of the packaged weight file (raises ``EncoderError`` if the package is missing)."""
        from perennial.encoders.lite0_weights import default_weights_path

        return default_weights_path()

    @property
    def name(self) -> str:
        """Identity of the feature space: network, input size, weight-file hash, resizing.

        Features computed at different ``image_size`` or ``resize`` differ, so both are part of
        the name: ``"efficientnet-lite0-224px@57934424/crop"``, and without a suffix for
        ``resize="stretch"`` (the name models saved before ``resize`` existed carry). The ONNX
        backends' features differ too, int8's by about 0.01 in cosine, float32's by about 1e-5:
        ``...@57934424/crop+onnx-int8``, ``...+onnx-fp32``.
        """
        digest = _sha256_hex(str(self.weights_path.resolve()))
        suffix = "" if self.resize == "stretch" else f"/{self.resize}"
        suffix += _NAME_SUFFIX[self.backend]
        return f"efficientnet-lite0-{self.image_size}px@{digest[:8]}{suffix}"

    @property
    def cache_name(self) -> str:
        """What a feature cache keys this encoder's features by: :attr:`name` and the export.

        The ONNX backends add their export-format version (``IMAGE_ONNX_FORMAT_VERSION``), so
        that features cached from an earlier recipe are never read back as this one's.
        """
        if self.backend == "torch":
            return self.name
        from perennial.encoders.image_onnx import IMAGE_ONNX_FORMAT_VERSION

        return f"{self.name}#v{IMAGE_ONNX_FORMAT_VERSION}"

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

    def _check_batch(self, images: ImageBatch) -> NDArray[Any] | list[Any]:
        if isinstance(images, np.ndarray):
            return _prepare_array(images)
        if isinstance(images, Sequence) and not isinstance(images, str | bytes | bytearray):
            return _prepare_list(images)
        hint = ""
        if isinstance(images, str | bytes | bytearray) or is_pil_image(images):
            hint = "; wrap a single image in a list"
        raise InputTypeError(
            "expected images as a numpy array or a list of images (file paths, bytes, PIL "
            f"images or numpy arrays), got {type(images).__name__}{hint}"
        )

    def encode(self, images: ImageBatch) -> NDArray[np.float32]:
        """Return the ``(n, 1280)`` float32 features of ``images``.

        Parameters
        ----------
        images
            An array ``(n, H, W)`` or ``(n, H, W, C)``, or a sequence of single images of any
            sizes: file paths (``str`` or ``os.PathLike``), the encoded bytes of a file, PIL
            images, or arrays ``(H, W)`` or ``(H, W, C)``. C is 1 (grey), 2 (grey and alpha), 3
            (RGB) or 4 (RGBA); alpha is composited onto white as for files, after rounding to
            8 bits. Arrays hold uint8 (or another integer type) in 0..255, or floats in [0, 1].

        Raises
        ------
        EmptyInputError
            No images.
        InputTypeError
            Not an array or a sequence of images, an item of another type, or a non-numeric
            dtype.
        UnreadableImageError
            A file that does not exist, is empty, a folder, not an image, truncated or
            damaged, or an image in a pixel mode that cannot be read; the message names it.
        ImageTooLargeError
            An image over ``max_pixels`` pixels (a decompression bomb), refused undecoded.
        InvalidInputError
            Wrong number of axes, a channel count other than 1 to 4, an image of zero size, or
            values outside 0..255 (integers) / [0, 1] (floats).
        NonFiniteInputError
            NaN or infinity.
        EncoderError
            The weights (or Pillow) cannot be loaded, or an ONNX export cannot be built.
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
        batch = self._check_batch(images)

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
                    inputs = self._network_input(batch, start, stop)
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

    def preprocess(self, images: ImageBatch) -> NDArray[np.float32]:
        """The network's input for ``images``: ``(n, 3, image_size, image_size)`` float32.

        What :meth:`encode` passes through the network, RGB in channel order, scaled to
        ``(pixel - 127) / 128``; it takes and checks ``images`` as :meth:`encode` does.
        """
        batch = self._check_batch(images)
        chunks = [
            self._network_input(batch, start, min(start + self.batch_size, len(batch))).numpy()
            for start in range(0, len(batch), self.batch_size)
        ]
        return np.concatenate(chunks)

    def _network_input(
        self, batch: NDArray[Any] | list[Any], start: int, stop: int
    ) -> torch.Tensor:
        """The normalized ``(b, 3, S, S)`` input of the checked images ``batch[start:stop]``."""
        import torch

        from perennial.encoders.efficientnet_lite import PIXEL_MEAN, PIXEL_STD

        if self.resize == "stretch":
            if isinstance(batch, np.ndarray):
                return self._stretch(batch[start:stop])
            return torch.cat(
                [
                    self._stretch(self._pixels(batch[index], index)[None])
                    for index in range(start, stop)
                ]
            )
        size = self.image_size
        reduce_to = math.ceil(_DRAFT_MARGIN * size / CROP_FRACTION)
        pixels = np.empty((stop - start, size, size, 3), dtype=np.uint8)
        for row, index in enumerate(range(start, stop)):
            image, full_size = read_rgb_reduced(batch[index], index, self.max_pixels, reduce_to)
            pixels[row] = _crop_and_resize(image, full_size, size)
        tensor = torch.from_numpy(pixels).permute(0, 3, 1, 2).float()
        # Exact in float32: integers minus 127, divided by a power of two.
        return ((tensor - PIXEL_MEAN) / PIXEL_STD).contiguous()

    def _pixels(self, source: Any, index: int) -> NDArray[Any]:
        """A checked image as an ``(H, W, C)`` array at its own size (``resize="stretch"``)."""
        if isinstance(source, np.ndarray):
            return source
        return np.asarray(read_rgb(source, index, self.max_pixels), dtype=np.uint8)

    def _stretch(self, images: NDArray[Any]) -> torch.Tensor:
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
