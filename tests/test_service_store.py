"""The service's journal and model store, without HTTP: durability, recovery, versions.

The reference for every recovered model is a LifelongClassifier fed exactly the acknowledged
updates, in the same batches; "equal" means the same classes and counts and decision scores and
novelty within 1e-6 (recovery solves from scratch where the live model used rank updates).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from perennial.exceptions import (
    CorruptedJournalError,
    CorruptedModelError,
    FeatureDimensionError,
    FormatVersionError,
    InputTypeError,
    InvalidInputError,
    InvalidParameterError,
    LabelLengthError,
    ModelMismatchError,
    NonFiniteInputError,
    NotFittedError,
    PersistenceError,
    ServiceUnavailableError,
    UnknownLabelError,
)
from perennial.heads import RidgeHead
from perennial.learner import LifelongClassifier
from perennial.service.auth import KeyRing
from perennial.service.journal import Journal, Record
from perennial.service.metrics import Metrics
from perennial.service.refresher import prediction_copy, warm
from perennial.service.review import ReviewQueue
from perennial.service.store import ModelStore
from test_service_support import RIDGE, clusters, reference

N_FEATURES = 64
PROBES = np.random.default_rng(99).normal(0.0, 2.0, (12, 8))


def record(version: int, n: int = 2, label: str = "a", dim: int = 3) -> Record:
    features = np.arange(n * dim, dtype=np.float32).reshape(n, dim) + version
    return Record(version, "learn", (label,) * n, features)


# The two journal formats, framed here from the module docstring, independently of the module.
FILE_HEADERS = {1: b"PRNLJNL\x01", 2: b"PRNLJNL\x02"}
FRAME_HEADERS = {1: 8, 2: 16}  # bytes in front of each payload
LENGTH_AT = {1: 0, 2: 4}  # where in a frame its payload length sits


def frame_in(format_version: int, payload: bytes) -> bytes:
    length_and_crc = struct.pack("<II", len(payload), zlib.crc32(payload))
    if format_version == 1:
        return length_and_crc + payload
    header = b"\xa5REC" + length_and_crc
    return header + struct.pack("<I", zlib.crc32(header)) + payload


def write_journal(path: Path, records: list[Record], format_version: int) -> list[int]:
    """A journal file of ``records`` in the given format; the byte offset of each frame."""
    data = FILE_HEADERS[format_version]
    offsets = []
    for item in records:
        offsets.append(len(data))
        data += frame_in(format_version, item.encode())
    path.write_bytes(data)
    return offsets


def frames_of(data: bytes) -> list[bytes]:
    """The payloads of a format-2 journal, read by the documented rules, strictly."""
    assert data[:8] == FILE_HEADERS[2]
    payloads, offset = [], 8
    while offset < len(data):
        magic, length, checksum, header_checksum = struct.unpack_from("<4sIII", data, offset)
        assert magic == b"\xa5REC" and zlib.crc32(data[offset : offset + 12]) == header_checksum
        payload = data[offset + 16 : offset + 16 + length]
        assert len(payload) == length and zlib.crc32(payload) == checksum
        payloads.append(payload)
        offset += 16 + length
    return payloads


def damaged_copies(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".damaged-*"))


# --- the journal ---------------------------------------------------------------------------------------
def test_records_round_trip_through_a_reopened_journal(tmp_path: Path) -> None:
    path = tmp_path / "journal.log"
    journal, found = Journal.open(path, create=True)
    assert found == []
    written = [
        record(1),
        Record(2, "forget", ("a",)),
        Record(3, "unlearn", ("b",), np.ones((1, 3), np.float32)),
    ]
    for item in written:
        journal.append(item)
    journal.close()
    journal, found = Journal.open(path)
    journal.close()
    assert found == written
    assert found[0].features is not None and found[0].features.dtype == np.float32


def test_a_new_journal_is_written_in_the_documented_format(tmp_path: Path) -> None:
    path = tmp_path / "journal.log"
    journal, _ = Journal.open(path, create=True)
    written = [record(1), Record(2, "forget", ("a",))]
    for item in written:
        journal.append(item)
    journal.close()
    assert frames_of(path.read_bytes()) == [item.encode() for item in written]


def torn(path: Path, how: str, format_version: int) -> None:
    data = path.read_bytes()
    next_frame = frame_in(format_version, record(4).encode())
    if how == "cut":
        path.write_bytes(data[:-7])  # the last record cut short
    elif how == "header":
        path.write_bytes(data + next_frame[:3])  # a frame header cut short
    elif how == "header-complete":
        path.write_bytes(data + next_frame[: FRAME_HEADERS[format_version] + 5])
    elif how == "zeros":
        path.write_bytes(data + bytes(64))  # space allocated, never written
    elif how == "prefix-then-zeros":  # the file grew, part of the write never reached the disk
        path.write_bytes(data + next_frame[:20] + bytes(9))


@pytest.mark.parametrize("format_version", [1, 2])
@pytest.mark.parametrize("how", ["cut", "header", "header-complete", "zeros", "prefix-then-zeros"])
def test_a_torn_last_record_is_ignored_with_a_warning(
    tmp_path: Path, how: str, format_version: int, caplog
) -> None:
    path = tmp_path / "journal.log"
    write_journal(path, [record(1), record(2), record(3)], format_version)
    torn(path, how, format_version)
    with caplog.at_level(logging.WARNING, logger="perennial.service"):
        journal, found = Journal.open(path)
    kept = [1, 2] if how == "cut" else [1, 2, 3]
    assert [r.version for r in found] == kept
    assert "torn last record" in caplog.text
    assert damaged_copies(path) == []
    # The tail is cut off, so the next append follows a valid record, in the file's format.
    journal.append(record(kept[-1] + 1))
    journal.close()
    assert path.read_bytes()[:8] == FILE_HEADERS[format_version]
    _, again = Journal.open(path)
    assert again == [record(v) for v in kept] + [record(kept[-1] + 1)]


def flip(data: bytes, offset: int, bit: int) -> bytes:
    damaged = bytearray(data)
    damaged[offset + bit // 8] ^= 1 << (bit % 8)
    return bytes(damaged)


# Where a bit flips, as (frame, byte within the frame or "length", bit); the frames hold
# versions 1 to 4, the middle one is frame 1. Format 1 has no frame magic nor header checksum,
# and cannot tell a damaged length in its last frame from a tear (documented).
DAMAGE = {
    "middle length, past the end": (1, "length", 20),  # +1 MiB: runs past the end of the file
    "middle length, into a later frame": (1, "length", 3),  # +-8: lands inside another frame
    "middle payload": (1, "payload", 5),
    "first payload": (0, "payload", 1),
    "last payload, frame complete": (3, "payload", 2),
    "last length, past the end": (3, "length", 20),
    "middle frame magic": (1, 0, 1),
    "middle header checksum": (1, 12, 0),
}
DAMAGE_CASES = [(2, where) for where in DAMAGE] + [(1, where) for where in list(DAMAGE)[:5]]


@pytest.mark.parametrize(("format_version", "where"), DAMAGE_CASES)
def test_damage_anywhere_but_a_torn_tail_is_refused_and_kept(
    tmp_path: Path, where: str, format_version: int
) -> None:
    index, field, bit = DAMAGE[where]
    path = tmp_path / "journal.log"
    offsets = write_journal(path, [record(v) for v in (1, 2, 3, 4)], format_version)
    if field == "length":
        byte = LENGTH_AT[format_version]
    elif field == "payload":
        byte = FRAME_HEADERS[format_version] + 20
    else:
        byte = field
    damaged = flip(path.read_bytes(), offsets[index] + byte, bit)
    path.write_bytes(damaged)
    with pytest.raises(CorruptedJournalError, match=rf"damage at byte {offsets[index]}\b"):
        Journal.open(path)
    assert path.read_bytes() == damaged  # nothing cut, nothing rewritten
    (copy,) = damaged_copies(path)
    assert copy.read_bytes() == damaged
    with pytest.raises(CorruptedJournalError, match=f"a copy is kept at {copy}"):
        Journal.open(path)  # refused again, and the same damage is not copied twice
    assert damaged_copies(path) == [copy]


def test_a_file_that_is_not_a_journal_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal.log"
    path.write_bytes(b"hello, world: not a journal")
    with pytest.raises(CorruptedJournalError, match="not a perennial journal"):
        Journal.open(path)
    path.write_bytes(b"PRNLJNL\x07" + bytes(20))
    with pytest.raises(FormatVersionError, match="journal of format 7; this perennial reads"):
        Journal.open(path)


@pytest.mark.parametrize("format_version", [1, 2])
def test_an_impossible_length_mid_file_is_refused(tmp_path: Path, format_version: int) -> None:
    path = tmp_path / "journal.log"
    write_journal(path, [record(1)], format_version)
    second = len(path.read_bytes())
    header = struct.pack("<II", 0xFFFFFFFF, 0)
    if format_version == 2:  # a header whose checksum passes, so that the length is believed
        header = b"\xa5REC" + header
        header += struct.pack("<I", zlib.crc32(header))
    path.write_bytes(path.read_bytes() + header + b"abc")
    with pytest.raises(CorruptedJournalError, match=rf"byte {second}: .*impossible length"):
        Journal.open(path)


def test_compaction_keeps_only_newer_records(tmp_path: Path) -> None:
    path = tmp_path / "journal.log"
    journal, _ = Journal.open(path, create=True)
    for version in range(1, 6):
        journal.append(record(version))
    assert journal.compact(3) == 3
    journal.append(record(6))
    journal.close()
    _, found = Journal.open(path)
    assert found == [record(4), record(5), record(6)]
    assert frames_of(path.read_bytes()) == [record(v).encode() for v in (4, 5, 6)]


def test_a_format_1_journal_is_read_appended_to_and_compacted_into_format_2(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.log"
    write_journal(path, [record(1), Record(2, "forget", ("a",)), record(3)], 1)
    journal, found = Journal.open(path)
    assert found == [record(1), Record(2, "forget", ("a",)), record(3)]
    journal.append(record(4))  # in the file's format, until compaction
    assert journal.format_version == 1
    assert path.read_bytes()[:8] == FILE_HEADERS[1]
    assert journal.compact(1) == 1
    assert journal.format_version == 2
    journal.append(record(5))
    journal.close()
    kept = [Record(2, "forget", ("a",)), record(3), record(4), record(5)]
    assert frames_of(path.read_bytes()) == [item.encode() for item in kept]
    journal, found = Journal.open(path)
    assert found == kept
    assert journal.compact(4) == 3  # a format-2 journal compacts as before
    journal.close()
    assert frames_of(path.read_bytes()) == [record(5).encode()]


def test_a_write_that_cannot_be_undone_stops_later_appends(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "journal.log"
    journal, _ = Journal.open(path, create=True)
    journal.append(record(1))
    real_write, calls = os.write, []

    def half_then_fail(descriptor: int, data) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(descriptor, bytes(data)[: len(data) // 2])
        raise OSError(28, "No space left on device (simulated)")

    def no_truncate(descriptor: int, length: int) -> None:
        raise OSError(5, "Input/output error (simulated)")

    monkeypatch.setattr(os, "write", half_then_fail)
    monkeypatch.setattr(os, "ftruncate", no_truncate)
    with pytest.raises(OSError, match="No space left"):
        journal.append(record(2))
    monkeypatch.undo()
    # Written after the torn half, record 3 would turn it into damage in the middle of the file.
    with pytest.raises(OSError, match="could not be cut off"):
        journal.append(record(3))
    journal.close()
    _, found = Journal.open(path)  # the torn half is the last write: cut off on opening
    assert found == [record(1)]


# --- the store ------------------------------------------------------------------------------------------------
def open_store(path: Path, **options) -> ModelStore:
    """A store on identity features, its refresher in a thread unless ``isolate=True``."""
    options.setdefault("encoder", "identity")
    options.setdefault("head_params", {"n_features": N_FEATURES, "ridge": RIDGE})
    options.setdefault("isolate", False)
    return ModelStore.open(path, **options)


def assert_same_model(store: ModelStore, batches: list) -> None:
    served = store.wait_served(store.version, timeout=30)
    assert served.model is not None
    expected = reference(batches, N_FEATURES)
    model = served.model
    assert sorted(model.classes_) == sorted(expected.classes_)
    order = [model.classes_.index(label) for label in expected.classes_]
    np.testing.assert_allclose(
        model.decision_scores(PROBES)[:, order],
        expected.decision_scores(PROBES),
        rtol=1e-6,
        atol=1e-9,
    )
    try:
        novelty = expected.novelty_scores(PROBES)
    except NotFittedError:  # forget() leaves the ridge head's n_seen; open-set is then off
        with pytest.raises(NotFittedError):
            model.novelty_scores(PROBES)
    else:
        np.testing.assert_allclose(model.novelty_scores(PROBES), novelty, rtol=1e-6)
    assert dict(store.classes()[1]) == dict(
        zip(expected.classes_, expected.head._class_counts().tolist(), strict=True)
    )


def updates(seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    batches: list = []
    for step in range(6):
        X, y = clusters(rng, ["a", "b", "c"][: 2 + step % 2], 3)
        batches.append(("learn", X, y))
    X, y = clusters(rng, ["d"], 4)
    batches.append(("learn", X, y))
    batches.append(("unlearn", batches[0][1][:2], batches[0][2][:2]))
    batches.append(("forget", None, "d"))
    return batches


def apply(store: ModelStore, batches: list) -> list[int]:
    versions = []
    for operation, X, y in batches:
        if operation == "learn":
            versions.append(store.learn(X, y))
        elif operation == "unlearn":
            versions.append(store.unlearn(X, y))
        else:
            versions.append(store.forget(y))
    return versions


@pytest.mark.parametrize(("snapshot_every", "isolate"), [(1000, False), (3, False), (3, True)])
def test_recovery_gives_the_model_of_the_acknowledged_updates(
    tmp_path: Path, snapshot_every: int, isolate: bool
) -> None:
    batches = updates()
    store = open_store(tmp_path / "model", snapshot_every=snapshot_every, isolate=isolate)
    assert apply(store, batches) == list(range(1, len(batches) + 1))
    assert_same_model(store, batches)
    store.close(snapshot=False)  # as after a crash: whatever the journal holds
    again = open_store(tmp_path / "model", snapshot_every=snapshot_every, isolate=isolate)
    assert again.version == len(batches)
    assert_same_model(again, batches)
    more = updates(seed=1)[:2]
    apply(again, more)
    again.close()  # a clean shutdown snapshots
    third = ModelStore.open(tmp_path / "model", isolate=isolate)
    assert third.status()["journal_records"] == 0
    assert_same_model(third, batches + more)
    third.close()


def test_a_crash_between_snapshot_and_journal_compaction_is_harmless(tmp_path: Path) -> None:
    batches = updates()
    store = open_store(tmp_path / "model")
    apply(store, batches)
    store.wait_served(store.version, timeout=30)
    journal_before = (tmp_path / "model" / "journal.log").read_bytes()
    store.close()  # snapshot, service.json, then compaction
    # Put back the journal as it was before compaction: the snapshot already holds its records.
    (tmp_path / "model" / "journal.log").write_bytes(journal_before)
    again = open_store(tmp_path / "model")
    assert again.version == len(batches)
    assert_same_model(again, batches)
    again.close(snapshot=False)


def frame_offsets(data: bytes) -> list[int]:
    """Where each frame of a journal starts, by the documented rules of its format."""
    format_version = data[7]
    offsets, offset = [], 8
    while offset < len(data):
        offsets.append(offset)
        (length,) = struct.unpack_from("<I", data, offset + LENGTH_AT[format_version])
        offset += FRAME_HEADERS[format_version] + length
    return offsets


def test_a_damaged_length_in_the_journal_is_refused_not_taken_for_a_tear(tmp_path: Path) -> None:
    # The finding: a flipped bit made a middle record's length run past the end of the file, and
    # the service started 4 versions back after cutting the journal there.
    model = tmp_path / "model"
    store = open_store(model)
    apply(store, updates())
    store.close(snapshot=False)
    path = model / "journal.log"
    data = path.read_bytes()
    middle = frame_offsets(data)[4]
    length_at = middle + LENGTH_AT[data[7]]
    damaged = flip(data, length_at, 20)  # the length grows by 1 MiB
    path.write_bytes(damaged)
    with pytest.raises(CorruptedJournalError, match=rf"damage at byte {middle}\b"):
        open_store(model)
    assert path.read_bytes() == damaged
    assert [copy.read_bytes() for copy in damaged_copies(path)] == [damaged]


def test_a_format_1_journal_on_disk_is_served_and_rewritten_in_format_2(tmp_path: Path) -> None:
    model = tmp_path / "model"
    batches = updates()
    store = open_store(model)
    apply(store, batches)
    store.close(snapshot=False)
    path = model / "journal.log"
    payloads = frames_of(path.read_bytes())
    path.write_bytes(FILE_HEADERS[1] + b"".join(frame_in(1, payload) for payload in payloads))
    again = open_store(model)
    assert again.version == len(batches)
    assert_same_model(again, batches)
    more = updates(seed=1)[:2]
    apply(again, more)
    assert path.read_bytes()[:8] == FILE_HEADERS[1]  # appended to in its own format
    again.close(snapshot=False)
    third = open_store(model, snapshot_every=3)  # replays 11 records: a snapshot, a compaction
    assert_same_model(third, batches + more)
    third.close()
    assert path.read_bytes() == FILE_HEADERS[2]  # the snapshot holds every record
    fourth = open_store(model)
    assert_same_model(fourth, batches + more)
    fourth.close(snapshot=False)


class SyncLog:
    """The calls of os.fsync, os.fdatasync, os.replace and os.rename, in order.

    A sync is logged once done, as ("sync", inode, size in bytes); a rename as ("rename", inode
    of the file renamed, destination).
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, int, object]] = []
        for name in ("fsync", "fdatasync"):
            monkeypatch.setattr(os, name, self._sync(getattr(os, name)))
        for name in ("replace", "rename"):
            monkeypatch.setattr(os, name, self._rename(getattr(os, name)))

    def _sync(self, real):
        def sync(descriptor: int) -> None:
            real(descriptor)
            stat = os.fstat(descriptor)
            self.events.append(("sync", stat.st_ino, stat.st_size))

        return sync

    def _rename(self, real):
        def rename(source, destination, **options) -> None:
            inode = os.stat(source).st_ino
            real(source, destination, **options)
            self.events.append(("rename", inode, Path(destination)))

        return rename

    def renamed(self, path: Path) -> int:
        """Where the file now at ``path`` was renamed to it."""
        inode = path.stat().st_ino
        (at,) = [i for i, e in enumerate(self.events) if e == ("rename", inode, path)]
        return at

    def first_sync(self, path: Path) -> int:
        """Where the file now at ``path`` was first synced."""
        inode = path.stat().st_ino
        return min(i for i, e in enumerate(self.events) if e[:2] == ("sync", inode))

    def synced(self, path: Path, after: int = -1, before: int | None = None) -> bool:
        """Whether ``path``, as it is now (a file with all its bytes), was synced in between."""
        stat = path.stat()
        stop = len(self.events) if before is None else before
        return any(
            kind == "sync" and inode == stat.st_ino and (path.is_dir() or size == stat.st_size)
            for kind, inode, size in self.events[after + 1 : stop]
        )


@pytest.mark.parametrize("through", ["journal", "store"])
def test_an_update_is_synced_to_disk_before_it_is_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, through: str
) -> None:
    path = tmp_path / "model" / "journal.log"
    if through == "journal":
        path.parent.mkdir()
        journal, _ = Journal.open(path, create=True)
    else:
        store = open_store(path.parent)
    log = SyncLog(monkeypatch)
    for version, (_, X, y) in enumerate(updates()[:3], start=1):
        if through == "journal":
            journal.append(Record(version, "learn", tuple(y), np.asarray(X, dtype=np.float32)))
        else:
            store.learn(X, y)
        # Synced with all its bytes, before the call returned (the service answers after it).
        assert log.synced(path), f"update {version} was acknowledged before it was on disk"
    monkeypatch.undo()
    if through == "journal":
        journal.close()
    else:
        store.close(snapshot=False)


def test_a_snapshot_is_synced_before_service_json_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "model"
    store = open_store(model)
    apply(store, updates())
    store.wait_served(store.version, timeout=30)
    log = SyncLog(monkeypatch)
    store.close()  # the last snapshot, service.json naming it, then the journal compacted
    monkeypatch.undo()
    snapshot = model / json.loads((model / "service.json").read_text())["snapshot"]
    (arrays,) = snapshot.glob("state-*.safetensors")
    meta, service, journal = snapshot / "meta.json", model / "service.json", model / "journal.log"
    named = log.renamed(service)
    # Every file with all its bytes before its rename, and the snapshot's before service.json's.
    for path in (arrays, meta, service, journal):
        assert log.synced(path, before=log.renamed(path)), f"{path.name} renamed before synced"
    assert log.renamed(meta) < named
    # Directory entries: the arrays file's before meta.json names it, the snapshot's files and
    # the snapshot directory itself before service.json names it, service.json's after.
    assert log.synced(snapshot, after=log.renamed(arrays), before=log.renamed(meta))
    assert log.synced(snapshot, after=log.renamed(meta), before=named)
    assert log.synced(model, after=log.renamed(meta), before=named)
    # service.json's rename is on disk before the journal drops the records the snapshot holds.
    compaction = log.first_sync(journal)
    assert named < compaction and log.synced(model, after=named, before=compaction)
    assert log.synced(model, after=log.renamed(journal))


@pytest.mark.parametrize("crash_at", ["meta.json", "service.json"])
def test_a_crash_before_a_snapshot_is_renamed_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_at: str
) -> None:
    model, crashed = tmp_path / "model", tmp_path / "crashed"
    batches = updates()
    store = open_store(model)
    apply(store, batches[:4])
    store.close()  # the snapshot of version 4
    service = (model / "service.json").read_bytes()
    previous = json.loads(service)["snapshot"]
    store = open_store(model)
    apply(store, batches[4:])
    store.wait_served(store.version, timeout=30)
    real_replace = os.replace

    def crash(source, destination, **options) -> None:
        if Path(destination).name == crash_at:
            shutil.copytree(model, crashed)  # the disk as a crash here would leave it
            raise OSError("simulated crash between the write and the rename")
        real_replace(source, destination, **options)

    monkeypatch.setattr(os, "replace", crash)
    store.close()  # its snapshot fails (logged): the journal keeps every record
    monkeypatch.undo()
    assert crashed.is_dir()
    expected = reference(batches[:4], N_FEATURES)
    for directory in (crashed, model):
        assert (directory / "service.json").read_bytes() == service
        kept = LifelongClassifier.load(directory / previous)
        assert kept.classes_ == expected.classes_
        np.testing.assert_allclose(
            kept.decision_scores(PROBES), expected.decision_scores(PROBES), rtol=1e-6, atol=1e-9
        )
        again = open_store(directory)
        assert again.version == len(batches)
        assert_same_model(again, batches)
        again.close(snapshot=False)
        # What the crash left (the new snapshot, a temporary service.json) is cleared away.
        assert [p.name for p in directory.glob("snapshot-*")] == [previous]
        assert list(directory.glob(".*.tmp")) == []


def test_a_version_gap_in_the_journal_is_refused(tmp_path: Path) -> None:
    store = open_store(tmp_path / "model")
    apply(store, updates()[:3])
    store.close(snapshot=False)
    path = tmp_path / "model" / "journal.log"
    journal, _ = Journal.open(path)
    journal.append(record(7, dim=8))
    journal.close()
    with pytest.raises(
        CorruptedJournalError, match="expected the record of version 4, found version 7"
    ):
        open_store(tmp_path / "model")


@pytest.mark.parametrize("isolate", [False, True])
def test_a_corrupted_snapshot_is_refused_and_left_alone(tmp_path: Path, isolate: bool) -> None:
    store = open_store(tmp_path / "model")
    apply(store, updates()[:3])
    store.close()
    (arrays,) = (tmp_path / "model").glob("snapshot-*/state-*.safetensors")
    data = bytearray(arrays.read_bytes())
    data[len(data) // 2] ^= 0xFF
    arrays.write_bytes(bytes(data))
    before = {p: p.read_bytes() for p in (tmp_path / "model").rglob("*") if p.is_file()}
    with pytest.raises(CorruptedModelError, match=r"refusing to start: the snapshot .* is damaged"):
        open_store(tmp_path / "model", isolate=isolate)
    after = {p: p.read_bytes() for p in (tmp_path / "model").rglob("*") if p.is_file()}
    assert after == before


def test_a_directory_of_another_encoder_is_refused(tmp_path: Path) -> None:
    open_store(tmp_path / "model").close()
    with pytest.raises(ModelMismatchError, match="written with the 'identity' encoder"):
        ModelStore.open(tmp_path / "model", encoder="text", isolate=False)
    with pytest.raises(ModelMismatchError, match="n_features=64, not 128"):
        ModelStore.open(tmp_path / "model", head_params={"n_features": 128}, isolate=False)


def test_a_foreign_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(PersistenceError, match="not a model directory"):
        open_store(tmp_path)


def test_a_saved_model_is_adopted_as_version_zero(tmp_path: Path) -> None:
    batches = updates()[:4]
    reference(batches, N_FEATURES).save(tmp_path / "model")
    store = ModelStore.open(tmp_path / "model", isolate=False)
    assert store.version == 0
    assert_same_model(store, batches)
    more = updates(seed=3)[:2]
    apply(store, more)
    store.close()
    again = ModelStore.open(tmp_path / "model", isolate=False)
    assert_same_model(again, batches + more)
    again.close()


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda s: s.learn(np.ones((2, 5)), ["a", "b"]),
            FeatureDimensionError,
            "expected 8 features",
        ),
        (lambda s: s.learn(np.ones((2, 8)), ["a"]), LabelLengthError, "2 inputs but 1 labels"),
        (lambda s: s.learn(np.full((1, 8), np.nan), ["a"]), NonFiniteInputError, "non-finite"),
        (lambda s: s.learn(np.full((1, 8), 1e300), ["a"]), NonFiniteInputError, "non-finite"),
        (lambda s: s.learn(np.ones((1, 8)), [7]), InputTypeError, "labels must be strings"),
        (lambda s: s.unlearn(np.ones((1, 8)), ["zebra"]), UnknownLabelError, "'zebra'"),
        (
            lambda s: s.unlearn(np.ones((99, 8)), ["a"] * 99),
            InvalidInputError,
            "99 examples of 'a'",
        ),
        (lambda s: s.forget("zebra"), UnknownLabelError, "cannot forget 'zebra'"),
        (
            lambda s: s.unlearn(np.full((3, 8), 50.0), ["a"] * 3),  # far from every example
            InvalidInputError,
            "cannot unlearn these examples of 'a': the 6 examples it would keep would have a "
            "variance of -",
        ),
        (
            lambda s: s.learn(np.ones((2, 8)), ["a", "\ud800"]),
            InvalidInputError,
            r"labels\[1\] is not valid Unicode text",
        ),
        (lambda s: s.learn(np.ones((1, 8)), ["a\nb"]), InvalidInputError, "control character"),
        (lambda s: s.learn(np.ones((1, 8)), ["\x85"]), InvalidInputError, "control character"),
        (lambda s: s.learn(np.ones((1, 8)), [" "]), InvalidInputError, "is blank"),
        (lambda s: s.unlearn(np.ones((1, 8)), ["a\udc00"]), InvalidInputError, "surrogate"),
        (lambda s: s.forget("a\ud800"), InvalidInputError, "label is not valid Unicode"),
        (lambda s: s.forget("a\tb"), InvalidInputError, "label holds a control character"),
    ],
)
def test_bad_updates_change_nothing(tmp_path: Path, call, error, message) -> None:
    store = open_store(tmp_path / "model")
    batches = updates()[:3]
    apply(store, batches)
    journal = (tmp_path / "model" / "journal.log").read_bytes()
    with pytest.raises(error, match=message):
        call(store)
    assert store.version == 3
    assert (tmp_path / "model" / "journal.log").read_bytes() == journal
    assert_same_model(store, batches)
    store.close(snapshot=False)


def test_labels_are_journalled_in_nfc_and_found_by_any_spelling(tmp_path: Path) -> None:
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    store = open_store(tmp_path / "model")
    rng = np.random.default_rng(5)
    X, y = clusters(rng, ["a", composed, "b"], 4)
    decomposed_y = [decomposed if label == composed else label for label in y]
    more, more_y = clusters(rng, ["a", composed], 3)
    store.learn(X, decomposed_y)
    store.learn(more, more_y)
    store.unlearn(X[4:6], [decomposed, decomposed])
    assert dict(store.classes()[1]) == {"a": 7, composed: 5, "b": 4}
    assert_same_model(
        store, [("learn", X, y), ("learn", more, more_y), ("unlearn", X[4:6], [composed] * 2)]
    )
    store.close(snapshot=False)
    journal, records = Journal.open(tmp_path / "model" / "journal.log")
    journal.close()
    assert [set(r.labels) for r in records] == [{"a", composed, "b"}, {"a", composed}, {composed}]
    # After a restart (replaying the journal) the other spelling still finds the class.
    store = open_store(tmp_path / "model")
    store.forget(decomposed)
    assert dict(store.classes()[1]) == {"a": 7, "b": 4}
    assert_same_model(
        store,
        [
            ("learn", X, y),
            ("learn", more, more_y),
            ("unlearn", X[4:6], [composed] * 2),
            ("forget", None, composed),
        ],
    )
    store.close()


def test_published_versions_are_read_only_copies(tmp_path: Path) -> None:
    store = open_store(tmp_path / "model")
    batches = updates()
    apply(store, batches[:4])
    served = store.wait_served(4, timeout=30)
    before = served.model.decision_scores(PROBES)
    apply(store, batches[4:])
    later = store.wait_served(store.version, timeout=30)
    assert later.version == len(batches) and served.version == 4
    np.testing.assert_array_equal(served.model.decision_scores(PROBES), before)
    assert served.model.head.gram_ is None  # the copy dropped what learning writes in place
    store.close(snapshot=False)


def test_prediction_copy_predicts_like_the_model() -> None:
    rng = np.random.default_rng(5)
    X, y = clusters(rng, ["a", "b", "c"], 10)
    model = reference([("learn", X, y)], 128)
    warm(model)
    copied = prediction_copy(model)
    assert copied.head.projection_ is model.head.projection_
    for a, b in zip(copied.predict_detailed(PROBES), model.predict_detailed(PROBES), strict=True):
        assert a == b


def test_concurrent_updates_get_distinct_consecutive_versions(tmp_path: Path) -> None:
    store = open_store(tmp_path / "model")
    rng = np.random.default_rng(2)
    X, y = clusters(rng, ["a", "b"], 5)
    seen: list[int] = []
    lock = threading.Lock()

    def writer() -> None:
        for _ in range(5):
            version = store.learn(X[:3], y[:3])
            with lock:
                seen.append(version)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(seen) == list(range(1, 21))
    assert store.wait_served(20, timeout=30).n_seen == 60
    store.close(snapshot=False)


def test_wait_served_refuses_a_future_version(tmp_path: Path) -> None:
    store = open_store(tmp_path / "model")
    with pytest.raises(InvalidInputError, match="min_version 5 is ahead"):
        store.wait_served(5, timeout=1)
    store.close(snapshot=False)


def test_invalid_store_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterError, match="snapshot_every"):
        open_store(tmp_path / "a", snapshot_every=0)
    with pytest.raises(InvalidParameterError, match="unknown_rate"):
        open_store(tmp_path / "b", unknown_rate=1.5)


def test_service_record_names_the_snapshot(tmp_path: Path) -> None:
    store = open_store(tmp_path / "model", snapshot_every=2)
    apply(store, updates()[:5])
    store.close()
    record_ = json.loads((tmp_path / "model" / "service.json").read_text())
    assert record_["snapshot_version"] == 5
    assert os.path.isdir(tmp_path / "model" / record_["snapshot"])
    assert [p.name for p in (tmp_path / "model").glob("snapshot-*")] == [record_["snapshot"]]


# --- the small parts ------------------------------------------------------------------------------------------
def test_review_items_expire_and_are_bounded() -> None:
    now = [0.0]
    queue = ReviewQueue(ttl=10, max_items=2, clock=lambda: now[0])
    first = queue.add("one", {"label": "x"}, version=1)
    queue.add("two", {"label": "x"}, version=1)
    assert queue.add("three", {"label": "x"}, version=1) is None and queue.dropped == 1
    item = queue.claim(first)
    queue.restore(item)
    now[0] = 11.0
    assert queue.items() == [] and queue.expired == 2
    with pytest.raises(UnknownLabelError, match="no review item"):
        queue.claim(first)
    assert ReviewQueue(ttl=0).add("x", {}, version=1) is None


def test_an_expired_review_item_that_is_restored_is_purged() -> None:
    now = [0.0]
    queue = ReviewQueue(ttl=10, max_bytes=100, clock=lambda: now[0])
    first = queue.add("one", {"label": "x"}, version=1, size=60)
    assert first is not None
    item = queue.claim(first)  # an operator labels it; the update fails after its time ran out
    now[0] = 10.0
    queue.restore(item)
    assert queue.items() == [] and len(queue) == 0 and queue.expired == 1
    with pytest.raises(UnknownLabelError, match="no review item"):
        queue.claim(first)
    # Its bytes are not counted: two items of 60 bytes would not fit in 100.
    second = queue.add("two", {"label": "x"}, version=1, size=60)
    assert second is not None and [i.id for i in queue.items()] == [second]
    # An item restored in time keeps its first expiry (10 + 10), not a new one.
    now[0] = 15.0
    queue.restore(queue.claim(second))
    assert [i.id for i in queue.items()] == [second]
    now[0] = 20.0
    assert queue.items() == [] and queue.expired == 2


def test_keys_file_is_parsed_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# comment\n\nreader-key-123 read\nwriter-key-456 write\n")
    ring = KeyRing.from_file(path)
    assert ring.role_of("reader-key-123") == "read" and ring.role_of("writer-key-456") == "write"
    assert ring.role_of("reader-key-12") is None
    assert "reader" not in repr(ring)
    path.write_text("only-a-key\n")
    with pytest.raises(InvalidParameterError, match="line 1: expected 'KEY ROLE'"):
        KeyRing.from_file(path)
    path.write_text("k1 admin\n")
    with pytest.raises(InvalidParameterError, match="role 'admin'"):
        KeyRing.from_file(path)


def test_metrics_render_prometheus_text() -> None:
    metrics = Metrics()
    for seconds in (0.002, 0.02, 3.0):
        metrics.observe_request("POST", "/v1/predict", 200, seconds)
    metrics.increment("perennial_learned_examples_total", 4)
    text = metrics.render({"perennial_model_version": ("Version.", 7)})
    lines = text.splitlines()
    route = 'method="POST",route="/v1/predict"'
    assert f'perennial_requests_total{{{route},status="200"}} 3' in lines
    assert f'perennial_request_duration_seconds_bucket{{{route},le="0.0025"}} 1' in lines
    assert f'perennial_request_duration_seconds_bucket{{{route},le="0.025"}} 2' in lines
    assert f'perennial_request_duration_seconds_bucket{{{route},le="+Inf"}} 3' in lines
    assert f"perennial_request_duration_seconds_count{{{route}}} 3" in lines
    assert "perennial_learned_examples_total 4" in lines
    assert "perennial_model_version 7" in lines
    assert "# TYPE perennial_model_version gauge" in lines


def test_reference_head_matches_the_service_default(tmp_path: Path) -> None:
    # assert_same_model compares the store with reference(): both must hold the same head, built
    # here by the store from head_params={"n_features": N_FEATURES} and there by the test.
    store = open_store(tmp_path / "model")
    try:
        apply(store, updates()[:1])
        served = store.wait_served(1, timeout=30)
        assert served.model is not None
        head = served.model.head
        assert type(head) is RidgeHead
        assert head.get_params()["n_features"] == N_FEATURES  # the value configured above
        assert head.get_params() == reference([], N_FEATURES).head.get_params()
        record = json.loads((tmp_path / "model" / "service.json").read_text(encoding="utf-8"))
        assert record["model"]["head"] == "ridge"
        assert record["model"]["head_params"]["n_features"] == N_FEATURES
    finally:
        store.close()


def test_a_failed_update_stops_writes_but_not_predictions(tmp_path: Path, monkeypatch) -> None:
    from perennial.service import refresher

    store = open_store(tmp_path / "model")
    batches = updates()
    apply(store, batches[:3])
    served = store.wait_served(3, timeout=30)
    original = refresher._apply

    def broken(model, record) -> None:
        if record.version == 4:
            raise RuntimeError("disk on fire")
        original(model, record)

    monkeypatch.setattr(refresher, "_apply", broken)
    version = store.learn(*batches[3][1:])  # acknowledged: it is in the journal
    with pytest.raises(ServiceUnavailableError, match="disk on fire"):
        store.wait_served(version, timeout=30)
    with pytest.raises(ServiceUnavailableError, match="restart the service"):
        store.learn(*batches[4][1:])
    assert store.served is served  # predictions go on with the last good version
    assert store.status()["failure"] == "disk on fire"
    store.close()  # no snapshot of a model that missed an update
    monkeypatch.setattr(refresher, "_apply", original)
    again = open_store(tmp_path / "model")  # the journal still has the update
    assert again.version == version
    assert_same_model(again, batches[:4])
    again.close(snapshot=False)


def test_a_directory_serves_one_service_at_a_time(tmp_path: Path) -> None:
    store = open_store(tmp_path / "model")
    with pytest.raises(PersistenceError, match="in use by another perennial serve"):
        open_store(tmp_path / "model")
    store.close()
    open_store(tmp_path / "model").close()


def test_the_batching_encoder_shares_forward_passes_and_isolates_errors() -> None:
    from perennial.service.batching import BatchingEncoder

    release = threading.Event()
    calls: list[list[str]] = []

    class Slow:
        name = "slow"

        def encode(self, texts: list[str]) -> np.ndarray:
            calls.append(list(texts))
            release.wait(10)
            if "bad" in texts:
                raise InvalidInputError("bad text")
            return np.array([[float(len(t))] for t in texts], dtype=np.float32)

    encoder = BatchingEncoder(Slow(), max_rows=8)
    results: dict[str, object] = {}

    def ask(texts: list[str]) -> None:
        try:
            results[texts[0]] = encoder.encode(texts)[:, 0].tolist()
        except InvalidInputError as error:
            results[texts[0]] = str(error)

    first = threading.Thread(target=ask, args=(["a"],))
    first.start()
    while not calls:  # the worker is busy with the first request...
        threading.Event().wait(0.01)
    others = [threading.Thread(target=ask, args=(t,)) for t in (["bb", "ccc"], ["bad"], ["dddd"])]
    for thread in others:
        thread.start()
    threading.Event().wait(0.2)  # ... while the others queue up
    release.set()
    for thread in [first, *others]:
        thread.join()
    encoder.close()
    assert results == {"a": [1.0], "bb": [2.0, 3.0], "bad": "bad text", "dddd": [4.0]}
    assert sorted(map(len, calls[1:2])) == [4]  # the three queued requests shared one batch


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_the_refresher_can_run_at_a_lower_priority(tmp_path: Path) -> None:
    # The refresher thread starts at the nice value of the thread that opens the store (this
    # one, pytest's main thread), whatever the suite runs under (`nice -n 5 pytest`), and lowers
    # it by 3; Linux clamps a nice value at 19.
    opener = threading.get_native_id()
    base = os.getpriority(os.PRIO_PROCESS, opener)
    store = open_store(tmp_path / "model", background_nice=3)
    apply(store, updates()[:2])
    store.wait_served(2, timeout=30)
    thread = store._link._thread.native_id
    assert thread is not None and thread != opener
    assert os.getpriority(os.PRIO_PROCESS, thread) == min(base + 3, 19)
    assert os.getpriority(os.PRIO_PROCESS, opener) == base  # the serving thread is untouched
    assert_same_model(store, updates()[:2])
    store.close()


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
@pytest.mark.parametrize("isolate", [False, True])
def test_the_refresher_rebuilds_on_idle_cpu_time_only(tmp_path: Path, isolate: bool) -> None:
    # Applying and publishing must not wait for idle CPU time, or the served version falls
    # behind under load; the long decompositions do, in a process of their own (see
    # test_ridge_rebuilds.py), and none runs here.
    store = open_store(tmp_path / "model", background_idle=True, isolate=isolate)
    try:
        if isolate:
            pid = store._link._process.pid
            threads = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        else:
            threads = [store._link._thread.native_id]
        assert threads and not any(os.sched_getscheduler(t) == os.SCHED_IDLE for t in threads)
        assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the serving process is untouched
        apply(store, updates()[:3])
        assert_same_model(store, updates()[:3])  # it still learns, on an idle machine at once
    finally:
        store.close()


def test_batched_predictions_are_split_per_request() -> None:
    from perennial.encoders import IdentityEncoder
    from perennial.service.batching import BatchingEncoder

    rng = np.random.default_rng(8)
    X, y = clusters(rng, ["a", "b", "c"], 10)
    model = reference([("learn", X, y)], 128)
    calls: list[int] = []

    def predict(features: np.ndarray, top: int) -> tuple[int, list]:
        calls.append(len(features))
        if features.shape[1] != 8:
            raise InvalidInputError(f"width {features.shape[1]}")
        return 7, model.predict_detailed(features, top=top)

    batching = BatchingEncoder(IdentityEncoder(), predict=predict)
    gate = threading.Event()
    slow = batching.encoder.encode
    batching.encoder.encode = lambda batch: (gate.wait(10), slow(batch))[1]  # type: ignore[method-assign]
    futures = [
        batching.submit(PROBES[:2], top=1),
        batching.submit(PROBES[2:5], top=3),
        batching.submit(np.ones((1, 3)), top=2),  # another width: fails alone
        batching.submit(PROBES[5:6]),  # encode only
    ]
    gate.set()
    expected = model.predict_detailed(PROBES[:5], top=3)

    def tops(rows: list) -> list:
        return [[(t["label"], round(t["score"], 9)) for t in row["top"]] for row in rows]

    version, rows = futures[0].result(10)
    assert version == 7 and tops(rows) == [t[:1] for t in tops(expected[:2])]
    version, rows = futures[1].result(10)
    assert version == 7 and tops(rows) == tops(expected[2:5])
    with pytest.raises(InvalidInputError, match="width 3"):
        futures[2].result(10)
    np.testing.assert_array_equal(futures[3].result(10), PROBES[5:6].astype(np.float32))
    batching.close()


# --- the ledger: unlearns checked before they are acknowledged ------------------------------------------
def ledger_reference(batches: list) -> dict[str, tuple[int, np.ndarray, np.ndarray]]:
    """Per class: count, feature sums and sums of squares of the acknowledged updates (numpy)."""
    rows: dict[str, list[np.ndarray]] = {}
    for operation, X, y in batches:
        if operation == "forget":
            del rows[y]
            continue
        for x, label in zip(np.asarray(X, np.float32).astype(np.float64), y, strict=True):
            if operation == "learn":
                rows.setdefault(label, []).append(x)
            else:
                kept = rows[label]
                kept.pop(next(i for i, r in enumerate(kept) if np.array_equal(r, x)))
                if not kept:
                    del rows[label]
    return {
        label: (len(r), np.sum(r, axis=0), np.sum(np.square(r), axis=0))
        for label, r in rows.items()
    }


def assert_ledger_matches(store: ModelStore, batches: list) -> None:
    expected = ledger_reference(batches)
    ledger = store._ledger
    assert ledger.counts() == [(label, n) for label, (n, _, _) in expected.items()]
    stats = ledger.statistics
    assert stats is not None
    # Fixed size: one row of sums and one of squares per class, whatever was learned.
    assert stats.sums.shape == stats.squares.shape == (len(expected), 8)
    for i, (_, sums, squares) in enumerate(expected.values()):
        np.testing.assert_allclose(stats.sums[i], sums, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(stats.squares[i], squares, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("isolate", [False, True])
def test_the_ledger_is_rebuilt_from_the_snapshot_and_the_journal(
    tmp_path: Path, isolate: bool
) -> None:
    batches, more = updates(), updates(seed=2)[:4]
    store = open_store(tmp_path / "model", snapshot_every=3, isolate=isolate)
    apply(store, batches)
    assert_ledger_matches(store, batches)
    store.close()  # a snapshot of every update, with its ledger
    assert list((tmp_path / "model").glob("snapshot-*/ledger/meta.json"))
    store = open_store(tmp_path / "model", isolate=isolate)
    assert_ledger_matches(store, batches)
    apply(store, more)
    store.close(snapshot=False)  # as after a crash: the snapshot, then journal records
    again = open_store(tmp_path / "model", isolate=isolate)
    assert again.status()["journal_records"] == len(more)
    assert_ledger_matches(again, batches + more)
    with pytest.raises(InvalidInputError, match="cannot unlearn these examples of 'b'"):
        again.unlearn(np.full((2, 8), 40.0), ["b", "b"])
    again.close(snapshot=False)


def test_the_issues_unlearn_is_refused_before_it_is_acknowledged(tmp_path: Path) -> None:
    # A class of 25 examples and 24 examples of something else, labelled with it.
    rng = np.random.default_rng(21)
    X, y = clusters(rng, ["a", "b", "c"], 25)
    off_topic = rng.normal(0.0, 1.0, (24, 8)) + np.eye(8)[7] * 30.0
    store = open_store(tmp_path / "model")
    store.learn(X, y)
    journal = (tmp_path / "model" / "journal.log").read_bytes()
    with pytest.raises(InvalidInputError, match="cannot unlearn these examples of 'a'"):
        store.unlearn(off_topic, ["a"] * 24)
    assert store.version == 1 and store.failure is None
    assert (tmp_path / "model" / "journal.log").read_bytes() == journal
    assert_same_model(store, [("learn", X, y)])
    store.close(snapshot=False)


def test_a_snapshot_without_a_ledger_gives_one_from_the_model(tmp_path: Path) -> None:
    import shutil

    batches = updates()
    store = open_store(tmp_path / "model")
    apply(store, batches)
    store.close()  # snapshots
    (ledger_directory,) = (tmp_path / "model").glob("snapshot-*/ledger")
    shutil.rmtree(ledger_directory)  # as an earlier version saved it
    again = open_store(tmp_path / "model")
    expected = ledger_reference(batches)
    ledger = again._ledger
    assert ledger.counts() == [(label, n) for label, (n, _, _) in expected.items()]
    assert ledger.statistics is not None
    # The gate keeps per-class sums (so an emptied class is checked), not squares here.
    np.testing.assert_allclose(ledger.statistics.sums, [s for _, s, _ in expected.values()])
    assert np.isnan(ledger.statistics.squares).all()
    with pytest.raises(InvalidInputError, match="'c': they are all of its examples"):
        again.unlearn(np.full((expected["c"][0], 8), 3.0), ["c"] * expected["c"][0])
    X, y = clusters(np.random.default_rng(5), ["new"], 4)
    apply(again, [("learn", X, y)])
    assert dict(again.classes()[1])["new"] == 4
    again.close()
    assert list((tmp_path / "model").glob("snapshot-*/ledger/meta.json"))  # written again


def test_an_acknowledged_unlearn_the_dual_ridge_head_cannot_match_is_still_applied(
    tmp_path: Path,
) -> None:
    # The ledger cannot know which examples a dual ridge head holds: an example it never learned
    # but close to its class passes the ledger, and must not stop the refresher.
    rng = np.random.default_rng(8)
    X, y = clusters(rng, ["a", "b", "c"], 20)
    stranger = X[:1] + 0.01
    store = open_store(tmp_path / "model", head_params={"n_features": 512, "ridge": RIDGE})
    store.learn(X, y)
    version = store.unlearn(stranger, ["a"])
    served = store.wait_served(version, timeout=30)
    assert store.failure is None and served.model is not None
    expected = LifelongClassifier(head=RidgeHead(n_features=512, ridge=RIDGE), unknown_rate=0.02)
    expected.learn_many(X.astype(np.float32), y)
    expected.unlearn_many(stranger.astype(np.float32), ["a"], verify=False)
    assert expected.head.form_ == "primal"  # subtracted from the statistics of its rows
    np.testing.assert_allclose(
        served.model.decision_scores(PROBES), expected.decision_scores(PROBES), rtol=1e-6
    )
    store.close(snapshot=False)
    again = open_store(tmp_path / "model", head_params={"n_features": 512, "ridge": RIDGE})
    assert again.version == version and again.failure is None
    np.testing.assert_allclose(
        again.wait_served(version, timeout=30).model.decision_scores(PROBES),
        expected.decision_scores(PROBES),
        rtol=1e-6,
    )
    again.close(snapshot=False)


def test_a_refresher_process_that_dies_is_reported_with_how_it_ended(tmp_path: Path) -> None:
    # Its pipe closes a moment before the process can be reaped: the report waits for the
    # status instead of saying "exited (None)", and the store refuses updates from then on.
    store = open_store(tmp_path / "model", isolate=True)
    try:
        apply(store, updates()[:1])
        store.wait_served(1, timeout=60)
        store._link._process.kill()
        deadline = time.monotonic() + 60
        while store.failure is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "killed by SIGKILL" in str(store.failure)
        assert "killed by SIGKILL" in store.status()["problems"]["refresher"]
        with pytest.raises(ServiceUnavailableError, match="the model stopped updating"):
            apply(store, updates()[1:2])
        assert store.version == 1
    finally:
        store.close()
