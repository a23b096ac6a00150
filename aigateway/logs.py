"""Logging set-up: the console at LOG_LEVEL, and LOG_FILE (if set) at LOG_FILE_LEVEL."""

from __future__ import annotations

import logging
import logging.handlers

from .settings import Settings, log_level_number

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging(settings: Settings) -> None:
    logger = logging.getLogger("aigateway")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(FORMAT)
    console = logging.StreamHandler()
    console.setLevel(log_level_number(settings.log_level))
    console.setFormatter(formatter)
    logger.addHandler(console)
    levels = [console.level]
    if settings.log_file:
        # WatchedFileHandler reopens the file after logrotate moves it.
        file_handler = logging.handlers.WatchedFileHandler(settings.log_file, encoding="utf-8")
        file_handler.setLevel(log_level_number(settings.log_file_level))
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
        levels.append(file_handler.level)
    logger.setLevel(min(levels))
    logger.propagate = False
    # aiohttp's own errors (e.g. a malformed request) still reach the console.
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
