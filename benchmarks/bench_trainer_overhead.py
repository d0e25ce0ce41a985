"""Cost of the strategies' training loop against a bare PyTorch loop doing the same work.

Both train the same MLP (784-256-256-10, ReLU, PyTorch's default initialisation after
``torch.manual_seed(seed)``) for one epoch of SGD (lr 0.01, batch 10) on the same permuted
MNIST digits (the 8,000 training images of ``mnist-10k``, pixels in [0, 1], one fixed pixel
permutation), shuffled by a generator seeded with the same seed. One side is
``perennial.strategies.Naive`` (the trainer, with no hook overridden); the other a hand-written
loop. Runs alternate between the two (after one untimed warm-up of each); the script prints the
median seconds of each, the overhead of the trainer, and whether the two end with bit-identical
weights, which shows they did the same work.

Run: .venv/bin/python benchmarks/bench_trainer_overhead.py  (about 10 seconds on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from torch import nn

from perennial.datasets import load_mnist
from perennial.scenarios.base import Experience, Scenario
from perennial.strategies import Naive

HIDDEN = (256, 256)
LR = 0.01
BATCH_SIZE = 10
TARGET_OVERHEAD_PERCENT = 15.0


def permuted_mnist(seed: int) -> Scenario:
    data = load_mnist()
    permutation = np.random.default_rng(seed).permutation(28 * 28)

    def pixels(images: np.ndarray) -> np.ndarray:
        flat = images.reshape(len(images), -1).astype(np.float32) / 255.0
        return np.ascontiguousarray(flat[:, permutation])

    experience = Experience(
        index=0,
        train_x=pixels(data.train.inputs),
        train_y=data.train.labels.astype(np.int64),
        test_x=pixels(data.test.inputs),
        test_y=data.test.labels.astype(np.int64),
        classes=tuple(range(10)),
        name=f"permutation seed {seed}",
    )
    return Scenario("permuted-mnist-10k", (experience,), n_classes=10, input_shape=(784,))


def bare_loop(x: np.ndarray, y: np.ndarray, seed: int) -> nn.Module:
    """The textbook loop: no hooks, no checks, nothing but the SGD steps."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(784, HIDDEN[0]),
        nn.ReLU(),
        nn.Linear(HIDDEN[0], HIDDEN[1]),
        nn.ReLU(),
        nn.Linear(HIDDEN[1], 10),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    generator = torch.Generator().manual_seed(seed)
    inputs, labels = torch.from_numpy(x), torch.from_numpy(y)
    order = torch.randperm(len(labels), generator=generator)
    for start in range(0, len(labels), BATCH_SIZE):
        index = order[start : start + BATCH_SIZE]
        loss = nn.functional.cross_entropy(model(inputs[index]), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def trainer(scenario: Scenario, seed: int) -> nn.Module:
    strategy = Naive(hidden=HIDDEN, epochs=1, batch_size=BATCH_SIZE, lr=LR, seed=seed)
    strategy.fit_experience(scenario[0], scenario)
    return strategy.model_


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of each (default 7)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    scenario = permuted_mnist(args.seed)
    experience = scenario[0]
    runs = {
        "trainer": lambda: trainer(scenario, args.seed),
        "bare": lambda: bare_loop(experience.train_x, experience.train_y, args.seed),
    }
    models = {name: run() for name, run in runs.items()}  # warm-up, and the weights to compare
    identical = all(
        torch.equal(p, q)
        for p, q in zip(models["trainer"].parameters(), models["bare"].parameters(), strict=True)
    )
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(args.repeats):
        order = list(runs) if repeat % 2 == 0 else list(reversed(runs))
        for name in order:
            start = time.perf_counter()
            runs[name]()
            seconds[name].append(time.perf_counter() - start)

    steps = -(-experience.n_train // BATCH_SIZE)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    overhead = 100.0 * (median["trainer"] / median["bare"] - 1.0)
    verdict = "ok" if overhead <= TARGET_OVERHEAD_PERCENT else "OVER"
    print(
        f"MLP 784-{HIDDEN[0]}-{HIDDEN[1]}-10, {experience.n_train} permuted MNIST digits, "
        f"1 epoch, batch {BATCH_SIZE} ({steps} steps), SGD lr {LR}, seed {args.seed}, "
        f"{args.threads} torch thread(s), median of {args.repeats} interleaved runs"
    )
    for name in runs:
        values = ", ".join(f"{v:.3f}" for v in seconds[name])
        per_step = 1e6 * median[name] / steps
        print(f"  {name:<8} median {median[name]:.3f} s ({per_step:.0f} µs/step)   runs: {values}")
    print(
        f"  overhead of the trainer: {overhead:+.1f}%   limit {TARGET_OVERHEAD_PERCENT:g}%: {verdict}"
    )
    print(f"  identical final weights: {identical}")
    print(
        json.dumps(
            {
                "trainer_seconds": median["trainer"],
                "bare_seconds": median["bare"],
                "overhead_percent": overhead,
                "identical_weights": identical,
                "threads": args.threads,
            }
        )
    )


if __name__ == "__main__":
    main()
