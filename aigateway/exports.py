"""What exports write: CSV that no spreadsheet runs as formulas, and usage records as
rows (the CLIs' files and the admin API's downloads)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

import orjson

from .keyview import when
from .store import UsageRecord

USAGE_EXPORT_COLUMNS = ("time", *UsageRecord._fields)


# A cell starting with one of these is a formula to a spreadsheet (the full-width forms
# too, which some convert); any key can choose the model name it sends.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def csv_safe(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows whose text cells a spreadsheet would run as formulas, neutralised with a
    leading quote (OWASP's advice); numbers stay numbers."""
    return [
        {
            k: "'" + v if isinstance(v, str) and v.startswith(_FORMULA_STARTS) else v
            for k, v in row.items()
        }
        for row in rows
    ]


def csv_text(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """A header and the rows' `columns`, cells a spreadsheet would run neutralised."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_safe(rows))
    return out.getvalue()


def usage_export(records: Sequence[UsageRecord], fmt: str) -> str:
    """Usage records as CSV (a header, one row each) or a JSON list, each with its time
    in ISO 8601 besides the Unix time."""
    rows = [{"time": when(r.ts), **r._asdict()} for r in records]
    if fmt == "csv":
        return csv_text(rows, USAGE_EXPORT_COLUMNS)
    return orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n"
