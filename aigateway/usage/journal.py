"""The usage journal: every finished usage record on disk at once, so none is lost.

Records reach the database in batches (usage.py), which a killed process, a locked or
missing database, or a database server that is away would otherwise lose. So each record
is first appended, as one JSON line with one `write`, to the current *segment*, a file in
the journal folder (USAGE_JOURNAL_DIR). A killed process leaves it in the page cache, and
the writer fsyncs it every flush interval, so a machine crash loses at most that interval.

The writer seals the current segment at each flush (new records go to a fresh one),
writes its records to the database in one transaction together with a row naming the
segment, and only then deletes the file. At start, segments left behind are replayed the
same way; one whose name is already in the database was written and is only deleted, so
replay is exactly-once. Segments are locked (flock) while their process owns them, so
several gateways sharing a folder never replay each other's live segments.

A write the disk takes only part of (it filled up) is cut off again and raises OSError:
the writer then holds the record in memory (usage.py), and no torn line is left for the
next record to be glued to.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from ..records import NANO_PER_MICRO, LocalUsageRecord, UsageRecord, clean_usage_record, saturated

log = logging.getLogger("aigateway.usage")

PREFIX, SUFFIX = "seg-", ".jsonl"
# A line's last value when its record is a LocalUsageRecord (its counts go with it).
LOCAL_MARK = "local"


@dataclass
class Segment:
    """A journal file and the descriptor that holds its lock."""

    path: Path
    fd: int

    @property
    def name(self) -> str:
        return self.path.name

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self.close()


class Journal:
    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self._numbers = itertools.count(1)
        self.run = f"{time.time_ns():x}-{os.getpid()}"
        self.current: Segment | None = None

    def open(self) -> None:
        """Create the folder (owner only) and start the first segment."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.current = self._new_segment()

    def _new_segment(self) -> Segment:
        path = self.folder / f"{PREFIX}{self.run}-{next(self._numbers):06d}{SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return Segment(path, fd)

    def append(self, record: UsageRecord) -> None:
        """One line, one write: on disk (in the page cache) before the request is done.
        Raises OSError when the line could not be written whole (a full disk): then the
        file holds none of it."""
        current = self.current
        if current is not None:
            # A plain tuple for orjson; [:] copies one in C, where tuple() iterates.
            fields = record[:] if record.__class__ is UsageRecord else (*record, LOCAL_MARK)
            line = orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE)
            written = os.write(current.fd, line)
            if written != len(line):
                _cut_torn_line(current, written)

    def current_size(self) -> int:
        return os.fstat(self.current.fd).st_size if self.current is not None else 0

    def sync_current(self) -> None:
        """The current segment on disk for good (while the database is away it is the
        only copy of its records, and it is not sealed each flush)."""
        if self.current is not None:
            os.fsync(self.current.fd)

    def seal(self) -> Segment | None:
        """Close the current segment to new records and start the next; the sealed one
        stays locked until it is removed."""
        sealed, self.current = self.current, self._new_segment()
        return sealed

    def close(self) -> None:
        """Close the current segment; one that holds nothing is removed."""
        if self.current is not None:
            if os.fstat(self.current.fd).st_size == 0:
                self.current.remove()
            else:
                self.current.close()
            self.current = None

    def leftovers(self) -> Iterator[Segment]:
        """Segments no live process holds: a killed run's, or one that could not be
        written before its process stopped."""
        for path in sorted(self.folder.glob(f"{PREFIX}*{SUFFIX}")):
            if self.current is not None and path == self.current.path:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # another gateway's live segment
                os.close(fd)
                continue
            yield Segment(path, fd)


def _cut_torn_line(segment: Segment, written: int) -> None:
    """A write that took only part of a line (the disk filled up during it): cut that
    part off, or the next line would be glued to it and both lost when read."""
    try:
        os.ftruncate(segment.fd, os.fstat(segment.fd).st_size - written)
    except OSError as exc:  # (read_segment then skips the torn line, and the next one)
        log.error("usage journal %s: cannot cut a torn line: %s", segment.name, exc)
    raise OSError(errno.ENOSPC, "the usage journal took only part of a record")


# Journal lines are UsageRecord's fields in order; records of a release before nano-unit
# costs have fewer than this many (model_sent came with them), those of a release before
# Now's Stop (stopped_by) this many exactly and those of one before the response cache
# (cached) one more, each followed by LOCAL_MARK when marked.
_FIELDS_SINCE_NANO = UsageRecord._fields.index("model_sent") + 1
_FIELDS = len(UsageRecord._fields)


def read_segment(path: Path) -> list[UsageRecord]:
    """The records of a segment; a line torn by a crash, or otherwise unreadable, is
    logged and skipped."""
    records = []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            fields = orjson.loads(line)
            # (A stopped_by is "user/key name" and cached a boolean, never LOCAL_MARK: a
            # marked line of an earlier release has as many fields as an unmarked one of
            # a later release.)
            marked = isinstance(fields, list) and len(fields) > _FIELDS_SINCE_NANO
            if marked and len(fields) <= _FIELDS + 1 and fields[-1] == LOCAL_MARK:
                record: UsageRecord = LocalUsageRecord(*fields[:-1])
            else:
                record = UsageRecord(*fields)
            if len(fields) < _FIELDS_SINCE_NANO and record.cost:
                # Written by a release before costs were nano-units (one without the
                # model as sent, the field added with them): its cost is micro-units.
                record = record._replace(cost=saturated(record.cost * NANO_PER_MICRO))
            record = clean_usage_record(record)
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            log.warning("usage journal %s line %d skipped: %s", path.name, number, exc)
            continue
        records.append(record)
    return records
