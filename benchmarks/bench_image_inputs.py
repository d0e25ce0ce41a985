"""Images from files: reading speed, the reduced-scale JPEG decode, and the resampling filter.

Prints, for JPEG photos of 0.3, 3 and 12 megapixels (scikit-image's photos tiled at their own
resolution, saved at quality 90):

* the time to read and preprocess one file (decode, EXIF, centre crop, bicubic resize), with the
  reduced-scale decode of large JPEGs (``draft``) and without it, and how far the network's
  input and the features move (mean input difference in grey levels, feature cosine);
* images per second through the whole encoder, from files, in batches of ``--batch``;
* on the photos scikit-image ships, how the input made with Pillow's bicubic filter (what the
  encoder uses) compares with TensorFlow 1's ``resize_bicubic`` as the weights' reference
  evaluation called it (Keys cubic, a = -0.75, no half-pixel offset, no antialiasing; written
  here in numpy): mean input difference, feature cosine, and whether the top-1 ImageNet class
  agrees.

Nothing here is a test; timings vary with what else runs on the machine (the load average is
printed).

Run: .venv/bin/python benchmarks/bench_image_inputs.py [--runs 3] [--batch 16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data as skimage_data

import perennial.encoders.image as image_module
from perennial.encoders.efficientnet_lite import PIXEL_MEAN, PIXEL_STD
from perennial.encoders.image import ImageEncoder, center_crop_box
from perennial.encoders.image_loading import load_image

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def mosaic(height: int, width: int) -> np.ndarray:
    photos = [getattr(skimage_data, name)() for name in PHOTOS]
    canvas = np.zeros((height, width, 3), np.uint8)
    for row, y in enumerate(range(0, height, 300)):
        for column, x in enumerate(range(0, width, 400)):
            tile = photos[(row + column) % len(photos)][:300, :400]
            canvas[y : y + 300, x : x + 400] = tile[: height - y, : width - x]
    return canvas


def median_seconds(function: object, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def reading(encoder: ImageEncoder, folder: Path, runs: int) -> None:
    print("\nreading one JPEG (decode, EXIF, crop, bicubic resize), median of", runs)
    for megapixels, (height, width) in {0.3: (480, 640), 3: (1500, 2000), 12: (3024, 4032)}.items():
        path = folder / f"photo-{megapixels}mp.jpg"
        Image.fromarray(mosaic(height, width)).save(path, quality=90)
        reduced = median_seconds(lambda p=path: encoder.preprocess([p]), runs)
        margin = image_module._DRAFT_MARGIN
        image_module._DRAFT_MARGIN = 1e6  # never decode at a reduced scale
        try:
            full = median_seconds(lambda p=path: encoder.preprocess([p]), runs)
        finally:
            image_module._DRAFT_MARGIN = margin
        pixels = load_image(path)
        inputs = encoder.preprocess([path, pixels])
        features = encoder.encode([path, pixels])
        print(
            f"  {width} x {height} ({megapixels} MP): {reduced * 1000:.0f} ms "
            f"(full-scale decode {full * 1000:.0f} ms); input difference "
            f"{np.abs(inputs[0] - inputs[1]).mean() * 128:.2f} grey levels, feature cosine "
            f"{cosine(features[0], features[1]):.5f}"
        )


def throughput(encoder: ImageEncoder, folder: Path, batch: int, runs: int) -> None:
    print(f"\nencoding from files, batches of {batch}, median of {runs}")
    for megapixels in (0.3, 3, 12):
        paths = [folder / f"photo-{megapixels}mp.jpg"] * batch
        seconds = median_seconds(lambda p=paths: encoder.encode(p), runs)
        print(f"  {megapixels} MP JPEGs: {batch / seconds:.1f} images/s")
    arrays = np.random.default_rng(0).integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
    seconds = median_seconds(lambda: encoder.encode(arrays), runs)
    print(f"  224 x 224 uint8 arrays (no decoding): {batch / seconds:.1f} images/s")


def _tf_legacy_bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Rows of TF 1 resize_bicubic weights along one axis (align_corners=False, no half pixel)."""

    def keys(x: np.ndarray, a: float = -0.75) -> np.ndarray:
        x = np.abs(x)
        return np.where(
            x <= 1,
            ((a + 2) * x - (a + 3)) * x * x + 1,
            np.where(x < 2, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a, 0.0),
        )

    scale = n_in / n_out
    matrix = np.zeros((n_out, n_in))
    for i in range(n_out):
        position = i * scale
        base = int(np.floor(position))
        for tap in range(base - 1, base + 3):
            matrix[i, min(max(tap, 0), n_in - 1)] += keys(np.array(position - tap))
    return matrix


def tensorflow_input(pixels: np.ndarray, size: int = 224) -> np.ndarray:
    left, top, right, bottom = center_crop_box(pixels.shape[1], pixels.shape[0], size)
    crop = pixels[top:bottom, left:right].astype(np.float64)
    rows = _tf_legacy_bicubic_matrix(crop.shape[0], size)
    columns = _tf_legacy_bicubic_matrix(crop.shape[1], size)
    resized = np.einsum("ih,hwc,jw->cij", rows, crop, columns, optimize=True)
    return ((resized - PIXEL_MEAN) / PIXEL_STD).astype(np.float32)


def filters(encoder: ImageEncoder) -> None:
    print("\nPillow's bicubic (the encoder) against TF 1 resize_bicubic (the reference evaluation)")
    network = encoder._get_network()
    names = (*PHOTOS, "hubble_deep_field", "immunohistochemistry", "retina")
    photos = [getattr(skimage_data, name)() for name in names]
    ours = torch.from_numpy(encoder.preprocess(photos))
    theirs = torch.from_numpy(np.stack([tensorflow_input(p) for p in photos]))
    with torch.inference_mode():
        features_ours, features_theirs = (
            network.forward_features(ours),
            network.forward_features(theirs),
        )
        top_ours, top_theirs = network(ours).argmax(1), network(theirs).argmax(1)
    for index, name in enumerate(names):
        height, width = photos[index].shape[:2]
        print(
            f"  {name} ({width} x {height}): input difference "
            f"{(ours[index] - theirs[index]).abs().mean().item() * 128:.2f} grey levels, feature "
            f"cosine {cosine(features_ours[index].numpy(), features_theirs[index].numpy()):.4f}, "
            f"top-1 {top_ours[index].item()} / {top_theirs[index].item()}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed calls per figure")
    parser.add_argument("--batch", type=int, default=16, help="images per encode call")
    args = parser.parse_args()
    print(f"cores available: {len(os.sched_getaffinity(0))}; load average {os.getloadavg()}")
    encoder = ImageEncoder()
    encoder.encode([np.zeros((8, 8), np.uint8)])  # load the weights outside the timing
    with tempfile.TemporaryDirectory() as folder:
        reading(encoder, Path(folder), args.runs)
        throughput(encoder, Path(folder), args.batch, args.runs)
    filters(encoder)
    print(f"\nload average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
