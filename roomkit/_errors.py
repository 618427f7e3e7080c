"""The exceptions roomkit raises.

The tree::

    RoomkitError
    ├── Reject            raised by a room's on_connect to refuse a handshake
    ├── DecodeError       a peer sent a message the room's Protocol cannot decode
    ├── StorageError      a server cannot use its storage file, at start
    │   └── FencedError   a room's writes refused: another process claimed the room
    ├── OutsideHookError  a room's storage was used outside its hooks
    ├── RoomCallError     a call into a room (``stub.method(...)``) failed
    │   ├── RoomCallTimeout   it had no answer within its timeout
    │   └── RoomCallCycle     it would have waited on a turn that waits on it
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
    "RoomCallCycle",
    "RoomCallError",
    "RoomCallTimeout",
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


class RoomCallError(RoomkitError):
    """Raised when a call into a room (``await stub.method(...)``) fails: the method
    raised, the room refused the call (shutting down, moved), or its answer could not
    be had or read.

    ``str(error)`` is ``"room /chat/a: ValueError: bad"``.

    Attributes:
      room: the room called, as ``"prefix/name"``.
      type: the class name of the exception the method raised; for roomkit's own
        failures, the name of roomkit's class (``"RoomCallTimeout"``, ``"StorageError"``).
      message: ``str()`` of that exception, or what roomkit says went wrong.
      ran: whether the call took effect. True: its turn ran and its writes are durable
        (its result could not be read here). False: it had none (refused, dropped
        while queued at its deadline, a cycle, or it raised and was rolled back).
        None: unknown (its commit was in flight at the timeout, the method was still
        running, or the process that owns the room died after the call was sent).
    """

    def __init__(self, room: str, type: str, message: str, ran: bool | None) -> None:
        super().__init__(f"room {room}: {type}: {message}")
        self.room = room
        self.type = type
        self.message = message
        self.ran = ran


class RoomCallTimeout(RoomCallError):
    """Raised when a call into a room has no answer within its timeout.

    A timeout never cancels a turn that has started: ``ran`` is False if the call was
    still queued (it is dropped, never runs), None if it was running or committing
    (it runs to its end regardless).
    """


class RoomCallCycle(RoomCallError):
    """Raised when a call into a room is made from a turn that the room itself waits
    on (A calls B, which calls A; or A calls A): the call would deadlock, so it is not
    made (``ran`` False).
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
