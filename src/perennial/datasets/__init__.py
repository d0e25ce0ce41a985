"""Data sets for tests and benchmarks: loaders for real files, in-memory splits, a registry.

Text sets come as lists of python strings with str labels; image sets as uint8 arrays with
int64 labels. Files are looked up under :func:`data_root` (``$PERENNIAL_DATA`` if set).
"""

from __future__ import annotations

from perennial.datasets.base import Dataset, Split, data_root, stratified_split
from perennial.datasets.cifar import load_cifar10, load_cifar100
from perennial.datasets.intents import load_banking77, load_clinc150, load_intent_csv
from perennial.datasets.mnist import load_mnist, read_idx
from perennial.datasets.registry import DATASET_NAMES, load_dataset

__all__ = [
    "DATASET_NAMES",
    "Dataset",
    "Split",
    "data_root",
    "load_banking77",
    "load_cifar10",
    "load_cifar100",
    "load_clinc150",
    "load_dataset",
    "load_intent_csv",
    "load_mnist",
    "read_idx",
    "stratified_split",
]
