"""The review queue: inputs the model called unknown, waiting for an operator's label.

This is the only place the service holds raw inputs, in memory only, each for a limited time:
an item is deleted when it is labelled (which teaches the model), discarded, or expired.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from perennial.exceptions import InvalidParameterError, UnknownLabelError

__all__ = ["ReviewItem", "ReviewQueue"]


@dataclass(frozen=True)
class ReviewItem:
    """One queued input and what the model said of it."""

    id: str
    input: Any
    size: int
    prediction: dict[str, Any]
    version: int
    queued_at: float
    expires_at: float


class ReviewQueue:
    """Unknown inputs kept for review, with a time-to-live and bounds on count and bytes.

    Parameters
    ----------
    ttl
        Seconds an item stays; 0 disables the queue (nothing is kept).
    max_items, max_bytes
        When either is reached, new items are not queued (and counted in ``dropped``).
    clock
        Seconds since the epoch (tests pass a fake one).

    Examples
    --------
    >>> queue = ReviewQueue(ttl=60, clock=lambda: 0.0)
    >>> item_id = queue.add("what is love?", {"label": "greeting", "score": 0.1}, version=3)
    >>> [item.input for item in queue.items()]
    ['what is love?']
    >>> queue.claim(item_id).input, len(queue)
    ('what is love?', 0)
    """

    def __init__(
        self,
        ttl: float = 3600.0,
        max_items: int = 1000,
        max_bytes: int = 64 << 20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl < 0:
            raise InvalidParameterError(
                f"ttl must be a non-negative number of seconds, got {ttl!r}"
            )
        for name, value in (("max_items", max_items), ("max_bytes", max_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidParameterError(f"{name} must be a positive int, got {value!r}")
        self.ttl = ttl
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.clock = clock
        self._items: OrderedDict[str, ReviewItem] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.dropped = 0
        self.expired = 0

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    def add(
        self, raw: Any, prediction: dict[str, Any], *, version: int, size: int = 0
    ) -> str | None:
        """Queue ``raw``; returns its id, or None when the queue is off or full."""
        if not self.enabled:
            return None
        now = self.clock()
        with self._lock:
            self._purge(now)
            if len(self._items) >= self.max_items or self._bytes + size > self.max_bytes:
                self.dropped += 1
                return None
            item_id = secrets.token_urlsafe(12)
            self._items[item_id] = ReviewItem(
                item_id, raw, size, dict(prediction), version, now, now + self.ttl
            )
            self._bytes += size
            return item_id

    def items(self) -> list[ReviewItem]:
        """The items not expired, oldest first."""
        with self._lock:
            self._purge(self.clock())
            return list(self._items.values())

    def claim(self, item_id: str) -> ReviewItem:
        """Take an item out of the queue (to label it); :meth:`restore` puts it back."""
        with self._lock:
            self._purge(self.clock())
            item = self._items.pop(item_id, None)
            if item is None:
                raise UnknownLabelError(
                    f"no review item {item_id!r}: it was never queued, is labelled or discarded "
                    f"already, or expired (items live {self.ttl:g} s)"
                )
            self._bytes -= item.size
            return item

    def restore(self, item: ReviewItem) -> None:
        """Put back an item whose labelling failed, with its first expiry time.

        An item that expired meanwhile is purged at once (and counted in ``expired``).
        """
        with self._lock:
            if item.expires_at <= self.clock():
                self.expired += 1
                return
            self._items[item.id] = item
            self._items.move_to_end(item.id, last=False)  # it is among the oldest
            self._bytes += item.size

    def _purge(self, now: float) -> None:
        for item in [item for item in self._items.values() if item.expires_at <= now]:
            del self._items[item.id]
            self._bytes -= item.size
            self.expired += 1

    def __len__(self) -> int:
        with self._lock:
            self._purge(self.clock())
            return len(self._items)
