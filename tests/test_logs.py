"""The access sink writes the very line the logging module would have written."""

from __future__ import annotations

import io
import logging
import time

import pytest

from aigateway import logs


@pytest.mark.parametrize("created", [1_790_000_000.0, 1_790_000_000.042, 1_790_000_059.9996])
def test_access_lines_look_like_records_of_the_logging_module(
    monkeypatch: pytest.MonkeyPatch, created: float
) -> None:
    formatter = logs._Formatter()
    stream = io.StringIO()
    handler = logs.ConsoleHandler()
    handler.stream = stream
    handler.setFormatter(formatter)
    monkeypatch.setattr(time, "time", lambda: created)  # (the clock logs reads)
    message = "rid=ab12-1 user=alice key=laptop method=POST path=/api/chat status=200"
    logs.AccessSink([handler], formatter).write(message)  # off the event loop: written at once
    record = logging.LogRecord("aigateway.access", logging.INFO, __file__, 1, message, None, None)
    record.created = created
    assert stream.getvalue() == formatter.format(record) + "\n"
