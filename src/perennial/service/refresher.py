"""The refresher: owns the working model, applies acknowledged updates, publishes versions.

The :class:`~perennial.service.store.ModelStore` acknowledges updates (journal first) and hands
the records to a :class:`Refresher`, which applies them to the working
:class:`~perennial.learner.LifelongClassifier`, solves it, and sends back a prediction-only copy
(:class:`ServedModel`); every ``snapshot_every`` records it saves a snapshot. It keeps a copy of
the store's :class:`~perennial.service.ledger.Ledger` in step with the model and saves it with
each snapshot. It applies every record as acknowledged (an unlearn without the statistics check
the store already made), so no record can stop it: predictions never fail on what a record
leaves.

It runs in a **child process** by default. The ridge head's updates run in SciPy routines that
hold the GIL: in a thread of the serving process they would stop requests for as long. In a
process, they cost predictions only CPU time, and that at a lower priority (``background_nice``).
The same code runs in a thread (``isolate=False``) for small models and for tests.

Publishing never waits for a rebuild of the ridge head's decomposition (an eigendecomposition of
``G``, seconds at 4096 features): the heads defer their rebuilds, and the refresher runs each on
a thread of its own while it goes on applying records and publishing versions on the old
decomposition (see ``_Rebuilds``). With ``background_idle`` the eigendecomposition itself runs
in a child process under SCHED_IDLE: applying and publishing keep their (nice) priority, so the
served version keeps up under load, while the long decompositions take only CPU time nothing
else wants.

Messages, parent to refresher: ``("records", [Record, ...])``, ``("stop", (snapshot, deadline))``.
Refresher to parent: ``("ready", info)``, ``("published", ServedModel)``,
``("snapshotted", version)``, ``("problem", (task, reason))`` and ``("recovered", task)`` (a
failing snapshot, retried with :class:`Backoff`), ``("failed", error)`` (it stops updating),
``("stopped", None)``.

**Stopping.** ``deadline`` (seconds since the epoch, or None) bounds a stop: records still
waiting are applied (without a solve: nobody predicts any more) until then, and the last
snapshot is written only if it can start before it. Whatever is left stays in the journal, which
the next start replays; the parent stops waiting for a refresher that misses its deadline.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import faulthandler
import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from perennial.encoders import rebuild_encoder
from perennial.encoders.base import Precomputed, encoder_spec
from perennial.exceptions import (
    CorruptedJournalError,
    CorruptedModelError,
    InvalidParameterError,
    ModelMismatchError,
    PersistenceError,
)
from perennial.heads import Head, RidgeEnsembleHead, RidgeHead, make_head, registered_name
from perennial.learner import LifelongClassifier
from perennial.persistence import atomic_write_bytes, fsync_directory
from perennial.service.journal import Record
from perennial.service.ledger import LEDGER_DIRECTORY, Ledger

__all__ = [
    "Backoff",
    "Refresher",
    "RefresherConfig",
    "ServedModel",
    "decompose_in_idle_process",
    "dump_record",
    "encoder_spec",
    "hold_lock",
    "prediction_copy",
    "process_main",
    "remove_leftovers",
    "restore_projections",
    "run_in_background",
    "run_thread",
    "share_projections",
    "single_threaded_blas",
    "warm",
]

SERVICE_FILE = "service.json"
JOURNAL_FILE = "journal.log"
SNAPSHOT_PREFIX = "snapshot-"
SERVICE_FORMAT = "perennial-service"
SERVICE_FORMAT_VERSION = 1
DEFAULT_UNKNOWN_RATE = 0.02
SERVICE_LOCK = ".service.lock"
REFRESHER_LOCK = ".refresher.lock"


logger = logging.getLogger("perennial.service")

Message = tuple[str, Any]

#: ``receive(timeout)``: the next message, or None after ``timeout`` seconds (None: wait).
Receive = Callable[[float | None], Message | None]


@dataclass
class Backoff:
    """Delays between the retries of a failing background task: doubling, up to ``longest``.

    Examples
    --------
    >>> backoff = Backoff(first=1.0, longest=5.0)
    >>> [backoff.failed() for _ in range(4)]
    [1.0, 2.0, 4.0, 5.0]
    >>> backoff.succeeded(); backoff.failed()
    1.0
    """

    first: float = 1.0
    longest: float = 60.0
    failures: int = 0

    def failed(self) -> float:
        """Count a failure; the seconds to wait before the next attempt."""
        delay = min(self.longest, self.first * 2.0 ** min(self.failures, 32))
        self.failures += 1
        return delay

    def succeeded(self) -> None:
        self.failures = 0


@dataclass(frozen=True)
class ServedModel:
    """A published, read-only model and the version it holds.

    ``model`` is None while nothing is learned, except with a pretrained classifier, which
    answers from the start. ``open_set`` is ``"on"`` (unknown inputs are
    flagged), ``"calibrating"`` (open-set is asked for but the threshold needs more examples:
    nothing is flagged yet), ``"unavailable"`` (open set is asked for, but the model was
    adopted without open-set statistics) or ``"off"``. A ``forget`` keeps open set on.
    """

    version: int
    model: LifelongClassifier | None
    n_seen: int = 0
    state_bytes: int = 0
    threshold: float | None = None
    open_set: str = "off"
    unknown_rate: float | None = None
    open_set_status: str = "off"
    solve_seconds: float = 0.0
    published: float = field(default_factory=time.time)


def _ridge_heads(head: Head) -> list[RidgeHead]:
    if isinstance(head, RidgeHead):
        return [head]
    if isinstance(head, RidgeEnsembleHead):
        return list(head.members_)
    return []


#: Under a steady stream of updates, the refresher spends about this share of one core on
#: applying and publishing: after a step that took ``t`` s of CPU, it lets records queue up for
#: ``t (1 / PUBLISH_DUTY - 1)`` s, at most ``MAX_PAUSE``, before the next. The served version then
#: trails by a fraction of a second at 4,096 features, and a lone update is published at once.
PUBLISH_DUTY = 0.25
MAX_PAUSE = 0.5

#: A rebuild starved of CPU time is redone on the refresher's thread once this many times
#: ``max_pending`` examples wait on the old decomposition (their cost grows with their number).
PENDING_CAP = 4


class _Rebuilds:
    """Runs the ridge heads' rebuilds on a thread of their own, one at a time.

    The working model's ridge heads defer their rebuilds (:meth:`RidgeHead.defer_rebuilds`):
    when one is due, :meth:`step` starts it here, and the refresher goes on applying records and
    publishing versions, which the head takes as pending updates on its last decomposition. The
    next step after the rebuild's work is done adopts it.

    The work runs at nice 19, below the refresher. It shares the GIL with the refresher's thread,
    so it must not run under SCHED_IDLE: starved of CPU time while it holds or awaits the GIL, it
    would stall the refresher for as long (29 s were seen). With ``idle``, the part that takes
    seconds of CPU, the eigendecomposition of ``G``, runs in a child process of its own under
    SCHED_IDLE instead (:func:`decompose_in_idle_process`), on CPU time nothing else wants.
    Should a rebuild get so little CPU time that ``PENDING_CAP * max_pending`` examples pile up
    meanwhile, it is redone at once on the refresher's thread (a stall, but a bounded one).
    """

    def __init__(self, single_threaded: bool, idle: bool) -> None:
        self.single_threaded = single_threaded
        self.idle = idle
        self.head: RidgeHead | None = None
        self.thread: threading.Thread | None = None
        self.abandoned: threading.Thread | None = None  # a starved rebuild still running
        self.started = 0.0

    def step(self, model: LifelongClassifier) -> None:
        """Adopt a finished rebuild; redo a starved one here; start one that is due."""
        heads = _ridge_heads(model.head)
        for head in heads:
            head.defer_rebuilds()  # again: an ensemble makes new members when it is reset
        if self.head is not None and self.thread is not None and not self.thread.is_alive():
            head, self.head, self.thread = self.head, None, None
            if head.finish_rebuild():
                logger.info(
                    "ridge decomposition rebuilt in %.1f s beside the publishing",
                    time.perf_counter() - self.started,
                )
            else:
                logger.info("a ridge rebuild was dropped (the statistics changed, or it failed)")
        for head in heads:
            if head.n_pending_ > PENDING_CAP * max(head.max_pending, 32):
                logger.warning(
                    "a ridge rebuild got too little CPU time (%d examples wait on the old "
                    "decomposition); rebuilding on the refresher's thread",
                    head.n_pending_,
                )
                if head is self.head:
                    self.abandoned, self.head, self.thread = self.thread, None, None
                started = time.perf_counter()
                head.start_rebuild()()  # abandons the starved one
                head.finish_rebuild()
                logger.info("rebuilt in %.1f s", time.perf_counter() - started)
        if self.head is not None or (self.abandoned is not None and self.abandoned.is_alive()):
            return  # one rebuild at a time, memory-wise
        self.abandoned = None
        for head in heads:
            if head.rebuild_due:
                idle = self.idle and hasattr(os, "SCHED_IDLE")
                work = head.start_rebuild(decompose_in_idle_process if idle else None)
                self.thread = threading.Thread(
                    target=self._run, args=(work,), name="perennial-rebuild", daemon=True
                )
                self.head, self.started = head, time.perf_counter()
                self.thread.start()
                return

    def _run(self, work: Callable[[], None]) -> None:
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        if self.single_threaded:
            single_threaded_blas()
        work()


#: The child process of :func:`decompose_in_idle_process`: reads M and G from its input, writes
#: the eigenvalues and eigenvectors (float64, little-endian, row-major) to its output.
_EIGH_CHILD = """
import ctypes, os, sys
try:
    ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: die with the refresher's thread
except (OSError, AttributeError):
    pass
try:
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
except (OSError, AttributeError):
    pass
import numpy as np
source, sink = sys.stdin.buffer, sys.stdout.buffer
m = int.from_bytes(source.read(8), "little")
gram = np.frombuffer(source.read(8 * m * m), dtype="<f8").reshape(m, m)
s, V = np.linalg.eigh(gram, UPLO="U")
sink.write(np.ascontiguousarray(s, dtype="<f8").tobytes())
sink.write(np.ascontiguousarray(V, dtype="<f8").tobytes())
sink.flush()
"""


def decompose_in_idle_process(
    gram: NDArray[np.float64],
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``eigh`` of ``G`` (its upper triangle) in a child process under SCHED_IDLE (Linux).

    The same numpy routine as in this process, so the same result; the child shares no GIL
    with the refresher, so starving it of CPU time delays the rebuild only. Raises
    :class:`RuntimeError` if the child fails.
    """
    m = gram.shape[0]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", _EIGH_CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        with contextlib.suppress(BrokenPipeError):  # the child's status says why
            child.stdin.write(m.to_bytes(8, "little"))
            child.stdin.write(np.ascontiguousarray(gram, dtype="<f8").tobytes())
        child.stdin.close()
        values = child.stdout.read(8 * m)
        vectors = child.stdout.read(8 * m * m)
    except BaseException:
        child.kill()
        raise
    finally:
        child.stdout.close()
        status = child.wait()
    if status != 0 or len(values) != 8 * m or len(vectors) != 8 * m * m:
        raise RuntimeError(f"the decomposition process failed (exit status {status})")
    s = np.frombuffer(values, dtype="<f8")
    return np.maximum(s, 0.0), np.frombuffer(vectors, dtype="<f8").reshape(m, m)


def warm(model: LifelongClassifier) -> None:
    """Compute every cache a prediction would otherwise compute lazily (solutions, factors)."""
    if not model.head.is_fitted:
        return
    ridge = _ridge_heads(model.head)
    for head in ridge:
        head.coef_  # noqa: B018 - the solve and W = V (V^T W), formed once here
    dim = model.head.dim_
    assert dim is not None
    zeros = np.zeros((1, dim))
    if not ridge:
        model.decision_scores(zeros)  # e.g. the SLDA head caches its solution on first use
    if model.gate_ is not None and model.gate_.can_score():
        model.novelty_scores(zeros)  # caches the open-set gate's factors


def prediction_copy(model: LifelongClassifier) -> LifelongClassifier:
    """A copy of a warmed ``model`` that predicts exactly like it and never changes.

    The head makes its own prediction-only copy (:meth:`Head.prediction_copy`: for the ridge
    heads, the shared projection and the formed weights, without ``G`` or the examples); the rest
    of the model is deep-copied around it. The encoder is shared.
    """
    memo: dict[int, Any] = {id(model.encoder): model.encoder}
    encoder = getattr(model, "_encoder", None)
    if encoder is not None:
        memo[id(encoder)] = encoder
    memo[id(model.head)] = model.head.prediction_copy()
    return copy.deepcopy(model, memo)


@dataclass(frozen=True)
class RefresherConfig:
    """What a refresher needs to rebuild the working model (picklable, for a child process).

    ``record`` is the service record (``service.json``); ``replay`` the journal records newer
    than its snapshot; ``head``, ``head_params`` what the caller expects (checked);
    ``unknown_rate`` an override (0: open-set off).
    """

    directory: str
    record: dict[str, Any]
    replay: tuple[Record, ...] = ()
    head: str | None = None
    head_params: dict[str, Any] | None = None
    unknown_rate: float | None = None
    snapshot_every: int = 256
    background_nice: int = 0
    background_idle: bool = False
    log_level: str | None = None


class Refresher:
    """Applies acknowledged records to the working model, publishes copies, writes snapshots.

    Drive it with :meth:`run` (it opens the model first). Nothing else touches the working model.
    """

    def __init__(self, config: RefresherConfig) -> None:
        self.config = config
        self.sent_projections: dict[int, NDArray[np.float64]] = {}

    def open(self) -> dict[str, Any]:
        """Load the snapshot and replay the journal; the ``ready`` message's information."""
        config = self.config
        path = Path(config.directory)
        record = dict(config.record)
        spec = dict(record["encoder"])
        encoder = rebuild_encoder(str(spec["kind"]), dict(spec.get("params") or {}))
        model = _load_model(path, record, Precomputed(encoder))
        _check_head(path, model.head, config.head, config.head_params)
        odd = [label for label in model.classes_ if not isinstance(label, str)]
        if odd:
            raise ModelMismatchError(
                f"{path} holds classes with non-string labels (such as {odd[0]!r}); the service "
                "speaks JSON strings only"
            )
        recorded = dict(record["model"]).get("pretrained")
        has = None if model.pretrained_ is None else model.pretrained_.name
        if recorded != has:
            raise ModelMismatchError(
                f"{path / SERVICE_FILE} names the pretrained classifier {recorded!r}, but its "
                f"snapshot holds a model with {has!r}; the directory is left as it is"
            )
        self.open_set_missing: str | None = None
        wanted = model.unknown_rate
        if config.unknown_rate is not None:
            wanted = None if config.unknown_rate == 0 else float(config.unknown_rate)
        if wanted is None and model.pretrained_ is not None:
            raise InvalidParameterError(
                f"{path} holds a model with the pretrained classifier {model.pretrained_.name!r}, "
                "which needs open set (its gate decides which inputs the learned classes "
                "answer); serve it without --unknown-rate 0"
            )
        try:
            model.unknown_rate = wanted
        except InvalidParameterError as error:
            # A closed-set model adopted by the service: it serves closed-set, and says why.
            model.unknown_rate = None
            self.open_set_missing = str(error)
            logger.warning("open set is unavailable for this model: %s", error)
        snapshot = record["snapshot"]
        ledger = Ledger.for_snapshot(None if snapshot is None else path / str(snapshot), model)
        for item in config.replay:
            try:
                _apply(model, item)
                ledger.apply(item)
            except Exception as error:
                raise CorruptedJournalError(
                    f"{path / JOURNAL_FILE}: the record of version {item.version} "
                    f"({item.operation}) cannot be replayed: {error}"
                ) from error
        self.model = model
        self.ledger = ledger
        self.record = record
        self.snapshot_version = int(record["snapshot_version"])
        self.applied = config.replay[-1].version if config.replay else self.snapshot_version
        self._snapshot_backoff = Backoff()
        self._snapshot_retry_at: float | None = None  # time.monotonic() of the next attempt
        self._state_bytes_key: tuple[int | None, ...] | None = None
        self._state_bytes = 0
        head = model.head
        head_name = registered_name(head)
        return {
            "version": self.applied,
            "ledger": copy.deepcopy(ledger),  # the store's own, whether in a thread or not
            "dim": head.dim_,
            "head": {"name": head_name, "params": head.get_params()},
        }

    def _applied(self, records: list[Record]) -> None:
        """Bring the ledger and the applied version up to ``records``, applied to the model."""
        for item in records:
            self.ledger.apply(item)
        self.applied = records[-1].version

    def publish(self) -> ServedModel:
        """Solve the working model and make a read-only copy of it for predictions."""
        model = self.model
        version = self.applied
        if not model.head.is_fitted and model.pretrained_ is None:
            return ServedModel(version, None, n_seen=model.n_seen_, unknown_rate=model.unknown_rate)
        started = time.perf_counter()
        warm(model)
        solve_seconds = time.perf_counter() - started
        threshold: float | None = None
        state = "off"
        if self.open_set_missing is not None:
            state = "unavailable"
        elif model.unknown_rate is not None or model.threshold_override_ is not None:
            threshold = model.unknown_threshold_
            gate = model.gate_
            calibrated = threshold is not None and gate is not None and gate.can_score()
            state = "on" if calibrated else "calibrating"
        served = prediction_copy(model)
        # A model with a pretrained classifier flags nothing unknown: while calibrating, its
        # gate's rule for young models (perennial.openset) picks the head that answers.
        if state == "calibrating" and served.pretrained_ is None:
            served.unknown_rate = None  # nothing is flagged without a threshold
            if served.gate_ is not None:
                served.gate_.threshold_override_ = None
        key: tuple[int | None, ...] = (len(model.classes_), model.head.dim_)
        if any(head.form_ == "dual" for head in _ridge_heads(model.head)):
            key = (*key, model.n_seen_)  # a dual-form ridge head grows with every example
        if key != self._state_bytes_key:  # else fixed by the configuration and the classes
            self._state_bytes, self._state_bytes_key = model.state_bytes, key
        return ServedModel(
            version,
            served,
            n_seen=model.n_seen_,
            state_bytes=self._state_bytes,
            threshold=threshold,
            open_set=state,
            open_set_status=model.open_set_status_
            if self.open_set_missing is None
            else f"unavailable: {self.open_set_missing}",
            unknown_rate=model.unknown_rate,
            solve_seconds=solve_seconds,
        )

    def snapshot(self) -> int | None:
        """Save the working model and point ``service.json`` at it; the version, or None.

        The snapshot's files and directory are on disk (synced) before ``service.json`` names
        it, so a crash at any point leaves the previous snapshot named. The caller then drops
        the journal records up to that version.
        """
        version = self.applied
        if version == self.snapshot_version:
            return None
        started = time.perf_counter()
        path = Path(self.config.directory)
        name = f"{SNAPSHOT_PREFIX}{version:012d}"
        target = path / name
        if target.exists():
            shutil.rmtree(target)  # left by a crash: service.json never named it
        self.model.save(target)
        self.ledger.save(target / LEDGER_DIRECTORY)
        fsync_directory(path)  # the snapshot directory is on disk before service.json names it
        record = {**self.record, "snapshot": name, "snapshot_version": version}
        record["model"] = {**record["model"], "unknown_rate": self.model.unknown_rate}
        atomic_write_bytes(path / SERVICE_FILE, dump_record(record))
        self.record = record
        self.snapshot_version = version
        _remove_old_snapshots(path, name)
        logger.info(
            "snapshot of version %d written in %.2f s", version, time.perf_counter() - started
        )
        return version

    def _snapshot_due(self) -> bool:
        if self.applied - self.snapshot_version < self.config.snapshot_every:
            return False
        return self._snapshot_retry_at is None or time.monotonic() >= self._snapshot_retry_at

    def _until_retry(self) -> float | None:
        """Seconds until a failed snapshot is tried again (None: no retry is pending)."""
        if self._snapshot_retry_at is None:
            return None
        return max(0.0, self._snapshot_retry_at - time.monotonic())

    def _try_snapshot(self, send: Callable[[Message], None], *, retry: bool = True) -> None:
        try:
            version = self.snapshot()
        except Exception as error:
            # The journal still holds every update: a failed snapshot loses nothing, it only
            # leaves a longer journal. Try again later, waiting longer after each failure.
            delay = self._snapshot_backoff.failed()
            self._snapshot_retry_at = time.monotonic() + delay if retry else None
            logger.exception(
                "could not write the snapshot of version %d%s",
                self.applied,
                f"; trying again in {delay:g} s" if retry else "",
            )
            reason = f"could not write the snapshot of version {self.applied}: {error}"
            send(("problem", ("snapshot", reason)))
            return
        if self._snapshot_backoff.failures:
            send(("recovered", "snapshot"))
        self._snapshot_backoff.succeeded()
        self._snapshot_retry_at = None
        if version is not None:
            send(("snapshotted", version))

    def _apply_records(self, records: list[Record], deadline: float | None) -> None:
        """Apply ``records`` in order; stop early, between runs, once ``deadline`` is past."""
        for group in _learn_runs(records):
            if deadline is not None and time.time() >= deadline:
                logger.warning(
                    "stopping at version %d: %d acknowledged records are left to the journal",
                    self.applied,
                    records[-1].version - self.applied,
                )
                return
            if _apply_group(self.model, group):
                self._applied(group)
                continue
            for item in group:  # one by one: the error names the record at fault
                _apply(self.model, item)
                self._applied([item])

    def run(self, receive: Receive, send: Callable[[Message], None]) -> None:
        """Open, then serve messages until ``("stop", ...)``; see the module docstring."""
        try:
            info = self.open()
            send(("ready", info))
            send(("published", self.publish()))
        except BaseException as error:
            send(("failed", error))
            return
        failed = False
        if self._snapshot_due():
            self._try_snapshot(send)
        config = self.config
        rebuilds = _Rebuilds(
            config.background_nice > 0 or config.background_idle, config.background_idle
        )
        rebuilds.step(self.model)  # from now on the ridge heads leave their rebuilds to it
        resume = 0.0  # when the duty cycle lets the next step start (time.monotonic)
        while True:
            message = receive(self._until_retry())
            if message is None:  # a failed snapshot's retry is due
                if not failed and self._snapshot_due():
                    self._try_snapshot(send)
                continue
            if message[0] == "records" and time.monotonic() < resume:
                # meanwhile more records queue up (never a negative sleep: the clock moved on
                # since the test above, and a ValueError here once killed the refresher)
                time.sleep(max(0.0, resume - time.monotonic()))
            records: list[Record] = []
            stop: tuple[bool, float | None] | None = None
            while True:  # take everything already waiting: one solve for all of it
                kind, payload = message
                if kind == "records":
                    records += payload
                else:
                    stop = (bool(payload[0]), payload[1])
                    break
                waiting = receive(0.0)
                if waiting is None:
                    break
                message = waiting
            deadline = None if stop is None else stop[1]
            if records and not failed:
                busy = time.thread_time()
                try:
                    self._apply_records(records, deadline)
                    if stop is None:
                        rebuilds.step(self.model)
                        send(("published", self.publish()))
                        busy = time.thread_time() - busy
                        pause = min(busy * (1.0 / PUBLISH_DUTY - 1.0), MAX_PAUSE)
                        resume = time.monotonic() + pause
                except Exception as error:
                    logger.exception("the model stopped updating at version %d", self.applied)
                    failed = True
                    send(("failed", error))
                else:
                    if stop is None and self._snapshot_due():
                        self._try_snapshot(send)
            if stop is not None:
                in_time = deadline is None or time.time() < deadline
                if stop[0] and not failed and in_time:
                    self._try_snapshot(send, retry=False)
                send(("stopped", None))
                return


def share_projections(served: ServedModel, sent: dict[int, Any]) -> ServedModel:
    """Leave out of ``served`` the random projections already sent (they never change)."""
    if served.model is None:
        return served
    for index, head in enumerate(_ridge_heads(served.model.head)):
        projection = head.projection_
        if projection is not None and sent.get(index) is projection:
            head.projection_ = None
        sent[index] = projection
    return served


def restore_projections(served: ServedModel, kept: dict[int, Any]) -> ServedModel:
    """Put back the projections :func:`share_projections` left out; remember new ones."""
    if served.model is None:
        return served
    for index, head in enumerate(_ridge_heads(served.model.head)):
        if head.projection_ is None:
            if head.dim_ is not None:  # else it has none yet (a pretrained model learned nothing)
                head.projection_ = kept[index]
        else:
            kept[index] = head.projection_
    return served


def run_thread(
    config: RefresherConfig,
) -> tuple[queue.SimpleQueue[Message], queue.SimpleQueue[Message], threading.Thread]:
    """A refresher in a thread of this process: its inbox, its outbox, its thread."""
    inbox: queue.SimpleQueue[Message] = queue.SimpleQueue()
    outbox: queue.SimpleQueue[Message] = queue.SimpleQueue()

    def receive(timeout: float | None) -> Message | None:
        try:
            if timeout is None:
                return inbox.get()
            return inbox.get(True, timeout) if timeout > 0 else inbox.get(False)
        except queue.Empty:
            return None

    def main() -> None:
        # Held like a child process's refresher holds it: a store that stopped waiting for this
        # thread (close's deadline) cannot be opened again until the thread has finished.
        try:
            lock = hold_lock(Path(config.directory) / REFRESHER_LOCK, wait=30.0)
        except PersistenceError as error:
            outbox.put(("failed", error))
            return
        try:
            if config.background_nice > 0:
                run_in_background(config.background_nice)
            if config.background_idle:
                single_threaded_blas()  # the idle policy is for the rebuilds (_Rebuilds)
            Refresher(config).run(receive, outbox.put)
        finally:
            if lock is not None:
                os.close(lock)

    thread = threading.Thread(target=main, name="perennial-refresher", daemon=True)
    thread.start()
    return inbox, outbox, thread


def process_main(config: RefresherConfig, inbox: Any, outbox: Any, parent: int) -> None:
    """Entry point of the refresher's child process (``multiprocessing`` spawn)."""
    _die_with_parent(parent)
    faulthandler.enable()  # a crash in native code leaves its Python traceback in the log
    if config.log_level:
        logging.basicConfig(
            level=config.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s[refresher]: %(message)s",
        )
    if config.background_nice > 0:
        _lower_process_priority(config.background_nice)
        single_threaded_blas()  # the refresher runs in this (the main) thread
    if config.background_idle:
        single_threaded_blas()  # the idle policy is for the rebuilds' thread (_Rebuilds)
    lock = hold_lock(Path(config.directory) / REFRESHER_LOCK, wait=30.0)
    sent: dict[int, Any] = {}

    def receive(timeout: float | None) -> Message | None:
        try:
            if timeout is not None and not inbox.poll(timeout):
                return None
            message: Message = inbox.recv()
        except (EOFError, OSError):
            return ("stop", (False, None))  # the parent is gone: stop without a snapshot
        return message

    def send(message: Message) -> None:
        if message[0] == "published":
            message = ("published", share_projections(message[1], sent))
        with contextlib.suppress(OSError):
            outbox.send(message)

    try:
        Refresher(config).run(receive, send)
    except BaseException as error:
        # Whatever ends the refresher reaches the store as its cause, not only as a closed pipe.
        logger.exception("the refresher stopped on an unexpected error")
        with contextlib.suppress(Exception):
            outbox.send(("failed", error))
        raise
    finally:
        if lock is not None:
            os.close(lock)


def _die_with_parent(parent: int) -> None:
    """Ask Linux to kill this process when its parent dies (a crash takes both down)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    if os.getppid() != parent:
        os._exit(1)  # the parent died before the request took effect


def _process_threads() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


def _idle_policy(threads: list[int]) -> bool:
    """Put ``threads`` under SCHED_IDLE: they run only on CPU time nothing else wants.

    Linux only; whether it took effect (it is logged when it did not).
    """
    policy = getattr(os, "SCHED_IDLE", None)
    if policy is None:
        logger.warning("SCHED_IDLE is not available here; the refresher keeps its priority")
        return False
    done = True
    for thread in threads:
        try:
            os.sched_setscheduler(thread, policy, os.sched_param(0))
        except OSError as error:
            logger.warning("could not give the refresher the idle policy: %s", error)
            done = False
    return done


def _lower_process_priority(nice: int) -> None:
    """Lower the priority of every thread of this process (Linux nice values are per thread)."""
    for thread in _process_threads():
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + nice)


def hold_lock(path: Path, wait: float) -> int | None:
    """An exclusive lock on ``path`` (flock), waiting up to ``wait`` seconds; its descriptor.

    Returns None where flock does not exist. Raises :class:`PersistenceError` on timeout.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        return None
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return descriptor
        except OSError:
            if time.monotonic() >= deadline:
                os.close(descriptor)
                raise PersistenceError(
                    f"{path.parent} is in use by another perennial serve (the lock {path.name} is "
                    "held); stop it first"
                ) from None
            time.sleep(0.05)


def run_in_background(nice: int) -> bool:
    """Lower the calling thread's CPU priority by ``nice`` and make its BLAS calls single-threaded.

    Linux only (the nice value is per thread there; OpenBLAS >= 0.3.27 has a per-thread thread
    count). Returns whether both took effect.
    """
    if not sys.platform.startswith("linux"):
        return False
    done = True
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + nice)
    except OSError as error:
        logger.warning("could not lower the refresher's priority: %s", error)
        done = False
    return single_threaded_blas() and done


def single_threaded_blas() -> bool:
    """Make the calling thread's OpenBLAS calls single-threaded; whether it took effect.

    Background solves then take one core at most: two BLAS threads next to the encoder's torch
    threads on two cores kept stalling the encoder's parallel sections.
    """
    libraries = set()
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            for line in maps:
                fields = line.split()
                if len(fields) >= 6 and "openblas" in os.path.basename(fields[-1]):
                    libraries.add(fields[-1])
    except OSError:
        return False
    done = bool(libraries)
    for path in sorted(libraries):
        try:
            ctypes.CDLL(path).openblas_set_num_threads_local(1)
        except (OSError, AttributeError):
            done = False  # an OpenBLAS without per-thread settings: leave it as it is
    return done


def _apply(model: LifelongClassifier, record: Record) -> None:
    """Make one journal record's update to ``model`` (recovery and the refresher share this)."""
    if record.operation == "learn":
        model.learn_many(record.features, list(record.labels))
    elif record.operation == "unlearn":
        # Acknowledged, so applied whatever it leaves: the store refused what its ledger could
        # tell was impossible, and predictions never fail on statistics left indefinite.
        model.unlearn_many(record.features, list(record.labels), verify=False)
    elif record.operation == "forget":
        model.forget(record.labels[0])
    elif record.operation == "restore":
        model.restore_pretrained(record.labels[0])
    else:  # pragma: no cover - Record.decode refuses other operations
        raise ValueError(f"unknown operation {record.operation!r}")


#: Most examples one grouped update takes (bounds its transient memory).
MAX_GROUP_ROWS = 4096


def _learn_runs(records: list[Record]) -> list[list[Record]]:
    """``records`` cut into runs of consecutive learns (at most MAX_GROUP_ROWS rows) and singles."""
    runs: list[list[Record]] = []
    rows = 0
    for record in records:
        last = runs[-1] if runs else None
        size = len(record.labels)
        if (
            record.operation == "learn"
            and last is not None
            and last[-1].operation == "learn"
            and rows + size <= MAX_GROUP_ROWS
        ):
            last.append(record)
            rows += size
        else:
            runs.append([record])
            rows = size
    return runs


def _apply_group(model: LifelongClassifier, group: list[Record]) -> bool:
    """Apply a run of learns from :func:`_learn_runs` in one head update; whether it did.

    Equal to applying them one by one (to rounding; see ``LifelongClassifier.learn_batches``),
    at the cost of one pass over the ridge head's matrices instead of one per record. A single
    record, or a group whose update fails (the model is then unchanged: it is all or nothing),
    is left to the caller to apply one by one.
    """
    if len(group) < 2:
        return False
    try:
        model.learn_batches([(item.features, list(item.labels)) for item in group])
    except Exception:
        logger.warning(
            "a grouped update of %d records failed; applying them one by one", len(group)
        )
        return False
    return True


def dump_record(record: dict[str, Any]) -> bytes:
    return json.dumps(record, indent=1, sort_keys=True).encode("utf-8")


def _check_head(path: Path, head: Head, name: str | None, params: dict[str, Any] | None) -> None:
    actual = registered_name(head) or type(head).__name__
    if name is not None and name != actual:
        raise ModelMismatchError(f"{path} holds a {actual!r} head, not {name!r}")
    mine = head.get_params()
    for key, value in (params or {}).items():
        if key in mine and mine[key] != value:
            raise ModelMismatchError(
                f"{path} holds a {actual} head with {key}={mine[key]!r}, not {value!r}"
            )


def _load_model(path: Path, record: dict[str, Any], adapter: Precomputed) -> LifelongClassifier:
    snapshot = record["snapshot"]
    if snapshot is None:
        spec = dict(record["model"])
        try:
            head = make_head(str(spec["head"]), **dict(spec["head_params"]))
        except (KeyError, TypeError) as error:
            raise CorruptedModelError(
                f"{path / SERVICE_FILE}: bad model record: {error}"
            ) from error
        pretrained = spec.get("pretrained")
        if pretrained is not None:
            # It keeps open set on: the gate picks the head that answers (checked by the store).
            rate = spec.get("unknown_rate") or DEFAULT_UNKNOWN_RATE
            return LifelongClassifier(
                encoder=adapter, head=head, unknown_rate=rate, pretrained=str(pretrained)
            )
        # The gate learns from the start even with open set off, so it can be turned on later.
        model = LifelongClassifier(encoder=adapter, head=head, unknown_rate=DEFAULT_UNKNOWN_RATE)
        model.unknown_rate = spec.get("unknown_rate")
        return model
    location = path / str(snapshot)
    try:
        # Not load(): an adopted model's snapshot is the service's directory itself (".").
        return LifelongClassifier._load_saved(location, encoder=adapter)
    except PersistenceError as error:
        raise type(error)(
            f"refusing to start: the snapshot {location} of version {record['snapshot_version']} "
            f"cannot be used ({error}); the directory is left as it is"
        ) from error


def _remove_old_snapshots(path: Path, current: str | None) -> None:
    """Delete snapshot directories ``service.json`` does not name (older, or cut short)."""
    for entry in path.iterdir():
        if entry.name.startswith(SNAPSHOT_PREFIX) and entry.is_dir() and entry.name != current:
            shutil.rmtree(entry, ignore_errors=True)


def remove_leftovers(path: Path, record: dict[str, Any]) -> None:
    """Delete what a crash can leave behind: unnamed snapshots and temporary files."""
    _remove_old_snapshots(path, record.get("snapshot"))
    for entry in path.iterdir():
        if entry.name == JOURNAL_FILE + ".tmp" or (
            entry.name.startswith(f".{SERVICE_FILE}.") and entry.name.endswith(".tmp")
        ):
            entry.unlink(missing_ok=True)
