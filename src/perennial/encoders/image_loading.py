"""Images as people have them: files, encoded bytes, PIL images and arrays, read as RGB pixels.

Every source becomes an RGB image of 8-bit pixels, whatever it was stored as:

* files (``str`` or ``os.PathLike``) and encoded bytes in one of :data:`IMAGE_FORMATS`, decoded
  with Pillow; the first frame of an animation or the first page of a TIFF;
* the EXIF orientation of a photo is applied (``PIL.ImageOps.exif_transpose``), so a picture
  taken sideways comes out upright, as it is shown;
* grey (``L``) and 1-bit (``1``) images are repeated into three channels; palette images (``P``)
  are looked up; CMYK is converted by Pillow's formula; colour profiles are not applied;
* transparency (``RGBA``, ``LA``, ``PA``, a palette or a single colour marked transparent) is
  composited onto :data:`ALPHA_BACKGROUND`, white; arrays with an alpha channel, ``(H, W, 4)``
  (RGBA) or ``(H, W, 2)`` (grey and alpha), are read as 8-bit pixels (floats rounded) and
  composited by the same code, so an array and the PNG file of the same pixels read the same;
* 16-bit images (``I;16``, ``I;16B``, ...; ``I`` is read the same way and must hold values in
  0..65535) are scaled by 255/65535 and rounded, so their full range maps onto 0..255;
* float images (mode ``F``, like float arrays) hold values in [0, 1] and are scaled by 255.

An image with more than ``max_pixels`` pixels (:data:`DEFAULT_MAX_PIXELS`, 50 megapixels) is
refused from its header, before any pixel is decoded: a small file can otherwise claim a
20,000 x 20,000 image and take gigabytes to decode. Pillow's own limit
(``PIL.Image.MAX_IMAGE_PIXELS``, about 179 megapixels before it refuses) still applies on top.

Pillow is imported on first use; importing this module needs numpy only.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
from numpy.typing import NDArray

from perennial.exceptions import (
    DatasetNotFoundError,
    EncoderError,
    ImageTooLargeError,
    InputTypeError,
    InvalidInputError,
    InvalidParameterError,
    NonFiniteInputError,
    PerennialError,
    UnreadableImageError,
)

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = [
    "ALPHA_BACKGROUND",
    "ALPHA_CHANNELS",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "IMAGE_FORMATS",
    "ImageSource",
    "list_image_files",
    "load_image",
]

ImageSource: TypeAlias = "str | os.PathLike[str] | bytes | PILImage | NDArray[Any]"
"""One image: a file path, encoded bytes, a PIL image or an ``(H, W[, C])`` array."""

ALPHA_CHANNELS = (2, 4)
"""Channel counts of arrays with an alpha channel last: grey and alpha, RGBA."""

DEFAULT_MAX_PIXELS = 50_000_000
"""Largest image (width x height) decoded by default: 50 megapixels, a 8,660 x 5,773 photo."""

IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "GIF", "TIFF")
"""Pillow formats that are decoded (JPEG includes MPO, the variant many cameras write); no other
format is even tried, so nothing exotic (PostScript, for one) is handed to Pillow's plugins."""

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
"""File extensions :func:`list_image_files` lists (in any case)."""

ALPHA_BACKGROUND = (255, 255, 255)
"""The colour transparent pixels are composited onto: white, as a page or a browser shows them."""

# Float images must lie in [0, 1]; this slack tolerates rounding from earlier processing while
# still catching images on the 0..255 scale stored as floats.
FLOAT_SLACK = 0.01

_ORIENTATION = 0x0112  # the EXIF tag
_TURNING_ORIENTATIONS = (5, 6, 7, 8)  # a quarter turn (and maybe a mirror): width and height swap
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_CONVERTIBLE_MODES = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "HSV")
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError as error:  # pragma: no cover - depends on the installation
        raise EncoderError(
            "reading image files needs Pillow; install it with 'pip install pillow' or "
            f"'perennial[image]' ({error})"
        ) from error
    return Image


def is_pil_image(value: object) -> bool:
    """Whether ``value`` is a PIL image (without importing Pillow when nobody has)."""
    module = sys.modules.get("PIL.Image")
    return module is not None and isinstance(value, module.Image)


def check_max_pixels(value: object) -> int:
    """``value`` as a positive pixel count, or :class:`InvalidParameterError`."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise InvalidParameterError(f"max_pixels must be a positive integer, got {value!r}")
    return int(value)


def where(index: int | None) -> str:
    """`` at index i`` for an input of a batch, nothing for a single image."""
    return "" if index is None else f" at index {index}"


def describe(source: object, index: int | None) -> str:
    """How an error message names an image: its file, or what it is and its index."""
    if isinstance(source, str | os.PathLike):
        return f"image file {os.fsdecode(source)!r}{where(index)}"
    if isinstance(source, bytes | bytearray | memoryview):
        return f"the encoded image{where(index)}"
    if is_pil_image(source):
        return f"the PIL image{where(index)}"
    return f"the image{where(index)}"


# -- arrays ----------------------------------------------------------------------------------------


def check_values(array: NDArray[Any], index: int | None, *, batch: bool = False) -> None:
    """Check dtype, finiteness and value range of one image array or of a whole ``batch``."""
    dtype = array.dtype
    if np.issubdtype(dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise InvalidInputError(
                f"integer images must hold values in 0..255, got values in [{low}, {high}] "
                f"(dtype {dtype}){where(index)}"
            )
        return
    if not np.issubdtype(dtype, np.floating):
        raise InputTypeError(
            f"expected images of a real numeric dtype (uint8 in 0..255 or float in [0, 1]), "
            f"got dtype {dtype}{where(index)}"
        )
    finite = np.isfinite(array)
    if not finite.all():
        if batch:
            bad = int(np.flatnonzero(~finite.reshape(len(array), -1).all(axis=1))[0])
            raise NonFiniteInputError(f"images contain NaN or infinity (first at index {bad})")
        if index is None:
            raise NonFiniteInputError("the image contains NaN or infinity")
        raise NonFiniteInputError(f"images contain NaN or infinity (first at index {index})")
    low_f, high_f = float(array.min()), float(array.max())
    if low_f < -FLOAT_SLACK or high_f > 1.0 + FLOAT_SLACK:
        raise InvalidInputError(
            f"float images must hold values in [0, 1], got values in [{low_f:g}, {high_f:g}]"
            f"{where(index)}; divide 0..255 data by 255 or pass it as uint8"
        )


def check_channels(shape: tuple[int, ...], what: str, index: int | None) -> None:
    """Refuse a last axis that is not 1 (grey), 2 (grey, alpha), 3 (RGB) or 4 (RGBA) channels."""
    if shape[-1] not in (1, 2, 3, 4):
        raise InvalidInputError(
            "expected 1 (grey), 2 (grey and alpha), 3 (RGB) or 4 (RGBA) channels in the last "
            f"axis, got {shape[-1]} in {what} of shape {shape}{where(index)}"
        )


def check_image_array(image: NDArray[Any], index: int | None) -> NDArray[Any]:
    """Validate one ``(H, W)`` or ``(H, W, C)`` image; return it as ``(H, W, C)``, C 1 or 3.

    An image with an alpha channel (C 2 or 4) comes back composited, as :func:`composite_array`.
    """
    if image.ndim not in (2, 3):
        raise InvalidInputError(
            "expected each image of shape (H, W), (H, W, 1), (H, W, 2), (H, W, 3) or (H, W, 4), "
            f"got shape {image.shape}{where(index)}"
        )
    if image.ndim == 3:
        check_channels(image.shape, "an image", index)
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidInputError(
            f"expected an image of nonzero size, got shape {image.shape}{where(index)}"
        )
    check_values(image, index)
    if image.ndim == 2:
        return image[..., None]
    if image.shape[2] in ALPHA_CHANNELS:
        return composite_array(image, describe(image, index))
    return image


def composite_array(image: NDArray[Any], what: str) -> NDArray[np.uint8]:
    """A validated ``(H, W, 2)`` or ``(H, W, 4)`` image, composited: ``(H, W, 3)`` uint8 RGB.

    The array becomes an ``LA`` or ``RGBA`` PIL image and goes through :func:`to_rgb`, the code
    that composites decoded files onto :data:`ALPHA_BACKGROUND`: one rule for both.
    """
    return np.asarray(to_rgb(array_to_pil(image), what), dtype=np.uint8)


def array_to_uint8(image: NDArray[Any]) -> NDArray[np.uint8]:
    """A validated image array on the 0..255 scale as uint8 (floats in [0, 1] are rounded)."""
    if np.issubdtype(image.dtype, np.integer):
        return image.astype(np.uint8, copy=False)
    scaled = np.clip(image.astype(np.float64), 0.0, 1.0) * 255.0
    return np.rint(scaled).astype(np.uint8)


def array_to_pil(image: NDArray[Any]) -> PILImage:
    """A validated ``(H, W, C)`` image array as a PIL image: ``L``, ``LA``, ``RGB`` or ``RGBA``."""
    Image = _pil()
    pixels = np.ascontiguousarray(array_to_uint8(image))
    if pixels.shape[2] == 1:
        return Image.fromarray(pixels[..., 0])  # type: ignore[no-any-return]
    return Image.fromarray(pixels)  # type: ignore[no-any-return]


# -- decoding --------------------------------------------------------------------------------------


def check_source(source: object, index: int | None) -> Any:
    """The cheap checks of one image, before anything is decoded.

    Returns the source as it will be read: a validated ``(H, W, C)`` array, a :class:`Path` to
    an existing non-empty file, non-empty ``bytes`` or a PIL image of nonzero size.
    """
    if isinstance(source, np.ndarray):
        return check_image_array(source, index)
    if isinstance(source, str | os.PathLike):
        path = Path(os.fsdecode(source))
        what = describe(source, index)
        try:
            if path.is_dir():
                raise UnreadableImageError(f"{what} is a folder, expected an image file")
            size = path.stat().st_size
        except FileNotFoundError:
            raise UnreadableImageError(f"{what} does not exist") from None
        except OSError as error:
            raise UnreadableImageError(f"cannot read {what}: {error.strerror}") from error
        if not path.is_file():
            raise UnreadableImageError(f"{what} is not a regular file")
        if size == 0:
            raise UnreadableImageError(f"{what} is empty (0 bytes)")
        return path
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        if not data:
            raise UnreadableImageError(f"{describe(source, index)} is empty (0 bytes)")
        return data
    if is_pil_image(source):
        width, height = source.size  # type: ignore[attr-defined]
        if width == 0 or height == 0:
            raise UnreadableImageError(
                f"{describe(source, index)} is empty ({width}x{height} pixels)"
            )
        return source
    raise InputTypeError(
        "expected an image as a file path, bytes, a PIL image or a numpy array, got "
        f"{type(source).__name__}{where(index)}"
    )


def _too_large(what: str, width: int, height: int, max_pixels: int) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"{what} is a {width}x{height} image ({width * height:,} pixels), over the limit of "
        f"{max_pixels:,} pixels (max_pixels); it was not decoded"
    )


def _decode(
    source: Path | bytes, what: str, max_pixels: int, reduce_to: int | None
) -> tuple[PILImage, tuple[int, int]]:
    """Decode a file or bytes into an upright RGB image, refusing bombs before decoding.

    Returns the image and the upright size it has at full scale (larger than the image's when
    a JPEG was decoded at a reduced scale).
    """
    Image = _pil()
    from PIL import ImageOps, UnidentifiedImageError

    try:
        stream = open(source, "rb") if isinstance(source, Path) else io.BytesIO(source)  # noqa: SIM115
    except OSError as error:
        raise UnreadableImageError(f"cannot open {what}: {error.strerror}") from error
    with stream:
        try:
            image = Image.open(stream, formats=IMAGE_FORMATS)
        except Image.DecompressionBombError as error:
            raise ImageTooLargeError(
                f"{what} is over Pillow's decompression-bomb limit ({error}); it was not "
                f"decoded (perennial's limit: {max_pixels:,} pixels, max_pixels)"
            ) from error
        except UnidentifiedImageError as error:
            raise UnreadableImageError(
                f"{what} is not an image in a format perennial reads ({', '.join(IMAGE_FORMATS)})"
            ) from error
        except Exception as error:
            raise UnreadableImageError(f"cannot read {what}: {error}") from error
        # Not "with image": closing an image frees its pixels, and they are what is returned.
        # Once loaded, the image no longer needs the stream, which the "with" above closes.
        width, height = image.size
        if width * height > max_pixels:
            raise _too_large(what, width, height, max_pixels)
        if width == 0 or height == 0:
            raise UnreadableImageError(f"{what} is empty ({width}x{height} pixels)")
        try:
            if reduce_to is not None and image.format in ("JPEG", "MPO"):
                # Decode a JPEG at 1/2, 1/4 or 1/8 scale (libjpeg's scaled IDCT) when it
                # stays at least reduce_to pixels on its shorter side.
                image.draft(None, (reduce_to, reduce_to))
            image.load()
            if image.getexif().get(_ORIENTATION, 1) in _TURNING_ORIENTATIONS:
                width, height = height, width
            ImageOps.exif_transpose(image, in_place=True)  # ours to change: no copy
            return to_rgb(image, what), (width, height)
        except PerennialError:
            raise
        except Exception as error:
            raise UnreadableImageError(f"cannot decode {what}: {error}") from error


def to_rgb(image: PILImage, what: str) -> PILImage:
    """A PIL image of any supported mode as ``RGB`` (see the module's notes for each mode)."""
    Image = _pil()
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image)
        if mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise InvalidInputError(
                f"{what} is a 32-bit integer image (mode I) with values in "
                f"[{values.min()}, {values.max()}]; it is read as 16-bit, which needs 0..65535"
            )
        grey = np.rint(values.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")  # type: ignore[no-any-return]
    if mode == "F":
        values = np.asarray(image, dtype=np.float32)
        if not np.isfinite(values).all():
            raise NonFiniteInputError(f"{what} (a float image, mode F) holds NaN or infinity")
        low, high = float(values.min()), float(values.max())
        if low < -FLOAT_SLACK or high > 1.0 + FLOAT_SLACK:
            raise InvalidInputError(
                f"{what} is a float image (mode F) with values in [{low:g}, {high:g}]; float "
                "images must hold values in [0, 1]"
            )
        grey = np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")  # type: ignore[no-any-return]
    if mode in _ALPHA_MODES or (mode in _CONVERTIBLE_MODES and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")  # type: ignore[no-any-return]
    if mode in _CONVERTIBLE_MODES:
        return image.convert("RGB")
    raise UnreadableImageError(f"{what} has pixels in mode {mode!r}, which perennial cannot read")


def read_rgb(source: Any, index: int | None, max_pixels: int) -> PILImage:
    """An upright RGB PIL image from a source that passed :func:`check_source`."""
    return read_rgb_reduced(source, index, max_pixels, None)[0]


def read_rgb_reduced(
    source: Any, index: int | None, max_pixels: int, reduce_to: int | None
) -> tuple[PILImage, tuple[int, int]]:
    """:func:`read_rgb`, letting a large JPEG be decoded at a reduced scale.

    The scale (1/2, 1/4 or 1/8) keeps at least ``reduce_to`` pixels on the shorter side; the
    upright size at full scale is returned beside the image.
    """
    if isinstance(source, np.ndarray):
        image = to_rgb(array_to_pil(source), describe(source, index))
        return image, image.size
    what = describe(source, index)
    if isinstance(source, Path | bytes):
        return _decode(source, what, max_pixels, reduce_to)
    # A PIL image the caller opened: refuse a bomb before its pixels are loaded, if they are not.
    width, height = source.size
    if width * height > max_pixels:
        raise _too_large(what, width, height, max_pixels)
    from PIL import ImageOps

    try:
        source.load()
        upright = ImageOps.exif_transpose(source)  # a new image: the caller's is left as it is
        image = to_rgb(source if upright is None else upright, what)
        return image, image.size
    except PerennialError:
        raise
    except Exception as error:
        raise UnreadableImageError(f"cannot decode {what}: {error}") from error


# -- the public helpers ----------------------------------------------------------------------------


def load_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> NDArray[np.uint8]:
    """Read one image as an ``(H, W, 3)`` uint8 RGB array, upright, at its own size.

    Parameters
    ----------
    source
        A path to a JPEG, PNG, BMP, WebP, GIF or TIFF file, the bytes of such a file, a PIL
        image, or an array ``(H, W)`` or ``(H, W, C)`` with C 1 (grey), 2 (grey and alpha), 3
        (RGB) or 4 (RGBA), uint8 in 0..255 or float in [0, 1], as the image encoder takes them;
        alpha is composited onto :data:`ALPHA_BACKGROUND` as for files.
    max_pixels
        Refuse images with more pixels than this, before decoding them.

    Raises
    ------
    UnreadableImageError
        A missing, empty, truncated or damaged file, a folder, data that is no image in a
        format read here, or pixels of a mode that cannot be turned into RGB.
    ImageTooLargeError
        More than ``max_pixels`` pixels.
    InputTypeError
        Not one of the source types above.
    InvalidInputError
        An array or a float / 32-bit image whose shape or values do not fit.

    Examples
    --------
    >>> load_image(np.zeros((2, 3), dtype=np.uint8)).shape
    (2, 3, 3)
    >>> load_image(np.array([[[0, 0, 0, 0], [0, 0, 0, 255]]], dtype=np.uint8)).tolist()
    [[[255, 255, 255], [0, 0, 0]]]
    """
    limit = check_max_pixels(max_pixels)
    checked = check_source(source, None)
    if isinstance(checked, np.ndarray):
        pixels = array_to_uint8(checked)
        return np.ascontiguousarray(np.broadcast_to(pixels, (*pixels.shape[:2], 3)))
    return np.array(read_rgb(checked, None, limit), dtype=np.uint8)


def list_image_files(folder: str | os.PathLike[str], *, recursive: bool = False) -> list[Path]:
    """The image files of ``folder`` (by extension, see :data:`IMAGE_EXTENSIONS`), sorted.

    Hidden files (whose name starts with a dot, such as the ``._photo.jpg`` files macOS leaves
    on shared drives) are skipped, and so are hidden folders when ``recursive``.

    Raises
    ------
    DatasetNotFoundError
        ``folder`` does not exist.
    InvalidInputError
        ``folder`` is not a folder.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ("b.PNG", "a.jpg", "notes.txt", ".hidden.jpg"):
    ...     _ = (root / name).write_bytes(b"")
    >>> [path.name for path in list_image_files(root)]
    ['a.jpg', 'b.PNG']
    """
    root = Path(os.fsdecode(folder))
    if not root.exists():
        raise DatasetNotFoundError(f"image folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise InvalidInputError(f"{str(root)!r} is not a folder; expected a folder of images")
    candidates = root.rglob("*") if recursive else root.iterdir()
    found = []
    for path in candidates:
        relative = path.relative_to(root).parts
        if any(part.startswith(".") for part in relative):
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            found.append(path)
    return sorted(found, key=lambda path: path.relative_to(root).parts)
