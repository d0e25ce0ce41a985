"""The service's model: durable updates, recovery, and versions that predictions can share.

A model directory served by ``perennial serve`` holds::

    service.json                the encoder, the head, and which snapshot holds which version
    snapshot-<version>/         a LifelongClassifier.save() of the model at that version, and
                                its ledger in ledger/ (see perennial.service.ledger)
    journal.log                 every acknowledged update since (see perennial.service.journal)
    desk-replies.json,          the support desk's replies and handed-over conversations (text
    desk-handovers/             models; see perennial.service.desk)

**Updates.** A learn, unlearn or forget is checked, written to the journal and synced, and only
then acknowledged with its new version. The check needs only the feature width and the
:class:`~perennial.service.ledger.Ledger` the store keeps beside the model (per class: the
count, the feature sums and sums of squares), so an update costs one journal append and
``O(k d)`` arithmetic, never a model computation on the request path. An unlearn that would
leave a class with statistics no examples have (a negative variance, say) is refused there,
before it is acknowledged; the refresher applies every acknowledged record whatever it leaves,
so recovery cannot fail on one.

**Versions.** A :class:`~perennial.service.refresher.Refresher` (in a child process by default)
applies acknowledged records to the working model, solves it (the ridge head's Woodbury update;
the head's full re-solves, seconds each, run beside it on another thread) and sends back a
prediction-only copy with its version. Predictions read whichever copy is published when
they start: they never wait for learning or solving, and a version never changes under them. The
published version follows the acknowledged one by the time it takes to solve; a client that must
read its own write asks for ``min_version``.

**Snapshots.** Every ``snapshot_every`` records the refresher saves the working model and its
ledger to a new snapshot directory (atomic) and points ``service.json`` at it (atomic); the store
then drops the journal records it covers (atomic rename). Each record carries its version, so a
crash between these steps is harmless: recovery loads the snapshot ``service.json`` names and
replays the records newer than it, refusing a gap. A lock file keeps a second service (or the
refresher of a crashed one) away from the directory.

**Background failures.** A snapshot or a compaction that fails (a full disk, an I/O error) loses
nothing, since the journal keeps every record: it is logged, counted, reported by
:meth:`ModelStore.status` under ``problems`` until it succeeds, and retried with a growing delay.
A refresher that fails to apply a record stops updating: the store then refuses updates (the
journal holds the record; a restart replays it).

**A pretrained classifier.** A model built with one (``pretrained="efficientnet-lite0"``, or
saved so by :meth:`LifelongClassifier.save <perennial.LifelongClassifier.save>`) is served like
any other: the journal, the ledger and the snapshots hold its instant head as always, the
snapshots record the classifier by digest as ``save`` does (a restart, or a replay after a crash,
refuses installed weights or names that differ), and the classifier's mask of forgotten classes
changes only through ``forget`` and ``restore`` records. The ledger keeps a copy of that mask
(:attr:`Ledger.pretrained <perennial.service.ledger.Ledger.pretrained>`), so both are checked
and the classes listed without the model. Published copies carry the classifier by reference
too (a pickle of it is its record). Such a model needs open set (its gate picks the head that
answers) and flags nothing unknown.

**Closing** takes a bounded time: updates are refused, the refresher gets a deadline to apply
what is waiting and snapshot, and one that misses it is stopped (killed, in a child process).
Nothing acknowledged is lost either way: the journal holds it, and the next start replays it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from perennial.encoders import make_encoder, rebuild_encoder, recorded_params, resolve_encoder
from perennial.encoders.base import Encoder
from perennial.exceptions import (
    CorruptedJournalError,
    CorruptedModelError,
    FeatureDimensionError,
    InputTypeError,
    InvalidInputError,
    InvalidParameterError,
    ModelMismatchError,
    PersistenceError,
    ServiceUnavailableError,
)
from perennial.heads import make_head
from perennial.heads.base import check_features, check_label, check_labels
from perennial.persistence import atomic_write_bytes
from perennial.service.journal import Journal, Record, check_sequence
from perennial.service.ledger import Ledger
from perennial.service.refresher import (
    DEFAULT_UNKNOWN_RATE,
    JOURNAL_FILE,
    REFRESHER_LOCK,
    SERVICE_FILE,
    SERVICE_FORMAT,
    SERVICE_FORMAT_VERSION,
    SERVICE_LOCK,
    Backoff,
    Message,
    RefresherConfig,
    ServedModel,
    dump_record,
    encoder_spec,
    hold_lock,
    process_main,
    remove_leftovers,
    restore_projections,
    run_thread,
)

__all__ = ["BACKGROUND_TASKS", "DEFAULT_UNKNOWN_RATE", "ModelStore", "ServedModel"]

logger = logging.getLogger("perennial.service")

#: Encoder parameters that change speed, not features: a restart may choose them anew.
_RUNTIME_PARAMS = ("batch_size", "num_threads", "max_pixels")

#: The store's background tasks, as :meth:`ModelStore.status` counts their failures: applying
#: records (fatal), snapshots and journal compaction (retried), and taking the refresher's
#: messages.
BACKGROUND_TASKS = ("refresher", "snapshot", "compaction", "receiver")

#: What a receive without a timeout cannot return (it waits for a message): for the type checker.
_NO_MESSAGE: Message = ("gone", None)


class _Link:
    """Messages to and from a refresher, in a thread or in a child process."""

    def __init__(self, config: RefresherConfig, isolate: bool) -> None:
        self.isolate = isolate
        self._process: Any = None
        self._thread: threading.Thread | None = None
        if isolate:
            context = multiprocessing.get_context("spawn")
            child_reader, self._writer = context.Pipe(duplex=False)
            self._reader, child_writer = context.Pipe(duplex=False)
            self._process = context.Process(
                target=process_main,
                args=(config, child_reader, child_writer, os.getpid()),
                name="perennial-refresher",
                daemon=True,
            )
            self._process.start()
            child_reader.close()
            child_writer.close()
            # Sends go through a thread: a full pipe (a refresher busy solving) must never
            # block the request that acknowledged an update.
            self._pending: queue.SimpleQueue[Message | None] = queue.SimpleQueue()
            self._sender = threading.Thread(target=self._send_loop, name="perennial-sender")
            self._sender.daemon = True
            self._sender.start()
        else:
            self._to, self._from, self._thread = run_thread(config)

    def send(self, message: Message) -> None:
        if self.isolate:
            self._pending.put(message)
        else:
            self._to.put(message)

    def _send_loop(self) -> None:
        while True:
            message = self._pending.get()
            if message is None:
                return
            try:
                self._writer.send(message)
            except OSError:
                return  # the refresher is gone; the receiver reports it
            except Exception:
                # A record the refresher never gets would leave a gap in its model: stop it,
                # so that the receiver reports it gone and the store refuses updates.
                logger.exception("could not send a message to the refresher; stopping it")
                self._process.kill()
                return

    def receive(self, timeout: float | None = None) -> Message | None:
        """The refresher's next message; None after ``timeout`` seconds (None: wait for it)."""
        if not self.isolate:
            try:
                return self._from.get(True, timeout)
            except queue.Empty:
                return None
        try:
            if timeout is not None and not self._reader.poll(timeout):
                return None
            message: Message = self._reader.recv()
        except (EOFError, OSError):
            return ("gone", self._exit_status())
        return message

    def _exit_status(self) -> str:
        """How the refresher's process ended, once it has (its pipe closes a moment before)."""
        if self._process is None:
            return "unknown"
        self._process.join(5.0)
        code = self._process.exitcode
        if code is None:
            return "its pipe closed, the process still runs"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-code).name}"
        return f"exit status {code}"

    def abandon(self) -> None:
        """Stop waiting for the refresher: kill its process, or leave its thread to finish.

        The receiver then gets ``("gone", ...)``. A thread cannot be killed; it holds the
        refresher lock until it ends, so the directory cannot be opened again before.
        """
        if self.isolate:
            self._process.kill()
        else:
            self._from.put(("gone", "abandoned"))

    def join(self, timeout: float = 120.0) -> None:
        if self.isolate:
            self._pending.put(None)
            self._process.join(timeout)
            if self._process.is_alive():  # pragma: no cover - close() kills a late one first
                self._process.kill()
                self._process.join()
            self._sender.join(timeout)  # its pipe is broken now: it cannot block any more
            self._reader.close()
            self._writer.close()
        elif self._thread is not None:
            self._thread.join(timeout)


class ModelStore:
    """A served model: durable, versioned updates and published read-only versions.

    Build it with :meth:`open`, which recovers the directory (snapshot plus journal) and
    publishes the recovered version; :meth:`close` stops the refresher, within a bounded time,
    after a last snapshot. All methods are thread-safe.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as directory:
    ...     store = ModelStore.open(directory, encoder="identity", head="ncm", isolate=False)
    ...     store.learn([[1.0, 0.0], [0.0, 1.0]], ["cat", "dog"])
    ...     served = store.wait_served(1, timeout=10)
    ...     [row["label"] for row in served.model.predict_detailed([[0.9, 0.1]])]
    ...     store.close()
    1
    ['cat']
    """

    def __init__(
        self,
        directory: Path,
        encoder: Encoder,
        journal: Journal,
        link: _Link,
        info: dict[str, Any],
        served: ServedModel,
        *,
        snapshot_version: int,
        lock: int | None,
    ) -> None:
        self.directory = directory
        self.encoder = encoder
        #: The head's registry name and parameters (fixed for the store's life).
        self.head_spec: dict[str, Any] = dict(info["head"])
        self._journal = journal
        self._link = link
        self._lock = lock
        self._version = int(info["version"])
        self._snapshot_version = snapshot_version
        self._ledger: Ledger = info["ledger"]
        self._dim: int | None = info["dim"]
        self._write_lock = threading.Lock()
        self._changed = threading.Condition()
        self._projections: dict[int, Any] = {}
        self._served = restore_projections(served, self._projections)
        self._stopping = False
        self._closed = False
        self._failure: BaseException | None = None
        self._listeners: list[Callable[[], None]] = []
        self._health_lock = threading.Lock()
        self._problems: dict[str, str] = {}  # failing now: task -> reason
        self._failures = dict.fromkeys(BACKGROUND_TASKS, 0)  # since the start
        self._compact_through: int | None = None  # a compaction to retry
        self._compact_retry_at: float | None = None
        self._compact_backoff = Backoff(first=0.5, longest=30.0)
        self._journal_closed = False
        self._receiver = threading.Thread(target=self._receive_loop, name="perennial-receiver")
        self._receiver.daemon = True
        self._receiver.start()

    # --- opening ------------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        encoder: str | None = None,
        encoder_params: dict[str, Any] | None = None,
        head: str | None = None,
        head_params: dict[str, Any] | None = None,
        unknown_rate: float | None = None,
        pretrained: str | None = None,
        snapshot_every: int = 256,
        isolate: bool = True,
        background_nice: int = 0,
        background_idle: bool = False,
        log_level: str | None = None,
    ) -> ModelStore:
        """Open (or create) the model directory ``directory`` and recover its latest version.

        Parameters
        ----------
        encoder, encoder_params
            The encoder registry name (``text``, ``image``, ``identity``, or a text model such
            as ``mpnet``: the text encoder of that model) and its parameters. For a new directory they choose the encoder (default ``text``); for an existing one they
            must agree with what it was written with, or :class:`ModelMismatchError` is raised.
        head, head_params
            The head of a new model (default ``ridge``); checked like the encoder otherwise.
        unknown_rate
            Open-set target rejection rate; None keeps the recorded one (0.02 for a new model),
            0 turns open-set recognition off (refused for a model with a pretrained classifier).
        pretrained
            For a new directory, a pretrained classifier to keep beside the head
            (``"efficientnet-lite0"``, with the image encoder, the default then; see
            :meth:`LifelongClassifier.from_pretrained <perennial.LifelongClassifier.from_pretrained>`);
            for an existing one it must be the one the model has, or None.
        snapshot_every
            Journal records between snapshots.
        isolate
            Run the refresher in a child process (default). Its solves then cannot hold this
            process's GIL; a thread (False) suits small models and tests.
        background_nice
            When positive, the refresher runs at this much lower CPU priority (and, in a thread,
            with single-threaded BLAS), so that on a busy machine predictions get the cores
            first (Linux only; elsewhere ignored).
        background_idle
            Run the eigendecompositions of the ridge head's rebuilds (seconds of CPU each) in a
            child process under SCHED_IDLE (Linux): they then use only CPU time that requests
            leave unused, while applying updates and publishing versions keep the
            ``background_nice`` priority. Under a load that keeps every core busy a rebuild
            waits; updates then pile up as pending ones on the old decomposition, until the
            refresher redoes the rebuild on its own thread.
        log_level
            Logging level of the refresher's process (None: its default, warnings only).

        Raises
        ------
        PersistenceError
            The directory is not a model directory, is in use by another service, or its
            snapshot or journal is damaged (a :class:`CorruptedModelError` or
            :class:`CorruptedJournalError`); nothing is changed (a damaged journal is only
            copied aside, for inspection).
        ModelMismatchError
            The directory was written with another encoder, head or pretrained classifier,
            or its model's pretrained classifier is not the one installed here (other weights).
        """
        if (
            isinstance(snapshot_every, bool)
            or not isinstance(snapshot_every, int)
            or snapshot_every < 1
        ):
            raise InvalidParameterError(
                f"snapshot_every must be a positive int, got {snapshot_every!r}"
            )
        if unknown_rate is not None and (
            isinstance(unknown_rate, bool)
            or not isinstance(unknown_rate, (int, float))
            or not 0.0 <= unknown_rate < 1.0
        ):
            raise InvalidParameterError(
                f"unknown_rate must be in [0, 1) (0: open-set off), got {unknown_rate!r}"
            )
        if encoder is not None:  # "mpnet" is the text encoder with model="all-mpnet-base-v2"
            encoder, encoder_params = resolve_encoder(encoder, encoder_params)
        path = Path(directory)
        if path.exists() and not path.is_dir():
            raise PersistenceError(f"model directory {path} is a file, expected a directory")
        path.mkdir(parents=True, exist_ok=True)
        lock = hold_lock(path / SERVICE_LOCK, wait=0.0)
        journal: Journal | None = None
        wrote_record = False
        try:
            # A refresher left by a crashed service dies with it; wait until it has.
            refresher_lock = hold_lock(path / REFRESHER_LOCK, wait=30.0)
            if refresher_lock is not None:
                os.close(refresher_lock)
            record = _read_service_record(path)
            created = record is None or bool(record.get("adopted", False))
            if record is None:
                record = _new_record(
                    encoder, encoder_params, head, head_params, unknown_rate, pretrained
                )
            recorded = dict(record["model"]).get("pretrained")
            if pretrained is not None and pretrained != recorded:
                has = "no pretrained classifier" if recorded is None else repr(recorded)
                raise ModelMismatchError(
                    f"{path} holds a model with {has}, not {pretrained!r}; a model's pretrained "
                    "classifier is chosen when it is created: choose another directory"
                )
            if recorded is not None and unknown_rate == 0:
                raise InvalidParameterError(
                    f"{path} holds a model with the pretrained classifier {recorded!r}, which "
                    "needs open set (its gate decides which inputs the learned classes "
                    "answer); unknown_rate=0 cannot turn it off"
                )
            built_encoder = _check_encoder(path, record, encoder, encoder_params)
            snapshot_version = int(record["snapshot_version"])
            journal_path = path / JOURNAL_FILE
            journal_existed = journal_path.exists()
            if created:
                record.pop("adopted", None)
                atomic_write_bytes(path / SERVICE_FILE, dump_record(record))
                wrote_record = True
            remove_leftovers(path, record)
            may_create = created or (record["snapshot"] is None and snapshot_version == 0)
            if not journal_path.exists() and not may_create:
                raise CorruptedJournalError(
                    f"{journal_path} is missing: the updates acknowledged after the snapshot of "
                    f"version {snapshot_version} cannot be recovered; refusing to start"
                )
            journal, records = Journal.open(journal_path, create=True)
            newer = check_sequence(records, snapshot_version, journal_path)
            config = RefresherConfig(
                directory=str(path),
                record=record,
                replay=tuple(newer),
                head=head,
                head_params=head_params,
                unknown_rate=unknown_rate,
                snapshot_every=snapshot_every,
                background_nice=background_nice,
                background_idle=background_idle,
                log_level=log_level,
            )
            link = _Link(config, isolate)
            kind, info = link.receive() or _NO_MESSAGE
            if kind != "ready":
                link.join()
                if isinstance(info, BaseException):
                    raise info
                raise ServiceUnavailableError(f"the refresher could not start ({kind}: {info})")
            kind, served = link.receive() or _NO_MESSAGE
            if kind != "published":  # pragma: no cover - the refresher sends it right after
                link.join()
                raise ServiceUnavailableError(f"the refresher failed to publish ({kind})")
        except BaseException:
            if journal is not None:
                journal.close()
            if wrote_record:
                # A new or adopted model that failed to load (other weights, say): leave the
                # directory as it was, without the record and the empty journal made for it.
                (path / SERVICE_FILE).unlink(missing_ok=True)
                if not journal_existed:
                    journal_path.unlink(missing_ok=True)
            if lock is not None:
                os.close(lock)
            raise
        logger.info(
            "model %s: version %d (snapshot of version %d plus %d journal records)",
            path,
            info["version"],
            snapshot_version,
            len(newer),
        )
        return cls(
            path,
            built_encoder,
            journal,
            link,
            info,
            served,
            snapshot_version=snapshot_version,
            lock=lock,
        )

    # --- reading ------------------------------------------------------------------------------------
    @property
    def version(self) -> int:
        """The latest acknowledged version."""
        return self._version

    @property
    def served(self) -> ServedModel:
        """The published model predictions use now."""
        return self._served

    def wait_served(self, version: int, timeout: float) -> ServedModel:
        """The published model, once it holds at least ``version`` (blocks this thread).

        The service's requests wait on the event loop instead, through :meth:`subscribe`
        (:class:`~perennial.service.waiters.VersionWaiters`).

        Raises
        ------
        InvalidInputError
            ``version`` is ahead of every acknowledged update.
        ServiceUnavailableError
            It was not published within ``timeout`` seconds, or the store failed or is closing.
        """
        self.check_waitable(version)
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._served.version < version:
                self._check_healthy()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self.not_ready(version, timeout)
                self._changed.wait(left)
            return self._served

    def check_waitable(self, version: int) -> None:
        """Raise :class:`InvalidInputError` if ``version`` is ahead of every acknowledged one."""
        if version > self._version:
            raise InvalidInputError(
                f"min_version {version} is ahead of the model, whose latest version is "
                f"{self._version}"
            )

    def check_updating(self) -> None:
        """Raise :class:`ServiceUnavailableError` if no new version can come: failed, closing."""
        self._check_healthy()

    def not_ready(self, version: int, timeout: float) -> ServiceUnavailableError:
        """The error of a wait for ``version`` that took longer than ``timeout`` seconds."""
        return ServiceUnavailableError(
            f"version {version} was not ready within {timeout:g} s (serving version "
            f"{self._served.version}); try again"
        )

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` after each published version, failure, and at closing.

        It is called from the store's threads, after the change is visible, so it must only
        hand the news on (say, with ``loop.call_soon_threadsafe``). Returns the function that
        unsubscribes it.
        """
        self._listeners.append(listener)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    def _notify(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:  # pragma: no cover - a listener's bug must not stop the receiver
                logger.exception("a listener of published versions failed")

    def classes(self) -> tuple[int, list[tuple[str, int]]]:
        """The acknowledged version and its classes with their example counts.

        With a pretrained classifier, its classes not forgotten come first (in the order of
        :attr:`LifelongClassifier.classes_ <perennial.LifelongClassifier.classes_>`), counting
        the examples learned under their name (usually 0).
        """
        with self._write_lock:
            return self._version, self._ledger.layout()

    def pretrained(self) -> dict[str, Any] | None:
        """The pretrained classifier at the acknowledged version, as JSON-able values, or None.

        Its name, the SHA-256 of its weights file and of its class names, how many classes it
        has, and those forgotten (by name).
        """
        with self._write_lock:
            head = self._ledger.pretrained
            if head is None:
                return None
            return {
                "name": head.name,
                "weights_sha256": head.weights_sha256,
                "classes_sha256": head.classes.sha256,
                "classes": len(head.names),
                "forgotten": [head.names[i] for i in np.flatnonzero(head.hidden_)],
            }

    def status(self) -> dict[str, Any]:
        """Versions, journal and snapshot figures, and background failures, as JSON-able values.

        ``problems`` maps each background task failing now to why (a failed snapshot or
        compaction until a retry succeeds; ``refresher`` once the model stopped updating);
        ``background_failures`` counts each task's failures since the store opened (the tasks
        are :data:`BACKGROUND_TASKS`).
        """
        served = self._served
        with self._write_lock:
            version, records = self._version, len(self._journal)
            n_classes = len(self._ledger.layout())
            journal_bytes = self._journal.size
        with self._health_lock:
            problems, failures = dict(self._problems), dict(self._failures)
        return {
            "version": version,
            "served_version": served.version,
            "classes": n_classes,
            "journal_records": records,
            "journal_bytes": journal_bytes,
            "snapshot_version": self._snapshot_version,
            "failure": None if self._failure is None else str(self._failure),
            "problems": problems,
            "background_failures": failures,
        }

    @property
    def failure(self) -> BaseException | None:
        """Why the refresher stopped, if it did (the store then refuses updates)."""
        return self._failure

    @property
    def dim(self) -> int | None:
        """Width of the features the model takes (None until the first example)."""
        return self._dim

    def records_after(self, version: int) -> list[Record] | None:
        """The journal's records of the updates after ``version``, oldest first; None when a
        snapshot took some of them out of the journal (they can no longer be read one by one)."""
        with self._write_lock:  # no append or compaction meanwhile
            records = [r for r in self._journal.read() if r.version > version]
            current = self._version
        if current > version and (not records or records[0].version != version + 1):
            return None
        return records

    # --- updates ------------------------------------------------------------------------------------
    def learn(self, features: Any, labels: Any) -> int:
        """Learn a batch of encoded examples durably; returns the new version.

        Labels are strings that pass :func:`~perennial.heads.base.check_labels` (valid Unicode
        text on one line, not blank), and are kept, journalled and answered in NFC.
        """
        return self._update("learn", features, labels)

    def unlearn(self, features: Any, labels: Any) -> int:
        """Remove examples learned before (their encoded features); returns the new version."""
        return self._update("unlearn", features, labels)

    def forget(self, label: str) -> int:
        """Remove a class (named in any Unicode normal form); returns the new version.

        With a pretrained classifier, as :meth:`LifelongClassifier.forget
        <perennial.LifelongClassifier.forget>`: a class of that classifier is hidden (never
        answered, until :meth:`restore`), and a learned class of the name is forgotten too.
        """
        return self._class_update("forget", label)

    def restore(self, label: str) -> int:
        """Answer again a class of the pretrained classifier that :meth:`forget` hid.

        As :meth:`LifelongClassifier.restore_pretrained
        <perennial.LifelongClassifier.restore_pretrained>`; returns the new version.

        Raises
        ------
        NotFittedError
            The model has no pretrained classifier.
        UnknownLabelError
            Not one of its classes.
        InvalidParameterError
            The class is not forgotten.
        """
        return self._class_update("restore", label)

    def _class_update(self, operation: str, label: str) -> int:
        checked = check_label(label)
        if not isinstance(checked, str):
            raise InputTypeError(f"labels must be strings, got {label!r}")
        label = checked
        with self._write_lock:
            self._check_healthy()
            if operation == "forget":
                self._ledger.check_forget(label)
            else:
                self._ledger.check_restore(label)
            record = Record(self._version + 1, operation, (label,))
            self._commit(record)
            self._ledger.apply(record)
            return record.version

    def _update(self, operation: str, features: Any, labels: Any) -> int:
        rows = check_features(features, name="features")
        names: list[str] = []
        for label in check_labels(labels, rows.shape[0]):
            if not isinstance(label, str):
                raise InputTypeError(f"labels must be strings, got {label!r}")
            names.append(label)
        with np.errstate(over="ignore"):  # an overflow to infinity is refused just below
            array = rows.astype(np.float32)
        array = check_features(array, name="features").astype(np.float32)
        with self._write_lock:
            self._check_healthy()
            if self._dim is not None and array.shape[1] != self._dim:
                raise FeatureDimensionError(
                    f"expected {self._dim} features per example, got {array.shape[1]}"
                )
            if operation == "unlearn":
                self._ledger.check_unlearn(array.astype(np.float64), names)
            record = Record(self._version + 1, operation, tuple(names), array)
            self._commit(record)
            self._ledger.apply(record)
            if operation == "learn":
                self._dim = array.shape[1]
            return record.version

    def _commit(self, record: Record) -> None:
        """Journal ``record`` durably, then hand it to the refresher (write lock held)."""
        try:
            self._journal.append(record)
        except OSError as error:
            raise ServiceUnavailableError(
                f"could not write the journal {self._journal.path}: {error}; the update was not "
                "made"
            ) from error
        self._version = record.version
        self._link.send(("records", [record]))

    def _check_healthy(self) -> None:
        if self._failure is not None:
            raise ServiceUnavailableError(
                f"the model stopped updating ({self._failure}); restart the service to recover "
                "from the journal"
            )
        if self._stopping:
            raise ServiceUnavailableError("the service is shutting down")

    # --- messages from the refresher ----------------------------------------------------------------
    def _receive_loop(self) -> None:
        """Take the refresher's messages until it stops; no failure here ends the loop."""
        while True:
            retry = self._compact_retry_at
            timeout = None if retry is None else max(0.0, retry - time.monotonic())
            try:
                message = self._link.receive(timeout)
                if message is None:  # a failed compaction's retry is due
                    self._compact()
                elif self._handle(*message):
                    return
            except Exception as error:
                logger.exception("could not take a message from the refresher")
                self._background_failed("receiver", f"could not take a message: {error!r}")

    def _handle(self, kind: str, payload: Any) -> bool:
        """Act on one message of the refresher; whether it was the last."""
        if kind == "published":
            served = restore_projections(payload, self._projections)
            with self._changed:
                self._served = served
                self._changed.notify_all()
            self._recovered("receiver")
            self._notify()
        elif kind == "snapshotted":
            with self._write_lock:
                self._snapshot_version = int(payload)
            self._compact_through = int(payload)
            self._compact()
        elif kind == "problem":
            task, reason = payload
            self._background_failed(str(task), str(reason))
        elif kind == "recovered":
            self._recovered(str(payload))
        elif kind in ("failed", "gone"):
            if kind == "gone" and self._stopping:
                return True
            error = (
                payload
                if isinstance(payload, BaseException)
                else ServiceUnavailableError(f"the refresher process exited ({payload})")
            )
            if kind == "gone" or self._failure is None:
                logger.error("the model stopped updating: %s", error)
                self._background_failed("refresher", f"the model stopped updating: {error}")
            with self._changed:
                self._failure = self._failure or error
                self._changed.notify_all()
            self._notify()
            return kind == "gone"
        elif kind == "stopped":
            return True
        return False

    def _compact(self) -> None:
        """Drop the journal records the last snapshot holds; on failure, retry later."""
        through = self._compact_through
        if through is None:
            return
        with self._write_lock:
            if self._journal_closed:
                return
            try:
                dropped = self._journal.compact(through)
            except Exception as error:
                delay = self._compact_backoff.failed()
                self._compact_retry_at = time.monotonic() + delay
                logger.exception(
                    "could not compact the journal through version %d; trying again in %g s "
                    "(nothing is lost: the journal only grows meanwhile)",
                    through,
                    delay,
                )
                reason = f"could not compact the journal through version {through}: {error}"
                self._background_failed("compaction", reason)
                return
        self._compact_through = self._compact_retry_at = None
        self._compact_backoff.succeeded()
        self._recovered("compaction")
        logger.info("journal: %d records now in the snapshot of version %d", dropped, through)

    def _background_failed(self, task: str, reason: str) -> None:
        with self._health_lock:
            self._problems[task] = reason
            self._failures[task] = self._failures.get(task, 0) + 1

    def _recovered(self, task: str) -> None:
        with self._health_lock:
            if self._problems.pop(task, None) is not None:
                logger.info("background task %s works again", task)

    def begin_close(self) -> None:
        """Refuse updates from now on, and end every wait for a version (the start of close).

        ``perennial serve`` calls it as soon as it is asked to stop, so that requests waiting
        for a ``min_version`` do not hold up the shutdown.
        """
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self._notify()

    def close(self, *, snapshot: bool = True, timeout: float | None = 10.0) -> None:
        """Stop the refresher, after a last snapshot, within about ``timeout`` seconds.

        Updates are refused from the start. The refresher has half of ``timeout`` to apply the
        records still waiting and to start the snapshot; one that has not stopped when the time
        is up (a long solve, a large backlog, a hung disk) is killed, or for a thread left to
        finish. Nothing acknowledged is lost: the journal holds it and the next start replays
        it. None waits as long as it takes. Closing a closed store does nothing.
        """
        if self._closed:
            return
        self._closed = True
        started = time.monotonic()
        self.begin_close()
        soft = None if timeout is None else time.time() + timeout / 2
        with self._write_lock:  # no update is between its journal append and its send
            self._link.send(("stop", (snapshot and self._failure is None, soft)))
        self._receiver.join(None if timeout is None else timeout - (time.monotonic() - started))
        late = self._receiver.is_alive()
        if late:
            logger.warning(
                "the refresher did not stop within %.1f s; stopping it now. The journal keeps "
                "every acknowledged update (up to version %d) for the next start",
                timeout,
                self._version,
            )
            self._link.abandon()
            self._receiver.join(1.0)
        self._link.join(1.0 if late else 10.0)
        with self._write_lock:
            self._journal_closed = True
            self._journal.close()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


# --- the directory ----------------------------------------------------------------------------------
def _read_service_record(path: Path) -> dict[str, Any] | None:
    """``service.json``, or a record adopting a model saved by ``LifelongClassifier.save``."""
    service = path / SERVICE_FILE
    if service.exists():
        try:
            record = json.loads(service.read_text(encoding="utf-8"))
            if record.get("format") != SERVICE_FORMAT:
                raise ValueError(f"format {record.get('format')!r}, expected {SERVICE_FORMAT!r}")
            if record.get("format_version") != SERVICE_FORMAT_VERSION:
                raise ValueError(f"format version {record.get('format_version')!r}")
            missing = [
                key
                for key in ("encoder", "model", "snapshot", "snapshot_version")
                if key not in record
            ]
            if missing:
                raise KeyError(", ".join(missing))
        except (OSError, ValueError, KeyError, AttributeError) as error:
            raise CorruptedModelError(
                f"{service} is not a readable service record: {error}"
            ) from error
        return dict(record)
    meta = path / "meta.json"
    if meta.exists():
        try:
            payload = json.loads(meta.read_text(encoding="utf-8"))["payload"]
            spec = dict(payload["encoder"])
            head = dict(payload["head"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CorruptedModelError(f"{meta} is not a readable model record: {error}") from error
        model: dict[str, Any] = {"head": head.get("name"), "head_params": head.get("params")}
        pretrained = payload.get("pretrained")
        if pretrained is not None:
            # Loading the snapshot checks the rest of the record (the digests, the mask).
            name = pretrained.get("name") if isinstance(pretrained, dict) else None
            if not isinstance(name, str):
                raise CorruptedModelError(f"{meta}: the pretrained record names no classifier")
            model["pretrained"] = name
        return {
            "format": SERVICE_FORMAT,
            "format_version": SERVICE_FORMAT_VERSION,
            "encoder": spec,
            "model": model,
            "snapshot": ".",
            "snapshot_version": 0,
            "adopted": True,
        }
    visible = sorted(p.name for p in path.iterdir() if not p.name.startswith("."))
    if visible:
        raise PersistenceError(
            f"{path} is not a model directory (no {SERVICE_FILE} or meta.json) and not empty "
            f"(it holds {', '.join(visible[:5])}); refusing to write into it"
        )
    return None


def _new_record(
    encoder: str | None,
    encoder_params: dict[str, Any] | None,
    head: str | None,
    head_params: dict[str, Any] | None,
    unknown_rate: float | None,
    pretrained: str | None = None,
) -> dict[str, Any]:
    default = "text" if pretrained is None else "image"
    built = make_encoder(encoder or default, **(encoder_params or {}))
    head_name = head or "ridge"
    made = make_head(head_name, **(head_params or {}))
    rate = DEFAULT_UNKNOWN_RATE if unknown_rate is None else unknown_rate
    model: dict[str, Any] = {
        "head": head_name,
        "head_params": made.get_params(),
        "unknown_rate": None if rate == 0 else float(rate),
    }
    if pretrained is not None:
        from perennial.learner import LifelongClassifier

        # Checks the name, the encoder (the image encoder of the same weights) and the rate
        # before anything is written.
        LifelongClassifier(
            encoder=built, head=made, unknown_rate=model["unknown_rate"], pretrained=pretrained
        )
        model["pretrained"] = pretrained
    return {
        "format": SERVICE_FORMAT,
        "format_version": SERVICE_FORMAT_VERSION,
        "encoder": encoder_spec(built),
        "model": model,
        "snapshot": None,
        "snapshot_version": 0,
    }


def _check_encoder(
    path: Path, record: dict[str, Any], kind: str | None, params: dict[str, Any] | None
) -> Encoder:
    spec = dict(record["encoder"])
    recorded_kind, recorded_name = spec.get("kind"), spec.get("name")
    if kind is not None and kind != recorded_kind:
        raise ModelMismatchError(
            f"{path} was written with the {recorded_kind!r} encoder ({recorded_name}), not "
            f"{kind!r}: its features would not match; serve it with --encoder {recorded_kind} "
            "or choose another directory"
        )
    if recorded_kind not in ("text", "image", "identity"):
        raise ModelMismatchError(
            f"{path} was written with the custom encoder {recorded_name!r}; the service builds "
            "only the text, image and identity encoders"
        )
    # A record older than a parameter holds the value that reproduces its features.
    recorded = recorded_params(str(recorded_kind), dict(spec.get("params") or {}))
    for key, value in (params or {}).items():
        if key in _RUNTIME_PARAMS:
            recorded[key] = value  # how fast, not which features: this run's choice
        elif key in recorded and recorded[key] != value:
            raise ModelMismatchError(
                f"{path} was written with the {recorded_kind} encoder's {key}="
                f"{recorded[key]!r}, not {value!r}"
            )
    encoder = rebuild_encoder(str(recorded_kind), recorded)
    if encoder.name != recorded_name:
        raise ModelMismatchError(
            f"{path} was written with encoder {recorded_name!r}; this installation's is "
            f"{encoder.name!r}: its features would not match"
        )
    return encoder
