"""The data types every scenario builds and every strategy consumes.

A *scenario* is an ordered stream of *experiences*. Each experience carries its own training
and test arrays, already numeric: images as float32 pixels in ``[0, 1]`` flattened to vectors,
texts as encoder features. Labels are int64 indices into ``Scenario.class_names``. Arrays are
held in memory (not lazy views), so training and replay cost the same on the last task as on the
first.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float32]
LabelArray = NDArray[np.int64]


@dataclass(frozen=True)
class Experience:
    """One task of a stream.

    Parameters
    ----------
    index : int
        Position in the stream, from 0.
    train_x, test_x : numpy.ndarray
        float32 inputs of shape ``(n, *Scenario.input_shape)``.
    train_y, test_y : numpy.ndarray
        int64 labels, indices into ``Scenario.class_names``.
    classes : tuple of int
        The labels this experience may contain (its output head in a task-incremental stream).
    name : str
        A readable description, for example ``"permutation 3"`` or ``"domain: banking"``.
    """

    index: int
    train_x: FloatArray
    train_y: LabelArray
    test_x: FloatArray
    test_y: LabelArray
    classes: tuple[int, ...]
    name: str = ""

    @property
    def n_train(self) -> int:
        return len(self.train_y)

    @property
    def n_test(self) -> int:
        return len(self.test_y)


@dataclass(frozen=True)
class Scenario:
    """An ordered stream of experiences over one label space.

    Parameters
    ----------
    name : str
        Short name, for example ``"permuted-mnist"``.
    experiences : tuple of Experience
        The stream, in training order.
    n_classes : int
        Size of the label space shared by all experiences.
    input_shape : tuple of int
        Shape of one input, for example ``(784,)``.
    task_labels : bool
        True for a task-incremental stream: the task identity is known at test time, so a
        prediction for experience ``j`` is restricted to ``experiences[j].classes``.
    class_names : tuple of str
        Readable names of the labels, ``len(class_names) == n_classes``.
    metadata : dict
        Free-form facts (seed, options, source data set).
    """

    name: str
    experiences: tuple[Experience, ...]
    n_classes: int
    input_shape: tuple[int, ...]
    task_labels: bool = False
    class_names: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.experiences)

    def __iter__(self) -> Iterator[Experience]:
        return iter(self.experiences)

    def __getitem__(self, index: int) -> Experience:
        return self.experiences[index]

    @property
    def n_features(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def recurring_classes(self) -> tuple[int, ...]:
        """Labels in the ``classes`` of more than one experience, ascending.

        Empty for a class-incremental stream (split MNIST), every label for a domain-incremental
        one (permuted MNIST), where each task brings the same classes again.
        """
        seen: set[int] = set()
        again: set[int] = set()
        for experience in self.experiences:
            for label in {int(c) for c in experience.classes}:
                (again if label in seen else seen).add(label)
        return tuple(sorted(again))
