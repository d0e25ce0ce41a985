"""The service journal: an append-only file of framed, checksummed model updates.

Every acknowledged update (learn, unlearn, forget) is one record, written, flushed and synced to
disk before the service answers. A record holds the *encoded features* (float32) and the labels,
never the raw inputs. The file is::

    MAGIC (8 bytes)
    frame*    frame = payload length (uint32 LE) | CRC32 of the payload (uint32 LE) | payload
    payload   = header length (uint32 LE) | header (UTF-8 JSON) | features (float32 LE, row-major)

The header names the version the update produced, the operation, the labels and the shape of the
features. Because an append finishes (fsync) before the next one starts, only the last frame can
be torn by a crash: a last frame that is incomplete or fails its CRC is an update that was never
acknowledged, and it is ignored (and cut off) with a logged warning. Damage anywhere else cannot
come from a crash; it is refused with :class:`~perennial.exceptions.CorruptedJournalError`, never
skipped, because the records after it were acknowledged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from perennial.exceptions import CorruptedJournalError
from perennial.persistence import fsync_directory

__all__ = ["MAGIC", "OPERATIONS", "Journal", "Record"]

MAGIC = b"PRNLJNL\x01"
OPERATIONS = ("learn", "unlearn", "forget")
_FRAME = struct.Struct("<II")  # payload length, CRC32 of the payload
_HEADER = struct.Struct("<I")  # length of the JSON header inside the payload
#: No record is larger than this; a frame declaring more is damage, not data.
MAX_RECORD_BYTES = 1 << 30

logger = logging.getLogger("perennial.service")


@dataclass(frozen=True)
class Record:
    """One acknowledged model update.

    Parameters
    ----------
    version
        The model version this update produced (the first update makes version 1).
    operation
        ``"learn"``, ``"unlearn"`` or ``"forget"``.
    labels
        One label per row of ``features``; for ``forget``, the one class forgotten.
    features
        Encoded inputs, float32 of shape (n, d); None for ``forget``.

    Examples
    --------
    >>> import numpy as np
    >>> record = Record(3, "learn", ("cat",), np.ones((1, 2), dtype=np.float32))
    >>> Record.decode(record.encode()) == record
    True
    """

    version: int
    operation: str
    labels: tuple[str, ...]
    features: NDArray[np.float32] | None = None

    def encode(self) -> bytes:
        """The record's payload (without the frame)."""
        header: dict[str, Any] = {"v": self.version, "op": self.operation, "labels": self.labels}
        body = b""
        if self.features is not None:
            features = np.ascontiguousarray(self.features, dtype="<f4")
            header["shape"] = list(features.shape)
            body = features.tobytes()
        text = json.dumps(header, separators=(",", ":")).encode("utf-8")
        return _HEADER.pack(len(text)) + text + body

    @classmethod
    def decode(cls, payload: bytes) -> Record:
        """Parse a payload written by :meth:`encode`; ValueError if it is not one."""
        if len(payload) < _HEADER.size:
            raise ValueError(f"payload of {len(payload)} bytes is shorter than its header")
        (size,) = _HEADER.unpack_from(payload)
        end = _HEADER.size + size
        if end > len(payload):
            raise ValueError(f"header of {size} bytes runs past the payload ({len(payload)})")
        header = json.loads(payload[_HEADER.size : end].decode("utf-8"))
        version, operation, labels = header["v"], header["op"], header["labels"]
        if not isinstance(version, int) or version < 1 or operation not in OPERATIONS:
            raise ValueError(f"bad record header {header!r}")
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ValueError(f"bad labels in record header {header!r}")
        features = None
        if "shape" in header:
            rows, cols = (int(n) for n in header["shape"])
            body = payload[end:]
            if len(body) != rows * cols * 4:
                raise ValueError(f"{len(body)} bytes of features for shape ({rows}, {cols})")
            features = np.frombuffer(body, dtype="<f4").reshape(rows, cols).astype(np.float32)
        elif end != len(payload):
            raise ValueError("bytes after a record without features")
        return cls(version, operation, tuple(labels), features)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        same_features = (self.features is None and other.features is None) or (
            self.features is not None
            and other.features is not None
            and np.array_equal(self.features, other.features)
        )
        return same_features and (self.version, self.operation, self.labels) == (
            other.version,
            other.operation,
            other.labels,
        )

    __hash__ = None  # type: ignore[assignment]  # holds an array: mutable in spirit


def frame(payload: bytes) -> bytes:
    """Length and CRC32 in front of a payload."""
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


class Journal:
    """An open journal file, appended to by one writer at a time.

    Use :meth:`open`, which reads what the file holds and cuts off a torn last record, then
    :meth:`append` records in increasing version order. The caller serialises appends (the model
    store holds its write lock).
    """

    def __init__(self, path: Path, descriptor: int, entries: list[tuple[int, int]], size: int):
        self.path = path
        self._descriptor = descriptor
        self._entries = entries  # (version, byte offset) of each record in the file
        self._size = size
        #: A compaction renamed a new file over the journal but could not sync the directory:
        #: until it is synced, a crash could bring the old file back, so no append is made.
        self._rename_unsynced = False

    # --- opening ----------------------------------------------------------------------------------
    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, create: bool = False
    ) -> tuple[Journal, list[Record]]:
        """Open the journal at ``path`` and return it with the records it holds, in order.

        Raises
        ------
        CorruptedJournalError
            The file is not a journal, or is damaged before its last record.
        FileNotFoundError
            There is no file and ``create`` is false.
        """
        path = Path(path)
        if not path.exists():
            if not create:
                raise FileNotFoundError(f"no journal at {path}")
            _write_new(path, MAGIC)
        data = path.read_bytes()
        records, entries, end = _scan(data, path)
        if end == 0:
            logger.warning(
                "journal %s: header cut short (%d bytes); writing it again", path, len(data)
            )
            _write_new(path, MAGIC)
            data, end = MAGIC, len(MAGIC)
        if end < len(data):
            logger.warning(
                "journal %s: ignored a torn last record at byte %d (%d bytes): an update cut "
                "short by a crash, never acknowledged",
                path,
                end,
                len(data) - end,
            )
            with open(path, "r+b") as stream:
                stream.truncate(end)
                stream.flush()
                os.fsync(stream.fileno())
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND)
        return cls(path, descriptor, entries, end), records

    # --- writing ----------------------------------------------------------------------------------
    def append(self, record: Record) -> None:
        """Write ``record`` and make it durable (fsync) before returning.

        On a failed write the file is cut back to its previous length and the error raised, so
        the journal never holds a record that was not acknowledged, torn or not.
        """
        data = frame(record.encode())
        if len(data) - _FRAME.size > MAX_RECORD_BYTES:
            raise ValueError(f"record of {len(data)} bytes is over {MAX_RECORD_BYTES} bytes")
        if self._rename_unsynced:
            fsync_directory(self.path.parent)  # an OSError here: nothing written, nothing made
            self._rename_unsynced = False
        start = self._size
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._descriptor, view)
                view = view[written:]
            _sync_data(self._descriptor)
        except BaseException:
            try:
                os.ftruncate(self._descriptor, start)
                _sync_data(self._descriptor)
            except OSError:  # pragma: no cover - the disk is gone; the next open cuts the tail
                pass
            raise
        self._entries.append((record.version, start))
        self._size = start + len(data)

    def compact(self, through_version: int) -> int:
        """Drop the records up to ``through_version`` (now in a snapshot); returns how many.

        The records after it are copied to a new file, synced, and renamed over the journal: a
        crash at any point leaves either the old or the new journal, both valid. A failure (an
        ``OSError``, raised) may be retried: before the rename the journal is untouched; after
        it, appends already go to the new file, and the next one first syncs the directory.
        """
        if self._rename_unsynced:  # the last compaction's rename: durable before it counts
            fsync_directory(self.path.parent)
            self._rename_unsynced = False
        keep = [(v, offset) for v, offset in self._entries if v > through_version]
        dropped = len(self._entries) - len(keep)
        if dropped == 0:
            return 0
        start = keep[0][1] if keep else self._size
        with open(self.path, "rb") as stream:
            stream.seek(start)
            tail = stream.read(self._size - start)
        temporary = self.path.with_name(self.path.name + ".tmp")
        descriptor = -1
        try:
            _write_new(temporary, MAGIC + tail)
            # Opened before the rename: once the new file is the journal, appends must go to
            # it, and an open that failed then would leave them going to the old one.
            descriptor = os.open(temporary, os.O_WRONLY | os.O_APPEND)
            os.replace(temporary, self.path)
        except BaseException:
            if descriptor >= 0:
                os.close(descriptor)
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            raise
        old, self._descriptor = self._descriptor, descriptor
        shift = start - len(MAGIC)
        self._entries = [(v, offset - shift) for v, offset in keep]
        self._size = len(MAGIC) + len(tail)
        self._rename_unsynced = True
        with contextlib.suppress(OSError):
            os.close(old)
        fsync_directory(self.path.parent)
        self._rename_unsynced = False
        return dropped

    # --- introspection ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        """Bytes in the file."""
        return self._size

    def close(self) -> None:
        if self._descriptor >= 0:
            os.close(self._descriptor)
            self._descriptor = -1


def _scan(data: bytes, path: Path) -> tuple[list[Record], list[tuple[int, int]], int]:
    """Records, their (version, offset), and the end of the last good record."""
    if len(data) < len(MAGIC):
        if MAGIC.startswith(data):
            return [], [], 0  # creation cut short: no record can have been written after it
        raise CorruptedJournalError(f"{path} is not a perennial journal (bad header)")
    if data[: len(MAGIC)] != MAGIC:
        raise CorruptedJournalError(
            f"{path} is not a perennial journal: it starts with {data[:8]!r}, expected {MAGIC!r}"
        )
    records: list[Record] = []
    entries: list[tuple[int, int]] = []
    offset = len(MAGIC)
    while offset < len(data):
        if len(data) - offset < _FRAME.size:
            break  # a torn frame header
        length, checksum = _FRAME.unpack_from(data, offset)
        end = offset + _FRAME.size + length
        if length == 0 or length > MAX_RECORD_BYTES:
            if not any(data[offset:]):
                break  # zeros after the last record: space allocated, never written
            raise CorruptedJournalError(
                f"{path}: the record at byte {offset} declares an impossible length ({length}); "
                "the journal is damaged before its end"
            )
        if end > len(data):
            break  # the last record, cut short
        payload = data[offset + _FRAME.size : end]
        if zlib.crc32(payload) != checksum:
            if end == len(data):
                break  # the last record, torn
            raise CorruptedJournalError(
                f"{path}: the record at byte {offset} fails its CRC32 check and is followed by "
                f"{len(data) - end} more bytes; the journal is damaged before its end"
            )
        try:
            record = Record.decode(payload)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
            raise CorruptedJournalError(
                f"{path}: the record at byte {offset} passes its CRC32 check but cannot be "
                f"read: {error}"
            ) from error
        records.append(record)
        entries.append((record.version, offset))
        offset = end
    return records, entries, offset


def check_sequence(records: Sequence[Record], after: int, path: Path) -> list[Record]:
    """The records newer than version ``after``, checked to follow it without a gap."""
    newer = [record for record in records if record.version > after]
    expected = after + 1
    for record in newer:
        if record.version != expected:
            raise CorruptedJournalError(
                f"{path}: expected the record of version {expected}, found version "
                f"{record.version}; acknowledged updates are missing"
            )
        expected += 1
    return newer


def _sync_data(descriptor: int) -> None:
    sync = getattr(os, "fdatasync", os.fsync)  # fdatasync also syncs the file's new length
    sync(descriptor)


def _write_new(path: Path, data: bytes) -> None:
    with open(path, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    fsync_directory(path.parent)
