"""Build a scenario from its command-line name and a dict of options."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from typing import Any

from perennial.encoders.cache import FeatureCache
from perennial.exceptions import InvalidParameterError
from perennial.progress import Output
from perennial.scenarios.assembly import EncoderLike, reporting_to
from perennial.scenarios.base import Scenario
from perennial.scenarios.cifar import split_cifar10, split_cifar100
from perennial.scenarios.generic import class_incremental, domain_incremental
from perennial.scenarios.mnist import MnistData, permuted_mnist, rotated_mnist, split_mnist

__all__ = ["COMMON_OPTIONS", "SCENARIO_NAMES", "make_scenario"]

#: Options every scenario name accepts in :func:`make_scenario` (an option that does not apply
#: to a scenario must then be None).
COMMON_OPTIONS = ("n_tasks", "classes_per_task", "examples_per_task", "seed", "data", "encoder")


def _split_mnist_task(
    n_tasks: int | None = None,
    classes_per_task: int | None = None,
    *,
    examples_per_task: int | None = None,
    seed: int = 0,
    class_order: Sequence[Any] | None = None,
    data: MnistData = None,
    encoder: EncoderLike = None,
    cache: FeatureCache | str | os.PathLike[str] | None = None,
) -> Scenario:
    """Split MNIST, task-incremental: each experience comes with its task id (task labels)."""
    return split_mnist(
        n_tasks,
        classes_per_task,
        examples_per_task=examples_per_task,
        seed=seed,
        class_order=class_order,
        task_labels=True,
        data=data,
        encoder=encoder,
        cache=cache,
    )


_BUILDERS: dict[str, Callable[..., Scenario]] = {
    "class-incremental": class_incremental,
    "domain-incremental": domain_incremental,
    "permuted-mnist": permuted_mnist,
    "rotated-mnist": rotated_mnist,
    "split-cifar10": split_cifar10,
    "split-cifar100": split_cifar100,
    "split-mnist": split_mnist,
    "split-mnist-task": _split_mnist_task,
}

#: The names :func:`make_scenario` knows.
SCENARIO_NAMES: tuple[str, ...] = tuple(sorted(_BUILDERS))


def make_scenario(name: str, *, progress: Output = None, **options: Any) -> Scenario:
    """Build the scenario registered as ``name`` with ``options``.

    Parameters
    ----------
    name
        One of :data:`SCENARIO_NAMES` (case-insensitive).
    **options
        Keyword arguments of the scenario's builder (for example ``class_order`` or
        ``degrees_per_task``), and always :data:`COMMON_OPTIONS`. An option set to None takes
        the builder's default; ``class-incremental`` and ``domain-incremental`` need ``data``
        (a data set name or CSV path) and take ``encoder`` for texts.
    progress
        Where the encoding of the inputs reports its count, rate and time left, features read
        from ``cache`` counted apart: a text stream (drawn in place on a terminal), a callable
        taking one line, or None (see :class:`perennial.progress.ProgressBar`). Scenarios
        without an encoder encode nothing and say nothing.

    Returns
    -------
    Scenario

    Raises
    ------
    InvalidParameterError
        An unknown name (the message lists the valid ones), an unknown option, or a common
        option that does not apply to this scenario given a value other than None.

    Examples
    --------
    >>> import numpy as np
    >>> from perennial.datasets import Dataset, Split
    >>> rng = np.random.default_rng(0)
    >>> data = Dataset("toy", Split(rng.normal(size=(40, 3)), np.arange(40) % 4),
    ...                Split(rng.normal(size=(20, 3)), np.arange(20) % 4))
    >>> scenario = make_scenario("class-incremental", data=data, n_tasks=2, seed=0)
    >>> scenario.name, len(scenario), scenario.n_classes
    ('class-incremental', 2, 4)
    """
    if not isinstance(name, str):
        raise InvalidParameterError(
            f"expected a scenario name (one of {', '.join(SCENARIO_NAMES)}), "
            f"got {type(name).__name__}"
        )
    key = name.strip().lower()
    if key not in _BUILDERS:
        raise InvalidParameterError(
            f"unknown scenario {name!r}; expected one of {', '.join(SCENARIO_NAMES)}"
        )
    builder = _BUILDERS[key]
    accepted = list(inspect.signature(builder).parameters)
    kwargs: dict[str, Any] = {}
    for option, value in options.items():
        if option in accepted:
            if value is not None:
                kwargs[option] = value
        elif option in COMMON_OPTIONS:
            if value is not None:
                raise InvalidParameterError(
                    f"option {option}={value!r:.80} does not apply to the scenario {key!r}; "
                    f"it accepts {', '.join(accepted)}"
                )
        else:
            raise InvalidParameterError(
                f"unknown option {option!r} for the scenario {key!r}; it accepts "
                f"{', '.join(accepted)}"
            )
    with reporting_to(progress):
        return builder(**kwargs)
