"""Replay buffers: stored examples in preallocated tensors, and the rules that choose them."""

from __future__ import annotations

import torch
from torch import Tensor

from perennial.exceptions import InvalidParameterError

__all__ = ["ClassBalancedBuffer", "ReservoirBuffer", "per_class_sample"]


class _TensorBuffer:
    """Rows ``x`` (float32) and labels ``y`` (int64) in tensors allocated to the capacity."""

    def __init__(self, n_features: int, seed: int = 0) -> None:
        self.n_features = n_features
        self.seed = seed
        self._x = torch.empty(0, n_features)
        self._y = torch.empty(0, dtype=torch.int64)
        self.size = 0
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def capacity(self) -> int:
        return int(self._y.shape[0])

    @property
    def x(self) -> Tensor:
        """The stored rows (a view of the filled part)."""
        return self._x[: self.size]

    @property
    def y(self) -> Tensor:
        """The stored labels (a view of the filled part)."""
        return self._y[: self.size]

    @property
    def nbytes(self) -> int:
        """Bytes of the stored examples (rows and labels)."""
        return self.size * (self.n_features * self._x.element_size() + self._y.element_size())

    def grow(self, extra: int) -> None:
        """Add ``extra`` free slots (one allocation; the stored examples are copied once)."""
        if extra < 0:
            raise InvalidParameterError(f"a buffer can only grow, got extra={extra}")
        x = torch.empty(self.capacity + extra, self.n_features)
        y = torch.empty(self.capacity + extra, dtype=torch.int64)
        x[: self.size] = self.x
        y[: self.size] = self.y
        self._x, self._y = x, y

    def sample(self, count: int) -> tuple[Tensor, Tensor]:
        """``min(count, size)`` stored examples drawn uniformly without replacement."""
        index = torch.randperm(self.size, generator=self.generator)[:count]
        return self._x[index], self._y[index]

    def _write(self, slots: dict[int, int], x: Tensor, y: Tensor) -> None:
        """Store ``x[source]`` in each ``slot`` of ``{slot: source}``."""
        if slots:
            target = torch.tensor(list(slots), dtype=torch.int64)
            source = torch.tensor(list(slots.values()), dtype=torch.int64)
            self._x[target] = x[source]
            self._y[target] = y[source]


class ReservoirBuffer(_TensorBuffer):
    """Reservoir sampling (Vitter's algorithm R), as in Chaudhry et al. (2019) for replay.

    Examples are offered in stream order. While the buffer has free slots each one is stored;
    after that the ``n``-th example seen replaces a uniformly chosen slot with probability
    ``capacity / n``, so the buffer is a uniform sample of everything offered.

    Examples
    --------
    >>> buffer = ReservoirBuffer(n_features=2, seed=0)
    >>> buffer.grow(3)
    >>> buffer.add(torch.arange(20.0).reshape(10, 2), torch.arange(10))
    >>> buffer.size, buffer.seen
    (3, 10)
    """

    def __init__(self, n_features: int, seed: int = 0) -> None:
        super().__init__(n_features, seed)
        self.seen = 0

    def add(self, x: Tensor, y: Tensor) -> None:
        """Offer a batch of examples, in order."""
        n = int(y.shape[0])
        counts = torch.arange(self.seen + 1, self.seen + n + 1, dtype=torch.float64)
        # Slot drawn uniformly in [0, n_seen) for each example (used only when the buffer is full).
        draws = (torch.rand(n, dtype=torch.float64, generator=self.generator) * counts).long()
        slots: dict[int, int] = {}
        size, capacity = self.size, self.capacity
        for i, draw in enumerate(draws.tolist()):
            if size < capacity:
                slots[size] = i
                size += 1
            elif draw < capacity:
                slots[draw] = i  # a later example of the batch may overwrite an earlier one
        self._write(slots, x, y)
        self.size = size
        self.seen += n


class ClassBalancedBuffer(_TensorBuffer):
    """GDumb's greedy class-balancing sampler (Prabhu, Torr & Dokania, 2020, ECCV).

    While there are free slots every example is stored. Once full, an example of class ``y`` is
    stored only if ``y`` holds fewer than ``capacity / classes seen`` slots; it then replaces a
    random example of the (first) largest class. The buffer stays as balanced as the stream
    allows, whatever the order of the classes.

    Examples
    --------
    >>> buffer = ClassBalancedBuffer(n_features=1, seed=0)
    >>> buffer.grow(4)
    >>> buffer.add(torch.zeros(10, 1), torch.tensor([0] * 8 + [1] * 2))
    >>> buffer.counts
    {0: 2, 1: 2}
    """

    def __init__(self, n_features: int, seed: int = 0) -> None:
        super().__init__(n_features, seed)
        self._slots: dict[int, list[int]] = {}  # label -> slots holding it

    @property
    def counts(self) -> dict[int, int]:
        """Stored examples per class."""
        return {label: len(slots) for label, slots in sorted(self._slots.items())}

    def add(self, x: Tensor, y: Tensor) -> None:
        """Offer a batch of examples, in order."""
        labels = y.tolist()
        picks = torch.rand(len(labels), dtype=torch.float64, generator=self.generator).tolist()
        writes: dict[int, int] = {}
        for i, label in enumerate(labels):
            held = self._slots.setdefault(label, [])
            if self.size < self.capacity:
                held.append(self.size)
                writes[self.size] = i
                self.size += 1
                continue
            if len(held) >= self.capacity / len(self._slots):
                continue
            largest = max(self._slots.values(), key=len)
            slot = largest.pop(int(picks[i] * len(largest)))
            held.append(slot)
            writes[slot] = i
        self._write(writes, x, y)


def per_class_sample(
    y: Tensor, classes: tuple[int, ...], count: int, generator: torch.Generator
) -> Tensor:
    """Row indices of up to ``count`` examples of each label of ``classes``, drawn at random.

    The episodic memory of A-GEM, GEM and MC-SGD: one random permutation per class, in the order
    of ``classes``, from ``generator``.
    """
    chosen = []
    for label in classes:
        rows = torch.nonzero(y == int(label)).flatten()
        order = torch.randperm(int(rows.shape[0]), generator=generator)
        chosen.append(rows[order[:count]])
    return torch.cat(chosen)
