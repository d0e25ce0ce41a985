"""Image encoder (EfficientNet-Lite0) throughput: images per second at each input size.

Encodes batches of 32 random uint8 images after a warm-up call that loads the weights, and prints
the median over ``--runs`` runs for each ``--sizes`` entry. Nothing here is a test; figures vary
with what else runs on the machine (the load average is printed).

Run: .venv/bin/python benchmarks/bench_image_encoder.py [--sizes 224,64] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from perennial.encoders.image import ImageEncoder


def images_per_second(size: int, batch: int, runs: int) -> float:
    encoder = ImageEncoder(image_size=size, batch_size=batch)
    images = np.random.default_rng(4).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    encoder.encode(images[:2])  # load the weights outside the timing
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        encoder.encode(images)
        seconds.append(time.perf_counter() - start)
    return batch / statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="224,64", help="input sizes, e.g. 224,128,64")
    parser.add_argument("--batch", type=int, default=32, help="images per encode call")
    parser.add_argument("--runs", type=int, default=3, help="timed calls per size")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",") if size.strip()]
    print(f"cores available: {len(os.sched_getaffinity(0))}; load average {os.getloadavg()}")
    for size in sizes:
        rate = images_per_second(size, args.batch, args.runs)
        print(f"image_size {size}, batch {args.batch}: {rate:.1f} images/s")
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
