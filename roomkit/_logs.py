"""Logging: the JSON line format, the command line's setup, and how addresses are written.

roomkit logs through the standard ``logging`` module, on a few loggers named after what
they report rather than after modules (which may move): ``roomkit.server`` (listening,
the front door), ``roomkit.connection`` (a line per connect, refusal by a room, close),
``roomkit.room`` (errors in hooks, alarms, storage failures), ``roomkit.storage``
(commits), ``roomkit.proxy``, ``roomkit.client``. Lines about one connection carry
``room``, ``connection`` and ``remote`` as record attributes (``extra=``), and closes
also ``code``, ``reason``, ``clean`` and ``cut``: :class:`JSONFormatter` writes them as
keys of their own. Under ``roomkit serve --workers N``, every line of a worker carries
``worker`` (its slot, 0 to N - 1), as do the supervisor's (``roomkit.supervisor``) lines
about one worker; text lines show it as ``[worker 1]`` after the logger's name.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Final

__all__ = ["JSONFormatter", "TextFormatter", "configure_logging", "format_address"]

#: The attributes every LogRecord has: anything else on a record came from ``extra=``.
_STANDARD: Final = frozenset(logging.LogRecord("", logging.INFO, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
}

#: The text format of the command line's log lines.
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: The text format of a line about one worker of ``roomkit serve --workers N``.
WORKER_TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s [worker %(worker)s]: %(message)s"


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


class TextFormatter(logging.Formatter):
    """Formats a record as ``TEXT_FORMAT``, or ``WORKER_TEXT_FORMAT`` if it has a
    ``worker`` field."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._of_worker = logging.Formatter(WORKER_TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "worker", None) is None:
            return super().format(record)
        return self._of_worker.format(record)


class _WorkerField(logging.Filter):
    """Gives every record that has no ``worker`` field this process's."""

    def __init__(self, worker: int) -> None:
        super().__init__()
        self._worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "worker", None) is None:
            setattr(record, "worker", self._worker)  # noqa: B010 (LogRecord declares none)
        return True


def _utc(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def configure_logging(
    level: str = "info", *, json_lines: bool = False, worker: int | None = None
) -> None:
    """Send log lines at ``level`` and above to stderr, as text or (``json_lines``) JSON.

    For the command line: it replaces the root logger's handlers. In a worker of
    ``roomkit serve --workers N``, ``worker`` is its slot, which every line then carries.

    Raises:
      ValueError: if ``level`` is not a logging level name.
    """
    number = logging.getLevelNamesMapping().get(level.upper())
    if number is None:
        raise ValueError(f"unknown log level {level!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if json_lines else TextFormatter())
    if worker is not None:
        handler.addFilter(_WorkerField(worker))
    logging.basicConfig(level=number, handlers=[handler], force=True)


def format_address(remote: tuple[str, int] | None) -> str:
    """``host:port`` (``[host]:port`` for IPv6), or ``unknown``."""
    if remote is None:
        return "unknown"
    host, port = remote
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
