"""The MNIST streams: permuted, rotated and split.

Inputs are float32 pixels in ``[0, 1]``, flattened row by row (784 values for 28x28 digits).
Permuted and rotated MNIST are domain-incremental: every task holds the same ten digits, seen
through a different pixel permutation or rotation. Split MNIST is class-incremental (or
task-incremental with ``task_labels=True``): each task brings new digits.

Every builder reads ``data``: None for ``data_root() / "mnist-10k"``, a folder in MNIST's IDX
format (full MNIST, Fashion-MNIST and KMNIST use the same files), or a
:class:`~perennial.datasets.Dataset` of ``(n, H, W)`` images.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from perennial.datasets.base import Dataset
from perennial.datasets.mnist import load_mnist
from perennial.encoders.cache import FeatureCache
from perennial.exceptions import InputTypeError, InvalidInputError, InvalidParameterError
from perennial.scenarios.assembly import (
    PERMUTATION,
    SUBSAMPLE,
    EncoderLike,
    LabelSpace,
    check_count,
    check_optional_count,
    check_real,
    check_seed,
    stratified_subsample,
    task_rng,
)
from perennial.scenarios.base import Experience, FloatArray, Scenario
from perennial.scenarios.generic import split_classes

__all__ = ["permuted_mnist", "pixel_permutations", "rotated_mnist", "split_mnist"]

MnistData = Dataset | str | os.PathLike[str] | None


def pixel_permutations(n_tasks: int, n_pixels: int = 784, seed: int = 0) -> list[np.ndarray]:
    """The pixel permutations of permuted MNIST: the identity, then one seeded draw per task.

    Task ``t``'s permutation depends on ``seed`` and ``t`` only, not on ``n_tasks``. A task's
    input is ``pixels[:, permutation]``: its pixel ``j`` is the original pixel
    ``permutation[j]``.

    Examples
    --------
    >>> first, second = pixel_permutations(2, n_pixels=5, seed=0)
    >>> first.tolist(), sorted(second.tolist())
    ([0, 1, 2, 3, 4], [0, 1, 2, 3, 4])
    """
    n_tasks = check_count(n_tasks, "n_tasks")
    n_pixels = check_count(n_pixels, "n_pixels")
    seed = check_seed(seed)
    permutations = [np.arange(n_pixels, dtype=np.int64)]
    for t in range(1, n_tasks):
        permutations.append(task_rng(seed, PERMUTATION, t).permutation(n_pixels).astype(np.int64))
    return permutations


def permuted_mnist(
    n_tasks: int = 10,
    *,
    examples_per_task: int | None = None,
    seed: int = 0,
    data: MnistData = None,
) -> Scenario:
    """Permuted MNIST: each task shows all ten digits under its own fixed pixel permutation.

    Task 1 is the identity (the original digits), task ``t`` a permutation drawn from ``seed``
    (see :func:`pixel_permutations`). The test set of each task is the whole test split under
    that task's permutation.

    Parameters
    ----------
    n_tasks
        Number of tasks (Mirzadeh et al. 2020 use 20).
    examples_per_task
        Draw this many training images per task (seeded, stratified by digit, a new draw per
        task); None keeps all.
    seed
        Fixes the permutations and the draws.
    data
        None, an MNIST-format folder, or a Dataset of ``(n, H, W)`` images.

    Returns
    -------
    Scenario
        Domain-incremental (``task_labels=False``), every ``Experience.classes`` the ten digits.

    Raises
    ------
    InvalidParameterError
        A bad ``n_tasks``, ``examples_per_task`` or ``seed``, or more examples per task than
        the training split holds.

    Examples
    --------
    >>> import numpy as np
    >>> from perennial.datasets import Dataset, Split
    >>> rng = np.random.default_rng(0)
    >>> images = rng.integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    >>> data = Dataset("tiny", Split(images[:20], np.arange(20) % 10),
    ...                Split(images[20:], np.arange(10)))
    >>> scenario = permuted_mnist(n_tasks=3, data=data)
    >>> len(scenario), scenario.input_shape, scenario[1].name
    (3, (784,), 'permutation 1')
    """
    n_tasks = check_count(n_tasks, "n_tasks")
    examples_per_task = check_optional_count(examples_per_task, "examples_per_task")
    seed = check_seed(seed)
    dataset = _load(data)
    height, width = _image_size(dataset)
    permutations = pixel_permutations(n_tasks, height * width, seed)

    def permute(t: int, images: FloatArray) -> FloatArray:
        return images.reshape(len(images), -1)[:, permutations[t]]

    names = [f"permutation {t}" + (" (identity)" if t == 0 else "") for t in range(n_tasks)]
    return _transformed(
        dataset,
        "permuted-mnist",
        names,
        permute,
        examples_per_task=examples_per_task,
        seed=seed,
        metadata={"n_tasks": n_tasks},
    )


def rotated_mnist(
    n_tasks: int = 10,
    *,
    degrees_per_task: float = 9.0,
    examples_per_task: int | None = None,
    seed: int = 0,
    data: MnistData = None,
) -> Scenario:
    """Rotated MNIST: task ``t`` shows all ten digits rotated by ``(t - 1) * degrees_per_task``.

    Rotation is counter-clockwise about the image centre, with bilinear interpolation and
    zeros outside the image (``scipy.ndimage.rotate(..., reshape=False, order=1)``), then
    clipped to ``[0, 1]``. The angles are fixed, so ``seed`` only matters with
    ``examples_per_task``.

    Parameters
    ----------
    n_tasks
        Number of tasks (Mirzadeh et al. 2020 use 20 tasks, 9 degrees apart).
    degrees_per_task
        The angle between consecutive tasks.
    examples_per_task, seed, data
        As in :func:`permuted_mnist`.

    Returns
    -------
    Scenario
        Domain-incremental; ``metadata["angles"]`` lists the angle of each task.

    Raises
    ------
    InvalidParameterError
        A bad count, angle or seed, or more examples per task than the training split holds.

    Examples
    --------
    >>> import numpy as np
    >>> from perennial.datasets import Dataset, Split
    >>> rng = np.random.default_rng(0)
    >>> images = rng.integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    >>> data = Dataset("tiny", Split(images[:20], np.arange(20) % 10),
    ...                Split(images[20:], np.arange(10)))
    >>> scenario = rotated_mnist(n_tasks=3, data=data)
    >>> scenario.metadata["angles"], scenario[2].name
    ([0.0, 9.0, 18.0], 'rotation 18 degrees')
    """
    n_tasks = check_count(n_tasks, "n_tasks")
    step = check_real(degrees_per_task, "degrees_per_task")
    examples_per_task = check_optional_count(examples_per_task, "examples_per_task")
    seed = check_seed(seed)
    dataset = _load(data)
    _image_size(dataset)
    angles = [t * step for t in range(n_tasks)]

    def rotate(t: int, images: FloatArray) -> FloatArray:
        if angles[t] == 0.0:
            return images.reshape(len(images), -1)
        from scipy import ndimage

        turned = np.asarray(
            ndimage.rotate(images, angles[t], axes=(2, 1), reshape=False, order=1),
            dtype=np.float32,
        )
        return np.clip(turned, 0.0, 1.0).reshape(len(images), -1)

    return _transformed(
        dataset,
        "rotated-mnist",
        [f"rotation {angle:g} degrees" for angle in angles],
        rotate,
        examples_per_task=examples_per_task,
        seed=seed,
        metadata={"n_tasks": n_tasks, "angles": angles},
    )


def split_mnist(
    n_tasks: int | None = None,
    classes_per_task: int | None = None,
    *,
    examples_per_task: int | None = None,
    seed: int = 0,
    class_order: Sequence[Any] | None = None,
    task_labels: bool = False,
    data: MnistData = None,
    encoder: EncoderLike = None,
    cache: FeatureCache | str | os.PathLike[str] | None = None,
) -> Scenario:
    """Split MNIST: the ten digits in tasks of a few digits each (5 tasks of 2 by default).

    Class-incremental by default; with ``task_labels=True`` task-incremental (the task is known
    at test time, as in the ``split-mnist-task`` scenario). Labels stay the digits themselves.

    Parameters
    ----------
    n_tasks, classes_per_task
        The layout; both None: 5 tasks of 2 digits.
    examples_per_task
        Draw this many training images per task (seeded, stratified by digit).
    seed
        Shuffles the digit order (unless ``class_order`` is given) and fixes the draws.
    class_order
        The digits in the order they arrive, for example ``range(10)`` for the usual pairs
        0/1, 2/3, ...
    task_labels
        True for the task-incremental variant.
    data
        As in :func:`permuted_mnist`.
    encoder, cache
        Features instead of pixels; see :func:`~perennial.scenarios.class_incremental`.

    Returns
    -------
    Scenario

    Raises
    ------
    InvalidParameterError
        An impossible layout or a bad option.

    Examples
    --------
    >>> import numpy as np
    >>> from perennial.datasets import Dataset, Split
    >>> rng = np.random.default_rng(0)
    >>> images = rng.integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    >>> data = Dataset("tiny", Split(images[:20], np.arange(20) % 10),
    ...                Split(images[20:], np.arange(10)))
    >>> scenario = split_mnist(class_order=range(10), data=data)
    >>> [e.classes for e in scenario], float(scenario[0].train_x.max()) <= 1.0
    ([(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)], True)
    """
    if n_tasks is None and classes_per_task is None:
        classes_per_task = 2
    return split_classes(
        _loader(data),
        name="split-mnist-task" if task_labels is True else "split-mnist",
        n_tasks=n_tasks,
        classes_per_task=classes_per_task,
        examples_per_task=examples_per_task,
        seed=seed,
        class_order=class_order,
        task_labels=task_labels,
        encoder=encoder,
        cache=cache,
        n_known_classes=None if isinstance(data, Dataset) else 10,
    )


def _loader(data: MnistData) -> Callable[[], Dataset]:
    if isinstance(data, Dataset):
        return lambda: data
    if data is None or isinstance(data, (str, os.PathLike)):
        return lambda: load_mnist(data)
    raise InputTypeError(
        f"expected data to be a Dataset, an MNIST-format folder or None, got {type(data).__name__}"
    )


def _load(data: MnistData) -> Dataset:
    return _loader(data)()


def _image_size(dataset: Dataset) -> tuple[int, int]:
    """The image height and width, after checking both splits hold (n, H, W) pixel arrays."""
    shapes = []
    for split_name, split in (("train", dataset.train), ("test", dataset.test)):
        images = split.inputs
        if not isinstance(images, np.ndarray) or images.ndim != 3:
            shape = images.shape if isinstance(images, np.ndarray) else type(images).__name__
            raise InvalidInputError(
                f"expected {split_name} images of shape (n, height, width), got {shape}"
            )
        if images.dtype != np.uint8:
            raise InvalidInputError(
                f"expected {split_name} images as uint8 pixels, got dtype {images.dtype}"
            )
        shapes.append(images.shape[1:])
    if shapes[0] != shapes[1]:
        raise InvalidInputError(
            f"expected train and test images of one size, got {shapes[0]} and {shapes[1]}"
        )
    return int(shapes[0][0]), int(shapes[0][1])


def _transformed(
    dataset: Dataset,
    name: str,
    names: list[str],
    transform: Callable[[int, FloatArray], FloatArray],
    *,
    examples_per_task: int | None,
    seed: int,
    metadata: dict[str, Any],
) -> Scenario:
    """One experience per transform of the whole data set (subsampled first, if asked)."""
    labels = LabelSpace.of(dataset)
    n_train = len(labels.train_y)
    if examples_per_task is not None and examples_per_task > n_train:
        raise InvalidParameterError(
            f"examples_per_task={examples_per_task} is more than the {n_train} training images "
            f"of {dataset.name!r}"
        )
    assert isinstance(dataset.train.inputs, np.ndarray)  # checked by _image_size
    assert isinstance(dataset.test.inputs, np.ndarray)
    train_images, test_images = dataset.train.inputs, dataset.test.inputs
    test_pixels = test_images.astype(np.float32) / np.float32(255)
    classes = tuple(range(labels.n_classes))
    experiences = []
    for t, task_name in enumerate(names):
        if examples_per_task is None:
            chosen = np.arange(n_train, dtype=np.int64)
        else:
            rng = task_rng(seed, SUBSAMPLE, t)
            chosen = stratified_subsample(labels.train_y, examples_per_task, rng)
        train_pixels = train_images[chosen].astype(np.float32) / np.float32(255)
        experiences.append(
            Experience(
                index=t,
                train_x=np.ascontiguousarray(transform(t, train_pixels)),
                train_y=labels.train_y[chosen],
                test_x=np.ascontiguousarray(transform(t, test_pixels)),
                test_y=labels.test_y.copy(),
                classes=classes,
                name=task_name,
            )
        )
    facts: dict[str, Any] = {
        "dataset": dataset.name,
        "encoder": None,
        "seed": seed,
        "examples_per_task": examples_per_task,
        "image_shape": tuple(int(s) for s in train_images.shape[1:]),
    }
    facts.update(metadata)
    return Scenario(
        name=name,
        experiences=tuple(experiences),
        n_classes=labels.n_classes,
        input_shape=(int(np.prod(train_images.shape[1:])),),
        task_labels=False,
        class_names=labels.class_names,
        metadata=facts,
    )
