"""The exceptions roomkit raises.

The tree::

    RoomkitError
    ├── Reject            raised by a room's on_connect to refuse a handshake
    └── DecodeError       a peer sent a message the room's Protocol cannot decode
"""

from __future__ import annotations

__all__ = ["DecodeError", "Reject", "RoomkitError"]


class RoomkitError(Exception):
    """The root of every exception roomkit defines."""


class Reject(RoomkitError):
    """Raised by ``on_connect`` to refuse a WebSocket handshake.

    The client's upgrade request is answered with an HTTP response of ``status``
    (403 by default) whose body is ``reason``; no connection is opened and
    ``on_close`` is not called.
    """

    def __init__(self, status: int = 403, reason: str = "") -> None:
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
