"""What exports write: CSV that no spreadsheet runs as formulas, and usage records as
rows (the CLIs' files and the admin API's downloads)."""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import orjson

from ..errors import Refused, TooManyRequests
from ..records import UsageRecord
from .views import utc_text

USAGE_EXPORT_COLUMNS = ("time", *UsageRecord._fields)


# A cell starting with one of these is a formula to a spreadsheet (the full-width forms
# too, which some convert); any key can choose the model name it sends.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def csv_cell(value: Any) -> Any:
    """A cell a spreadsheet shows rather than runs: text that starts like a formula gets a
    leading quote (OWASP's advice); numbers stay numbers."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


class _Lines(list[str]):
    """Where the csv writer writes: one call, one row."""

    def write(self, line: str) -> None:
        self.append(line)


def csv_lines(rows: Iterable[Iterable[Any]]) -> str:
    """Rows as CSV lines ending in a line feed: text cells a spreadsheet would run
    neutralised, and every cell holding a line break quoted, a carriage return too."""
    lines = _Lines()
    # With "\n" as its terminator the writer leaves a cell holding a bare CR unquoted: a
    # new row to a spreadsheet, which may run the text after it. With "\r\n" it quotes
    # both; each row's own CRLF then becomes the LF these files have always ended in.
    csv.writer(lines, lineterminator="\r\n").writerows(
        [csv_cell(value) for value in row] for row in rows
    )
    return "".join([line[:-2] + "\n" for line in lines])


def csv_text(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """A header and the rows' `columns` (a missing one empty), as csv_lines writes them."""
    return csv_lines([columns, *([row.get(c, "") for c in columns] for row in rows)])


class UsageText:
    """One usage export, written a chunk of records at a time: CSV (a header, one row
    each) or a JSON list (`[`, objects separated by commas, `]`: valid only once whole,
    so a transfer cut midway never parses), each record with its time in ISO 8601
    besides the Unix time. The pieces joined are the same document however the records
    are cut into chunks."""

    def __init__(self, fmt: str) -> None:
        self.csv = fmt == "csv"
        self.count = 0

    def head(self) -> str:
        return ",".join(USAGE_EXPORT_COLUMNS) + "\n" if self.csv else ""

    def rows(self, records: Sequence[UsageRecord]) -> str:
        if not records:
            return ""
        first = self.count == 0
        self.count += len(records)
        if self.csv:
            return csv_lines([utc_text(r.ts), *r] for r in records)
        listed = orjson.dumps(
            [{"time": utc_text(r.ts), **r._asdict()} for r in records], option=orjson.OPT_INDENT_2
        )
        # The list's own brackets off: the document's are written once, around every chunk.
        return ("[\n" if first else ",\n") + listed[2:-2].decode()

    def tail(self) -> str:
        if self.csv:
            return ""
        return "\n]\n" if self.count else "[]\n"


EXPORTS_PER_KEY = 2  # downloads one key (or its dashboard session) runs at once
EXPORT_RETRY_AFTER_S = 5  # what a refused one is told to wait: an export takes seconds
# Exports reading a chunk at one time, whatever the number running: one keeps /health
# near 10 ms with a dozen running, and is no slower in all (the work is the CPU's anyway).
EXPORTS_AT_WORK = 1


class ExportSlots:
    """How many exports each key runs now. An export streams, so memory is not what
    bounds them: a key's share of the database and the event loop is."""

    def __init__(self, per_key: int = EXPORTS_PER_KEY, at_work: int = EXPORTS_AT_WORK) -> None:
        self.per_key = per_key
        self._running: dict[int, int] = {}
        # Reading a chunk and making its text is done in turns: a dozen exports at once
        # would otherwise each put a chunk's work before every other request (and a
        # reading thread each between the event loop and the GIL).
        self.turn = asyncio.Semaphore(at_work)

    @contextmanager
    def slot(self, key_id: int) -> Iterator[None]:
        """Hold one of the key's slots for the block (given back however it ends: the
        client gone, the database failing, a cancel), or refuse with 429."""
        running = self._running.get(key_id, 0)
        if running >= self.per_key:
            raise TooManyRequests(
                f"this key runs {running} exports already; at most {self.per_key} at once",
                {"Retry-After": str(EXPORT_RETRY_AFTER_S)},
                Refused.EXPORT_LIMIT,
            )
        self._running[key_id] = running + 1
        try:
            yield
        finally:
            left = self._running.pop(key_id) - 1
            if left:
                self._running[key_id] = left
