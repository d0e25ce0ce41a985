"""Image encoder backends: torch (the reference) against ONNX Runtime float32 and int8.

Prints a markdown table with, for each backend (issue 15):

* throughput in images per second at batch 1, 10 and 32 (224x224 photo crops; the backends take
  turns run by run so that they see the same load; median over ``--runs``);
* a new class from 10 images, encoding included: ``learn_many`` of 10 images under a new label
  through ``LifelongClassifier(encoder=ImageEncoder(backend=...), unknown_rate=0.02)`` that
  already knows 5 classes and has answered a prediction (target: 150 ms on 2 cores); median and
  worst of ``--classes`` new classes, and the encoding alone;
* agreement with torch on photos that ship with scikit-image (astronaut, chelsea, coffee,
  rocket, motorcycle_left), scikit-learn (china, flower) and matplotlib (grace_hopper), none of
  which calibrates the int8 graph: the centre square of each and 7 random crops, min and mean
  cosine of the features, and top-1 agreement on all of them, on the full photos, and where
  torch's top class leads its second by more than 0.1 in probability.

Nothing here is a test; figures vary with what else runs on the machine (the load average is
printed). The first ONNX use builds the exports (cached; ``--onnx-dir``).

Run: .venv/bin/python benchmarks/bench_image_encoder.py [--runs 5] [--image-size 224]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from perennial import LifelongClassifier
from perennial.encoders.image import BACKENDS, ImageEncoder

TARGET_NEW_CLASS_MS = 150.0
CLEAR_MARGIN = 0.1


def photo_files() -> list[Path]:
    """The bundled photos that are not used to calibrate the int8 graph."""
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    names = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")
    files = [folder / name for name in names]
    try:
        import sklearn

        files += [
            Path(sklearn.__file__).parent / "datasets" / "images" / name
            for name in ("china.jpg", "flower.jpg")
        ]
    except ImportError:
        pass
    try:
        import matplotlib

        files.append(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    except ImportError:
        pass
    return [path for path in files if path.is_file()]


def views(path: Path, count: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The centre square of an image and ``count - 1`` random square crops, resized to size."""
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    width, height = image.size
    short = min(width, height)
    boxes = [((width - short) // 2, (height - short) // 2, short)]
    for _ in range(count - 1):
        side = int(short * rng.uniform(0.4, 1.0))
        boxes.append(
            (int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1)), side)
        )
    out = []
    for left, top, side in boxes:
        crop = image.crop((left, top, left + side, top + side))
        if rng.random() < 0.5 and len(out) > 0:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append(np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR)))
    return out


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=5, help="throughput runs per backend")
    parser.add_argument("--classes", type=int, default=5, help="new classes timed per backend")
    parser.add_argument("--num-threads", type=int, default=None, help="encoder num_threads")
    parser.add_argument("--onnx-dir", default=None, help="export cache (default: the user cache)")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    args = parser.parse_args()
    size = args.image_size
    backends = [name for name in args.backends.split(",") if name]

    print(f"cores available: {len(os.sched_getaffinity(0))}; load average {os.getloadavg()}")
    encoders = {
        name: ImageEncoder(
            image_size=size, backend=name, num_threads=args.num_threads, onnx_dir=args.onnx_dir
        )
        for name in backends
    }
    rng = np.random.default_rng(0)
    files = photo_files()
    photos = np.stack([view for path in files for view in views(path, 8, size, rng)])
    for name, encoder in encoders.items():
        seconds = timed(lambda encoder=encoder: encoder.encode(photos[:2]))
        where = "" if name == "torch" else f" (export loaded or built; {encoder.onnx_directory()})"
        print(f"{name}: first call {seconds:.1f} s{where}")

    # Throughput: about 32 images per timing at each batch size; backends alternate.
    rates: dict[str, dict[int, float]] = {name: {} for name in encoders}
    for batch in (1, 10, 32):
        calls = max(1, 32 // batch)
        images = photos[:batch]
        seconds: dict[str, list[float]] = {name: [] for name in encoders}
        for _ in range(args.runs):
            for name, encoder in encoders.items():
                start = time.perf_counter()
                for _ in range(calls):
                    encoder.encode(images)
                seconds[name].append(time.perf_counter() - start)
        for name in encoders:
            rates[name][batch] = calls * batch / statistics.median(seconds[name])

    # A new class from 10 images through the front door, on a model that is serving.
    sources = [view for path in files for view in views(path, 10, size, rng)]
    groups = [np.stack(sources[i : i + 10]) for i in range(0, len(sources), 10)]
    models = {}
    for name, encoder in encoders.items():
        model = LifelongClassifier(encoder=encoder, unknown_rate=0.02)
        for index in range(5):
            model.learn_many(groups[index % len(groups)], [f"known {index}"] * 10)
        model.predict_one(groups[0][0])
        models[name] = model
    learn: dict[str, list[float]] = {name: [] for name in encoders}
    encode: dict[str, list[float]] = {name: [] for name in encoders}
    for index in range(args.classes):
        images = groups[(5 + index) % len(groups)]
        labels = [f"new {index}"] * len(images)
        for name, model in models.items():
            start = time.perf_counter()
            model.learn_many(images, labels)
            learn[name].append(time.perf_counter() - start)
            model.predict_one(images[0])  # the model answers between two new classes
            start = time.perf_counter()
            encoders[name].encode(images)
            encode[name].append(time.perf_counter() - start)

    # Agreement with torch on the photos and their crops.
    reference, reference_logits = ImageEncoder(image_size=size).encode_with_logits(photos)
    probabilities = np.sort(softmax(reference_logits), axis=1)
    clear = probabilities[:, -1] - probabilities[:, -2] > CLEAR_MARGIN
    full = np.arange(0, len(photos), 8)
    expected = reference_logits.argmax(axis=1)

    print(
        f"\nimage_size {size}; {len(files)} photos x 8 views = {len(photos)} inputs "
        f"({int(clear.sum())} where torch is clear); load average {os.getloadavg()}\n"
    )
    print(
        "| backend | img/s batch 1 | batch 10 | batch 32 | new class from 10 images, "
        "median / worst | encoding 10 | feature cosine min / mean | top-1 all / full / clear |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, encoder in encoders.items():
        features, logits = encoder.encode_with_logits(photos)
        cosine = (features * reference).sum(axis=1) / (
            np.linalg.norm(features, axis=1) * np.linalg.norm(reference, axis=1)
        )
        agree = logits.argmax(axis=1) == expected
        new_class = statistics.median(learn[name]) * 1e3
        verdict = "ok" if new_class <= TARGET_NEW_CLASS_MS else "OVER"
        print(
            f"| {name} | {rates[name][1]:.1f} | {rates[name][10]:.1f} | {rates[name][32]:.1f} "
            f"| {new_class:.0f} / {max(learn[name]) * 1e3:.0f} ms ({verdict}) "
            f"| {statistics.median(encode[name]) * 1e3:.0f} ms "
            f"| {cosine.min():.4f} / {cosine.mean():.4f} "
            f"| {agree.mean():.1%} / {agree[full].mean():.1%} / {agree[clear].mean():.1%} |"
        )
    print(f"\ntarget for a new class: {TARGET_NEW_CLASS_MS:g} ms on 2 cores")
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
