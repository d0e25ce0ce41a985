"""The review queue: inputs the model called unknown, waiting for an operator's label.

The queue holds raw inputs in memory, each for a limited time: an item is deleted when it is
labelled (which teaches the model), discarded, or expired. A :class:`ReviewKeeper` may keep some
items on disk as well: the support desk keeps the items of its handed-over conversations in the
model's directory (:mod:`perennial.service.desk`), so that they survive a restart; it hears of
each change to an item through the keeper's methods.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from perennial.exceptions import InvalidParameterError, UnknownLabelError

__all__ = ["ReviewItem", "ReviewKeeper", "ReviewQueue"]


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


class ReviewKeeper(Protocol):
    """What the queue tells the one who keeps some of its items durably.

    ``labelling`` is called before the model learns an item, and must be durable when it
    returns (it raises if it cannot be: then nothing is learned); ``settled`` after the item was
    learned or discarded; ``restored`` after a failed learning put the item back. The last two
    are best effort: a keeper that cannot record them must still be able to tell, after a crash,
    whether a labelling reached the model (the desk asks the model's journal).
    """

    def labelling(self, item: ReviewItem, label: str, features: Any) -> None: ...

    def settled(self, item: ReviewItem) -> None: ...

    def restored(self, item: ReviewItem) -> None: ...


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
        #: Told of the labelling, settling and restoring of items (the desk sets it).
        self.keeper: ReviewKeeper | None = None

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

    def get(self, item_id: str) -> ReviewItem | None:
        """The item ``item_id`` if it is waiting, else None."""
        with self._lock:
            self._purge(self.clock())
            return self._items.get(item_id)

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

    def discard(self, item_id: str) -> ReviewItem:
        """Delete an item without learning it."""
        item = self.claim(item_id)
        if self.keeper is not None:
            self.keeper.settled(item)
        return item

    def label(
        self,
        item_id: str,
        label: str,
        prepare: Callable[[Any], Any],
        learn: Callable[[Any, list[str]], int],
    ) -> int:
        """Label an item: claim it, learn it through ``learn(features, [label])``, delete it.

        ``prepare`` turns the item's input into the features learned. The item is claimed once
        (a second call answers as :meth:`claim` does); if anything fails it is put back
        (:meth:`restore`) and the error raised. Returns what ``learn`` returns (the version).
        """
        item = self.claim(item_id)
        try:
            features = prepare(item.input)
            if self.keeper is not None:
                self.keeper.labelling(item, label, features)  # durable before the model learns
            result = learn(features, [label])
        except BaseException:
            self.restore(item)
            raise
        if self.keeper is not None:
            self.keeper.settled(item)
        return int(result)

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
        if self.keeper is not None:
            self.keeper.restored(item)

    def _purge(self, now: float) -> None:
        for item in [item for item in self._items.values() if item.expires_at <= now]:
            del self._items[item.id]
            self._bytes -= item.size
            self.expired += 1

    def __len__(self) -> int:
        with self._lock:
            self._purge(self.clock())
            return len(self._items)
