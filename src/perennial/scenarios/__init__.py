"""Continual-learning streams: permuted, rotated and split MNIST, split CIFAR, and class- or
domain-incremental streams from any labelled data.

A :class:`Scenario` is an ordered tuple of :class:`Experience` objects, each with float32 train
and test arrays and int64 labels indexing ``Scenario.class_names``. Every builder is seeded and
checks its options before loading or encoding anything.
"""

from __future__ import annotations

from perennial.scenarios.base import Experience, Scenario
from perennial.scenarios.cifar import split_cifar10, split_cifar100
from perennial.scenarios.generic import (
    class_incremental,
    domain_incremental,
    from_arrays,
    from_dataframe,
)
from perennial.scenarios.mnist import (
    permuted_mnist,
    pixel_permutations,
    rotated_mnist,
    split_mnist,
)
from perennial.scenarios.registry import COMMON_OPTIONS, SCENARIO_NAMES, make_scenario

__all__ = [
    "COMMON_OPTIONS",
    "SCENARIO_NAMES",
    "Experience",
    "Scenario",
    "class_incremental",
    "domain_incremental",
    "from_arrays",
    "from_dataframe",
    "make_scenario",
    "permuted_mnist",
    "pixel_permutations",
    "rotated_mnist",
    "split_cifar10",
    "split_cifar100",
    "split_mnist",
]
