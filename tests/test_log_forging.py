"""Nothing from outside can forge a log line or run as a spreadsheet formula."""

from __future__ import annotations

import logging

import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web import Request

from aigateway.logs import _Formatter

FORGERIES = [
    ("/api/chat%0a2026-01-01%20INFO%20aigateway.access%20user=root", "llama3.2"),
    ("/api/chat", "llama3.2\n2026-01-01 00:00:00,000 INFO aigateway.access user=root"),
    ("/api/chat", "\x1b[2J\x1b[31mred"),
    ("/api/chat", 'x" user=root error="none'),
    ("/api/chat", "line\u2028separator\rreturn\x00nul\x85next"),
    ("/api/chat", "a b"),
]


@pytest.mark.parametrize(("path", "model"), FORGERIES)
async def test_the_access_line_stays_one_honest_line(
    client: TestClient[Request, None],
    caplog: pytest.LogCaptureFixture,
    path: str,
    model: str,
) -> None:
    """Before: 5 of 6 forgeries put a new line, a terminal escape or a field of their own
    into the access line."""
    caplog.set_level(logging.INFO, logger="aigateway.access")
    body = b'{"model":' + _json_string(model).encode() + b',"messages":[],"stream":false}'
    await client.post(path, data=body)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "aigateway.access"]
    assert line.isprintable() and line.isascii(), line
    fields, _, error = line.partition(' error="')
    assert fields.count(" user=") == 1 and fields.count(" model=") == 1, line
    assert '"' not in error.removesuffix('"').replace('\\"', ""), line


def _json_string(text: str) -> str:
    import json

    return json.dumps(text)


def test_other_log_lines_are_escaped_too() -> None:
    record = logging.LogRecord(
        "aigateway.proxy", logging.WARNING, "x", 1, "upstream said %s", ("a\nb\x1b",), None
    )
    line = _Formatter().format(record)
    assert "\n" not in line and "\x1b" not in line and line.endswith("upstream said a\\nb\\x1b")
