"""Predictions that wait for a ``min_version``: on the event loop, and bounded.

A client that must read its own write asks for ``min_version``; the version arrives when the
refresher publishes it, which may take seconds. A wait must not hold a worker thread (sixty of
them once held every thread of the pool, and with them every other route), so it awaits an
:class:`asyncio.Event` that the store's receiving thread sets, through
``loop.call_soon_threadsafe``, after each published version, failure, and at closing.

Waiting is still bounded: at most ``max_waiters`` requests wait in all, and ``max_per_client``
from one client (one API key, or one remote address when keys are off); the one beyond is
refused at once with :class:`~perennial.exceptions.TooManyWaitersError` (HTTP 429).
"""

from __future__ import annotations

import asyncio
import contextlib

from perennial.exceptions import InvalidParameterError, TooManyWaitersError
from perennial.service.store import ModelStore

__all__ = ["VersionWaiters"]


class VersionWaiters:
    """Requests waiting on the event loop until the store serves a version.

    Parameters
    ----------
    store
        The model store; the waiters subscribe to its published versions.
    max_waiters
        Requests that may wait at once, in all.
    max_per_client
        Requests that may wait at once from one client.

    Examples
    --------
    >>> import asyncio, tempfile
    >>> with tempfile.TemporaryDirectory() as directory:
    ...     store = ModelStore.open(directory, encoder="identity", head="ncm", isolate=False)
    ...     waiters = VersionWaiters(store, max_waiters=8, max_per_client=2)
    ...     version = store.learn([[1.0, 0.0], [0.0, 1.0]], ["cat", "dog"])
    ...     asyncio.run(waiters.wait(version, timeout=30, client="me"))
    ...     store.close()
    """

    def __init__(self, store: ModelStore, max_waiters: int, max_per_client: int) -> None:
        for name, value in (("max_waiters", max_waiters), ("max_per_client", max_per_client)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidParameterError(f"{name} must be a positive int, got {value!r}")
        self.store = store
        self.max_waiters = max_waiters
        self.max_per_client = max_per_client
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None  # set, and replaced, at each change
        self._per_client: dict[str, int] = {}
        self._count = 0
        self._unsubscribe = store.subscribe(self._changed)

    def __len__(self) -> int:
        """Requests waiting now."""
        return self._count

    async def wait(self, version: int, timeout: float, client: str) -> None:
        """Return once the store serves ``version`` or a newer one.

        Raises
        ------
        InvalidInputError
            ``version`` is ahead of every acknowledged update.
        TooManyWaitersError
            ``max_waiters`` requests wait already, or ``max_per_client`` from ``client``.
        ServiceUnavailableError
            The version did not come within ``timeout`` seconds, the model stopped updating,
            or the service is shutting down.
        """
        store = self.store
        store.check_waitable(version)
        # Bound to the loop before the served version is read: a version published after
        # that read is then announced to this loop, and wakes the wait below. (An event of
        # another loop, one that served this app before, cannot be awaited here.)
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._event = loop, None
        if store.served.version >= version:
            return
        store.check_updating()
        mine = self._per_client.get(client, 0)
        if mine >= self.max_per_client:
            raise TooManyWaitersError(
                f"this client has {mine} predictions waiting for a min_version already, the "
                f"most one client may have (max_waiters_per_client); retry when they are "
                "answered"
            )
        if self._count >= self.max_waiters:
            raise TooManyWaitersError(
                f"{self._count} predictions are waiting for a min_version already, the most "
                "the service holds (max_waiters); retry shortly"
            )
        self._count += 1
        self._per_client[client] = mine + 1
        try:
            deadline = loop.time() + timeout
            while store.served.version < version:
                store.check_updating()
                left = deadline - loop.time()
                if left <= 0:
                    raise store.not_ready(version, timeout)
                if self._event is None:
                    self._event = asyncio.Event()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._event.wait(), left)
        finally:
            self._count -= 1
            left_over = self._per_client[client] - 1
            if left_over:
                self._per_client[client] = left_over
            else:
                del self._per_client[client]

    def close(self) -> None:
        """Stop listening to the store (waits under way end at their timeout)."""
        self._unsubscribe()

    def _changed(self) -> None:
        """Called by the store's threads: hand the news to the event loop."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        """On the event loop: wake every wait, which looks at the served version again."""
        event, self._event = self._event, None
        if event is not None:
            event.set()
