"""Split CIFAR-10 and split CIFAR-100: the classes of CIFAR in tasks of a few classes each.

Inputs are float32 pixels in ``[0, 1]``, each 32x32x3 image flattened in height, width, channel
order (``metadata["image_shape"] == (32, 32, 3)`` to unflatten), or an encoder's features.
Labels are CIFAR's own (0..9 or 0..99), named by ``Scenario.class_names``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from perennial.datasets.base import Dataset
from perennial.datasets.cifar import load_cifar10, load_cifar100
from perennial.encoders.cache import FeatureCache
from perennial.exceptions import InputTypeError
from perennial.scenarios.assembly import EncoderLike
from perennial.scenarios.base import Scenario
from perennial.scenarios.generic import split_classes

__all__ = ["split_cifar10", "split_cifar100"]

CifarData = Dataset | str | os.PathLike[str] | None


def split_cifar10(
    n_tasks: int | None = None,
    classes_per_task: int | None = None,
    *,
    examples_per_task: int | None = None,
    seed: int = 0,
    class_order: Sequence[Any] | None = None,
    task_labels: bool = False,
    data: CifarData = None,
    encoder: EncoderLike = None,
    cache: FeatureCache | str | os.PathLike[str] | None = None,
) -> Scenario:
    """Split CIFAR-10: 5 tasks of 2 classes by default, class-incremental.

    Parameters
    ----------
    n_tasks, classes_per_task
        The layout; both None: 5 tasks of 2 classes.
    examples_per_task
        Draw this many training images per task (seeded, stratified by class); None keeps all.
    seed
        Shuffles the class order (unless ``class_order`` is given) and fixes the draws.
    class_order
        The classes in the order they arrive, as labels (0..9) or names (``"cat"``).
    task_labels
        True for the task-incremental variant (the task is known at test time).
    data
        None for ``data_root() / "cifar-10-batches-py"``, that folder elsewhere, or a Dataset.
    encoder, cache
        Features instead of pixels, for example ``encoder="image"``; see
        :func:`~perennial.scenarios.class_incremental`.

    Returns
    -------
    Scenario

    Raises
    ------
    InvalidParameterError
        An impossible layout or a bad option (checked before the files are read).
    DatasetNotFoundError
        The CIFAR-10 files are missing.

    Examples
    --------
    >>> import numpy as np
    >>> from perennial.datasets import Dataset, Split
    >>> rng = np.random.default_rng(0)
    >>> images = rng.integers(0, 256, size=(30, 32, 32, 3), dtype=np.uint8)
    >>> data = Dataset("tiny", Split(images[:20], np.arange(20) % 10),
    ...                Split(images[20:], np.arange(10)), metadata={"kind": "image"})
    >>> scenario = split_cifar10(class_order=range(10), data=data)
    >>> len(scenario), scenario.input_shape, scenario[0].classes
    (5, (3072,), (0, 1))
    """
    if n_tasks is None and classes_per_task is None:
        classes_per_task = 2
    return split_classes(
        _loader(data, load_cifar10),
        name="split-cifar10",
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


def split_cifar100(
    n_tasks: int | None = None,
    classes_per_task: int | None = None,
    *,
    examples_per_task: int | None = None,
    seed: int = 0,
    class_order: Sequence[Any] | None = None,
    task_labels: bool = False,
    data: CifarData = None,
    encoder: EncoderLike = None,
    cache: FeatureCache | str | os.PathLike[str] | None = None,
) -> Scenario:
    """Split CIFAR-100: 20 tasks of 5 fine classes by default (Mirzadeh et al. 2020).

    Pass ``n_tasks=10`` for the other common layout, 10 tasks of 10 classes.

    Parameters
    ----------
    n_tasks, classes_per_task
        The layout; both None: 20 tasks of 5 classes.
    examples_per_task, seed, class_order, task_labels, encoder, cache
        As in :func:`split_cifar10`.
    data
        None for ``data_root() / "cifar-100-python"``, that folder elsewhere, or a Dataset.

    Returns
    -------
    Scenario

    Raises
    ------
    InvalidParameterError
        An impossible layout or a bad option (checked before the files are read).
    DatasetNotFoundError
        The CIFAR-100 files are missing.

    Examples
    --------
    >>> import numpy as np
    >>> from perennial.datasets import Dataset, Split
    >>> rng = np.random.default_rng(0)
    >>> images = rng.integers(0, 256, size=(300, 32, 32, 3), dtype=np.uint8)
    >>> data = Dataset("tiny", Split(images[:200], np.arange(200) % 100),
    ...                Split(images[200:], np.arange(100)), metadata={"kind": "image"})
    >>> scenario = split_cifar100(data=data)
    >>> len(scenario), len(scenario[0].classes), scenario[0].n_train
    (20, 5, 10)
    """
    if n_tasks is None and classes_per_task is None:
        classes_per_task = 5
    return split_classes(
        _loader(data, load_cifar100),
        name="split-cifar100",
        n_tasks=n_tasks,
        classes_per_task=classes_per_task,
        examples_per_task=examples_per_task,
        seed=seed,
        class_order=class_order,
        task_labels=task_labels,
        encoder=encoder,
        cache=cache,
        n_known_classes=None if isinstance(data, Dataset) else 100,
    )


def _loader(data: CifarData, load: Callable[..., Dataset]) -> Callable[[], Dataset]:
    if isinstance(data, Dataset):
        return lambda: data
    if data is None or isinstance(data, (str, os.PathLike)):
        return lambda: load(data)
    raise InputTypeError(
        f"expected data to be a Dataset, a CIFAR folder or None, got {type(data).__name__}"
    )
