"""The Room base class: subclass it and fill in the hooks you need."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from ._closecodes import CloseCode
from ._protocol import Protocol

if TYPE_CHECKING:
    from ._actor import RoomActor
    from ._alarms import AlarmInfo
    from ._connection import Connection
    from ._request import Request
    from ._storage import Storage

__all__ = ["Room"]

logger = logging.getLogger("roomkit")


class Room:
    """One live actor per room name: subclass this and override the hooks you need.

    roomkit creates the instance when the first event for its name arrives, and calls
    its hooks one at a time, in the order the events arrived: a hook runs to completion
    (including its awaits) before the next one starts, so a room's state needs no locks.
    Every hook is optional.

    What a hook sends (``send``, ``broadcast``, ``close``) is held back until the hook
    returns and then released to the sockets; if the hook raises, it is dropped and
    :meth:`on_error` runs instead.

    Class attributes configure the room:

    Attributes:
      protocol: the typed messages of the room, or None for raw ``str``/``bytes``.
      max_message_size: bytes; a bigger incoming message closes its connection with 1009.
      max_connections: connections the room accepts at once; more are refused with 503.
      idle_timeout: seconds; a connection that sends nothing for that long is closed
        with 1000 "Idle timeout". None (the default) never closes a quiet connection.
    """

    protocol: ClassVar[Protocol | None] = None
    max_message_size: ClassVar[int] = 1 << 20
    max_connections: ClassVar[int] = 10_000
    idle_timeout: ClassVar[float | None] = None

    _roomkit_actor: RoomActor

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.protocol is not None and not isinstance(cls.protocol, Protocol):
            raise TypeError(f"{cls.__name__}.protocol must be a roomkit.Protocol or None")
        for attr in ("max_message_size", "max_connections"):
            value = getattr(cls, attr)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{cls.__name__}.{attr} must be a positive int, not {value!r}")
        timeout = cls.idle_timeout
        number = isinstance(timeout, int | float) and not isinstance(timeout, bool)
        if timeout is not None and not (number and timeout > 0):
            raise ValueError(f"{cls.__name__}.idle_timeout must be positive seconds or None")

    @property
    def name(self) -> str:
        """The room's name: the last segment of the URL its clients connected to."""
        return self._roomkit_actor.name

    @property
    def storage(self) -> Storage:
        """The room's durable key-value storage and alarm; see :class:`roomkit.Storage`."""
        return self._roomkit_actor.storage

    def connections(self, tag: str | None = None) -> list[Connection]:
        """The room's open connections, or only those carrying ``tag``, in join order."""
        return self._roomkit_actor.connections(tag)

    def broadcast(
        self,
        message: Any,
        *,
        tag: str | None = None,
        exclude: Connection | Iterable[Connection] | None = None,
    ) -> int:
        """Send ``message`` to every open connection (or those carrying ``tag``).

        The message is encoded once for all recipients. Never blocks: each recipient's
        copy is queued on its connection.

        Args:
          message: ``str`` (a text frame), ``bytes`` (binary), or a message of
            ``protocol.server``.
          tag: only connections carrying this tag.
          exclude: a connection, or an iterable of them, to leave out.

        Returns:
          How many connections the message was queued for.
        """
        return self._roomkit_actor.broadcast(message, tag, exclude)

    async def on_start(self) -> None:
        """Called once after the instance is created, before it handles its first event."""

    async def on_connect(self, conn: Connection, request: Request) -> None:
        """Called during the handshake of a new connection; raise Reject to refuse it.

        ``conn`` is already among :meth:`connections`, and what is sent to it here is
        delivered right after the handshake completes.
        """

    async def on_message(self, conn: Connection, message: Any) -> None:
        """Called for each message: ``str``/``bytes``, or a decoded ``protocol.client`` one."""

    async def on_close(self, conn: Connection, code: int, reason: str, was_clean: bool) -> None:
        """Called once a connection has closed; it is no longer among :meth:`connections`.

        ``was_clean`` is False when the closing handshake did not complete: the TCP
        connection ended first (``code`` 1006), or the peer broke the protocol and was
        dropped (1002, or 1007 for invalid UTF-8).
        """

    async def on_alarm(self, info: AlarmInfo) -> None:
        """Called when the room's alarm (``storage.set_alarm``) comes due.

        The alarm is deleted just before; set a new one here to repeat. If this raises,
        its writes are rolled back and it is retried with exponential backoff (2, 4, 8,
        16, 32, 64 s, plus up to a quarter more), at most 6 times; ``info.retry_count``
        counts the retries. Runs even if nobody is connected.
        """

    async def on_error(self, conn: Connection | None, error: Exception) -> None:
        """Called when a hook raised ``error`` (its sends were dropped).

        ``conn`` is the connection whose event was being handled, or None (``on_start``,
        ``on_alarm``).
        The default logs the error with its traceback and closes ``conn`` with 1011.
        """
        logger.error("room %r: unhandled error in a hook", self.name, exc_info=error)
        if conn is not None:
            conn.close(CloseCode.INTERNAL_ERROR, "Internal error")
