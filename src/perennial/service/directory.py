"""Reading a service's model directory without a service: the latest snapshot plus the journal.

``perennial serve`` keeps its model as a snapshot (``snapshot-<version>/``, named by
``service.json``) and a journal of every update acknowledged since (see
:mod:`perennial.service.store`). :func:`read_service_directory` builds the model a restarted
service would serve, the same way the service's recovery does (the snapshot, then each journal
record applied in order), and writes nothing: no lock is taken, a torn last journal record is
skipped rather than cut off, a damaged journal is refused without the copy the service keeps, and
no leftover file is removed. It may therefore run beside a live service; it then reads the
updates acknowledged when it read the journal.

:func:`append_learned` adds learned examples to such a directory as journal records, which a
service replays when it starts; it holds the service's lock meanwhile and refuses to run while a
service (or the refresher of one that crashed) holds it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from perennial.encoders import rebuild_encoder
from perennial.encoders.base import Precomputed
from perennial.exceptions import (
    CorruptedJournalError,
    InputTypeError,
    ModelMismatchError,
    PersistenceError,
)
from perennial.heads.base import check_features, check_labels
from perennial.learner import LifelongClassifier
from perennial.service.journal import Journal, Record, _DamageError, _scan, check_sequence
from perennial.service.refresher import (
    JOURNAL_FILE,
    REFRESHER_LOCK,
    SERVICE_FILE,
    SERVICE_LOCK,
    _apply,
    _load_model,
    hold_lock,
)

__all__ = [
    "ServiceDirectory",
    "append_learned",
    "is_service_directory",
    "read_service_directory",
    "service_running",
]


def is_service_directory(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory written by ``perennial serve`` (it holds service.json)."""
    return (Path(path) / SERVICE_FILE).is_file()


@dataclass
class ServiceDirectory:
    """A service directory as read by :func:`read_service_directory`.

    Attributes
    ----------
    model
        The model of every acknowledged update; its encoder takes features (``Precomputed``).
    version
        The version of the last update included (0: nothing learned).
    snapshot_version
        The version the snapshot holds; ``version - snapshot_version`` records were replayed.
    snapshot
        The snapshot directory's name, or None before the service wrote one.
    record
        ``service.json``, as read.
    running
        Whether a service held the directory's lock when it was read.
    torn_bytes
        Bytes of a torn last journal record left out (a write a crash, or a live service, had
        not finished).
    """

    model: LifelongClassifier
    version: int
    snapshot_version: int
    snapshot: str | None
    record: dict[str, Any]
    running: bool
    torn_bytes: int


def _read_record(path: Path) -> dict[str, Any]:
    from perennial.service.store import _read_service_record

    record = _read_service_record(path)
    if record is None:  # pragma: no cover - the caller checked that service.json exists
        raise PersistenceError(f"{path} is not a service directory (no {SERVICE_FILE})")
    return record


def service_running(path: str | os.PathLike[str]) -> bool:
    """Whether a service (or a crashed service's refresher) holds ``path``'s lock now."""
    path = Path(path)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        return False
    for name in (SERVICE_LOCK, REFRESHER_LOCK):
        try:
            descriptor = os.open(path / name, os.O_RDONLY)
        except OSError:
            continue  # never served here, or not readable: nobody holds it
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(descriptor)  # closing drops the shared lock taken to test it
    return False


def _journal_records(path: Path, record: dict[str, Any]) -> tuple[list[Record], int]:
    """The journal's records newer than the snapshot, and the torn bytes left out."""
    journal = path / JOURNAL_FILE
    snapshot_version = int(record["snapshot_version"])
    if not journal.exists():
        if record["snapshot"] is None or snapshot_version == 0:
            return [], 0
        raise CorruptedJournalError(
            f"{journal} is missing: the updates acknowledged after the snapshot of version "
            f"{snapshot_version} cannot be recovered"
        )
    data = journal.read_bytes()
    try:
        _, records, _, end = _scan(data, journal)
    except _DamageError as damage:
        raise CorruptedJournalError(
            f"{journal} is damaged at byte {damage.offset}: {damage.reason}; start "
            "'perennial serve' on it to keep a copy and learn what can be recovered"
        ) from None
    torn = 0 if end == 0 else len(data) - end
    return check_sequence(records, snapshot_version, journal), torn


def read_service_directory(path: str | os.PathLike[str], encoder: Any = None) -> ServiceDirectory:
    """The model a service would serve from ``path`` if it started now, read without writing.

    Parameters
    ----------
    path
        A directory written by ``perennial serve`` (it holds ``service.json``).
    encoder
        The encoder the features come from; by default rebuilt from ``service.json``. The
        returned model's encoder is ``Precomputed(encoder)``.

    Raises
    ------
    CorruptedModelError, CorruptedJournalError
        ``service.json``, the snapshot or the journal cannot be read, or the journal misses a
        version.
    """
    directory = Path(path)
    running = service_running(directory)
    record = _read_record(directory)
    spec = dict(record["encoder"])
    if encoder is None:
        encoder = rebuild_encoder(str(spec["kind"]), dict(spec.get("params") or {}))
    if encoder.name != spec.get("name"):
        raise ModelMismatchError(
            f"{directory} was served with encoder {spec.get('name')!r}, not {encoder.name!r}; "
            "its features would not match"
        )
    newer, torn = _journal_records(directory, record)
    model = _load_model(directory, record, Precomputed(encoder))
    for item in newer:
        try:
            _apply(model, item)
        except Exception as error:
            raise CorruptedJournalError(
                f"{directory / JOURNAL_FILE}: the record of version {item.version} "
                f"({item.operation}) cannot be replayed: {error}"
            ) from error
    snapshot_version = int(record["snapshot_version"])
    return ServiceDirectory(
        model=model,
        version=newer[-1].version if newer else snapshot_version,
        snapshot_version=snapshot_version,
        snapshot=record["snapshot"],
        record=record,
        running=running,
        torn_bytes=torn,
    )


def append_learned(path: str | os.PathLike[str], features: Any, labels: list[str]) -> int:
    """Learn ``features`` with ``labels`` into the service directory ``path``; the new version.

    The update is checked on the directory's model first (a bad batch raises and writes
    nothing), then appended to the journal as one record, synced, as the service itself would
    journal it; the next ``perennial serve`` replays it. The service's lock is held throughout.

    Raises
    ------
    PersistenceError
        A service is running on ``path`` (its lock is held): learn through its HTTP API instead.
    """
    directory = Path(path)
    try:
        lock = hold_lock(directory / SERVICE_LOCK, wait=0.0)
    except PersistenceError:
        raise PersistenceError(
            f"{directory} is served by a running 'perennial serve' (it holds "
            f"{SERVICE_LOCK}): learning into it now would fork its model; send the examples to "
            "the service's POST /v1/learn, or stop it first"
        ) from None
    try:
        if _locked_refresher(directory):
            raise PersistenceError(
                f"{directory}: the background process of a stopped 'perennial serve' still holds "
                f"{REFRESHER_LOCK}; wait for it to end"
            )
        state = read_service_directory(directory)
        rows = check_features(features, name="features").astype(np.float32)
        names: list[str] = []
        for label in check_labels(labels, rows.shape[0]):
            if not isinstance(label, str):
                raise InputTypeError(f"a service's labels are strings, got {label!r}")
            names.append(label)
        # All or nothing: the model checks the batch (width, values) before the journal takes
        # it, as the service checks a request before acknowledging it.
        state.model.learn_many(rows, names)
        journal, _ = Journal.open(directory / JOURNAL_FILE, create=True)
        try:
            version = state.version + 1
            journal.append(Record(version, "learn", tuple(names), rows))
        finally:
            journal.close()
        return version
    finally:
        if lock is not None:
            os.close(lock)


def _locked_refresher(path: Path) -> bool:
    try:
        descriptor = hold_lock(path / REFRESHER_LOCK, wait=0.0)
    except PersistenceError:
        return True
    if descriptor is not None:
        os.close(descriptor)
    return False
