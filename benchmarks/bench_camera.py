"""The factory camera: new classes beside the 1,000 ImageNet ones, through the front door.

Everything goes through ``LifelongClassifier.from_pretrained("efficientnet-lite0")``:

1. **A new class from 10 images, encoding included**: 10 PNG files (96-pixel crops of a bundled
   texture) learned by ``learn_many(files, labels)`` on a model that already learned one class;
   median and worst of ``--repeats`` fresh classes, per image-encoder backend (torch; ONNX when
   ``ImageEncoder`` takes ``backend=``). Target: at most 150 ms on 2 cores.
2. **Three texture "products"** (scikit-image's brick, grass, gravel): ``--train`` crops each,
   ``--test`` held-out crops each; accuracy on the held-out crops (target at least 95%).
3. **MNIST digits as ten more classes** (``$PERENNIAL_DATA/mnist-10k``, ``--digits`` training
   and 100 test images per digit): accuracy among all classes, and the joint bound on the same
   features (multinomial logistic regression on the digits' features, trained on all at once).
4. **The 1,002 test**: after the 13 new classes, the top-1 label of every bundled photo must be
   the bare network's, and at least 98% of ``--per-photo`` augmented crops of each photo
   (``bench_pretrained.augmented``) must keep their bare label. Printed too: how many new-class
   test images the pretrained head answered, and how many photo crops the instant head took.
5. **Encoder throughput** at batch 32 (224-pixel images decoded from PNG bytes), per backend.

Run: .venv/bin/python benchmarks/bench_camera.py [--repeats 5] [--train 10] [--test 100]
"""

from __future__ import annotations

import argparse
import inspect
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_pretrained import CROP, PHOTOS, TEXTURES, augmented, photo, texture_crops
from perennial import LifelongClassifier
from perennial.datasets import data_root
from perennial.datasets.mnist import load_mnist
from perennial.encoders import Precomputed
from perennial.encoders.image import ImageEncoder


def backends() -> list[str]:
    if "backend" in inspect.signature(ImageEncoder).parameters:
        return ["torch", "onnx"]
    return ["torch"]


def make_encoder(backend: str) -> ImageEncoder:
    if backend == "torch":
        return ImageEncoder()
    return ImageEncoder(backend=backend)


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def time_new_class(backend: str, repeats: int, rng: np.random.Generator, folder: Path) -> None:
    import skimage.data

    model = LifelongClassifier.from_pretrained(encoder=make_encoder(backend))
    textures = {name: getattr(skimage.data, name)() for name in TEXTURES}
    first = []
    for i, crop in enumerate(texture_crops(textures["brick"], 10, rng)):
        first.append(folder / f"warm-{backend}-{i}.png")
        first[-1].write_bytes(png_bytes(crop))
    model.learn_many(first, ["brick"] * 10)  # loads the weights; the model has a class
    times = []
    for r in range(repeats):
        name = TEXTURES[1 + r % 2]
        files = []
        for i, crop in enumerate(texture_crops(textures[name], 10, rng)):
            files.append(folder / f"{backend}-{r}-{i}.png")
            files[-1].write_bytes(png_bytes(crop))
        started = time.perf_counter()
        model.learn_many(files, [f"{name}-{r}"] * 10)
        times.append(time.perf_counter() - started)
    print(
        f"  {backend:<5} a new class from 10 PNG files, encoding included: median "
        f"{1000 * statistics.median(times):.0f} ms, worst {1000 * max(times):.0f} ms "
        f"(of {repeats}; target <= 150 ms)"
    )


def throughput(backend: str, rng: np.random.Generator) -> None:
    import skimage.data

    encoder = make_encoder(backend)
    source = skimage.data.astronaut()
    images = [png_bytes(c) for c in augmented(source, 32, rng)]
    encoder.encode(images[:2])
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        encoder.encode(images)
        runs.append(time.perf_counter() - started)
    print(f"  {backend:<5} batch of 32 PNG photo crops: {32 / min(runs):.1f} images/s (best of 3)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="new classes timed per backend")
    parser.add_argument("--train", type=int, default=10, help="training crops per texture")
    parser.add_argument("--test", type=int, default=100, help="held-out crops per texture")
    parser.add_argument("--digits", type=int, default=10, help="training images per digit")
    parser.add_argument("--per-photo", type=int, default=50, help="augmented crops per photo")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import skimage.data
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(args.seed)
    print(f"backends: {', '.join(backends())}")
    print("1. a new class from 10 images")
    with tempfile.TemporaryDirectory() as folder:
        for backend in backends():
            time_new_class(backend, args.repeats, rng, Path(folder))

    encoder = ImageEncoder()
    started = time.perf_counter()
    train, test = {}, {}
    for name in TEXTURES:
        crops = texture_crops(getattr(skimage.data, name)(), args.train + args.test, rng)
        features = encoder.encode(crops)
        train[name], test[name] = features[: args.train], features[args.train :]
    mnist = load_mnist(data_root() / "mnist-10k")
    digit_train, digit_test = {}, {}
    for digit in range(10):
        rows = np.flatnonzero(mnist.train.labels == digit)[: args.digits]
        digit_train[f"digit {digit}"] = encoder.encode(mnist.train.inputs[rows])
        rows = np.flatnonzero(mnist.test.labels == digit)[:100]
        digit_test[f"digit {digit}"] = encoder.encode(mnist.test.inputs[rows])
    whole = {name: encoder.encode([photo(name)]) for name in PHOTOS}
    crops = {name: encoder.encode(augmented(photo(name), args.per_photo, rng)) for name in PHOTOS}
    print(f"\n(encoded the evaluation images in {time.perf_counter() - started:.0f} s, {CROP} px)")

    model = LifelongClassifier.from_pretrained(encoder=Precomputed(encoder))
    bare_whole = {name: model.predict_one(X[0]) for name, X in whole.items()}
    bare_crops = {name: model.predict_many(X) for name, X in crops.items()}
    for name in TEXTURES:
        model.learn_many(train[name], [name] * args.train)
    for name, X in digit_train.items():
        model.learn_many(X, [name] * len(X))
    print(f"\nlearned {len(TEXTURES)} textures and 10 digits: {len(model.classes_)} classes")

    print("2. textures")
    wrong_head = total_new = 0
    right = 0
    for name in TEXTURES:
        rows = model.predict_detailed(test[name], top=1)
        right += sum(row["label"] == name for row in rows)
        wrong_head += sum(row["source"] == "pretrained" for row in rows)
        total_new += len(rows)
    print(
        f"  held-out crops labelled right: {right}/{len(TEXTURES) * args.test} "
        f"({right / (len(TEXTURES) * args.test):.1%}; target >= 95%)"
    )

    print("3. MNIST digits as 10 more classes")
    X_train = np.vstack(list(digit_train.values()))
    y_train = [name for name, X in digit_train.items() for _ in range(len(X))]
    X_test = np.vstack(list(digit_test.values()))
    y_test = [name for name, X in digit_test.items() for _ in range(len(X))]
    rows = model.predict_detailed(X_test, top=1)
    right = sum(row["label"] == y for row, y in zip(rows, y_test, strict=True))
    wrong_head += sum(row["source"] == "pretrained" for row in rows)
    total_new += len(rows)
    joint = LogisticRegression(C=1.0, max_iter=2000).fit(X_train, y_train)
    bound = float(np.mean(joint.predict(X_test) == np.asarray(y_test)))
    instant = sum(
        row["label"] == y
        for row, y in zip(model.predict_detailed(X_test, top=1), y_test, strict=True)
        if row["source"] == "instant"
    )
    print(
        f"  test digits labelled right among all {len(model.classes_)} classes: {right}/{len(y_test)} "
        f"({right / len(y_test):.1%}); answered by the instant head and right: {instant}"
    )
    print(
        f"  joint bound, logistic regression on the digits' features alone (10 classes, trained "
        f"at once): {bound:.1%}"
    )

    print("4. the 1,002 test")
    kept_whole = sum(model.predict_one(X[0]) == bare_whole[name] for name, X in whole.items())
    print(f"  whole bundled photos keeping their top-1 label: {kept_whole}/{len(whole)}")
    for name in PHOTOS:
        print(f"    {name:<10} {bare_whole[name]!r} -> {model.predict_one(whole[name][0])!r}")
    kept = taken = total = 0
    for name, X in crops.items():
        rows = model.predict_detailed(X, top=1)
        kept += sum(row["label"] == b for row, b in zip(rows, bare_crops[name], strict=True))
        taken += sum(row["source"] == "instant" for row in rows)
        total += len(rows)
    print(
        f"  augmented photo crops keeping their label: {kept}/{total} ({kept / total:.1%}; target >= 98%)"
    )
    print(f"  photo crops answered by the instant head: {taken}/{total} ({taken / total:.1%})")
    print(
        f"  new-class test images answered by the pretrained head: {wrong_head}/{total_new} "
        f"({wrong_head / total_new:.1%})"
    )

    print("5. encoder throughput")
    for backend in backends():
        throughput(backend, rng)


if __name__ == "__main__":
    main()
