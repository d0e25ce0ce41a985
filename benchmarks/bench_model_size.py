"""What a model costs in memory and on disk, by head, with open set off and on.

Features are 384-d (all-MiniLM-L6-v2's width), 2,000 examples of 50 classes; the ridge heads are
past their dual form (more examples than ``max_dual_examples``), where their size no longer
depends on the number of examples. "memory" is ``LifelongClassifier.state_bytes`` (the learned
statistics; a re-solve of the ridge head needs transient buffers of the same order), "disk" the
saved directory. The encoder's weights are not part of either: a saved model names its encoder.

Run: .venv/bin/python benchmarks/bench_model_size.py
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from perennial import LifelongClassifier
from perennial.heads import NCMHead, RidgeHead, SLDAHead


def main() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 384)).astype(np.float32)
    y = [f"c{i % 50}" for i in range(2000)]
    heads = [
        ("ridge, n_features=4096 (default)", lambda: RidgeHead(n_features=4096)),
        ("ridge, n_features=1024", lambda: RidgeHead(n_features=1024)),
        ("slda", SLDAHead),
        ("ncm", NCMHead),
    ]
    print("| head | open set | memory (MiB) | disk (MiB) |")
    print("|---|---|---|---|")
    for name, make in heads:
        for rate in (None, 0.02):
            model = LifelongClassifier(head=make(), unknown_rate=rate)
            model.learn_many(X, y)
            with tempfile.TemporaryDirectory() as directory:
                model.save(directory)
                disk = sum(
                    os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory)
                )
            state = model.state_bytes / 2**20
            print(
                f"| {name} | {'off' if rate is None else rate} | {state:.2f} | "
                f"{disk / 2**20:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
