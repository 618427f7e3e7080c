"""Logging: the JSON line format, the command line's setup, and how addresses are written.

roomkit logs through the standard ``logging`` module, on a few loggers named after what
they report rather than after modules (which may move): ``roomkit.server`` (listening,
the front door), ``roomkit.connection`` (a line per connect, refusal by a room, close),
``roomkit.room`` (errors in hooks, alarms, storage failures), ``roomkit.storage``
(commits), ``roomkit.proxy``, ``roomkit.client``. Lines about one connection carry
``room``, ``connection`` and ``remote`` as record attributes (``extra=``), and closes
also ``code``, ``reason``, ``clean`` and ``cut``: :class:`JSONFormatter` writes them as
keys of their own.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Final

__all__ = ["JSONFormatter", "configure_logging", "format_address"]

#: The attributes every LogRecord has: anything else on a record came from ``extra=``.
_STANDARD: Final = frozenset(logging.LogRecord("", logging.INFO, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
}

#: The text format of the command line's log lines.
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JSONFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line.

    Keys: ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``, ``message``,
    then every field given with ``extra=`` (``room``, ``connection``, ``remote``, ...)
    under its own name, and ``exception`` (the formatted traceback) if there is one.
    Values JSON cannot hold are written with ``str()``.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def _utc(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def configure_logging(level: str = "info", *, json_lines: bool = False) -> None:
    """Send log lines at ``level`` and above to stderr, as text or (``json_lines``) JSON.

    For the command line: it replaces the root logger's handlers.

    Raises:
      ValueError: if ``level`` is not a logging level name.
    """
    number = logging.getLevelNamesMapping().get(level.upper())
    if number is None:
        raise ValueError(f"unknown log level {level!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=number, handlers=[handler], force=True)


def format_address(remote: tuple[str, int] | None) -> str:
    """``host:port`` (``[host]:port`` for IPv6), or ``unknown``."""
    if remote is None:
        return "unknown"
    host, port = remote
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
