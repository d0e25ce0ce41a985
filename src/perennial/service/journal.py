"""The service journal: an append-only file of framed, checksummed model updates.

Every acknowledged update (learn, unlearn, forget, and restore: a forgotten class of a pretrained
classifier answered again) is one record, written, flushed and synced to
disk before the service answers. A record holds the *encoded features* (float32) and the labels,
never the raw inputs. The file (format 2) is::

    MAGIC (8 bytes: b"PRNLJNL" and the format version, 2)
    frame*
    frame   = FRAME_MAGIC (4 bytes) | payload length (uint32 LE) | CRC32 of the payload (uint32 LE)
              | CRC32 of the 12 header bytes before it (uint32 LE) | payload
    payload = header length (uint32 LE) | header (UTF-8 JSON) | features (float32 LE, row-major)

The JSON header names the version the update produced, the operation, the labels and the shape
of the features. The ``restore`` operation came with serving models that keep a pretrained
classifier; a journal holding one is refused (as damage) by a release without it.

**What a crash can leave.** An append is synced (fdatasync) before the next one starts, and a
failed one is cut off before the next, so a crash can only tear the *last* frame, leaving a
prefix of it (or zeros where the file grew but its data never reached the disk). Exactly these
tails count as torn, an update that was never acknowledged, and are cut off with a logged
warning:

- fewer than 16 bytes that begin like a frame (FRAME_MAGIC or a prefix of it);
- a frame header that passes its CRC and declares more bytes than the file holds;
- nothing but zero bytes after the last whole frame.

Anything else is damage that a crash cannot cause, and it is refused with
:class:`~perennial.exceptions.CorruptedJournalError` naming its byte offset, because the
records after it, or the damaged record itself, were acknowledged: a header that fails its CRC
(a flipped bit in a length included, wherever the length points), a payload that fails its CRC
(in the last frame too, when that frame is complete), a payload that does not parse. The file is
then neither read nor changed; a copy is kept beside it (``journal.log.damaged-<digest>``) so
that it can be inspected even after an operator cuts the original at the offset named (which
drops every update from there on).

**Format 1** (perennial before format 2 existed) has the same file header with version byte 1
and frames of payload length | CRC32 of the payload | payload: its lengths are not checked. It
is still read, and appended to in format 1; compaction rewrites it in format 2. Reading it, a
length that runs past the end of the file counts as a torn tail only when no valid frame starts
anywhere after it, so a damaged length in the middle is refused too; a damaged length in the
very last frame of a format-1 file cannot be told from a tear.
"""

from __future__ import annotations

import contextlib
import hashlib
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

from perennial.exceptions import CorruptedJournalError, FormatVersionError
from perennial.persistence import atomic_write_bytes, fsync_directory

__all__ = ["FORMAT_VERSION", "MAGIC", "OPERATIONS", "Journal", "Record"]

#: The format new journals are written in; format 1 is still read (see the module docstring).
FORMAT_VERSION = 2
_SIGNATURE = b"PRNLJNL"
MAGIC = _SIGNATURE + bytes([FORMAT_VERSION])
MAGIC_V1 = _SIGNATURE + b"\x01"
FRAME_MAGIC = b"\xa5REC"
OPERATIONS = ("learn", "unlearn", "forget", "restore")
_FRAME = struct.Struct("<4sIII")  # frame magic, payload length, payload CRC32, header CRC32
_FRAME_V1 = struct.Struct("<II")  # payload length, payload CRC32
_HEADER = struct.Struct("<I")  # length of the JSON header inside the payload
#: How every payload begins after its header length (``Record.encode``); found, in format 1, a
#: valid frame after a damaged one.
_PAYLOAD_START = b'{"v":'
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
        ``"learn"``, ``"unlearn"``, ``"forget"`` or ``"restore"`` (a forgotten class of the
        model's pretrained classifier answered again).
    labels
        One label per row of ``features``; for ``forget`` and ``restore``, the one class.
    features
        Encoded inputs, float32 of shape (n, d); None for ``forget`` and ``restore``.

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
    """A payload framed in the current format: magic, length and both CRC32s in front."""
    header = FRAME_MAGIC + struct.pack("<II", len(payload), zlib.crc32(payload))
    return header + struct.pack("<I", zlib.crc32(header)) + payload


def _frame_v1(payload: bytes) -> bytes:
    return _FRAME_V1.pack(len(payload), zlib.crc32(payload)) + payload


_FRAMERS = {1: _frame_v1, 2: frame}
_FRAME_SIZES = {1: _FRAME_V1.size, 2: _FRAME.size}
_MAGICS = {1: MAGIC_V1, 2: MAGIC}


class Journal:
    """An open journal file, appended to by one writer at a time.

    Use :meth:`open`, which reads what the file holds and cuts off a torn last record, then
    :meth:`append` records in increasing version order. The caller serialises appends (the model
    store holds its write lock).
    """

    def __init__(
        self,
        path: Path,
        descriptor: int,
        entries: list[tuple[int, int]],
        size: int,
        format_version: int = FORMAT_VERSION,
    ):
        self.path = path
        self._descriptor = descriptor
        self._entries = entries  # (version, byte offset) of each record in the file
        self._size = size
        self._format = format_version
        #: Why appends are refused: a failed append that could not be cut off again.
        self._broken: OSError | None = None
        #: A compaction renamed a new file over the journal but could not sync the directory:
        #: until it is synced, a crash could bring the old file back, so no append is made.
        self._rename_unsynced = False

    # --- opening ----------------------------------------------------------------------------------
    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, create: bool = False
    ) -> tuple[Journal, list[Record]]:
        """Open the journal at ``path`` and return it with the records it holds, in order.

        A torn last write is cut off with a logged warning; any other damage is refused, the file
        left as it is and a copy of it kept beside it (see the module docstring).

        Raises
        ------
        CorruptedJournalError
            The file is not a journal, or is damaged anywhere but in a torn last write. The
            message names the byte offset of the damage and the copy kept.
        FormatVersionError
            The journal was written in a format this perennial does not know.
        FileNotFoundError
            There is no file and ``create`` is false.
        """
        path = Path(path)
        if not path.exists():
            if not create:
                raise FileNotFoundError(f"no journal at {path}")
            _write_new(path, MAGIC)
        data = path.read_bytes()
        try:
            format_version, records, entries, end = _scan(data, path)
        except _DamageError as damage:
            raise CorruptedJournalError(_refusal(path, data, damage)) from None
        if end == 0:
            logger.warning(
                "journal %s: header cut short (%d bytes); writing it again", path, len(data)
            )
            _write_new(path, MAGIC)
            data, end, format_version = MAGIC, len(MAGIC), FORMAT_VERSION
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
        return cls(path, descriptor, entries, end, format_version), records

    def read(self) -> list[Record]:
        """The records the file holds now, read without changing it (a torn tail is left out).

        Raises :class:`~perennial.exceptions.CorruptedJournalError` for damage, as :meth:`open`.
        """
        data = self.path.read_bytes()
        try:
            return _scan(data, self.path)[1]
        except _DamageError as damage:
            raise CorruptedJournalError(_refusal(self.path, data, damage)) from None

    # --- writing ----------------------------------------------------------------------------------
    def append(self, record: Record) -> None:
        """Write ``record`` and make it durable (fdatasync) before returning.

        On a failed write the file is cut back to its previous length and the error raised, so
        the journal never holds a record that was not acknowledged, torn or not. If even that
        fails, every later append raises OSError: a record written after the torn one would make
        it a tear in the middle of the file, which reading refuses.
        """
        if self._broken is not None:
            raise OSError(
                f"{self.path} ends with a failed write that could not be cut off "
                f"({self._broken}); reopen the journal (restart the service) to recover"
            )
        data = _FRAMERS[self._format](record.encode())
        if len(data) - _FRAME_SIZES[self._format] > MAX_RECORD_BYTES:
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
            except OSError as error:  # the disk is failing; the next open cuts the tail
                self._broken = error
            raise
        self._entries.append((record.version, start))
        self._size = start + len(data)

    def compact(self, through_version: int) -> int:
        """Drop the records up to ``through_version`` (now in a snapshot); returns how many.

        The records after it are copied to a new file in the current format, synced, and renamed
        over the journal: a crash at any point leaves either the old or the new journal, both
        valid. A failure (an ``OSError``, raised) may be retried: before the rename the journal is
        untouched; after it, appends already go to the new file, and the next one first syncs the
        directory.
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
        offsets = [offset - start for _, offset in keep]
        if self._format != FORMAT_VERSION:
            tail, offsets = _reframe(tail, offsets, _FRAME_SIZES[self._format])
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
        self._entries = [(v, len(MAGIC) + o) for (v, _), o in zip(keep, offsets, strict=True)]
        self._size = len(MAGIC) + len(tail)
        self._format = FORMAT_VERSION
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

    @property
    def format_version(self) -> int:
        """The format the file is written in (appends follow it)."""
        return self._format

    def close(self) -> None:
        if self._descriptor >= 0:
            os.close(self._descriptor)
            self._descriptor = -1


class _DamageError(Exception):
    """Damage found while reading: where, and what (turned into CorruptedJournalError)."""

    def __init__(self, offset: int, reason: str, records: list[Record]) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason
        self.last_version = records[-1].version if records else None


def _scan(data: bytes, path: Path) -> tuple[int, list[Record], list[tuple[int, int]], int]:
    """The format, the records, their (version, offset), and the end of the last whole record.

    An end before the end of ``data`` is a torn tail; an end of 0 is a file header cut short.
    """
    if len(data) < len(MAGIC):
        if MAGIC.startswith(data) or MAGIC_V1.startswith(data):
            return FORMAT_VERSION, [], [], 0  # creation cut short: no record came after it
        raise _DamageError(0, f"not a perennial journal: it starts with {data!r}", [])
    if data[: len(_SIGNATURE)] != _SIGNATURE:
        raise _DamageError(
            0, f"not a perennial journal: it starts with {data[:8]!r}, expected {MAGIC!r}", []
        )
    format_version = data[len(_SIGNATURE)]
    if format_version not in _MAGICS:
        raise FormatVersionError(
            f"{path} is a journal of format {format_version}; this perennial reads formats "
            f"{', '.join(map(str, sorted(_MAGICS)))}"
        )
    records: list[Record] = []
    entries: list[tuple[int, int]] = []
    read_frame = _read_frame if format_version == FORMAT_VERSION else _read_frame_v1
    offset = len(MAGIC)
    while offset < len(data):
        payload_start, end = read_frame(data, offset, records)
        if end > len(data):
            break  # the last write, torn
        payload = data[payload_start:end]
        try:
            record = Record.decode(payload)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
            raise _DamageError(
                offset, f"the record passes its CRC32 check but cannot be read ({error})", records
            ) from error
        records.append(record)
        entries.append((record.version, offset))
        offset = end
    return format_version, records, entries, offset


def _read_frame(data: bytes, offset: int, records: list[Record]) -> tuple[int, int]:
    """Where the format-2 frame at ``offset`` has its payload and ends (past the data: torn)."""
    tail = memoryview(data)[offset:]
    if len(tail) < _FRAME.size:
        if FRAME_MAGIC.startswith(tail[: len(FRAME_MAGIC)]) or _zeros_from(data, offset):
            return offset, len(data) + 1  # a frame header cut short
        raise _DamageError(
            offset, f"{len(tail)} bytes at the end are not the start of a frame", records
        )
    magic, length, checksum, header_checksum = _FRAME.unpack_from(data, offset)
    if magic != FRAME_MAGIC or zlib.crc32(tail[: _FRAME.size - 4]) != header_checksum:
        if _zeros_from(data, offset):
            return offset, len(data) + 1  # zeros: space allocated, never written
        what = "has no frame magic" if magic != FRAME_MAGIC else "fails its CRC32 check"
        raise _DamageError(offset, f"the frame header {what}", records)
    if length > MAX_RECORD_BYTES:
        raise _DamageError(offset, f"the frame declares an impossible length ({length})", records)
    end = offset + _FRAME.size + length
    if end <= len(data) and zlib.crc32(tail[_FRAME.size : _FRAME.size + length]) != checksum:
        raise _crc_failure(data, offset, end, records)
    return offset + _FRAME.size, end


def _read_frame_v1(data: bytes, offset: int, records: list[Record]) -> tuple[int, int]:
    """As :func:`_read_frame`, for a format-1 frame (whose length no CRC covers)."""
    if len(data) - offset < _FRAME_V1.size:
        return offset, len(data) + 1  # a frame header cut short
    length, checksum = _FRAME_V1.unpack_from(data, offset)
    end = offset + _FRAME_V1.size + length
    if length == 0 or length > MAX_RECORD_BYTES:
        if _zeros_from(data, offset):
            return offset, len(data) + 1  # zeros: space allocated, never written
        raise _DamageError(offset, f"the frame declares an impossible length ({length})", records)
    if end > len(data):
        later = _next_frame_v1(data, offset + 1)
        if later is not None:
            raise _DamageError(
                offset,
                f"the frame declares {length} bytes, past the end of the file, but a valid "
                f"record follows at byte {later}: its length is damaged, it is not torn",
                records,
            )
        return offset, end
    if zlib.crc32(memoryview(data)[offset + _FRAME_V1.size : end]) != checksum:
        raise _crc_failure(data, offset, end, records)
    return offset + _FRAME_V1.size, end


def _crc_failure(data: bytes, offset: int, end: int, records: list[Record]) -> _DamageError:
    """The error for a frame at ``offset`` (ending at ``end``) whose record fails its CRC."""
    where = (
        "the last frame is complete, so it was written in full: damaged, not torn"
        if end == len(data)
        else f"it is followed by {len(data) - end} more bytes"
    )
    return _DamageError(offset, f"the record fails its CRC32 check ({where})", records)


def _zeros_from(data: bytes, offset: int) -> bool:
    """Whether ``data`` holds nothing but zero bytes from ``offset`` on."""
    return data.count(0, offset) == len(data) - offset


def _next_frame_v1(data: bytes, start: int) -> int | None:
    """The offset of the first valid format-1 frame at or after ``start``, if there is one."""
    prefix = _FRAME_V1.size + _HEADER.size
    found = data.find(_PAYLOAD_START, start + prefix)
    while found >= 0:
        offset = found - prefix
        length, checksum = _FRAME_V1.unpack_from(data, offset)
        end = offset + _FRAME_V1.size + length
        if (
            0 < length <= MAX_RECORD_BYTES
            and end <= len(data)
            and zlib.crc32(memoryview(data)[offset + _FRAME_V1.size : end]) == checksum
        ):
            return offset
        found = data.find(_PAYLOAD_START, found + 1)
    return None


def _reframe(tail: bytes, offsets: list[int], frame_size: int) -> tuple[bytes, list[int]]:
    """Consecutive frames of another format (at ``offsets`` in ``tail``) in the current one."""
    pieces: list[bytes] = []
    new_offsets: list[int] = []
    position = 0
    ends = [*offsets[1:], len(tail)] if offsets else []
    for start, end in zip(offsets, ends, strict=True):
        piece = frame(tail[start + frame_size : end])
        new_offsets.append(position)
        pieces.append(piece)
        position += len(piece)
    return b"".join(pieces), new_offsets


def _refusal(path: Path, data: bytes, damage: _DamageError) -> str:
    """The message refusing a damaged journal, after keeping a copy of it aside."""
    copy = path.with_name(f"{path.name}.damaged-{hashlib.sha256(data).hexdigest()[:16]}")
    try:
        if not copy.exists():
            atomic_write_bytes(copy, data)
        kept = f"a copy is kept at {copy}"
    except OSError as error:
        kept = f"no copy could be kept ({error})"
    intact = (
        f"the records before it (through version {damage.last_version}) are intact"
        if damage.last_version is not None
        else "no record before it is intact"
    )
    return (
        f"{path}: damage at byte {damage.offset}: {damage.reason}. A crash cannot cause this, "
        f"and acknowledged updates may be at or after it, so the journal is refused and left as "
        f"it is; {kept}. {intact[0].upper()}{intact[1:]}; cutting the file at byte "
        f"{damage.offset} would keep those and lose every update after them."
    )


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
