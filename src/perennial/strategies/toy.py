"""A tiny synthetic stream for the strategies' examples and quick checks (milliseconds to train)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from perennial.scenarios.base import Experience, Scenario

__all__ = ["toy_scenario"]


def toy_scenario(
    *,
    n_tasks: int = 2,
    classes_per_task: int = 2,
    n_features: int = 8,
    per_class: int = 30,
    task_labels: bool = False,
    seed: int = 0,
) -> Scenario:
    """Gaussian blobs split by class: experience ``t`` holds classes ``t*k ... t*k + k - 1``.

    Each class is a unit-variance blob around its own random centre (scale 3), with ``per_class``
    training and ``per_class // 2`` test examples.

    Examples
    --------
    >>> scenario = toy_scenario()
    >>> [e.classes for e in scenario], scenario.n_features, scenario.n_classes
    ([(0, 1), (2, 3)], 8, 4)
    """
    rng = np.random.default_rng(seed)
    n_classes = n_tasks * classes_per_task
    centres = rng.normal(0.0, 3.0, (n_classes, n_features))

    def sample(label: int, count: int) -> NDArray[np.float32]:
        noise = rng.normal(0.0, 1.0, (count, n_features))
        return np.asarray(centres[label] + noise, dtype=np.float32)

    experiences = []
    for t in range(n_tasks):
        classes = tuple(range(t * classes_per_task, (t + 1) * classes_per_task))
        parts = {}
        for split, count in (("train", per_class), ("test", per_class // 2)):
            x = np.vstack([sample(c, count) for c in classes])
            y = np.repeat(np.asarray(classes, dtype=np.int64), count)
            order = rng.permutation(len(y))
            parts[split] = (x[order], y[order])
        experiences.append(
            Experience(
                index=t,
                train_x=parts["train"][0],
                train_y=parts["train"][1],
                test_x=parts["test"][0],
                test_y=parts["test"][1],
                classes=classes,
                name=f"classes {classes[0]}-{classes[-1]}",
            )
        )
    return Scenario(
        name="toy-blobs",
        experiences=tuple(experiences),
        n_classes=n_classes,
        input_shape=(n_features,),
        task_labels=task_labels,
        class_names=tuple(f"class {c}" for c in range(n_classes)),
        metadata={"seed": seed},
    )
