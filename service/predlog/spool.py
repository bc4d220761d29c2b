"""The spool: each gunicorn worker appends its requests' records to a segment file of its own, one
frame per request, before the answer leaves. A killed worker loses nothing it answered (the bytes
are in the page cache); nothing here is shared between workers (no thread, no lock, no queue).

A frame of a page or less (a single row's) is written into a shared mapping of the file: memory the
kernel already holds for it, where a write(2) cost a worker about 10 µs a request in the caches a
request leaves. The mapping and the accounts a write checks live in a C Writer (_frame.c), which
builds a single row's frame in place when the checks below pass and hands it back here when not. A longer frame (a batch's) goes by pwrite(2) at the same place: each page the
mapping first touches costs a fault and the filesystem's page work, several times the kernel's own
copy. The file is allocated ahead in CHUNK steps (posix_fallocate: the blocks are the file's before
a byte is copied, so a full disk refuses the allocation, a dropped record, instead of killing the
worker with SIGBUS on a page it cannot store); it is cut to its frames' length when sealed.
Whatever lies past the frames (a frame a kill interrupted, the allocation's zeros) is never read as
a record: the next frame is written over it, and a reader stops at the first frame that is not whole.

A segment lives in PREDICTION_LOG_DIR/_spool/ as `<start ns>-<pid>.open` while its worker writes to
it, holding an flock that dies with the process; it is sealed (renamed `.seg`) on rotation (size or
age) and when its worker exits. A segment whose worker died without sealing it (kill -9) is sealed
by the compactor, which finds its lock free, after cutting a torn tail at the last whole frame.

A frame is `<u32 length><u32 CRC-32 of the payload><payload>`, little-endian.

The spool is bounded: a write that would take the spool's files beyond PREDICTION_LOG_MAX_BYTES is
dropped, as is one the disk or the directory refuses; scoring goes on and every dropped record is
counted by reason. Each worker knows the spool's size from a scan of the directory, repeated at most
every SCAN_SECONDS, on rotation and after each SCAN_SHARE of the limit it has written itself, plus
what it has written since: several workers writing at once can overshoot the limit by about that
share for each of the others (and the frames in flight). Another worker's open
segment counts with its allocation (at most one CHUNK beyond its frames)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from service.predlog._frame import Writer

FRAME_HEAD = struct.Struct("<II")
OPEN, SEALED, NEW = ".open", ".seg", ".new"
SCAN_SECONDS = 1.0
SCAN_SHARE = 1 / 64  # a busy worker also rescans after writing this share of PREDICTION_LOG_MAX_BYTES
CHUNK = 1 << 18  # a segment's allocation grows by this much (a multiple of the page size)
RETRY_OPEN_SECONDS = 1.0  # a directory that refused a segment is not asked again on every request
# Readers of the log's directory as a table (Spark, pyarrow) skip names that start with "_".
SPOOL = "_spool"
_ZEROS = bytes(CHUNK)

# why a record was not written, as the drop counter's label says it
SPOOL_FULL = "spool_full"
DISK_FULL = "disk_full"
UNWRITABLE = "unwritable"
ERROR = "error"
DROP_REASONS = (SPOOL_FULL, DISK_FULL, UNWRITABLE, ERROR)


def frame(payload: bytes) -> bytes:
    return FRAME_HEAD.pack(len(payload), zlib.crc32(payload)) + payload


def whole_frames(data: bytes | memoryview) -> tuple[list[memoryview], int]:
    """The payloads of the whole, intact frames at the start of `data`, and the bytes they take:
    anything after (a torn write, a bad checksum) is the tail a killed writer left."""
    view = memoryview(data)
    payloads = []
    at = 0
    while at + FRAME_HEAD.size <= len(view):
        length, crc = FRAME_HEAD.unpack_from(view, at)
        end = at + FRAME_HEAD.size + length
        if length == 0 or end > len(view):  # no record is empty: zeros are the allocation's unwritten rest
            break
        payload = view[at + FRAME_HEAD.size : end]
        if zlib.crc32(payload) != crc:
            break
        payloads.append(payload)
        at = end
    return payloads, at


def spool_dir(directory: Path) -> Path:
    return Path(directory) / SPOOL


def started_ns(segment: Path) -> int:
    """When a segment was opened, from its name."""
    return int(segment.name.split("-", 1)[0])


def spool_bytes(spool: Path) -> int:
    total = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(spool) as entries:
        for entry in entries:
            if entry.name.endswith((OPEN, SEALED)):
                with contextlib.suppress(FileNotFoundError):
                    total += entry.stat().st_size
    return total


def drop_reason(error: OSError) -> str:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return DISK_FULL
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT):
        return UNWRITABLE
    return ERROR


class Spool:
    """One process's segment. Made in the gunicorn master (it opens nothing there); each worker
    opens its own segment after fork (`open`, gunicorn's post_fork) or at its first write."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        segment_bytes: int,
        segment_seconds: float,
        on_written: Callable[[int], None] = lambda rows: None,
        on_dropped: Callable[[str, int], None] = lambda reason, rows: None,
    ) -> None:
        self.spool = spool_dir(directory)
        self._segment_ns = int(segment_seconds * 1e9)
        self._on_written = on_written
        self._on_dropped = on_dropped
        # The open segment's mapping and the accounts a write checks, kept where the hot path's C
        # reads them: a single row's frame goes in with one call (PredictionLog.one).
        self.writer = Writer(max_bytes, int(SCAN_SHARE * max_bytes), segment_bytes, on_written)
        self._forget()
        # A segment belongs to the process that opened it: a child starts without one.
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._fd = -1
        self._path: Path | None = None
        self.writer.forget()
        self._retry_at_ns = 0
        self.failure: str | None = None  # why the last segment could not be opened (a drop reason)
        self.last_error: str | None = None

    @property
    def segment(self) -> Path | None:
        return self._path

    def open(self, now_ns: int | None = None) -> bool:
        """A new segment for this process; False (and the reason kept) when the directory refuses."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        stem = f"{now_ns:020d}-{os.getpid()}"
        new = self.spool / (stem + NEW)
        try:
            self.spool.mkdir(parents=True, exist_ok=True)
            fd = os.open(new, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
            try:
                # Locked before it gets the name the compactor looks at: a free lock on an `.open`
                # segment then always means its writer is gone.
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                path = self.spool / (stem + OPEN)
                os.rename(new, path)
            except OSError:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(new)
                raise
        except OSError as e:
            self.failure, self.last_error = drop_reason(e), str(e)
            self._retry_at_ns = now_ns + int(RETRY_OPEN_SECONDS * 1e9)
            return False
        self._fd, self._path = fd, path
        self.writer.size = 0
        self.writer.seal_at_ns = now_ns + self._segment_ns
        with contextlib.suppress(OSError):  # refused: the first write counts its drop
            self._allocate(CHUNK)
        self._scan(now_ns)
        self.failure = self.last_error = None
        return True

    def _scan(self, now_ns: int) -> None:
        writer = self.writer
        # this segment's allocation ahead of its frames is room, not records
        writer.spool_bytes = spool_bytes(self.spool) - (writer.allocated - writer.size)
        writer.scan_at_ns = now_ns + int(SCAN_SECONDS * 1e9)
        writer.unscanned = 0

    def _allocate(self, end: int, through_mapping: bool = True) -> None:
        """The segment's file allocated and mapped up to at least `end` bytes; OSError when the disk
        or the directory refuses. Space the mapping will be written through is also filled with
        zeros by one pwrite, so that its pages are in the page cache, dirty, before a frame touches
        them: the first store to a page of a fallocated (unwritten) extent faults into the
        filesystem (about 10 µs a page on ext4), where a page already written faults for its
        page-table entry only. `perf.experiments.prediction_log_cost` measures the whole."""
        was = self.writer.allocated
        allocated = -(-end // CHUNK) * CHUNK
        os.posix_fallocate(self._fd, was, allocated - was)
        if through_mapping:
            for at in range(was, allocated, CHUNK):
                os.pwrite(self._fd, _ZEROS, at)
        self.writer.map(self._fd, allocated)

    def write(self, data: bytes, rows: int, now_ns: int) -> bool:
        """Appends one request's frame (`rows` records) in one copy; False when it was dropped.
        (Writer.single makes the same checks in this order for a single row's frame, and comes here
        when one fails.)"""
        writer = self.writer
        if self._fd < 0:
            if now_ns < self._retry_at_ns or not self.open(now_ns):
                return self._drop(self.failure or UNWRITABLE, rows)
        elif now_ns >= writer.seal_at_ns or writer.size >= writer.segment_bytes:
            self.seal()
            if not self.open(now_ns):
                return self._drop(self.failure or ERROR, rows)
        elif now_ns >= writer.scan_at_ns or writer.unscanned >= writer.scan_bytes:
            self._scan(now_ns)
        size = len(data)
        if writer.spool_bytes + size > writer.max_bytes:
            return self._drop(SPOOL_FULL, rows)
        start = writer.size
        end = start + size
        mapped = size <= mmap.PAGESIZE  # a single row's frame is copied into the mapping; longer, pwrite
        if end > writer.allocated:
            try:
                self._allocate(end, through_mapping=mapped)
            except OSError as e:
                return self._drop(drop_reason(e), rows)
        if mapped:
            writer.put(data)
        else:
            try:
                written = os.pwrite(self._fd, data, start)
            except OSError as e:
                return self._drop(drop_reason(e), rows)
            if written != size:  # what did land lies past the frames, where the next frame overwrites it
                return self._drop(ERROR, rows)
        writer.size = end
        writer.spool_bytes += size
        writer.unscanned += size
        self._on_written(rows)
        return True

    def _drop(self, reason: str, rows: int) -> bool:
        self._on_dropped(reason, rows)
        return False

    def tick(self, now_ns: int | None = None) -> None:
        """Seals a segment past its age even when no request comes (the worker's idle loop calls it),
        so that an idle worker's records reach the compactor."""
        if self._fd >= 0 and (time.time_ns() if now_ns is None else now_ns) >= self.writer.seal_at_ns:
            self.seal()

    def seal(self) -> None:
        """Closes the segment and hands it to the compactor (an empty one is removed)."""
        if self._fd < 0 or self._path is None:
            return
        fd, path, size = self._fd, self._path, self.writer.size
        self._fd, self._path = -1, None
        self.writer.unmap()
        with contextlib.suppress(OSError):
            if size == 0:
                os.unlink(path)
            else:
                os.ftruncate(fd, size)  # the allocation's unwritten rest goes
                os.rename(path, path.with_suffix(SEALED))
        os.close(fd)


def seal_orphan(path: Path) -> Path | None:
    """An `.open` segment whose writer is gone (its lock is free): its torn tail cut, sealed.
    None while its writer lives."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # sealed by its writer meanwhile
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        with open(fd, "rb", closefd=False) as f:
            data = f.read()
        _, whole = whole_frames(data)
        if whole != len(data):
            os.ftruncate(fd, whole)
        os.fsync(fd)
        sealed = path.with_suffix(SEALED)
        os.rename(path, sealed)
        return sealed
    finally:
        os.close(fd)
