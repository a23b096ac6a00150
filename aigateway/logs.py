"""Logging set-up: the console at LOG_LEVEL, and LOG_FILE (if set) at LOG_FILE_LEVEL.

One access line per request is the busiest thing the gateway logs, so lines are
formatted at once but written in batches from the event loop (at most FLUSH_DELAY_S
late; warnings and errors are written immediately), sparing a write syscall per request.
The access line also skips the logging module's record, lock and formatter machinery
(about 15 us a request): `access_sink` puts it, in the same format, straight into the
batches of the handlers that want INFO lines.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import TextIO

from .settings import Settings, log_level_number

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
FLUSH_DELAY_S = 0.05
MAX_PENDING = 1000


def _printable(text: str) -> str:
    """`text` with each character str.isprintable() refuses (C0 and C1 controls, line and
    paragraph separators, ...) written as Python escapes it."""
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


class _Formatter(logging.Formatter):
    """The standard format, with the timestamp text made once per second, not per line."""

    def __init__(self) -> None:
        super().__init__(FORMAT)
        self._second = -1
        self._stamp = ""

    def formatMessage(self, record: logging.LogRecord) -> str:
        # A message carrying text from outside (a path, a model name, an upstream's error)
        # must not start a line of its own or drive the terminal. Tracebacks are added
        # after this, and keep their lines.
        if not record.message.isprintable():
            record.message = _printable(record.message)
        return super().formatMessage(record)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self.stamp(record.created)

    def stamp(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._stamp},{int((created - second) * 1000):03d}"


class _Batching(logging.StreamHandler):  # type: ignore[type-arg]
    """Holds INFO/DEBUG lines until the event loop flushes them."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._scheduled = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self.add(line, urgent=record.levelno >= logging.WARNING)

    def add(self, line: str, urgent: bool = False) -> None:
        """Queue a formatted line; write at once if urgent or many are waiting."""
        self._pending.append(line)
        if urgent or len(self._pending) >= MAX_PENDING:
            self.flush()
            return
        if not self._scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not on the loop (start-up, shutdown): write now
                self.flush()
                return
            self._scheduled = True
            loop.call_later(FLUSH_DELAY_S, self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        lines, self._pending = "".join(self._pending), []
        self.acquire()
        try:
            self._before_write()
            self.stream.write(lines)
            self.stream.flush()
        except Exception:
            pass  # a full disk or a closed console must not take the gateway down
        finally:
            self.release()

    def _before_write(self) -> None:
        pass

    def close(self) -> None:
        self.flush()
        super().close()


class ConsoleHandler(_Batching):
    def __init__(self) -> None:
        super().__init__(sys.stderr)


class FileHandler(_Batching):
    """Appends to LOG_FILE, and reopens it when logrotate has moved it away."""

    def __init__(self, path: str) -> None:
        self._path = path
        super().__init__(self._open())

    def _open(self) -> TextIO:
        stream = open(self._path, "a", encoding="utf-8")  # noqa: SIM115
        stat = os.fstat(stream.fileno())
        self._identity = (stat.st_dev, stat.st_ino)
        return stream

    def _before_write(self) -> None:
        try:
            stat = os.stat(self._path)
            moved = (stat.st_dev, stat.st_ino) != self._identity
        except FileNotFoundError:
            moved = True
        if moved:
            self.stream.close()
            self.stream = self._open()

    def close(self) -> None:
        super().close()
        self.stream.close()


class AccessSink:
    """Writes access lines as `aigateway.access` INFO records would look, without them."""

    def __init__(self, handlers: list[_Batching], formatter: _Formatter) -> None:
        self._handlers = handlers
        self._stamp = formatter.stamp
        # FORMAT around the time and the message, filled in once: a line is then one
        # f-string instead of a %-format of a dict.
        probe = FORMAT % {
            "asctime": "\0",
            "levelname": "INFO",
            "name": "aigateway.access",
            "message": "\0",
        }
        self._before, self._between, self._after = probe.split("\0")

    def write(self, message: str) -> None:
        line = f"{self._before}{self._stamp(time.time())}{self._between}{message}{self._after}\n"
        for handler in self._handlers:
            handler.add(line)


# Set by configure_logging (the server); None leaves access lines to the logging module,
# as in tests that capture records.
access_sink: AccessSink | None = None


def configure_logging(settings: Settings) -> None:
    global access_sink
    # The logging HOWTO's optimisations: no caller lookup, no thread/process names.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logger = logging.getLogger("aigateway")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = _Formatter()
    handlers: list[_Batching] = []
    console = ConsoleHandler()
    console.setLevel(log_level_number(settings.log_level))
    handlers.append(console)
    if settings.log_file:
        file_handler = FileHandler(settings.log_file)
        file_handler.setLevel(log_level_number(settings.log_file_level))
        handlers.append(file_handler)
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logger.setLevel(min(handler.level for handler in handlers))
    logger.propagate = False
    wants_access = [h for h in handlers if h.level <= logging.INFO]
    access_sink = AccessSink(wants_access, formatter) if wants_access else None
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
