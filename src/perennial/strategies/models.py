"""The network every gradient strategy trains: a seeded multilayer perceptron."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["mlp"]


def mlp(n_features: int, hidden: Sequence[int], n_classes: int, seed: int) -> nn.Sequential:
    """A ReLU MLP ``n_features -> hidden... -> n_classes`` with PyTorch's default initialisation.

    The weights are drawn after ``torch.manual_seed(seed)`` inside a forked random state, so the
    same arguments give the same network and the caller's global random state is untouched.
    ``hidden=()`` gives a linear model.

    Examples
    --------
    >>> net = mlp(4, (8,), 3, seed=0)
    >>> net
    Sequential(
      (0): Linear(in_features=4, out_features=8, bias=True)
      (1): ReLU()
      (2): Linear(in_features=8, out_features=3, bias=True)
    )
    >>> bool(torch.equal(net[0].weight, mlp(4, (8,), 3, seed=0)[0].weight))
    True
    """
    widths = [n_features, *hidden, n_classes]
    layers: list[nn.Module] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
            if i:
                layers.append(nn.ReLU())
            layers.append(nn.Linear(width_in, width_out))
    return nn.Sequential(*layers)
