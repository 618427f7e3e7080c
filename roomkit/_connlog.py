"""The log lines about one connection: opened, refused by its room, and closed.

One INFO line each, on the ``roomkit.connection`` logger (and an ERROR line, with the
traceback, when roomkit's own code failed serving it), with the connection's fields
(``room``, ``connection``, ``remote``, and what the line is about) as record attributes,
so that ``--log-json`` writes them as keys of their own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._logs import format_address

if TYPE_CHECKING:
    from ._connection import Connection
    from ._roomid import RoomId

__all__ = ["connection_fields", "log_closed", "log_failed", "log_opened", "log_refused"]

logger = logging.getLogger("roomkit.connection")

Fields = dict[str, Any]
#: Makes a connection's fields, only when a line is to be written: a connect storm with
#: INFO off pays nothing for them.
FieldsOf = Callable[[], Fields]


def connection_fields(room: RoomId, conn: Connection) -> Fields:
    """What log lines about ``conn`` carry as fields (``extra=``)."""
    return {"room": str(room), "connection": conn.id, "remote": format_address(conn.request.remote)}


def log_opened(fields_of: FieldsOf) -> None:
    if not logger.isEnabledFor(logging.INFO):
        return
    fields = fields_of()
    logger.info(
        "%s: %s opened from %s",
        fields["room"],
        fields["connection"],
        fields["remote"],
        extra=fields,
    )


def log_refused(fields_of: FieldsOf, status: int, reason: str) -> None:
    if not logger.isEnabledFor(logging.INFO):
        return
    fields = fields_of() | {"status": status, "reason": reason}
    logger.info(
        "%s: %s from %s refused: %d %s",
        fields["room"],
        fields["connection"],
        fields["remote"],
        status,
        reason,
        extra=fields,
    )


def log_closed(fields_of: FieldsOf, code: int, reason: str, clean: bool, cut: str | None) -> None:
    if not logger.isEnabledFor(logging.INFO):
        return
    fields = fields_of() | {"code": code, "reason": reason, "clean": clean, "cut": cut}
    logger.info(
        "%s: %s closed: %d %r%s%s",
        fields["room"],
        fields["connection"],
        code,
        reason,
        "" if clean else ", unclean",
        "" if cut is None else f", cut off ({cut})",
        extra=fields,
    )


def log_failed(fields_of: FieldsOf) -> None:
    """Log, with the traceback of the exception being handled, that roomkit's own code
    failed while serving the connection (a bug), which ends that connection only."""
    fields = fields_of()
    logger.exception(
        "%s: %s failed; the connection is ended",
        fields["room"],
        fields["connection"],
        extra=fields,
    )
