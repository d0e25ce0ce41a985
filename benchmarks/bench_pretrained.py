"""1,000 ImageNet classes + new ones: does learning new classes take answers from the old ones?

A model from ``LifelongClassifier.from_pretrained("efficientnet-lite0")`` learns 3 new classes,
96-pixel crops of scikit-image's bundled brick, grass and gravel textures (``--train`` crops each).
Then it is asked about

* augmented crops of scikit-image's bundled photographs (astronaut, coffee, chelsea, rocket,
  motorcycle, camera): ``--per-photo`` random crops each, a square of 60-100% of the shorter
  side anywhere in the photo, flipped left-right half of the time. Printed: the share whose
  answer is still the bare network's top-1 label, and the share the instant head took;
* ``--test`` held-out crops of each texture: the share labelled with their texture, and the share
  the pretrained head answered.

The same is printed for one texture learned alone (the gate's one-class case), for each texture.
The bare network's label is the argmax of the packaged classifier on the same features (the tests
check that against ``EfficientNetLite0.forward``).

Run: .venv/bin/python benchmarks/bench_pretrained.py [--per-photo 50] [--train 10] [--test 100]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from perennial import LifelongClassifier
from perennial.encoders import Precomputed
from perennial.encoders.image import ImageEncoder

TEXTURES = ("brick", "grass", "gravel")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle", "camera")
CROP = 96


def photo(name: str) -> np.ndarray:
    import skimage.data

    if name == "motorcycle":
        image: np.ndarray = skimage.data.stereo_motorcycle()[0]
        return image
    image = getattr(skimage.data, name)()
    return image


def augmented(image: np.ndarray, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    short = min(image.shape[:2])
    for _ in range(count):
        side = int(rng.integers(int(0.6 * short), short + 1))
        top = int(rng.integers(0, image.shape[0] - side + 1))
        left = int(rng.integers(0, image.shape[1] - side + 1))
        crop = image[top : top + side, left : left + side]
        out.append(crop[:, ::-1].copy() if rng.random() < 0.5 else crop)
    return out


def texture_crops(image: np.ndarray, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    rows = rng.integers(0, image.shape[0] - CROP + 1, count)
    cols = rng.integers(0, image.shape[1] - CROP + 1, count)
    return [image[r : r + CROP, c : c + CROP] for r, c in zip(rows, cols, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-photo", type=int, default=50, help="augmented crops per photo")
    parser.add_argument("--train", type=int, default=10, help="training crops per texture")
    parser.add_argument("--test", type=int, default=100, help="held-out crops per texture")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import skimage.data

    rng = np.random.default_rng(args.seed)
    encoder = ImageEncoder()
    started = time.perf_counter()
    photo_features = {
        name: encoder.encode(augmented(photo(name), args.per_photo, rng)).astype(np.float64)
        for name in PHOTOS
    }
    train, test = {}, {}
    for name in TEXTURES:
        crops = texture_crops(getattr(skimage.data, name)(), args.train + args.test, rng)
        features = encoder.encode(crops).astype(np.float64)
        train[name], test[name] = features[: args.train], features[args.train :]
    images = len(PHOTOS) * args.per_photo + len(TEXTURES) * (args.train + args.test)
    print(f"encoded {images} images in {time.perf_counter() - started:.1f} s\n")

    bare = LifelongClassifier.from_pretrained(encoder=Precomputed(encoder))
    reference = {name: bare.predict_many(X) for name, X in photo_features.items()}

    def evaluate(learned: tuple[str, ...]) -> None:
        model = LifelongClassifier.from_pretrained(encoder=Precomputed(encoder))
        model.learn_many(
            np.vstack([train[name] for name in learned]),
            [name for name in learned for _ in range(args.train)],
        )
        print(f"learned: {', '.join(learned)} ({args.train} crops each)")
        kept_all = taken_all = 0
        for name, X in photo_features.items():
            rows = model.predict_detailed(X, top=1)
            kept = sum(r["label"] == ref for r, ref in zip(rows, reference[name], strict=True))
            taken = sum(r["source"] == "instant" for r in rows)
            kept_all, taken_all = kept_all + kept, taken_all + taken
            print(
                f"  photo {name:<10} keeps the pretrained label {kept}/{len(rows)}, "
                f"instant head took {taken}"
            )
        total = len(PHOTOS) * args.per_photo
        print(
            f"  all photo crops: {kept_all / total:.1%} keep the pretrained label, "
            f"{taken_all / total:.1%} answered by the instant head"
        )
        for name in TEXTURES:
            rows = model.predict_detailed(test[name], top=1)
            right = sum(r["label"] == name for r in rows)
            pretrained = sum(r["source"] == "pretrained" for r in rows)
            status = "learned" if name in learned else "not learned"
            print(
                f"  texture {name:<7} ({status}): labelled {name} {right}/{len(rows)}, "
                f"pretrained head answered {pretrained}/{len(rows)}"
            )
        print()

    evaluate(TEXTURES)
    for name in TEXTURES:
        evaluate((name,))


if __name__ == "__main__":
    main()
