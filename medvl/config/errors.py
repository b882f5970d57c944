"""The one error type of config checks, which the entry points print as one line, and how they print it."""

from __future__ import annotations

import logging
import sys
from typing import NoReturn


class ConfigError(ValueError):
    """A config value that composes but makes no sense; its message is one line."""


def exit_with(exc: BaseException) -> NoReturn:
    """Exit with ``medvl: <exc>`` on stderr, and the same line in the run's log file (``train.log``, ``eval.log``),
    so that a run directory says why its run stopped."""
    line = f"medvl: {exc}"
    to_log_file(logging.ERROR, line)
    sys.exit(line)


def to_log_file(level: int, line: str, name: str = "medvl") -> None:
    """``line`` in the run's log file only (Hydra's file handler), for a line the console shows its own way."""
    record = logging.LogRecord(name, level, __file__, 0, "%s", (line,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
            handler.handle(record)
