"""A room's WebSocket connection as its hooks see it: the public handle, and nothing more.

A :class:`Connection` is a facade over the connection's transport (``_transport.py``),
which reads and writes, and carries out what the connection's machine
(``_core/peer.py``) and its room decide; the handle only names what a room may ask of
it, through the small :class:`Link` protocol, so it imports neither the transport nor
the actor. What the application keeps on it (its attachment, attributes of its own)
lives here; what roomkit decides with (its phase, its queue, its tags in the room's
index) lives behind the link.
"""

from __future__ import annotations

import json
from typing import Any, Final, Protocol

from ._closecodes import CloseCode
from ._core.lifecycle import ConnectionState
from ._core.presence import check_meta
from ._core.tags import validate_tags
from ._ids import connection_id
from ._request import Request

__all__ = [
    "MAX_ATTACHMENT",
    "MAX_CLOSE_REASON",
    "Connection",
    "ConnectionState",
    "Link",
    "detach",
    "reattach",
    "restore_presence",
]

#: Largest attachment, serialised, in bytes: the Durable Objects limit.
MAX_ATTACHMENT: Final = 16 * 1024
#: Longest close reason in bytes (a control frame's payload is at most 125 bytes).
MAX_CLOSE_REASON: Final = 123

#: The states in which a close is already decided: another close() does nothing.
_CLOSING_OR_CLOSED: Final = (ConnectionState.CLOSING, ConnectionState.CLOSED)


class Link(Protocol):
    """What a :class:`Connection` asks of the transport behind it."""

    @property
    def state(self) -> ConnectionState: ...

    @property
    def last_seen(self) -> float: ...

    @property
    def auto_response_timestamp(self) -> float | None: ...

    @property
    def tags(self) -> tuple[str, ...]: ...

    def retag(self, tags: tuple[str, ...]) -> None:
        """Replace the connection's tags (valid ones) in its room's index."""

    def send(self, message: Any) -> None:
        """Encode ``message`` and queue it, through the output gate in a hook."""

    def close(self, code: int, reason: str) -> None:
        """Queue a close frame (a valid one) after what is already queued."""

    def track(self, presence: str | None) -> None:
        """Track the connection in its room's presence with the value whose JSON is
        ``presence`` (a checked one), or untrack it (None)."""


class Connection:
    """One client's WebSocket in a room.

    Attributes:
      id: a short identifier, unique in the process: a random prefix drawn once per
        process, a dash, and a counter in hex (``"3f9a1c2b-1a"``); not a secret.
      request: the handshake request it was opened with.
    """

    # Slots: a server holds thousands of these; __dict__ stays for attributes an
    # application sets on its connections (made only if it does).
    __slots__ = ("__dict__", "_attachment", "_link", "_presence", "id", "request")

    def __init__(self, link: Link, request: Request) -> None:
        self.id: Final = connection_id()
        self.request: Final = request
        self._link: Link = link  # until detach(): then the closed connection's record
        self._attachment: str | None = None
        self._presence: str | None = None

    def __repr__(self) -> str:
        return f"<Connection {self.id} room={self.request.room!r} {self.state.value}>"

    @property
    def state(self) -> ConnectionState:
        """CONNECTING until its ``on_connect`` starts, OPEN, CLOSING once a close frame
        is queued or received, CLOSED when its TCP connection is gone; AWAY while a
        roomkit client's session waits for it to come back (``Room.session_grace``),
        OPEN again if it does."""
        return self._link.state

    @property
    def last_seen(self) -> float:
        """When the peer last sent a message, in Trio's clock (``trio.current_time()``)."""
        return self._link.last_seen

    @property
    def auto_response_timestamp(self) -> float | None:
        """When the room's ``auto_response`` last answered the peer, in seconds since the
        epoch on the room's clock (``Room.time()``); None if it never has.

        Durable Objects' ``getWebSocketAutoResponseTimestamp``. Kept with the connection
        across hibernation; answering never wakes the room.
        """
        return self._link.auto_response_timestamp

    @property
    def tags(self) -> tuple[str, ...]:
        """The connection's tags; assign an iterable of strings to replace them.

        A tracked connection's presence follows its key: a change of tags that changes
        ``Room.presence_key(conn)`` moves its meta to the new key (a leave and a join in
        the turn's diff); if ``presence_key`` raises, the tags stay as they were.
        """
        return self._link.tags

    @tags.setter
    def tags(self, tags: Any) -> None:
        link, new = self._link, validate_tags(tags)
        if self._presence is None:
            link.retag(new)
            return
        old = link.tags
        link.retag(new)
        try:
            link.track(self._presence)  # under the key its new tags give
        except Exception:
            link.retag(old)
            raise

    @property
    def attachment(self) -> Any:
        """A JSON-able value kept with the connection (at most 16 KiB serialised).

        Stored serialised, like Durable Objects' ``serializeAttachment``: reading it
        returns a fresh copy, so change it by assigning again.
        """
        return None if self._attachment is None else json.loads(self._attachment)

    @attachment.setter
    def attachment(self, value: Any) -> None:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        size = len(text.encode("utf-8"))
        if size > MAX_ATTACHMENT:
            raise ValueError(
                f"an attachment is at most {MAX_ATTACHMENT} bytes serialised, this one is {size}"
            )
        self._attachment = text

    @property
    def presence(self) -> dict[str, Any] | None:
        """The connection's presence in its room: a dict (a JSON object, at most 1 KiB
        serialised), or None (not tracked); assign one to track it, None to untrack.

        Tracked under ``Room.presence_key(conn)``, worked out when it is assigned and
        again when its tags change (by default the connection's first ``user:<id>``
        tag's id, else its ``id``); every
        roomkit.v1 client of the room sees it as a meta, the value plus ``"ref"`` (this
        ``id``), in the room's ``presence_diff`` at the end of the turn
        (docs/presence.md). Assigning again is an update (a leave and a join); reading
        returns a fresh copy. Kept with the connection across hibernation and through a
        parked session's grace; it leaves when the connection does.

        Raises:
          TypeError: if the value is not a dict (or holds what JSON cannot carry).
          ValueError: if it is over 1 KiB serialised, or holds a ``"ref"`` of its own.
        """
        return None if self._presence is None else json.loads(self._presence)

    @presence.setter
    def presence(self, value: Any) -> None:
        text = None if value is None else check_meta(value)
        self._link.track(text)  # first: a presence_key that raises leaves it as it was
        self._presence = text

    def send(self, message: Any) -> None:
        """Queue ``message`` for this connection; never blocks.

        Args:
          message: ``str`` (text frame), ``bytes`` (binary), or a ``protocol.server`` message.

        Raises:
          TypeError: if ``message`` is none of those.
        """
        self._link.send(message)

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Close the connection after what is already queued for it; never blocks.

        A connection already CLOSING or CLOSED is left as it is, whatever ``code`` and
        ``reason``: its close is on its way, or over (so ``on_close`` may pass on the
        1006 it was told, as Durable Objects' ``webSocketClose`` does).

        Raises:
          ValueError: if the connection is not closing yet and ``code`` may not be sent
            (1000-1003, 1007-1014 and 3000-4999 may; 1004-1006 and 1015 are reserved)
            or ``reason`` is longer than 123 bytes.
        """
        if self._link.state in _CLOSING_OR_CLOSED:
            return
        _check_close(code, reason)
        self._link.close(code, reason)


def reattach(handle: Connection, link: Link) -> None:
    """Carry ``handle``'s session on over ``link``, the transport of its client's new
    socket (a resume: the same Connection, its id, tags and attachment, to the room)."""
    handle._link = link


def restore_presence(handle: Connection, text: str | None) -> None:
    """Give ``handle`` back the presence (JSON, or None) it had before a hook that
    raised changed it: the room's presence is rolled back with the hook."""
    handle._presence = text


def detach(handle: Connection) -> None:
    """Let go of the transport behind ``handle``, whose connection has ended.

    The handle and its transport point at each other; a cycle is freed only by the
    garbage collector, which then ran for every connection that closed (about a
    seventieth of a handshake's cost). What a hook still reads of a closed connection
    stays as it was (``CLOSED``, no tags until it is given some, when its peer was last
    seen and last auto-answered), and what it sends to it is dropped, as it was once the
    connection closed.
    """
    handle._link = _Ended(handle.last_seen, handle.auto_response_timestamp)


class _Ended:
    """The :class:`Link` of a connection that has ended."""

    __slots__ = ("auto_response_timestamp", "last_seen", "tags")

    state: Final = ConnectionState.CLOSED

    def __init__(self, last_seen: float, auto_response_timestamp: float | None) -> None:
        self.last_seen: Final = last_seen
        self.auto_response_timestamp: Final = auto_response_timestamp
        self.tags: tuple[str, ...] = ()

    def retag(self, tags: tuple[str, ...]) -> None:
        self.tags = tags  # kept with it: no room's index holds it any more

    def send(self, message: Any) -> None:
        pass  # closed: dropped, as a send to a closing connection is

    def close(self, code: int, reason: str) -> None:
        pass

    def track(self, presence: str | None) -> None:
        pass  # it has left its room, and its presence with it


def _check_close(code: int, reason: str) -> None:
    if not (
        code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014)
        or 3000 <= code <= 4999
    ):
        raise ValueError(
            f"close code {code} may not be sent; use 1000-1003, 1007-1014 or 3000-4999"
        )
    if len(reason.encode("utf-8")) > MAX_CLOSE_REASON:
        raise ValueError(f"a close reason is at most {MAX_CLOSE_REASON} bytes of UTF-8")
