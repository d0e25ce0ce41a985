"""A model saved by perennial at commit 903e5b9, before the image encoder took a ``resize`` parameter.

Its encoder record is ``{"image_size": 32, "batch_size": 32, "num_threads": null}``: images were
stretched to 32x32. The test loads it with the current code and checks that it still encodes so.
"""

import json
import sys

import numpy as np

from perennial import LifelongClassifier
from perennial.encoders.image import ImageEncoder
from perennial.heads import NCMHead


def images(seed: int, count: int, channel: int | None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    batch = rng.integers(0, 90, (count, 20, 27, 3), dtype=np.uint8)  # not square: stretched
    if channel is not None:
        batch[..., channel] = rng.integers(160, 256, (count, 20, 27), dtype=np.uint8)
    return batch


def main(out: str) -> None:
    model = LifelongClassifier(ImageEncoder(image_size=32), NCMHead())
    for seed, (label, channel) in enumerate((("red", 0), ("green", 1), ("blue", 2))):
        model.learn_many(images(seed, 3, channel), [label] * 3)
    model.save(f"{out}/ncm")
    probe = images(10, 4, None)
    probe[1, ..., 2] = 230
    np.save(f"{out}/probe.npy", probe)
    expected = {
        "encoder": model.encoder.name,
        "classes": model.classes_,
        "scores": model.decision_scores(probe).tolist(),
        "features": model.encode(probe[:2]).tolist(),
    }
    with open(f"{out}/expected.json", "w") as f:
        json.dump(expected, f, indent=1)


if __name__ == "__main__":  # run with PYTHONPATH pointing at the src/ of commit 903e5b9
    main(sys.argv[1])
