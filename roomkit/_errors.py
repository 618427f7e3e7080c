"""The exceptions roomkit raises.

The tree::

    RoomkitError
    ├── Reject            raised by a room's on_connect to refuse a handshake
    ├── DecodeError       a peer sent a message the room's Protocol cannot decode
    ├── StorageError      a server cannot use its storage file, at start
    │   └── FencedError   a room's writes refused: another process claimed the room
    ├── OutsideHookError  a room's storage was used outside its hooks
    └── ClientClosed      a client (roomkit.connect's, or roomkit.testing's) is closed
"""

from __future__ import annotations

from ._roomid import RoomId

__all__ = [
    "ClientClosed",
    "DecodeError",
    "FencedError",
    "OutsideHookError",
    "Reject",
    "RoomkitError",
    "StorageError",
    "first_leaf",
]


class RoomkitError(Exception):
    """The root of every exception roomkit defines."""


class Reject(RoomkitError):
    """Raised by ``on_connect`` to refuse a WebSocket handshake.

    The client's upgrade request is answered with an HTTP response of ``status``
    (403 by default) whose body is ``reason``; no connection is opened and
    ``on_close`` is not called.
    """

    def __init__(self, status: int = 403, reason: str = "") -> None:
        if isinstance(status, bool) or not isinstance(status, int):
            raise TypeError(f"Reject status must be an int, not {status!r}")
        if not isinstance(reason, str):
            raise TypeError(f"Reject reason must be a str, not {reason!r}")
        if not 400 <= status <= 599:
            raise ValueError(f"Reject status must be an HTTP error status (400-599), not {status}")
        super().__init__(status, reason)
        self.status = status
        self.reason = reason


class DecodeError(RoomkitError):
    """Raised when a peer's message cannot be decoded by a room's Protocol.

    ``str(error)`` is the message sent back to the client in an
    ``{"type": "error", "message": ...}`` reply: it names what is wrong (malformed
    JSON, the unknown type, the missing or mistyped field).
    """


class StorageError(RoomkitError):
    """Raised when a server cannot use its storage, as it starts or when a call to
    its database fails (and, as :class:`FencedError`, when a store refuses a room's
    writes).

    SQLite: the file is in use by another server (one server per file: see
    docs/storage.md), or it cannot be opened, or this process cannot write it.
    PostgreSQL: the server cannot be reached, or a statement failed (a lost
    connection, a lock timeout). ``str(error)`` says what is wrong, and the underlying
    ``OSError``, ``sqlite3.Error`` or ``psycopg.Error``, if any, is its ``__cause__``.
    ``roomkit serve`` logs the message and exits with status 1 when it cannot start.
    """


class FencedError(StorageError):
    """Raised when a store refuses a room's writes because another process has claimed
    the room since this one did: its epoch has moved on.

    Each process that runs a room first claims it in the store, which gives the room a
    new epoch; every commit of the room's writes checks, in the same transaction, that
    the epoch is still the one its process got. A process that lost a room (it hung,
    it was stopped and resumed, another took the room over) so never writes over the
    new owner's data. Stores report it per room, in what ``Store.commit`` returns, so
    that the other rooms of the same commit land; the room whose writes were refused
    closes its connections with 1012 and ends (see docs/storage.md).

    Attributes:
      room: the room (a ``roomkit.storage.RoomId``).
      epoch: the epoch the refused writes were made under.
      owner: who holds the room now, as the store has it (the claiming process's id),
        or None if the store does not say.
    """

    def __init__(self, room: RoomId, epoch: int, owner: str | None) -> None:
        holder = "another process" if owner is None else f"{owner!r}"
        super().__init__(
            f"room {room}: writes under epoch {epoch} refused: {holder} has claimed the room since"
        )
        self.room = room
        self.epoch = epoch
        self.owner = owner


class OutsideHookError(RoomkitError):
    """Raised when a room's storage is used outside its hooks.

    ``Room.storage`` works only inside a hook, from the hook's own task: each hook is a
    transaction, and a write from anywhere else would belong to none. Load stored state
    in ``on_start`` rather than in ``__init__``, and keep storage calls out of tasks a
    hook starts.
    """


class ClientClosed(RoomkitError):
    """Raised when a client made by ``roomkit.connect`` has stopped for good, or when a
    ``roomkit.testing`` client is used after its connection closed or is refused.

    ``roomkit.connect``'s client stops when the application leaves its ``async with``
    block, when the room closes it with a code that means "don't come back" (1008,
    4000-4999), when a handshake is refused with a 4xx status (but 408 and 429), or when
    ``max_retries`` runs out.

    Attributes:
      code: the close code of the last connection, or None.
      reason: the close reason that came with ``code``; for a refused handshake, the
        body of the HTTP response, when known; else None.
      status: the HTTP status of a refused handshake, or None.
    """

    def __init__(
        self,
        why: str,
        *,
        code: int | None = None,
        reason: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(why)
        self.code = code
        self.reason = reason
        self.status = status


def first_leaf(error: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups; ``error`` itself if none."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
